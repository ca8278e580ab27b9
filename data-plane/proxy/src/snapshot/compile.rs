//! Compiling a validated config into what the request path reads.
//!
//! Everything a request needs is resolved here, once per snapshot: the route
//! table, each route's service (with its upstream pool and prebuilt header
//! values) and its plugin chain. A request then does no lookup by name, no
//! parsing of config, and no allocation for any of it.
//!
//! Compiling is all-or-nothing: any route, service or plugin the data plane
//! cannot serve faithfully fails the whole snapshot (NACK), so the config in
//! service is always replaced whole or not at all.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use tollgate_shared::model::{EncodedSlashes, GatewayConfig, PathParameters};
use tollgate_shared::proto::config::ConfigVersion;

use crate::router::Router;
use crate::upstream::{ClientCache, PoolKey, SharedPool, UpstreamPool};
use tollgate_plugin_api::chain::{compile_globals, compile_level};
use tollgate_plugin_api::{BuildCtx, CompiledInstance, PluginChain, Registry, SnapshotScope};
use tollgate_telemetry::metrics::{ConsumerNames, RouteMetrics};

/// One configuration, ready to serve.
pub struct CompiledSnapshot {
    pub version: ConfigVersion,
    pub router: Router,
    /// Indexed by the router's `route_index` (the order of `config.routes`).
    pub routes: Box<[CompiledRoute]>,
    /// By service name, so the next compile can carry pools over.
    pub services: HashMap<String, Arc<CompiledService>>,
    /// The TLS server config of this snapshot's certificates (built once
    /// here, loaded per handshake); `None` without certificates.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// `(certificate, notAfter)` for the expiry gauge, set when it goes
    /// into service.
    pub certificate_expiries: Vec<(String, i64)>,
}

#[derive(Debug)]
pub struct CompiledRoute {
    pub name: Arc<str>,
    pub service: Arc<CompiledService>,
    pub strip_path: bool,
    pub max_body_bytes: Option<u64>,
    /// Plaintext requests get 426 (or a 308 with `https_redirect`).
    pub https_only: bool,
    pub https_redirect: bool,
    /// This route's overrides of the gateway's [`crate::router::PathPolicy`].
    pub encoded_slashes: Option<EncodedSlashes>,
    pub path_parameters: Option<PathParameters>,
    /// Tries after the first (`retries`, default 1).
    pub retries: u32,
    /// Retry non-idempotent methods after an answer too.
    pub retry_non_idempotent: bool,
    /// `Some(idle timeout)` when the route forwards WebSocket upgrades.
    pub websocket: Option<Duration>,
    pub plugins: PluginChain,
    /// This route's metric handles, resolved once here, not per request.
    pub metrics: Arc<RouteMetrics>,
}

#[derive(Debug)]
pub struct CompiledService {
    pub name: Arc<str>,
    pub upstream: SharedPool,
    /// Host header sent upstream instead of the client's.
    pub host_header: Option<HeaderValue>,
    /// Time allowed from sending the request to the upstream's response head.
    pub request_timeout: Duration,
}

impl CompiledSnapshot {
    /// The CA certificates (DER) of every plugin that checks client
    /// certificates (on any route, through any level), without duplicates:
    /// when there are any, the TLS listener asks clients for a certificate.
    pub fn client_ca_certificates(&self) -> Vec<Vec<u8>> {
        let mut subjects: Vec<Vec<u8>> = Vec::new();
        for route in self.routes.iter() {
            for plugin in route.plugins.plugins() {
                for subject in plugin.client_ca_certificates() {
                    if !subjects.contains(subject) {
                        subjects.push(subject.clone());
                    }
                }
            }
        }
        subjects
    }
}

impl std::fmt::Debug for CompiledSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledSnapshot")
            .field("version", &self.version)
            .field("routes", &self.routes)
            .finish_non_exhaustive()
    }
}

