//! The plugin pipeline: what runs around the proxy call for each request.
//!
//! Phases, in this order (the order of [`Phase`]):
//!
//! 1. `authenticate`: who is calling (key-auth, jwt; next issue),
//! 2. `authorize`: may they (acl; next issue),
//! 3. `rate_limit`: are they within their quota (issue after),
//! 4. `transform_request`: edit what goes upstream (`request-transformer`),
//! 5. *(the proxy call)*,
//! 6. `transform_response`: edit what goes back,
//! 7. `log`: always runs once the response is known.
//!
//! Every request-phase hook returns an explicit [`Outcome`]: `Continue`, or
//! `Respond(response)` to answer now (a 401, a 429...) without calling the
//! upstream. Chains are assembled per route when a snapshot compiles (global,
//! then service, then route plugins, stably sorted by phase), never per
//! request.
//!
//! Dispatch is an enum ([`Plugin`]) matched in `async fn`s, not boxed trait
//! objects returning boxed futures: the compiler sees every implementation,
//! and running a chain allocates nothing.
//!
//! A snapshot naming a plugin this data plane does not implement fails to
//! compile and is NACKed: a route is never served without a check it was
//! configured with. Disabled instances (`enabled: false`) are skipped.

pub mod acl;
pub mod auth;
pub mod consumers;
pub mod context;
pub mod jwt;
pub mod key_auth;
pub mod request_transformer;

use std::sync::Arc;

use http::{request, response, Response, StatusCode};
use tollgate_shared::model::{GlobalPlugin, PluginInstance};
use tollgate_shared::plugins::PluginConfig;

pub use context::{Identity, RequestContext};
pub use request_transformer::RequestTransformer;

use crate::proxy::body::ResponseBody;

/// The phases of a request, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Authenticate,
    Authorize,
    RateLimit,
    TransformRequest,
    TransformResponse,
    Log,
}

/// What a request-phase hook decided.
#[derive(Debug)]
pub enum Outcome {
    /// Go on with the next plugin, then the upstream.
    Continue,
    /// Answer the client with this response now; the upstream is not called.
    Respond(Response<ResponseBody>),
}

/// Every plugin implementation this data plane has.
#[derive(Debug)]
pub enum Plugin {
    RequestTransformer(RequestTransformer),
}

/// Plugins that may be attached several times at once (their instances stack
/// instead of the most specific one replacing the others).
const STACKABLE: [&str; 1] = ["rate-limit"];

impl Plugin {
    /// Compiles one instance. Unknown or unimplemented plugins are errors.
    pub fn build(name: &str, config: &serde_json::Value) -> Result<Plugin, String> {
        match PluginConfig::parse(name, config)? {
            PluginConfig::RequestTransformer(config) => Ok(Plugin::RequestTransformer(
                RequestTransformer::new(&config)?,
            )),
            other => Err(format!(
                "plugin {:?} is not implemented by this data plane",
                other.name()
            )),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Plugin::RequestTransformer(_) => "request-transformer",
        }
    }

    /// The phase whose position in the chain this plugin takes.
    pub fn phase(&self) -> Phase {
        match self {
            Plugin::RequestTransformer(_) => Phase::TransformRequest,
        }
    }

    /// The request-side hook (phases up to `transform_request`).
    pub async fn on_request(
        &self,
        ctx: &mut RequestContext<'_>,
        request: &mut request::Parts,
    ) -> Outcome {
        match self {
            Plugin::RequestTransformer(plugin) => plugin.apply(ctx, request),
        }
    }

    /// The response-side hook (`transform_response`), before the response
    /// head is sent to the client.
    pub fn on_response(&self, _ctx: &RequestContext<'_>, _response: &mut response::Parts) {
        match self {
            Plugin::RequestTransformer(_) => {}
        }
    }

    /// The `log` hook, run once per request with the final status.
    pub fn on_log(&self, _ctx: &RequestContext<'_>, _status: StatusCode) {
        match self {
            Plugin::RequestTransformer(_) => {}
        }
    }

    /// Whether [`Plugin::on_response`] / [`Plugin::on_log`] do anything, so
    /// chains without such hooks skip those loops entirely.
    fn has_response_hook(&self) -> bool {
        match self {
            Plugin::RequestTransformer(_) => false,
        }
    }
}

/// The plugins of one route, in phase order. Built once per snapshot.
#[derive(Debug, Default)]
pub struct PluginChain {
    plugins: Box<[Arc<Plugin>]>,
    response_hooks: bool,
}

/// A plugin instance as it will be selected into a chain.
#[derive(Debug, Clone)]
pub struct CompiledInstance {
    pub name: String,
    pub plugin: Arc<Plugin>,
}

/// Compiles the enabled instances of one level (global, service or route).
/// `label` names the level in errors (`route "orders-api"`).
pub fn compile_instances(
    label: &str,
    instances: &[PluginInstance],
) -> Result<Vec<CompiledInstance>, String> {
    let mut compiled = Vec::with_capacity(instances.len());
    for (i, instance) in instances.iter().enumerate() {
        if !instance.enabled {
            continue;
        }
        let plugin = Plugin::build(&instance.name, &instance.config)
            .map_err(|message| format!("{label}: plugins[{i}]: {message}"))?;
        compiled.push(CompiledInstance {
            name: instance.name.clone(),
            plugin: Arc::new(plugin),
        });
    }
    Ok(compiled)
}

