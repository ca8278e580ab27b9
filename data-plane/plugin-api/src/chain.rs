//! A route's plugin chain: assembled once per snapshot, run per request.
//!
//! Phases run in the order of [`Phase`]; every request-phase hook returns an
//! explicit [`Outcome`], and the first that is not `Continue` ends the
//! chain. Chains are assembled per route when a snapshot compiles (global,
//! then service, then route instances, stably sorted by phase), never per
//! request; the authentication methods of all levels become one
//! [`AuthSet`]. A snapshot naming a plugin this data plane does not
//! implement fails to compile (NACK): a route is never served without a
//! check it was configured with. Disabled instances (`enabled: false`) are
//! skipped.

use std::sync::Arc;

use http::header::{HeaderValue, CONTENT_LENGTH};
use http::{request, response, StatusCode};
use tollgate_shared::model::{GlobalPlugin, PluginInstance};
use tollgate_shared::telemetry::TRACE_TARGET;
use tracing::Instrument;

use crate::auth::AuthSet;
use crate::context::RequestCtx;
use crate::plugin::{Outcome, Phase, Plugin, Step};
use crate::refusal::Refusal;
use crate::registry::{BuildCtx, Registry};

/// Told what each counted hook decided (the route's metrics implement it).
pub trait PhaseObserver {
    /// `refusal` is `None` when the hook let the request through.
    fn observe(&self, phase: Phase, refusal: Option<&Refusal>);
}

impl PhaseObserver for () {
    fn observe(&self, _phase: Phase, _refusal: Option<&Refusal>) {}
}

/// A plugin instance as it will be selected into a chain.
#[derive(Debug, Clone)]
pub struct CompiledInstance {
    pub name: String,
    pub stackable: bool,
    pub plugin: Arc<dyn Plugin>,
}

/// The plugins of one route, in phase order. Built once per snapshot.
#[derive(Debug, Default)]
pub struct PluginChain {
    plugins: Box<[Arc<dyn Plugin>]>,
    response_hooks: bool,
    response_body_hooks: bool,
    request_body_hooks: bool,
}

/// Compiles the enabled instances of one level (`owner`: `route:orders`,
/// `service:shop`; `label` names it in errors: `route "orders"`). Instance
/// `n` of a plugin there is `<owner>#<n>`, counted over all its instances
/// (enabled or not), so ids stay put when others change.
pub fn compile_level(
    registry: &Registry,
    ctx: &BuildCtx<'_>,
    label: &str,
    owner: &str,
    instances: &[PluginInstance],
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
        let ctx = BuildCtx {
            instance: &id,
            ..*ctx
        };
        let plugin = registry
            .build(&instance.name, &instance.config, &ctx)
            .map_err(|message| format!("{label}: plugins[{i}]: {message}"))?;
        compiled.push(CompiledInstance {
            name: instance.name.clone(),
            stackable: registry
                .get(&instance.name)
                .is_some_and(|factory| factory.stackable()),
            plugin,
        });
    }
    Ok(compiled)
}

/// Compiles the enabled global plugins.
pub fn compile_globals(
    registry: &Registry,
    ctx: &BuildCtx<'_>,
    globals: &[GlobalPlugin],
) -> Result<Vec<CompiledInstance>, String> {
    let mut compiled = Vec::with_capacity(globals.len());
    for global in globals {
        if !global.enabled {
            continue;
        }
        let id = format!("global:{}", global.instance_name());
        let ctx = BuildCtx {
            instance: &id,
            ..*ctx
        };
        let plugin = registry
            .build(&global.name, &global.config, &ctx)
            .map_err(|message| format!("plugin {:?}: {message}", global.instance_name()))?;
        compiled.push(CompiledInstance {
            name: global.name.clone(),
            stackable: registry
                .get(&global.name)
                .is_some_and(|factory| factory.stackable()),
            plugin,
        });
    }
    Ok(compiled)
}

/// The authentication methods of a route (adjacent at the front of the
/// authenticate phase once sorted) become one [`AuthSet`]: any of them
/// succeeding authenticates, and a refusal waits until all had their say.
fn merge_authentication(plugins: &mut Vec<Arc<dyn Plugin>>) {
    let Some(start) = plugins.iter().position(|p| p.authenticator().is_some()) else {
        return;
    };
    let count = plugins[start..]
        .iter()
        .take_while(|p| p.authenticator().is_some())
        .count();
    let methods: Vec<Arc<dyn Plugin>> = plugins[start..start + count].to_vec();
    let set: Arc<dyn Plugin> = Arc::new(AuthSet::new(methods));
    plugins.splice(start..start + count, [set]);
}

