//! `tollgate-dp`: Tollgate's data plane, a reverse proxy fed by the control
//! plane's config stream. This crate is the wiring only: flags
//! ([`config`]) -> the plugin registry (`tollgate_plugins::registry`) ->
//! the proxy core (`tollgate_proxy`) -> run.
//!
//! The layers, each a crate under `data-plane/` (arrows point at what a
//! crate uses; nothing points up, and cargo refuses a cycle):
//!
//! ```text
//! tollgate-data-plane (this crate: bin tollgate-dp, wiring)
//!   -> tollgate-proxy      server, handler, respond, forward, connector, pool,
//!                          router, snapshot (compile/swap/cache), status
//!   -> tollgate-plugins    one folder per plugin + registry()
//!        tollgate-proxy -> tollgate-lb, tollgate-telemetry, tollgate-plugin-api
//!        tollgate-plugins -> tollgate-plugin-api
//!        tollgate-telemetry -> tollgate-plugin-api (refusal kinds)
//!   -> tollgate-plugin-api Plugin, PluginFactory, Registry, RequestCtx,
//!                          Outcome, Refusal (the one table), AuthSet, chain
//!   -> tollgate-shared     config model, validation, proto, telemetry setup
//! ```
//!
//! `main.rs` only parses flags and builds the main thread's single-threaded
//! runtime; [`run`] (or [`DataPlane::bind`] + [`DataPlane::serve`], which
//! tests use to learn the bound ports) does the rest.

pub mod config;

/// The layers below, re-exported for tests and tools that drive a whole
/// data plane.
pub use tollgate_plugins as plugins;
pub use tollgate_proxy as proxy;
pub use tollgate_proxy::snapshot;
pub use tollgate_telemetry as telemetry;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

pub use config::DpConfig;
pub use tollgate_proxy::DpError;

use tollgate_proxy::body::BodyLimits;
use tollgate_proxy::handler::{ProxyState, RequestLimits};
use tollgate_proxy::server::{Listeners, ServerSettings};
use tollgate_proxy::snapshot::cluster_identity::ClusterIdentity;
use tollgate_proxy::snapshot::subscribe::{ConnectionState, Subscriber, UsageReports};
use tollgate_proxy::snapshot::{Applier, ConfigCache, SnapshotStore};
use tollgate_proxy::status::{self, NodeStatus};
use tollgate_proxy::tls::client_auth::ClientCertPolicy;
use tollgate_proxy::{server, shutdown};

/// A data plane with its listeners bound, not yet serving.
#[derive(Debug)]
pub struct DataPlane {
    config: DpConfig,
    proxy_listener: Listeners,
    tls_listener: Option<Listeners>,
    status_listener: TcpListener,
    proxy_addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
    status_addr: SocketAddr,
}

impl DataPlane {
    /// Binds the proxy and status listeners (port 0 picks a free port), for
    /// one proxy worker.
    pub async fn bind(config: DpConfig) -> Result<DataPlane, DpError> {
        DataPlane::bind_workers(config, 1).await
    }

    /// Binds the listeners for `workers` proxy workers (at least one), each
    /// with its own single-threaded runtime and its own listening socket
    /// (see [`proxy::server`]); the first is the runtime
    /// [`DataPlane::serve`] runs on.
    pub async fn bind_workers(config: DpConfig, workers: usize) -> Result<DataPlane, DpError> {
        tollgate_proxy::http1_client::set_native(config.upstream_http1_native);
        let workers = workers.max(1);
        let proxy_listener = Listeners::bind("proxy", config.listen, workers).await?;
        let tls_listener = match config.tls_listen {
            Some(addr) => Some(Listeners::bind("tls", addr, workers).await?),
            None => None,
        };
        let status_listener = server::bind("status", config.status_listen).await?;
        let proxy_addr = proxy_listener.local_addr().unwrap_or(config.listen);
        let tls_addr = tls_listener
            .as_ref()
            .and_then(|listener| listener.local_addr().ok());
        let status_addr = status_listener.local_addr().unwrap_or(config.status_listen);
        Ok(DataPlane {
            config,
            proxy_listener,
            tls_listener,
            status_listener,
            proxy_addr,
            tls_addr,
            status_addr,
        })
    }

