//! Wiring: the model, the services and the gRPC listeners, started and
//! stopped together.
//!
//! [`bind`] opens the store and binds the listeners (so a caller learns the
//! real addresses, port 0 included, before serving); [`Bound::serve`] runs
//! until the shutdown future resolves, then stops accepting, ends every config
//! stream, drains in-flight calls (bounded by [`SHUTDOWN_GRACE`]) and flushes
//! the store.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tollgate_shared::proto::admin::admin_server::AdminServer;
use tollgate_shared::proto::stream::config_stream_server::ConfigStreamServer;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;

use crate::access::gate::AdminGate;
use crate::access::tokens::TOKENS_TREE;
use crate::access::TokenBook;
use crate::admin::AdminService;
use crate::audit::{AuditLog, AUDIT_TREE};
use crate::config::CpConfig;
use crate::error::CpError;
use crate::listener::{ConnLayer, Incoming};
use crate::metrics::{self, CpMetrics, DataPlaneView, ObservedService};
use crate::model::Model;
use crate::pki::enroll::Enrollment;
use crate::pki::joins::{JoinBook, JOIN_TOKENS_TREE, REVOKED_TREE};
use crate::pki::operators::{OperatorBook, OPERATOR_CERTS_TREE, REVOKED_OPERATORS_TREE};
use crate::pki::transport::TlsIncoming;
use crate::pki::ClusterPki;
use crate::stream::registry::Registry;
use crate::stream::{StreamAuth, StreamService};
use crate::usage::Usage;

/// Largest gRPC message either way: a 10,000-route Apply or snapshot is a
/// few MiB; this leaves room without letting one call take unbounded memory.
/// A write whose snapshot or export would not fit is refused at write time.
pub const MAX_MESSAGE_BYTES: usize = tollgate_shared::limits::MAX_MESSAGE_BYTES;
/// HTTP/2 pings find dead data planes (and operators) behind silent networks.
const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_CONCURRENT_STREAMS: u32 = 1024;
/// How long shutdown waits for in-flight calls.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// A control plane with its store open and its listeners bound.
pub struct Bound {
    model: Arc<Model>,
    registry: Arc<Registry>,
    tokens: Arc<TokenBook>,
    audit: Arc<AuditLog>,
    usage: Arc<Usage>,
    config: CpConfig,
    admin_listener: TcpListener,
    stream_listener: Option<TcpListener>,
    metrics: Arc<CpMetrics>,
    metrics_listener: Option<TcpListener>,
    /// The cluster PKI (join tokens, revocation, `Join`/`Renew`).
    enrollment: Arc<Enrollment>,
    /// The stream listener's TLS config, when the stream is served over TLS.
    stream_tls: Option<Arc<rustls::ServerConfig>>,
    /// The admin listener's TLS config, when the admin API is served over TLS.
    admin_tls: Option<Arc<rustls::ServerConfig>>,
}