/// The span of one hook, named for its role in the trace: `auth`
/// (authenticate and authorize phases) or `rate_limit`. Other phases get no
/// span of their own.
fn hook_span(phase: Phase, plugin: &'static str) -> tracing::Span {
    match phase {
        Phase::Authenticate | Phase::Authorize => {
            tracing::info_span!(target: TRACE_TARGET, "auth", tollgate.plugin = plugin)
        }
        Phase::RateLimit => {
            tracing::info_span!(target: TRACE_TARGET, "rate_limit", tollgate.plugin = plugin)
        }
        _ => tracing::Span::none(),
    }
}

impl PluginChain {
    /// Assembles a route's chain. For a plugin that does not stack, the most
    /// specific enabled instance wins (route over service over global);
    /// stackable plugins (rate limits) all run. The result is stably sorted
    /// by phase, global first, then service, then route within a phase.
    pub fn assemble(
        global: &[CompiledInstance],
        service: &[CompiledInstance],
        route: &[CompiledInstance],
    ) -> PluginChain {
        // Chosen from the most specific level down, then laid out global
        // first, keeping each level's own order (the order in the config).
        let mut levels: [Vec<&CompiledInstance>; 3] = Default::default();
        let mut taken: Vec<&str> = Vec::new();
        for (chosen, level) in levels.iter_mut().zip([route, service, global]) {
            let mut taken_here: Vec<&str> = Vec::new();
            for instance in level {
                if instance.stackable || !taken.contains(&instance.name.as_str()) {
                    chosen.push(instance);
                    taken_here.push(&instance.name);
                }
            }
            taken.extend(taken_here);
        }
        let mut chosen: Vec<&CompiledInstance> = levels.into_iter().rev().flatten().collect();
        chosen.sort_by_key(|instance| instance.plugin.phase());
        let mut plugins: Vec<Arc<dyn Plugin>> =
            chosen.into_iter().map(|i| i.plugin.clone()).collect();
        merge_authentication(&mut plugins);
        let response_hooks = plugins.iter().any(|p| p.has_response_hook());
        let response_body_hooks = plugins.iter().any(|p| p.has_response_body_hook());
        let request_body_hooks = plugins.iter().any(|p| p.has_request_body_hook());
        PluginChain {
            plugins: plugins.into_boxed_slice(),
            response_hooks,
            response_body_hooks,
            request_body_hooks,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }

    /// Whether any plugin has `on_response` / `on_log` hooks (otherwise
    /// [`Self::run_response`] and [`Self::run_log`] do nothing).
    pub fn has_response_hooks(&self) -> bool {
        self.response_hooks
    }

    pub fn plugins(&self) -> impl Iterator<Item = &dyn Plugin> {
        self.plugins.iter().map(|p| p.as_ref())
    }

    /// Runs the request phases in order; the first answer ends the chain.
    /// Auth and rate-limit hooks get a span each, and `observer` is told
    /// what each hook decided.
    pub async fn run_request(
        &self,
        ctx: &mut RequestCtx<'_>,
        request: &mut request::Parts,
        observer: &(dyn PhaseObserver + Sync),
    ) -> Outcome {
        for plugin in self.plugins.iter() {
            let phase = plugin.phase();
            let span = hook_span(phase, plugin.name());
            let step = {
                let _entered = span.enter();
                plugin.on_request(ctx, request)
            };
            let outcome = match step {
                Step::Done(outcome) => outcome,
                Step::Wait(future) => future.instrument(span).await,
            };
            match outcome {
                Outcome::Continue => observer.observe(phase, None),
                Outcome::Refuse(refusal) => {
                    observer.observe(phase, Some(&refusal));
                    return Outcome::Refuse(refusal);
                }
                reply @ Outcome::Reply(_) => return reply,
            }
        }
        Outcome::Continue
    }

    /// Whether any plugin of the chain may want request bodies.
    pub fn has_request_body_hooks(&self) -> bool {
        self.request_body_hooks
    }

    /// The largest request body any plugin wants for this request, if any.
    pub fn request_body_limit(
        &self,
        ctx: &RequestCtx<'_>,
        request: &request::Parts,
    ) -> Option<usize> {
        if !self.request_body_hooks {
            return None;
        }
        self.plugins
            .iter()
            .filter_map(|plugin| plugin.request_body_limit(ctx, request))
            .max()
    }

    /// Runs the request-body hooks in chain order; each plugin only if the
    /// body fits its own limit; `Content-Length` follows every change.
    pub fn run_request_body(
        &self,
        ctx: &mut RequestCtx<'_>,
        request: &mut request::Parts,
        body: &mut bytes::Bytes,
    ) {
        for plugin in self.plugins.iter() {
            if plugin
                .request_body_limit(ctx, request)
                .is_some_and(|limit| body.len() <= limit)
            {
                let before = body.len();
                plugin.on_request_body(ctx, request, body);
                if body.len() != before {
                    request
                        .headers
                        .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
                }
            }
        }
    }

    /// Whether any plugin of the chain may want response bodies.
    pub fn has_response_body_hooks(&self) -> bool {
        self.response_body_hooks
    }

    /// The largest body any plugin wants for this response, if any does.
    pub fn response_body_limit(
        &self,
        ctx: &RequestCtx<'_>,
        response: &response::Parts,
    ) -> Option<usize> {
        if !self.response_body_hooks {
            return None;
        }
        self.plugins
            .iter()
            .filter_map(|plugin| plugin.response_body_limit(ctx, response))
            .max()
    }

    /// Runs the response-body hooks, last plugin first, on a buffered body;
    /// each plugin only if the body (as the previous ones left it) fits its
    /// own limit. A hook that changes the body's length gets
    /// `Content-Length` fixed before the next one sees the response (a
    /// cache after a transformer stores a consistent response).
    pub fn run_response_body(
        &self,
        ctx: &mut RequestCtx<'_>,
        response: &mut response::Parts,
        body: &mut bytes::Bytes,
    ) {
        for plugin in self.plugins.iter().rev() {
            if plugin
                .response_body_limit(ctx, response)
                .is_some_and(|limit| body.len() <= limit)
            {
                let before = body.len();
                plugin.on_response_body(ctx, response, body);
                if body.len() != before && response.headers.contains_key(CONTENT_LENGTH) {
                    response
                        .headers
                        .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
                }
            }
        }
    }

    /// Runs the response hooks on the response head.
    pub fn run_response(&self, ctx: &mut RequestCtx<'_>, response: &mut response::Parts) {
        if !self.response_hooks {
            return;
        }
        for plugin in self.plugins.iter() {
            plugin.on_response(ctx, response);
        }
    }

    /// Runs `log` hooks with the status the client gets.
    pub fn run_log(&self, ctx: &RequestCtx<'_>, status: StatusCode) {
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
    use crate::auth::{AuthAttempt, Authenticator};
    use crate::refusal::RefusalKind;
    use crate::registry::{PluginFactory, SnapshotScope};
    use http::HeaderValue;
    use serde_json::json;
    use std::sync::Mutex;
    use tollgate_shared::model::GatewayConfig;

    /// A plugin that records its calls and answers as configured.
    #[derive(Debug)]
    struct Probe {
        name: &'static str,
        phase: Phase,
        refuse: bool,
        log: Arc<Mutex<Vec<String>>>,
        tag: String,
    }

    impl Plugin for Probe {
        fn name(&self) -> &'static str {
            self.name
        }
        fn phase(&self) -> Phase {
            self.phase
        }
        fn on_request<'a>(
            &'a self,
            _ctx: &'a mut RequestCtx<'_>,
            _request: &'a mut request::Parts,
        ) -> Step<'a> {
            self.log.lock().expect("log").push(self.tag.clone());
            if self.refuse {
                return Err(Refusal::new(RefusalKind::Forbidden)).into();
            }
            // Exercise the waiting path too.
            Step::Wait(Box::pin(async { Outcome::Continue }))
        }
        fn authenticator(&self) -> Option<&dyn Authenticator> {
            (self.phase == Phase::Authenticate).then_some(self)
        }
    }

    impl Authenticator for Probe {
        fn authenticate(&self, _request: &mut request::Parts) -> AuthAttempt {
            self.log.lock().expect("log").push(self.tag.clone());
            AuthAttempt::NoCredential
        }
        fn challenge(&self) -> HeaderValue {
            HeaderValue::from_static(self.name)
        }
    }

    struct ProbeFactory {
        name: &'static str,
        phase: Phase,
        stackable: bool,
        log: Arc<Mutex<Vec<String>>>,
    }

    impl PluginFactory for ProbeFactory {
        fn name(&self) -> &'static str {
            self.name
        }
        fn phase(&self) -> Phase {
            self.phase
        }
        fn stackable(&self) -> bool {
            self.stackable
        }
        fn build(
            &self,
            config: &serde_json::Value,
            ctx: &BuildCtx<'_>,
        ) -> Result<Arc<dyn Plugin>, String> {
            if config.get("broken").is_some() {
                return Err("config.broken: set".into());
            }
            Ok(Arc::new(Probe {
                name: self.name,
                phase: self.phase,
                refuse: config.get("refuse").is_some(),
                log: self.log.clone(),
                tag: format!("{}@{}", self.name, ctx.instance),
            }))
        }
    }

    fn registry(log: &Arc<Mutex<Vec<String>>>) -> Registry {
        let factory = |name, phase, stackable| ProbeFactory {
            name,
            phase,
            stackable,
            log: log.clone(),
        };
        Registry::new()
            .with(factory("auth-a", Phase::Authenticate, false))
            .with(factory("auth-b", Phase::Authenticate, false))
            .with(factory("gate", Phase::Authorize, false))
            .with(factory("limit", Phase::RateLimit, true))
            .with(factory("edit", Phase::TransformRequest, false))
    }

    fn level(
        registry: &Registry,
        owner: &str,
        instances: &[(&str, serde_json::Value)],
    ) -> Result<Vec<CompiledInstance>, String> {
        let config = GatewayConfig::default();
        let scope = SnapshotScope::default();
        let ctx = BuildCtx {
            instance: "",
            config: &config,
            scope: &scope,
        };
        let instances: Vec<PluginInstance> = instances
            .iter()
            .map(|(name, config)| PluginInstance::new(*name, config.clone()))
            .collect();
        compile_level(registry, &ctx, owner, owner, &instances)
    }

    fn parts() -> request::Parts {
        http::Request::new(()).into_parts().0
    }

    #[test]
    fn unknown_plugins_and_bad_configs_are_errors_naming_the_instance() {
        let log = Arc::default();
        let registry = registry(&log);
        let err = level(&registry, "route:r", &[("nope", json!({}))]).expect_err("unknown");
        assert!(
            err.contains("plugins[0]: name: unknown plugin \"nope\""),
            "{err}"
        );
        let err =
            level(&registry, "route:r", &[("edit", json!({"broken": 1}))]).expect_err("bad config");
        assert_eq!(err, "route:r: plugins[0]: config.broken: set");
    }

    #[test]
    fn chains_run_in_phase_order_merge_authentication_and_stop_at_a_refusal() {
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let registry = registry(&log);
        let global = level(
            &registry,
            "global",
            &[("auth-b", json!({})), ("limit", json!({}))],
        )
        .expect("global");
        let route = level(
            &registry,
            "route:r",
            &[
                ("edit", json!({})),
                ("limit", json!({})),
                ("gate", json!({"refuse": true})),
                ("auth-a", json!({})),
            ],
        )
        .expect("route");
        let chain = PluginChain::assemble(&global, &[], &route);
        let names: Vec<&str> = chain.plugins().map(|p| p.name()).collect();
        assert_eq!(names, ["authenticate", "gate", "limit", "limit", "edit"]);

        let id = HeaderValue::from_static("id");
        let mut ctx = RequestCtx::new(
            "127.0.0.1".parse().expect("ip"),
            &id,
            "r",
            "s",
            std::time::Instant::now(),
        );
        let mut request = parts();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let outcome = runtime.block_on(chain.run_request(&mut ctx, &mut request, &()));
        // Both authenticators found no credential: 401 with both challenges.
        let Outcome::Refuse(refusal) = outcome else {
            panic!("refused");
        };
        assert_eq!(refusal.kind, RefusalKind::MissingCredential);
        let challenges: Vec<&HeaderValue> = refusal.headers.iter().map(|(_, v)| v).collect();
        assert_eq!(challenges, ["auth-b", "auth-a"]);
        assert_eq!(
            *log.lock().expect("log"),
            ["auth-b@global#0", "auth-a@route:r#0"]
        );
        // Within a level, the config's order.
        let both = level(
            &registry,
            "r",
            &[("auth-a", json!({})), ("auth-b", json!({}))],
        )
        .expect("route");
        let mut request = parts();
        let Outcome::Refuse(refusal) = runtime.block_on(
            PluginChain::assemble(&[], &[], &both).run_request(&mut ctx, &mut request, &()),
        ) else {
            panic!("refused");
        };
        let challenges: Vec<&HeaderValue> = refusal.headers.iter().map(|(_, v)| v).collect();
        assert_eq!(challenges, ["auth-a", "auth-b"]);

        // Without authentication, the refusing gate ends the chain.
        log.lock().expect("log").clear();
        let chain = PluginChain::assemble(&[], &[], &route[..3]);
        let outcome = runtime.block_on(chain.run_request(&mut ctx, &mut request, &()));
        assert!(matches!(outcome, Outcome::Refuse(r) if r.kind == RefusalKind::Forbidden));
        assert_eq!(*log.lock().expect("log"), ["gate@route:r#0"]);
    }

    #[test]
    fn most_specific_instance_wins_unless_stackable() {
        let log = Arc::default();
        let registry = registry(&log);
        let global =
            level(&registry, "g", &[("edit", json!({})), ("limit", json!({}))]).expect("global");
        let route =
            level(&registry, "r", &[("edit", json!({})), ("limit", json!({}))]).expect("route");
        let chain = PluginChain::assemble(&global, &[], &route);
        assert_eq!(chain.plugins.len(), 3);
        assert!(Arc::ptr_eq(&chain.plugins[2], &route[0].plugin));
        let chain = PluginChain::assemble(&global, &[], &[]);
        assert!(Arc::ptr_eq(&chain.plugins[1], &global[0].plugin));
    }
}