    /// How many proxy workers this data plane serves on.
    pub fn workers(&self) -> usize {
        self.proxy_listener.workers()
    }

    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy_addr
    }

    /// The HTTPS listener's address, when `--tls-listen` is set.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    pub fn status_addr(&self) -> SocketAddr {
        self.status_addr
    }

    /// Loads the config cache, subscribes to the control plane and serves
    /// until `shutdown` resolves; then drains and returns.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), DpError> {
        let DataPlane {
            config,
            proxy_listener,
            tls_listener,
            status_listener,
            proxy_addr,
            tls_addr,
            status_addr,
        } = self;
        let mut node_id = config
            .node_id
            .clone()
            .unwrap_or_else(config::default_node_id);
        // The cluster identity first: a kept certificate names the node.
        let (stream_address, identity) = cluster_identity(&config, &node_id).await?;
        if let Some(identity) = &identity {
            if config
                .node_id
                .as_deref()
                .is_some_and(|id| id != identity.node_id())
            {
                tracing::warn!(
                    certificate = identity.node_id(),
                    "--node-id differs from the node id of the kept certificate; using the certificate's"
                );
            }
            node_id = identity.node_id().to_string();
        }
        let store = Arc::new(SnapshotStore::default());
        let connection = Arc::new(ConnectionState::default());
        // Fleet-wide rate limits: one Redis connection for every snapshot.
        // A wrong or unreachable URL is logged; the data plane serves anyway.
        let redis = match &config.redis_url {
            Some(url) => Some(
                plugins::RedisStore::start_with(&plugins::RedisOptions {
                    url: url.clone(),
                    ca_file: config.redis_ca_file.clone(),
                    client_cert: config.redis_client_cert.clone(),
                    client_key: config.redis_client_key.clone(),
                })
                .await,
            ),
            None => None,
        };
        // Cached responses outlive snapshots; purges reach them here.
        let cache_stores = Arc::new(plugins::CacheStores::new(redis.clone()));
        let mut registry = plugins::registry(&plugins::PluginOptions {
            rate_limiters: Arc::new(plugins::RateLimiters::new(redis)),
            cache_stores: cache_stores.clone(),
        });
        if let Some(enabled) = &config.plugins {
            registry = registry.only(enabled).map_err(DpError::Plugins)?;
        }
        let registry = Arc::new(registry);
        let applier = Arc::new(
            Applier::new(
                store.clone(),
                config.config_cache.clone().map(ConfigCache::new),
                registry,
            )
            .map_err(DpError::Tls)?
            .with_client_cert_policy(if config.tls_refuse_untrusted_client_certs {
                ClientCertPolicy::Refuse
            } else {
                ClientCertPolicy::Answer
            }),
        );
        let clients = applier.clients();
        // Serve the cached config (if any) before the control plane answers.
        let cache_applier = applier.clone();
        let _ = tokio::task::spawn_blocking(move || cache_applier.load_cache()).await;

        // Reports read the request metrics; their fine latency buckets are
        // kept only when reports are on (before any histogram is made).
        let usage = config
            .usage_report_interval
            .filter(|_| config.request_metrics)
            .map(|interval| {
                telemetry::histogram::enable_report_buckets();
                UsageReports::new(interval)
            });
        let mut subscriber = Subscriber::new(
            &stream_address,
            node_id.clone(),
            config.cluster_token.as_deref(),
            applier,
            connection.clone(),
            usage,
        )?
        .with_heartbeat(config.heartbeat_interval)
        .with_cache_purger(cache_stores);
        let (stop_renewal, renewal_rx) = watch::channel(false);
        let renewal = match identity {
            Some(identity) => {
                let endpoint = subscriber.endpoint().clone();
                subscriber = subscriber.with_identity(identity.clone());
                Some(tokio::spawn(identity.renew_loop(endpoint, renewal_rx)))
            }
            None => None,
        };
        let status = Arc::new(NodeStatus {
            node_id: node_id.clone(),
            store: store.clone(),
            control_plane: connection,
            draining: Default::default(),
            last_rejection: subscriber.last_rejection(),
        });
        let (stop_accepting, stop_rx) = watch::channel(false);
        let access_log = Arc::new(
            telemetry::AccessLog::start(
                &config.access_log,
                telemetry::metrics::global().access_log_dropped(),
            )
            .map_err(DpError::AccessLog)?,
        );
        let pool_maintenance =
            tokio::spawn(tollgate_proxy::pool::maintain(clients, stop_rx.clone()));
        let state = Arc::new(ProxyState {
            store,
            access_log: access_log.clone(),
            request_metrics: config.request_metrics,
            trusted_proxies: config.trusted_proxies.clone(),
            path_policy: config.path_policy,
            untrusted_headers: config.untrusted_headers.clone(),
            limits: RequestLimits {
                max_header_bytes: config.max_header_bytes,
                max_headers: config.max_headers,
                max_uri_bytes: config.max_uri_bytes,
                body: BodyLimits {
                    idle_timeout: config.body_idle_timeout,
                    total_timeout: config.body_timeout,
                    min_rate: config.body_min_rate,
                    grace: config.body_min_rate_grace,
                    buffer_bytes: config.body_buffer_bytes,
                },
                send_timeout: config.send_timeout,
            },
            tls_port: tls_addr.map(|addr| addr.port()),
        });
        let settings = ServerSettings {
            header_read_timeout: config.header_read_timeout,
            drain_timeout: config.drain_timeout,
            tls: false,
            connection_slots: ServerSettings::connection_slots(config.max_connections),
        };

        tracing::info!(%node_id, control_plane = %config.control_plane, "tollgate-dp starting");
        tracing::info!("proxy listening on {proxy_addr}");
        if let Some(addr) = tls_addr {
            tracing::info!("https listening on {addr}");
        }
        tracing::info!("status listening on {status_addr}");

        // The subscriber stops after the proxy drained, so its last usage
        // report counts the drained requests too.
        let (stop_subscriber, subscriber_rx) = watch::channel(false);
        let subscriber_task = tokio::spawn(subscriber.run(subscriber_rx));
        let (stop_status, status_rx) = watch::channel(false);
        let status_task = tokio::spawn(status::serve(status_listener, status.clone(), status_rx));
        let tls_task = tls_listener.map(|listener| {
            tokio::spawn(server::serve_workers(
                listener,
                state.clone(),
                ServerSettings {
                    tls: true,
                    ..settings.clone()
                },
                stop_rx.clone(),
            ))
        });
        let proxy_task = tokio::spawn(server::serve_workers(
            proxy_listener,
            state,
            settings,
            stop_rx,
        ));

        shutdown.await;
        status.draining.store(true, Ordering::Relaxed);
        tracing::info!(deadline = ?config.drain_timeout, "shutting down: not ready, draining in-flight requests");
        let _ = stop_accepting.send(true);
        let _ = proxy_task.await;
        if let Some(task) = tls_task {
            let _ = task.await;
        }
        let _ = stop_subscriber.send(true);
        let _ = subscriber_task.await;
        let _ = stop_renewal.send(true);
        if let Some(task) = renewal {
            let _ = task.await;
        }
        let _ = pool_maintenance.await;
        let _ = stop_status.send(true);
        let _ = status_task.await;
        // Lines of the last requests are written before the process exits.
        let _ = tokio::task::spawn_blocking(move || {
            access_log.flush(std::time::Duration::from_secs(2))
        })
        .await;
        tracing::info!("tollgate-dp stopped");
        Ok(())
    }
}