/// Compiles `config` (already validated). `previous` is the snapshot in
/// service, whose upstream pools are reused where the targets did not change;
/// plugins are built by `registry` (whose factories carry the state that
/// outlives snapshots, e.g. rate-limit counters).
pub fn compile(
    config: &GatewayConfig,
    version: ConfigVersion,
    previous: Option<&CompiledSnapshot>,
    clients: &ClientCache,
    registry: &Registry,
) -> Result<CompiledSnapshot, String> {
    // What the snapshot's plugin instances share (the consumer index: keys
    // hashed, PEMs parsed) is prepared once, here.
    let scope = SnapshotScope::default();
    let build = BuildCtx {
        instance: "",
        config,
        scope: &scope,
    };
    registry.prepare(config, &scope)?;
    let globals = compile_globals(registry, &build, &config.plugins)?;

    let mut services: HashMap<String, Arc<CompiledService>> = HashMap::new();
    let mut service_plugins: HashMap<&str, Vec<CompiledInstance>> = HashMap::new();
    for service in &config.services {
        let label = format!("service {:?}", service.name);
        let tls = crate::tls::upstream::client_for(service, config)
            .map_err(|m| format!("{label}: {m}"))?;
        let reused = previous
            .and_then(|p| p.services.get(&service.name))
            .filter(|old| old.upstream.key == PoolKey::of(service, tls.as_deref()))
            .map(|old| old.upstream.clone());
        let upstream = match reused {
            Some(pool) => pool,
            None => Arc::new(
                UpstreamPool::build(service, clients, tls.as_ref())
                    .map_err(|m| format!("{label}: {m}"))?,
            ),
        };
        let host_header = service
            .host_header
            .as_deref()
            .map(|h| {
                HeaderValue::from_str(h)
                    .map_err(|_| format!("{label}: host_header: not a valid header value"))
            })
            .transpose()?;
        service_plugins.insert(
            service.name.as_str(),
            compile_level(
                registry,
                &build,
                &label,
                &format!("service:{}", service.name),
                &service.plugins,
            )?,
        );
        services.insert(
            service.name.clone(),
            Arc::new(CompiledService {
                name: Arc::from(service.name.as_str()),
                upstream,
                host_header,
                request_timeout: Duration::from_millis(service.timeouts.request_ms()),
            }),
        );
    }

    // Indexed once, and only when some route counts requests by consumer.
    let consumer_names = config
        .routes
        .iter()
        .any(|route| route.metrics.consumer_labels)
        .then(|| ConsumerNames::new(config.consumers.iter().map(|c| c.name.as_str())));
    let metrics = tollgate_telemetry::metrics::global();

    let mut routes = Vec::with_capacity(config.routes.len());
    for route in &config.routes {
        let label = format!("route {:?}", route.name);
        let service = services
            .get(&route.service)
            .ok_or_else(|| format!("{label}: service {:?} does not exist", route.service))?
            .clone();
        let route_plugins = compile_level(
            registry,
            &build,
            &label,
            &format!("route:{}", route.name),
            &route.plugins,
        )?;
        let plugins = PluginChain::assemble(
            &globals,
            service_plugins
                .get(route.service.as_str())
                .map_or(&[][..], Vec::as_slice),
            &route_plugins,
        );
        routes.push(CompiledRoute {
            name: Arc::from(route.name.as_str()),
            service,
            strip_path: route.strip_path,
            max_body_bytes: route.max_body_bytes,
            https_only: route.https_only,
            https_redirect: route.https_redirect,
            encoded_slashes: route.encoded_slashes,
            path_parameters: route.path_parameters,
            retries: route
                .retries
                .unwrap_or(tollgate_shared::model::DEFAULT_RETRIES),
            retry_non_idempotent: route.retry_non_idempotent,
            websocket: route.websocket.then(|| {
                Duration::from_millis(
                    route
                        .websocket_idle_timeout_ms
                        .unwrap_or(tollgate_shared::model::DEFAULT_WEBSOCKET_IDLE_TIMEOUT_MS),
                )
            }),
            plugins,
            metrics: match &consumer_names {
                Some(names) if route.metrics.consumer_labels => {
                    metrics.route_with_consumers(&route.name, &route.service, names)
                }
                _ => metrics.route(&route.name, &route.service),
            },
        });
    }

    let router = Router::build(&config.routes).map_err(|m| format!("routes: {m}"))?;
    Ok(CompiledSnapshot {
        version,
        router,
        routes: routes.into_boxed_slice(),
        services,
        tls: None,
        certificate_expiries: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Registry {
        tollgate_plugins::registry(&Default::default())
    }

    fn config(yaml: &str) -> GatewayConfig {
        let config = GatewayConfig::from_yaml(yaml).expect("yaml");
        tollgate_shared::validate::validate(&config).expect("valid");
        config
    }

    fn version(revision: u64) -> ConfigVersion {
        ConfigVersion {
            store_id: "s".into(),
            revision,
        }
    }

    const BASE: &str = r#"
services:
  - name: orders
    upstream: { targets: [{ address: "127.0.0.1:9001" }, { address: "127.0.0.1:9002", weight: 2 }] }
  - name: users
    upstream: { targets: [{ address: "127.0.0.1:9003" }] }
routes:
  - name: orders-api
    service: orders
    paths: ["/orders"]
    plugins:
      - name: request-transformer
        config: { add: { headers: { x-a: "1" } } }
  - name: users-api
    service: users
    paths: ["/users"]
"#;

    #[test]
    fn compiles_routes_services_and_chains() {
        let clients = ClientCache::default();
        let snapshot =
            compile(&config(BASE), version(1), None, &clients, &registry()).expect("compiles");
        assert_eq!(snapshot.routes.len(), 2);
        assert_eq!(&*snapshot.routes[0].service.name, "orders");
        assert!(!snapshot.routes[0].plugins.is_empty());
        assert!(snapshot.routes[1].plugins.is_empty());
        assert_eq!(snapshot.routes[0].service.upstream.targets.len(), 2);
    }

    #[test]
    fn auth_plugins_compile_against_the_snapshots_consumers() {
        let clients = ClientCache::default();
        let yaml = format!("{BASE}consumers: [{{name: alice}}]\n")
            .replace("request-transformer", "key-auth")
            .replace(
                "config: { add: { headers: { x-a: \"1\" } } }",
                "config: { anonymous: alice }",
            );
        let snapshot =
            compile(&config(&yaml), version(2), None, &clients, &registry()).expect("compiles");
        let names: Vec<&str> = snapshot.routes[0]
            .plugins
            .plugins()
            .map(|p| p.name())
            .collect();
        assert_eq!(names, ["key-auth"]);
    }

    #[test]
    fn only_opted_in_routes_count_requests_by_consumer() {
        let clients = ClientCache::default();
        let yaml = BASE.replace(
            "    paths: [\"/users\"]",
            "    paths: [\"/users\"]\n    metrics: { consumer_labels: true }",
        );
        let snapshot =
            compile(&config(&yaml), version(3), None, &clients, &registry()).expect("compiles");
        assert!(!snapshot.routes[0].metrics.counts_consumers());
        assert!(snapshot.routes[1].metrics.counts_consumers());
    }

    #[test]
    fn bad_credentials_fail_the_whole_snapshot_without_echoing_secrets() {
        let clients = ClientCache::default();
        let yaml = format!(
            "{BASE}consumers:\n  - name: alice\n    credentials:\n      - jwt: {{ key: iss-a, algorithm: RS256, public_key: \"-----BEGIN PUBLIC KEY-----\\nAAAA\\n-----END PUBLIC KEY-----\\n\" }}\n"
        );
        // The control plane's validation refuses this key too; the compiler
        // must refuse it on its own (defence in depth), so skip validation here.
        let unvalidated = GatewayConfig::from_yaml(&yaml).expect("yaml");
        let err = compile(&unvalidated, version(2), None, &clients, &registry())
            .expect_err("must be refused");
        assert!(
            err.starts_with("consumer \"alice\": credentials[0]"),
            "{err}"
        );
    }

    #[test]
    fn global_rate_limits_join_every_chain_unless_disabled() {
        let clients = ClientCache::default();
        let yaml =
            format!("{BASE}plugins:\n  - name: rate-limit\n    config: {{limit: 5, window: 1m}}\n");
        let snapshot = compile(&config(&yaml), version(2), None, &clients, &registry())
            .expect("global rate limit compiles");
        assert!(snapshot
            .routes
            .iter()
            .all(|route| route.plugins.plugins().any(|p| p.name() == "rate-limit")));
        let yaml = format!("{yaml}    enabled: false\n");
        let snapshot = compile(&config(&yaml), version(3), None, &clients, &registry())
            .expect("disabled plugin skipped");
        assert!(snapshot
            .routes
            .iter()
            .all(|route| route.plugins.plugins().all(|p| p.name() != "rate-limit")));
    }

    #[test]
    fn pools_are_carried_over_only_when_targets_are_unchanged() {
        let clients = ClientCache::default();
        let first = compile(&config(BASE), version(1), None, &clients, &registry()).expect("first");
        let changed = BASE.replace("127.0.0.1:9003", "127.0.0.1:9004");
        let second = compile(
            &config(&changed),
            version(2),
            Some(&first),
            &clients,
            &registry(),
        )
        .expect("second");
        assert!(Arc::ptr_eq(
            &first.services["orders"].upstream,
            &second.services["orders"].upstream
        ));
        assert!(!Arc::ptr_eq(
            &first.services["users"].upstream,
            &second.services["users"].upstream
        ));
    }
}