/// Compiles the enabled global plugins.
pub fn compile_globals(globals: &[GlobalPlugin]) -> Result<Vec<CompiledInstance>, String> {
    let mut compiled = Vec::with_capacity(globals.len());
    for global in globals {
        if !global.enabled {
            continue;
        }
        let plugin = Plugin::build(&global.name, &global.config)
            .map_err(|message| format!("plugin {:?}: {message}", global.instance_name()))?;
        compiled.push(CompiledInstance {
            name: global.name.clone(),
            plugin: Arc::new(plugin),
        });
    }
    Ok(compiled)
}

impl PluginChain {
    /// Assembles a route's chain. For a plugin that does not stack, the most
    /// specific enabled instance wins (route over service over global); stackable
    /// plugins (rate limits) all run. The result is stably sorted by phase.
    pub fn assemble(
        global: &[CompiledInstance],
        service: &[CompiledInstance],
        route: &[CompiledInstance],
    ) -> PluginChain {
        let mut chosen: Vec<&CompiledInstance> = Vec::new();
        let mut taken: Vec<&str> = Vec::new();
        for level in [route, service, global] {
            let mut taken_here: Vec<&str> = Vec::new();
            for instance in level {
                let stackable = STACKABLE.contains(&instance.name.as_str());
                if stackable || !taken.contains(&instance.name.as_str()) {
                    chosen.push(instance);
                    taken_here.push(&instance.name);
                }
            }
            taken.extend(taken_here);
        }
        // Global first, then service, then route within a phase.
        chosen.reverse();
        chosen.sort_by_key(|instance| instance.plugin.phase());
        let plugins: Box<[Arc<Plugin>]> = chosen.into_iter().map(|i| i.plugin.clone()).collect();
        let response_hooks = plugins.iter().any(|p| p.has_response_hook());
        PluginChain {
            plugins,
            response_hooks,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }

    pub fn plugins(&self) -> impl Iterator<Item = &Plugin> {
        self.plugins.iter().map(|p| p.as_ref())
    }

    /// Runs the request phases in order; the first `Respond` ends the chain.
    pub async fn run_request(
        &self,
        ctx: &mut RequestContext<'_>,
        request: &mut request::Parts,
    ) -> Outcome {
        for plugin in self.plugins.iter() {
            if let Outcome::Respond(response) = plugin.on_request(ctx, request).await {
                return Outcome::Respond(response);
            }
        }
        Outcome::Continue
    }

    /// Runs `transform_response` hooks on the response head.
    pub fn run_response(&self, ctx: &RequestContext<'_>, response: &mut response::Parts) {
        if !self.response_hooks {
            return;
        }
        for plugin in self.plugins.iter() {
            plugin.on_response(ctx, response);
        }
    }

    /// Runs `log` hooks with the status the client gets.
    pub fn run_log(&self, ctx: &RequestContext<'_>, status: StatusCode) {
        if !self.response_hooks {
            return;
        }
        for plugin in self.plugins.iter() {
            plugin.on_log(ctx, status);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unimplemented_plugins_are_errors_not_skipped() {
        for name in ["key-auth", "jwt", "rate-limit", "acl"] {
            let config = match name {
                "rate-limit" => json!({"limit": 1, "window": "1m"}),
                "acl" => json!({"allow": ["a"]}),
                _ => json!({}),
            };
            let err = Plugin::build(name, &config).expect_err("must be refused");
            assert_eq!(
                err,
                format!("plugin \"{name}\" is not implemented by this data plane")
            );
        }
        let err = Plugin::build("nope", &json!({})).expect_err("must be refused");
        assert!(err.contains("unknown plugin"), "{err}");
    }

    #[test]
    fn disabled_instances_are_skipped() {
        let mut instance = PluginInstance::new("key-auth", json!({}));
        instance.enabled = false;
        let compiled = compile_instances("route \"r\"", &[instance]).expect("skipped");
        assert!(compiled.is_empty());
        let enabled = PluginInstance::new("key-auth", json!({}));
        let err = compile_instances("route \"r\"", &[enabled]).expect_err("must be refused");
        assert_eq!(
            err,
            "route \"r\": plugins[0]: plugin \"key-auth\" is not implemented by this data plane"
        );
    }

    #[test]
    fn most_specific_instance_wins() {
        let add = |value: &str| {
            compile_instances(
                "x",
                &[PluginInstance::new(
                    "request-transformer",
                    json!({"add": {"headers": {"x-level": value}}}),
                )],
            )
            .expect("compiles")
        };
        let global = add("global");
        let route = add("route");
        let chain = PluginChain::assemble(&global, &[], &route);
        assert_eq!(chain.plugins.len(), 1);
        assert!(Arc::ptr_eq(&chain.plugins[0], &route[0].plugin));
        let chain = PluginChain::assemble(&global, &[], &[]);
        assert!(Arc::ptr_eq(&chain.plugins[0], &global[0].plugin));
    }
}