/// Checks `config`, opens the store and binds the listeners.
pub async fn bind(config: CpConfig) -> Result<Bound, CpError> {
    config.check()?;
    let data_dir = config.data_dir.clone();
    let bootstrap = config.admin_token.clone();
    let keep = config.history_revisions;
    let cluster = config.cluster.clone();
    let stream_tls = config.stream_tls();
    let admin_tls_settings = config.admin_tls.clone();
    let admin_tls = config.admin_tls();
    let (model, tokens, audit, pki, joins, operators, tls, admin_tls) =
        tokio::task::spawn_blocking(move || {
            let model = Model::open_keeping(&data_dir, keep)?;
            let tokens = TokenBook::open(model.side_tree(TOKENS_TREE)?, bootstrap.as_deref())?;
            let audit = AuditLog::open(model.side_tree(AUDIT_TREE)?)?;
            let pki = ClusterPki::open(&data_dir, cluster.ca.as_ref(), cluster.cert_ttl)?;
            let joins = JoinBook::open(
                model.side_tree(JOIN_TOKENS_TREE)?,
                model.side_tree(REVOKED_TREE)?,
            )?;
            let operators = OperatorBook::open(
                model.side_tree(OPERATOR_CERTS_TREE)?,
                model.side_tree(REVOKED_OPERATORS_TREE)?,
            )?;
            let tls = stream_tls
                .then(|| pki.server_config(cluster.server_cert.as_ref()))
                .transpose()?;
            let admin_tls = admin_tls
                .then(|| {
                    pki.admin_server_config(
                        admin_tls_settings.server_cert.as_ref(),
                        admin_tls_settings.client_ca.as_deref(),
                        &admin_tls_settings.extra_names,
                    )
                })
                .transpose()?;
            Ok::<_, CpError>((model, tokens, audit, pki, joins, operators, tls, admin_tls))
        })
        .await
        .map_err(|e| CpError::Internal(format!("opening the store failed: {e}")))??;
    let admin_listener = listen(config.admin_listen).await?;
    let stream_listener = match config.stream_listen {
        Some(addr) => Some(listen(addr).await?),
        None => None,
    };
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(listen(addr).await?),
        None => None,
    };
    let registry = Arc::new(Registry::default());
    let metrics = CpMetrics::new(data_plane_source(&registry));
    let enrollment = Arc::new(Enrollment {
        pki: Arc::new(pki),
        joins: Arc::new(joins),
        operators: Arc::new(operators),
        metrics: metrics.clone(),
        tls: tls.is_some(),
    });
    Ok(Bound {
        model: Arc::new(model),
        registry,
        tokens: Arc::new(tokens),
        audit: Arc::new(audit),
        usage: Arc::new(Usage::default()),
        config,
        admin_listener,
        stream_listener,
        metrics,
        metrics_listener,
        enrollment,
        stream_tls: tls,
        admin_tls,
    })
}

/// The metrics' view of the stream registry, read at scrape time.
fn data_plane_source(registry: &Arc<Registry>) -> metrics::DataPlaneSource {
    let registry = Arc::downgrade(registry);
    Arc::new(move || {
        let Some(registry) = registry.upgrade() else {
            return Vec::new();
        };
        registry
            .list()
            .into_iter()
            .map(|plane| DataPlaneView {
                applied_revision: plane.applied_version.map(|v| v.revision),
                node_id: plane.node_id,
                connected: plane.connected,
            })
            .collect()
    })
}

async fn listen(addr: SocketAddr) -> Result<TcpListener, CpError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| CpError::Listen { addr, source })
}

fn local_addr(listener: &TcpListener, fallback: SocketAddr) -> SocketAddr {
    listener.local_addr().unwrap_or(fallback)
}

impl Bound {
    /// The admin API's bound address.
    pub fn admin_addr(&self) -> SocketAddr {
        local_addr(&self.admin_listener, self.config.admin_listen)
    }

    /// The config stream's bound address (the admin one unless separate).
    pub fn stream_addr(&self) -> SocketAddr {
        match &self.stream_listener {
            Some(listener) => local_addr(listener, self.config.stream_address()),
            None => self.admin_addr(),
        }
    }

    pub fn model(&self) -> Arc<Model> {
        self.model.clone()
    }

