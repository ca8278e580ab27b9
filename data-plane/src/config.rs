//! The data plane's settings (from flags or `TOLLGATE_*` environment
//! variables; see `main.rs`), with the documented defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tollgate_proxy::forward::TrustedProxies;
use tollgate_proxy::router::PathPolicy;
use tollgate_proxy::untrusted::UntrustedHeaders;
use tollgate_telemetry::AccessLogTarget;

#[derive(Debug, Clone)]
pub struct DpConfig {
    /// Control plane stream endpoint, e.g. `http://127.0.0.1:7070`.
    pub control_plane: String,
    /// Proxy listener.
    pub listen: SocketAddr,
    /// HTTPS proxy listener (`--tls-listen`); off when `None`.
    pub tls_listen: Option<SocketAddr>,
    /// Fail the TLS handshake of a client certificate that no `mtls-auth`
    /// CA issued, instead of answering 401 per route.
    pub tls_refuse_untrusted_client_certs: bool,
    /// Status listener (`/healthz`, `/readyz`, `/status`).
    pub status_listen: SocketAddr,
    /// Node id reported to the control plane; `None`: hostname + random suffix.
    pub node_id: Option<String>,
    /// Where the last applied snapshot is kept for restarts without a CP.
    pub config_cache: Option<PathBuf>,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: TrustedProxies,
    /// Encoded slashes and `;params` in request paths (routes may override).
    pub path_policy: PathPolicy,
    /// Headers dropped or rewritten from clients outside `trusted_proxies`.
    pub untrusted_headers: UntrustedHeaders,
    /// Sent as `authorization: Bearer <token>` on the config stream.
    pub cluster_token: Option<String>,
    /// Where the cluster key, certificate and CA are kept (`--state-dir`);
    /// set, the config stream is TLS with that certificate.
    pub state_dir: Option<PathBuf>,
    /// One-time join token for the first start (`--join-token`).
    pub join_token: Option<String>,
    /// The name the control plane's certificate must carry.
    pub control_plane_server_name: String,
    /// Request header limits (431 beyond them).
    pub max_header_bytes: usize,
    pub max_headers: usize,
    /// Request-target length limit (414 beyond it).
    pub max_uri_bytes: usize,
    /// Time for a client to send a complete request head (HTTP/1).
    pub header_read_timeout: Duration,
    /// Longest pause allowed while a request body streams in (408).
    pub body_idle_timeout: Duration,
    /// The most a whole request body may take (408).
    pub body_timeout: Duration,
    /// Minimum request body rate in bytes/s after `body_min_rate_grace` (0: none).
    pub body_min_rate: u64,
    pub body_min_rate_grace: Duration,
    /// Request bodies up to this size are read before connecting upstream.
    pub body_buffer_bytes: usize,
    /// Longest a response write may make no progress (slow readers).
    pub send_timeout: Duration,
    /// HTTP/1 upstream requests on our own client (`--upstream-http1
    /// native`) rather than hyper's.
    pub upstream_http1_native: bool,
    /// Deadline for in-flight requests after SIGTERM.
    pub drain_timeout: Duration,
    /// Open client connections beyond which new ones get a 503.
    pub max_connections: usize,
    /// Where access-log lines go (`--access-log stdout|off|PATH`).
    pub access_log: AccessLogTarget,
    /// Whether each request is counted in the per-route request metrics
    /// (`--request-metrics`; on by default).
    pub request_metrics: bool,
    /// How often a usage report goes to the control plane
    /// (`--usage-report-interval-ms`; `None`: never).
    pub usage_report_interval: Option<Duration>,
    /// Redis holding fleet-wide rate-limit counters (`--redis-url`).
    pub redis_url: Option<String>,
    /// PEM roots for a `rediss://` Redis with a private CA (`--redis-ca-file`).
    pub redis_ca_file: Option<PathBuf>,
    /// Client certificate and key for a Redis that asks for one
    /// (`--redis-client-cert`, `--redis-client-key`).
    pub redis_client_cert: Option<PathBuf>,
    pub redis_client_key: Option<PathBuf>,
    /// The plugins this node loads (`None`: every bundled plugin). A
    /// snapshot using another is NACKed by this node, whole.
    pub plugins: Option<Vec<String>>,
    /// How often a heartbeat tells the control plane this node is alive.
    pub heartbeat_interval: Duration,
}

impl Default for DpConfig {
    fn default() -> Self {
        DpConfig {
            control_plane: "http://127.0.0.1:7070".into(),
            listen: SocketAddr::from(([0, 0, 0, 0], 8000)),
            tls_listen: None,
            tls_refuse_untrusted_client_certs: false,
            status_listen: SocketAddr::from(([127, 0, 0, 1], 8100)),
            node_id: None,
            config_cache: None,
            trusted_proxies: TrustedProxies::default(),
            path_policy: PathPolicy::default(),
            untrusted_headers: UntrustedHeaders::default(),
            cluster_token: None,
            state_dir: None,
            join_token: None,
            control_plane_server_name: tollgate_shared::cluster_pki::SERVER_NAME.into(),
            max_header_bytes: 60 * 1024,
            max_headers: 100,
            max_uri_bytes: 8 * 1024,
            header_read_timeout: Duration::from_secs(10),
            body_idle_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(60),
            body_min_rate: 500,
            body_min_rate_grace: Duration::from_secs(10),
            body_buffer_bytes: 64 * 1024,
            send_timeout: Duration::from_secs(60),
            upstream_http1_native: true,
            drain_timeout: Duration::from_secs(30),
            max_connections: 10_000,
            access_log: AccessLogTarget::Stdout,
            request_metrics: true,
            usage_report_interval: Some(Duration::from_secs(10)),
            redis_url: None,
            redis_ca_file: None,
            redis_client_cert: None,
            redis_client_key: None,
            plugins: None,
            heartbeat_interval: tollgate_proxy::snapshot::subscribe::DEFAULT_HEARTBEAT,
        }
    }
}

/// `hostname-xxxxxx`: unique per process so restarts are told apart.
pub fn default_node_id() -> String {
    use rand::Rng;
    let suffix: u32 = rand::thread_rng().gen_range(0..0x100_0000);
    format!(
        "{}-{suffix:06x}",
        tollgate_proxy::snapshot::subscribe::hostname()
    )
}
