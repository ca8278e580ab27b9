//! The plugin pipeline: what runs around the proxy call for each request.
//!
//! Phases, in this order (the order of [`Phase`]):
//!
//! 1. `authenticate`: who is calling (`key-auth`, `jwt`, run as one set:
//!    see [`auth`]),
//! 2. `authorize`: may they (`acl`),
//! 3. `rate_limit`: are they within their quota (`rate-limit`: see
//!    [`rate_limit`]),
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
pub mod rate_limit;
pub mod request_transformer;

use tracing::Instrument;

use crate::telemetry::metrics::RouteMetrics;
use crate::telemetry::request as observe;
use std::sync::Arc;

use http::{request, response, Response, StatusCode};
use tollgate_shared::model::{GlobalPlugin, PluginInstance};
use tollgate_shared::plugins::PluginConfig;

pub use acl::Acl;
pub use auth::{AuthSet, Authenticator};
pub use consumers::ConsumerIndex;
pub use context::{Identity, RequestContext};
pub use jwt::JwtAuth;
pub use key_auth::KeyAuth;
pub use rate_limit::{RateLimit, RateLimiters};
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
    /// `key-auth` and/or `jwt`: a route's authentication methods, merged into
    /// one set when its chain is assembled (any one succeeding authenticates).
    Authenticate(AuthSet),
    Acl(Acl),
    RateLimit(RateLimit),
    RequestTransformer(RequestTransformer),
}

/// What compiling a plugin may need from the rest of the snapshot.
#[derive(Debug, Clone)]
pub struct BuildContext {
    /// The snapshot's consumers and credentials, compiled once.
    pub consumers: Arc<ConsumerIndex>,
    /// Rate-limit state that outlives snapshots (Redis, in-process counters).
    pub rate_limiters: Arc<RateLimiters>,
}

impl Default for BuildContext {
    fn default() -> Self {
        BuildContext {
            consumers: Arc::new(ConsumerIndex::empty()),
            rate_limiters: Arc::new(RateLimiters::new(None)),
        }
    }
}

/// Plugins that may be attached several times at once (their instances stack
/// instead of the most specific one replacing the others).
const STACKABLE: [&str; 1] = ["rate-limit"];

impl Plugin {
    /// Compiles one instance. Unknown or unimplemented plugins are errors.
    pub fn build(
        name: &str,
        config: &serde_json::Value,
        build: &BuildContext,
    ) -> Result<Plugin, String> {
        Plugin::build_instance(name, config, build, name)
    }

    /// Compiles one instance; `instance` identifies it stably across
    /// snapshots (`route:orders#0`: rate-limit counters are keyed by it).
    pub fn build_instance(
        name: &str,
        config: &serde_json::Value,
        build: &BuildContext,
        instance: &str,
    ) -> Result<Plugin, String> {
        match PluginConfig::parse(name, config)? {
            PluginConfig::KeyAuth(config) => {
                Ok(Plugin::Authenticate(AuthSet::new(vec![Arc::new(
                    Authenticator::KeyAuth(KeyAuth::new(&config, &build.consumers)?),
                )])))
            }
            PluginConfig::Jwt(config) => Ok(Plugin::Authenticate(AuthSet::new(vec![Arc::new(
                Authenticator::Jwt(JwtAuth::new(&config, &build.consumers)?),
            )]))),
            PluginConfig::Acl(config) => Ok(Plugin::Acl(Acl::new(&config)?)),
            PluginConfig::RateLimit(config) => Ok(Plugin::RateLimit(RateLimit::new(
                instance,
                &config,
                &build.rate_limiters,
            ))),
            PluginConfig::RequestTransformer(config) => Ok(Plugin::RequestTransformer(
                RequestTransformer::new(&config)?,
            )),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Plugin::Authenticate(set) => set.name(),
            Plugin::Acl(_) => "acl",
            Plugin::RateLimit(_) => "rate-limit",
            Plugin::RequestTransformer(_) => "request-transformer",
        }
    }