    /// The `--metrics-listen` address actually bound, if any.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|listener| listener.local_addr().ok())
    }

    /// Serves until `shutdown` resolves, then stops gracefully.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), CpError> {
        let admin_addr = self.admin_addr();
        let stream_addr = self.stream_addr();
        let (stop, stopped) = watch::channel(false);

        let (mut health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<AdminServer<AdminService>>().await;
        health
            .set_serving::<ConfigStreamServer<StreamService>>()
            .await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tollgate_shared::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| CpError::Internal(format!("gRPC reflection: {e}")))?;
        let reflection_alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tollgate_shared::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .map_err(|e| CpError::Internal(format!("gRPC reflection: {e}")))?;

        let admin = ObservedService::new(
            AdminGate::new(
                AdminServer::new(
                    AdminService::new(
                        self.model.clone(),
                        self.registry.clone(),
                        self.tokens.clone(),
                        self.audit.clone(),
                        self.usage.clone(),
                    )
                    .with_cluster(self.enrollment.clone()),
                )
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
                self.tokens.clone(),
                self.metrics.clone(),
            )
            .with_operators(self.enrollment.operators.clone()),
            self.metrics.clone(),
        );
        let stream = InterceptedService::new(
            ConfigStreamServer::new(
                StreamService::new(
                    self.model.clone(),
                    self.registry.clone(),
                    self.usage.clone(),
                    self.metrics.clone(),
                    stopped.clone(),
                    self.config.stream_max_lag,
                )
                .with_enrollment(self.enrollment.clone()),
            )
            .max_decoding_message_size(STREAM_MAX_DECODING_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
            // On a TLS stream certificates authenticate data planes (and
            // `Join` has no token to carry): the cluster token is for the
            // plaintext stream.
            StreamAuth::new(
                self.config
                    .cluster_token
                    .as_deref()
                    .filter(|_| self.stream_tls.is_none()),
                self.metrics.clone(),
            ),
        );
        let stream_tls = self.stream_tls.clone();
        if stream_tls.is_some() && self.config.cluster_token.is_some() {
            tracing::warn!("--cluster-token is not checked on a TLS config stream: data planes authenticate with their certificates");
        }
        let (stream_on_admin, stream_apart) = match self.stream_listener {
            None => (Some(stream), None),
            Some(listener) => (None, Some((listener, stream))),
        };

        let admin_router = builder()
            .add_service(health_service.clone())
            .add_service(reflection)
            .add_service(reflection_alpha)
            .add_service(admin)
            .add_optional_service(stream_on_admin);
        let admin_incoming = Incoming::new(self.admin_listener, self.config.conn_limits, "admin");
        let admin_stop = stop_signal(stopped.clone());
        let admin_server: std::pin::Pin<
            Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>,
        > = match self.admin_tls.clone() {
            Some(tls) => {
                tracing::info!(
                    address = %admin_addr,
                    ca_sha256 = %hex::encode(self.enrollment.pki.ca_pin()),
                    "admin API listening on {admin_addr} (TLS; a token or an operator certificate authenticates)"
                );
                let incoming = TlsIncoming::new(
                    admin_incoming,
                    tls,
                    self.config.conn_limits.handshake_timeout,
                    self.metrics.clone(),
                )
                .admin();
                Box::pin(admin_router.serve_with_incoming_shutdown(incoming, admin_stop))
            }
            None => {
                tracing::info!(address = %admin_addr, "admin API listening on {admin_addr}");
                Box::pin(admin_router.serve_with_incoming_shutdown(admin_incoming, admin_stop))
            }
        };

        // The committed version, as a gauge; follows every publish.
        let mut versions = self.model.subscribe();
        let version_metrics = self.metrics.clone();
        let version_watch = tokio::spawn(async move {
            loop {
                let version = versions.borrow_and_update().version.clone();
                version_metrics.config_version(&version.store_id, version.revision);
                if versions.changed().await.is_err() {
                    return;
                }
            }
        });
        if let Some(listener) = self.metrics_listener {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(address = %addr, "metrics on http://{addr}/metrics");
            }
            let dashboard = Arc::new(crate::dashboard::Dashboard::new(
                self.model.clone(),
                self.registry.clone(),
                self.usage.clone(),
                self.config.admin_token.as_deref(),
                listener
                    .local_addr()
                    .map(|a| a.ip().is_loopback())
                    .unwrap_or(false),
            ));
            tokio::spawn(metrics::serve(
                listener,
                self.metrics.clone(),
                Some(dashboard),
                stop_signal(stopped.clone()),
            ));
        }

        let stream_server = async {
            match stream_apart {
                Some((listener, stream)) => {
                    let router = builder().add_service(health_service).add_service(stream);
                    let incoming = Incoming::new(listener, self.config.conn_limits, "stream");
                    match stream_tls {
                        Some(tls) => {
                            tracing::info!(
                                address = %stream_addr,
                                ca_sha256 = %hex::encode(self.enrollment.pki.ca_pin()),
                                "config stream listening on {stream_addr} (TLS, data-plane certificates required)"
                            );
                            let incoming = TlsIncoming::new(
                                incoming,
                                tls,
                                self.config.conn_limits.handshake_timeout,
                                self.metrics.clone(),
                            );
                            router
                                .serve_with_incoming_shutdown(
                                    incoming,
                                    stop_signal(stopped.clone()),
                                )
                                .await
                                .map_err(CpError::from)
                        }
                        None => {
                            tracing::info!(address = %stream_addr, "config stream listening on {stream_addr}");
                            router
                                .serve_with_incoming_shutdown(
                                    incoming,
                                    stop_signal(stopped.clone()),
                                )
                                .await
                                .map_err(CpError::from)
                        }
                    }
                }
                None => {
                    tracing::info!(address = %stream_addr, "config stream served on the admin listener");
                    Ok(())
                }
            }
        };
        let servers = async {
            let admin = async { admin_server.await.map_err(CpError::from) };
            tokio::try_join!(admin, stream_server).map(|_| ())
        };
        tokio::pin!(servers);

        let result = tokio::select! {
            // The listeners never end on their own: a server that returns
            // unasked is a fault, and the process must exit non-zero so a
            // supervisor restarts it.
            result = &mut servers => match result {
                Ok(()) => Err(CpError::Internal(
                    "the gRPC server stopped without being asked to".into(),
                )),
                Err(err) => Err(err),
            },
            () = shutdown => {
                tracing::info!("shutting down");
                health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
                let _ = stop.send(true);
                match tokio::time::timeout(SHUTDOWN_GRACE, &mut servers).await {
                    Ok(result) => result,
                    Err(_) => {
                        tracing::warn!("in-flight calls did not finish within {SHUTDOWN_GRACE:?}");
                        Ok(())
                    }
                }
            }
        };
        let _ = stop.send(true);
        version_watch.abort();
        self.model.flush().await?;
        tracing::info!("stopped");
        result
    }
}