/// The address the stream dials, and the cluster identity when
/// `--state-dir` is set (joining with `--join-token` on a first start).
/// With an identity the connector does TLS itself, so the endpoint's URI
/// stays `http://` (tonic is built without its own TLS).
async fn cluster_identity(
    config: &DpConfig,
    node_id: &str,
) -> Result<(String, Option<Arc<ClusterIdentity>>), DpError> {
    let address = config.control_plane.clone();
    let Some(dir) = &config.state_dir else {
        if address.starts_with("https://") {
            return Err(DpError::ControlPlaneAddress {
                address,
                message: "https:// needs --state-dir (and --join-token on a first start)".into(),
            });
        }
        return Ok((address, None));
    };
    let plain = match address.strip_prefix("https://") {
        Some(rest) => format!("http://{rest}"),
        None if address.contains("://") => address.clone(),
        None => format!("http://{address}"),
    };
    let identity = ClusterIdentity::establish(
        dir,
        config.join_token.as_deref(),
        &plain,
        &config.control_plane_server_name,
        node_id,
    )
    .await?;
    Ok((plain, Some(identity)))
}

/// Runs a data plane with `workers` proxy workers until SIGTERM or SIGINT,
/// then drains and returns.
pub async fn run(config: DpConfig, workers: usize) -> Result<(), DpError> {
    let data_plane = DataPlane::bind_workers(config, workers).await?;
    let signals = shutdown::Signals::install()?;
    let signal = async move {
        let name = signals.recv().await;
        tracing::info!(signal = name, "received signal");
    };
    data_plane.serve(signal).await
}