    /// The phase whose position in the chain this plugin takes.
    pub fn phase(&self) -> Phase {
        match self {
            Plugin::Authenticate(_) => Phase::Authenticate,
            Plugin::Acl(_) => Phase::Authorize,
            Plugin::RateLimit(_) => Phase::RateLimit,
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
            Plugin::Authenticate(set) => match set.authenticate(request) {
                Ok(identity) => {
                    ctx.consumer = Some(identity);
                    Outcome::Continue
                }
                Err(refusal) => Outcome::Respond(refusal.into_response(Some(ctx.request_id))),
            },
            Plugin::Acl(acl) => match acl.authorize(ctx.consumer.as_ref()) {
                Ok(()) => Outcome::Continue,
                Err(refusal) => Outcome::Respond(refusal.into_response(Some(ctx.request_id))),
            },
            Plugin::RateLimit(plugin) => plugin.apply(ctx, request).await,
            Plugin::RequestTransformer(plugin) => plugin.apply(ctx, request),
        }
    }

    /// The response-side hook (`transform_response`), before the response
    /// head is sent to the client.
    pub fn on_response(&self, _ctx: &RequestContext<'_>, _response: &mut response::Parts) {
        match self {
            Plugin::Authenticate(_)
            | Plugin::Acl(_)
            | Plugin::RateLimit(_)
            | Plugin::RequestTransformer(_) => {}
        }
    }

    /// The `log` hook, run once per request with the final status.
    pub fn on_log(&self, _ctx: &RequestContext<'_>, _status: StatusCode) {
        match self {
            Plugin::Authenticate(_)
            | Plugin::Acl(_)
            | Plugin::RateLimit(_)
            | Plugin::RequestTransformer(_) => {}
        }
    }