/// Data planes send hellos, ACK/NACKs and usage reports (at most 500 routes
/// with their histograms and 2,000 consumer series: well under this).
const STREAM_MAX_DECODING_BYTES: usize = 4 * 1024 * 1024;

fn builder() -> Server<tower_layer::Stack<ConnLayer, tower_layer::Identity>> {
    Server::builder()
        .http2_keepalive_interval(Some(HTTP2_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT))
        .max_concurrent_streams(Some(MAX_CONCURRENT_STREAMS))
        .layer(ConnLayer::new(crate::listener::write_runtime()))
}

async fn stop_signal(mut stopped: watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stop| *stop).await;
}

/// Binds and serves `config` until `shutdown` resolves.
pub async fn run(config: CpConfig, shutdown: impl Future<Output = ()>) -> Result<(), CpError> {
    bind(config).await?.serve(shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_shared::proto::admin::admin_client::AdminClient;
    use tollgate_shared::proto::admin::{ApplyRequest, ExportRequest};
    use tollgate_shared::proto::config as pb;

    /// The whole server in-process on port 0: bind, serve, write, shut down.
    #[tokio::test]
    async fn serves_on_port_zero_and_stops_gracefully() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = CpConfig::local(
            "127.0.0.1:0".parse().expect("address"),
            dir.path().join("data"),
        );
        let bound = bind(config).await.expect("binds");
        let addr = bound.admin_addr();
        assert_ne!(addr.port(), 0);
        assert_eq!(bound.stream_addr(), addr);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(bound.serve(async {
            let _ = stopped.await;
        }));

        let mut admin = AdminClient::connect(format!("http://{addr}"))
            .await
            .expect("connects");
        // The config as a client writes it: the same JSON as a config file.
        let applied = admin
            .apply(ApplyRequest {
                select_tag: String::new(),
                config: Some(pb::GatewayConfig {
                    json: r#"{"services":[{"name":"orders","upstream":{"targets":[{"address":"127.0.0.1:9001"}]}}]}"#
                        .into(),
                }),
                dry_run: false,
            })
            .await
            .expect("applies")
            .into_inner();
        assert_eq!(applied.version.map(|v| v.revision), Some(1));
        let exported = admin
            .export(ExportRequest::default())
            .await
            .expect("exports")
            .into_inner();
        let exported = exported
            .config
            .as_ref()
            .map(tollgate_shared::model::GatewayConfig::try_from)
            .and_then(Result::ok);
        assert_eq!(exported.map(|c| c.services.len()), Some(1));

        let _ = stop.send(());
        let result = tokio::time::timeout(Duration::from_secs(15), server)
            .await
            .expect("stops in time")
            .expect("server task");
        assert!(result.is_ok(), "{result:?}");
    }
}