    /// Whether [`Plugin::on_response`] / [`Plugin::on_log`] do anything, so
    /// chains without such hooks skip those loops entirely.
    fn has_response_hook(&self) -> bool {
        match self {
            Plugin::Authenticate(_)
            | Plugin::Acl(_)
            | Plugin::RateLimit(_)
            | Plugin::RequestTransformer(_) => false,
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
    build: &BuildContext,
) -> Result<Vec<CompiledInstance>, String> {
    compile_level(label, label, instances, build)
}

/// [`compile_instances`] for the level `owner` (`route:orders`,
/// `service:shop`): instance `n` of a plugin there is `<owner>#<n>`, counted
/// over all its instances (enabled or not), so ids stay put when others change.
pub fn compile_level(
    label: &str,
    owner: &str,
    instances: &[PluginInstance],
    build: &BuildContext,
) -> Result<Vec<CompiledInstance>, String> {
    let mut compiled = Vec::with_capacity(instances.len());
    for (i, instance) in instances.iter().enumerate() {
        if !instance.enabled {
            continue;
        }
        let ordinal = instances[..i]
            .iter()
            .filter(|earlier| earlier.name == instance.name)
            .count();
        let id = format!("{owner}#{ordinal}");
        let plugin = Plugin::build_instance(&instance.name, &instance.config, build, &id)
            .map_err(|message| format!("{label}: plugins[{i}]: {message}"))?;
        compiled.push(CompiledInstance {
            name: instance.name.clone(),
            plugin: Arc::new(plugin),
        });
    }
    Ok(compiled)
}

/// Compiles the enabled global plugins.
pub fn compile_globals(
    globals: &[GlobalPlugin],
    build: &BuildContext,
) -> Result<Vec<CompiledInstance>, String> {
    let mut compiled = Vec::with_capacity(globals.len());
    for global in globals {
        if !global.enabled {
            continue;
        }
        let id = format!("global:{}", global.instance_name());
        let plugin = Plugin::build_instance(&global.name, &global.config, build, &id)
            .map_err(|message| format!("plugin {:?}: {message}", global.instance_name()))?;
        compiled.push(CompiledInstance {
            name: global.name.clone(),
            plugin: Arc::new(plugin),
        });
    }
    Ok(compiled)
}

/// Several authentication plugins on one route (say `key-auth` on the
/// service and `jwt` on the route) become one [`AuthSet`]: any of them
/// succeeding authenticates, and a refusal waits until all had their say.
/// `plugins` is sorted by phase, so they are adjacent at the front.
fn merge_authentication(plugins: &mut Vec<Arc<Plugin>>) {
    let count = plugins
        .iter()
        .take_while(|p| matches!(p.as_ref(), Plugin::Authenticate(_)))
        .count();
    if count < 2 {
        return;
    }
    let merged = AuthSet::merge(plugins[..count].iter().filter_map(|p| match p.as_ref() {
        Plugin::Authenticate(set) => Some(set),
        _ => None,
    }));
    plugins.splice(..count, [Arc::new(Plugin::Authenticate(merged))]);
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
        let mut plugins: Vec<Arc<Plugin>> = chosen.into_iter().map(|i| i.plugin.clone()).collect();
        merge_authentication(&mut plugins);
        let plugins: Box<[Arc<Plugin>]> = plugins.into_boxed_slice();
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
    /// Auth and rate-limit hooks get a span each and their decisions are
    /// counted on the route's `metrics`.
    pub async fn run_request(
        &self,
        ctx: &mut RequestContext<'_>,
        request: &mut request::Parts,
        metrics: &RouteMetrics,
    ) -> Outcome {
        for plugin in self.plugins.iter() {
            let phase = plugin.phase();
            let span = observe::plugin_span(phase, plugin.name());
            match plugin.on_request(ctx, request).instrument(span).await {
                Outcome::Respond(response) => {
                    observe::record_plugin_outcome(metrics, phase, Some(&response));
                    return Outcome::Respond(response);
                }
                Outcome::Continue => observe::record_plugin_outcome(metrics, phase, None),
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
        let build = BuildContext::default();
        let err = Plugin::build("rate-limit", &json!({"limit": 0, "window": "1m"}), &build)
            .expect_err("must be refused");
        assert!(err.starts_with("config.limit"), "{err}");
        let err = Plugin::build("nope", &json!({}), &build).expect_err("must be refused");
        assert!(err.contains("unknown plugin"), "{err}");
        for (name, config) in [
            ("key-auth", json!({})),
            ("jwt", json!({})),
            ("acl", json!({"allow": ["a"]})),
            ("rate-limit", json!({"limit": 1, "window": "1m"})),
        ] {
            let plugin = Plugin::build(name, &config, &build).expect("implemented");
            assert_eq!(plugin.name(), name);
        }
    }

    #[test]
    fn disabled_instances_are_skipped() {
        let build = BuildContext::default();
        let broken = json!({"anonymous": "nobody"});
        let mut instance = PluginInstance::new("key-auth", broken.clone());
        instance.enabled = false;
        let compiled = compile_instances("route \"r\"", &[instance], &build).expect("skipped");
        assert!(compiled.is_empty());
        let enabled = PluginInstance::new("key-auth", broken);
        let err =
            compile_instances("route \"r\"", &[enabled], &build).expect_err("must be refused");
        assert_eq!(
            err,
            "route \"r\": plugins[0]: config.anonymous: consumer \"nobody\" does not exist"
        );
    }

    #[test]
    fn authentication_plugins_of_all_levels_merge_into_one_set_before_acl() {
        let build = BuildContext::default();
        let global = compile_globals(
            &[GlobalPlugin {
                instance: None,
                name: "jwt".into(),
                config: json!({}),
                enabled: true,
            }],
            &build,
        )
        .expect("global");
        let route = compile_instances(
            "r",
            &[
                PluginInstance::new("acl", json!({"deny": ["x"]})),
                PluginInstance::new("key-auth", json!({})),
            ],
            &build,
        )
        .expect("route");
        let chain = PluginChain::assemble(&global, &[], &route);
        let names: Vec<&str> = chain.plugins().map(Plugin::name).collect();
        assert_eq!(names, ["authenticate", "acl"]);
        let Plugin::Authenticate(set) = chain.plugins[0].as_ref() else {
            panic!("authentication first");
        };
        assert_eq!(set.len(), 2);
        let alone = PluginChain::assemble(&[], &[], &route);
        let names: Vec<&str> = alone.plugins().map(Plugin::name).collect();
        assert_eq!(names, ["key-auth", "acl"]);
    }

    #[test]
    fn most_specific_instance_wins() {
        let build = BuildContext::default();
        let add = |value: &str| {
            compile_instances(
                "x",
                &[PluginInstance::new(
                    "request-transformer",
                    json!({"add": {"headers": {"x-level": value}}}),
                )],
                &build,
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
