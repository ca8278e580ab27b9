//! `tollgate-dp`: flags, logging, runtime; everything else is in the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tollgate_data_plane::proxy::forward::TrustedProxies;
use tollgate_data_plane::proxy::router::PathPolicy;
use tollgate_data_plane::proxy::untrusted::UntrustedHeaders;
use tollgate_data_plane::telemetry::AccessLogTarget;
use tollgate_data_plane::DpConfig;
use tollgate_shared::model::{EncodedSlashes, PathParameters};
use tollgate_shared::telemetry::{self, TelemetryConfig};

/// Every request allocates a few times (hyper's header map and read
/// buffer, the upstream request); mimalloc's per-thread free lists serve
/// those in a fraction of glibc malloc's instructions (measured with
/// callgrind on the proxy path) and keep workers from sharing allocator
/// state.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Tollgate data plane: proxies traffic with the config streamed by tollgate-cp.
#[derive(Debug, Parser)]
#[command(name = "tollgate-dp", version)]
struct Args {
    /// Control plane config-stream endpoint.
    #[arg(
        long,
        env = "TOLLGATE_CONTROL_PLANE",
        default_value = "http://127.0.0.1:7070"
    )]
    control_plane: String,
    /// Proxy listen address.
    #[arg(long, env = "TOLLGATE_LISTEN", default_value = "0.0.0.0:8000")]
    listen: SocketAddr,
    /// HTTPS listen address (TLS 1.2/1.3, ALPN h2 and http/1.1; certificates
    /// from the control plane, picked by SNI) [default: off].
    #[arg(long, env = "TOLLGATE_TLS_LISTEN")]
    tls_listen: Option<SocketAddr>,
    /// A client certificate that no `mtls-auth` CA of the config issued
    /// fails the TLS handshake [default: it is let in and routes with
    /// `mtls-auth` answer 401 invalid_client_certificate].
    #[arg(long, env = "TOLLGATE_TLS_REFUSE_UNTRUSTED_CLIENT_CERTS")]
    tls_refuse_untrusted_client_certs: bool,
    /// Status listen address (/healthz, /readyz, /status).
    #[arg(long, env = "TOLLGATE_STATUS_LISTEN", default_value = "127.0.0.1:8100")]
    status_listen: SocketAddr,
    /// Node id reported to the control plane [default: hostname plus a random suffix].
    #[arg(long, env = "TOLLGATE_NODE_ID")]
    node_id: Option<String>,
    /// File holding the last applied config, loaded at boot (written atomically, mode 0600).
    #[arg(long, env = "TOLLGATE_CONFIG_CACHE")]
    config_cache: Option<PathBuf>,
    /// Comma-separated CIDRs/IPs whose X-Forwarded-For is believed.
    #[arg(long, env = "TOLLGATE_TRUSTED_PROXIES", default_value = "")]
    trusted_proxies: String,
    /// `%2F` in request paths: decode (as nginx does), reject (400) or keep
    /// (data inside a segment). Routes may override it.
    #[arg(long, env = "TOLLGATE_ENCODED_SLASHES", default_value = "decode")]
    encoded_slashes: String,
    /// `;params` in path segments: reject (400), strip (as servlet
    /// containers do) or keep. Routes may override it.
    #[arg(long, env = "TOLLGATE_PATH_PARAMETERS", default_value = "reject")]
    path_parameters: String,
    /// Comma-separated headers dropped from clients outside --trusted-proxies,
    /// beyond the built-in list (X-Original-URL, X-Rewrite-URL, ...).
    #[arg(long, env = "TOLLGATE_UNTRUSTED_HEADERS", value_delimiter = ',')]
    untrusted_headers: Vec<String>,
    /// Proxy worker threads, each with its own single-threaded runtime, like
    /// nginx workers [default: one per CPU].
    #[arg(long, env = "TOLLGATE_WORKER_THREADS")]
    worker_threads: Option<usize>,
    /// Token sent to the control plane as `authorization: Bearer <token>`.
    #[arg(long, env = "TOLLGATE_CLUSTER_TOKEN", hide_env_values = true)]
    cluster_token: Option<String>,
    /// Directory of this data plane's cluster key (0600), certificate and CA
    /// (made 0700). Set, the config stream is mutually authenticated TLS
    /// (to a control plane started with --stream-tls).
    #[arg(long, env = "TOLLGATE_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// One-time token from `tollgatectl dataplanes token create`: on a first
    /// start (nothing in --state-dir) it trades a CSR for a certificate.
    #[arg(
        long,
        env = "TOLLGATE_JOIN_TOKEN",
        hide_env_values = true,
        requires = "state_dir"
    )]
    join_token: Option<String>,
    /// A file holding the join token (as --join-token, kept off the process
    /// list and the environment); a missing file is fine once --state-dir
    /// holds a certificate.
    #[arg(
        long,
        env = "TOLLGATE_JOIN_TOKEN_FILE",
        requires = "state_dir",
        conflicts_with = "join_token"
    )]
    join_token_file: Option<PathBuf>,
    /// The name the control plane's stream certificate must carry.
    #[arg(long, env = "TOLLGATE_CONTROL_PLANE_SERVER_NAME",
          default_value = tollgate_shared::cluster_pki::SERVER_NAME)]
    control_plane_server_name: String,
    /// Largest request header section in bytes (431 beyond it).
    #[arg(long, env = "TOLLGATE_MAX_HEADER_BYTES", default_value_t = 60 * 1024)]
    max_header_bytes: usize,
    /// Most request header fields (431 beyond it).
    #[arg(long, env = "TOLLGATE_MAX_HEADERS", default_value_t = 100)]
    max_headers: usize,
    /// Longest request target in bytes (414 beyond it).
    #[arg(long, env = "TOLLGATE_MAX_URI_BYTES", default_value_t = 8 * 1024)]
    max_uri_bytes: usize,
    /// Time a client has to send a request head, in milliseconds.
    #[arg(
        long,
        env = "TOLLGATE_HEADER_READ_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    header_read_timeout_ms: u64,
    /// Longest pause while a request body streams in, in milliseconds (408).
    #[arg(long, env = "TOLLGATE_BODY_IDLE_TIMEOUT_MS", default_value_t = 30_000)]
    body_idle_timeout_ms: u64,
    /// The most a whole request body may take, in milliseconds (408
    /// `request_body_timeout`).
    #[arg(long, env = "TOLLGATE_BODY_TIMEOUT_MS", default_value_t = 60_000)]
    body_timeout_ms: u64,
    /// Minimum average request body rate in bytes per second once
    /// --body-min-rate-grace-ms has passed (0: none; 408 below it).
    #[arg(long, env = "TOLLGATE_BODY_MIN_RATE", default_value_t = 500)]
    body_min_rate: u64,
    /// Time before --body-min-rate applies, in milliseconds.
    #[arg(
        long,
        env = "TOLLGATE_BODY_MIN_RATE_GRACE_MS",
        default_value_t = 10_000
    )]
    body_min_rate_grace_ms: u64,
    /// Request bodies up to this size are read whole before an upstream
    /// connection is taken (and can be retried); larger ones stream.
    #[arg(long, env = "TOLLGATE_BODY_BUFFER_BYTES", default_value_t = 64 * 1024)]
    body_buffer_bytes: usize,
    /// Longest a response write to a client may make no progress, in
    /// milliseconds (a client that stops reading is disconnected).
    #[arg(long, env = "TOLLGATE_SEND_TIMEOUT_MS", default_value_t = 60_000)]
    send_timeout_ms: u64,
    /// The HTTP/1 upstream client: `native` (our own, driven by the
    /// request's task) or `hyper` (hyper's, the fallback).
    #[arg(
        long,
        env = "TOLLGATE_UPSTREAM_HTTP1",
        default_value = "native",
        value_parser = ["native", "hyper"]
    )]
    upstream_http1: String,
    /// Deadline for in-flight requests after SIGTERM, in seconds.
    #[arg(long, env = "TOLLGATE_DRAIN_TIMEOUT_S", default_value_t = 30)]
    drain_timeout_s: u64,
    /// Open client connections beyond which new ones get a 503.
    #[arg(long, env = "TOLLGATE_MAX_CONNECTIONS", default_value_t = 10_000)]
    max_connections: usize,
    /// Log JSON lines instead of text.
    #[arg(long, env = "TOLLGATE_LOG_JSON")]
    log_json: bool,
    /// Access log, one JSON line per request: `stdout`, `off` or a file path
    /// (appended to).
    #[arg(long, env = "TOLLGATE_ACCESS_LOG", default_value = "stdout")]
    access_log: AccessLogTarget,
    /// Count every request in the per-route request metrics (requests,
    /// durations, bytes). `false` leaves those series empty (connections,
    /// config, rate-limit and auth metrics stay); for setups that scrape
    /// nothing per request, and to measure what the metrics cost.
    #[arg(long, env = "TOLLGATE_REQUEST_METRICS", default_value_t = true, action = clap::ArgAction::Set)]
    request_metrics: bool,
    /// Send the control plane a usage report (request counts by route,
    /// consumer and status, bytes, latency histograms, refusals) over the
    /// config stream this often, in milliseconds; 0 turns reports off. Read
    /// from the request metrics, so it needs --request-metrics.
    #[arg(
        long,
        env = "TOLLGATE_USAGE_REPORT_INTERVAL_MS",
        default_value_t = 10_000
    )]
    usage_report_interval_ms: u64,
    /// Export traces over OTLP/gRPC to this collector, e.g.
    /// http://127.0.0.1:4317. Off when unset (spans then cost nothing).
    #[arg(long, env = "TOLLGATE_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// Fraction of new traces sampled (0.0 to 1.0); requests carrying a
    /// W3C traceparent follow their caller's sampling decision.
    #[arg(long, env = "TOLLGATE_TRACE_SAMPLE_RATIO", default_value_t = 1.0)]
    trace_sample_ratio: f64,
    /// Redis for fleet-wide rate limits (`policy: redis`):
    /// redis://[:password@]host:port/db, rediss:// for TLS, or a Redis
    /// Cluster as redis+cluster://host:port,host:port (rediss+cluster://
    /// for TLS) or a comma-separated list of redis:// URLs. A wrong or
    /// unreachable URL is logged and those limits run under their
    /// `on_redis_failure`.
    #[arg(long, env = "TOLLGATE_REDIS_URL", hide_env_values = true)]
    redis_url: Option<String>,
    /// PEM file of the CA(s) a rediss:// Redis's certificate is checked
    /// against, instead of the system's roots (a private CA).
    #[arg(long, env = "TOLLGATE_REDIS_CA_FILE")]
    redis_ca_file: Option<PathBuf>,
    /// PEM client certificate for a rediss:// Redis that asks for one
    /// (`tls-auth-clients`); needs --redis-client-key.
    #[arg(
        long,
        env = "TOLLGATE_REDIS_CLIENT_CERT",
        requires = "redis_client_key"
    )]
    redis_client_cert: Option<PathBuf>,
    /// PEM private key of --redis-client-cert.
    #[arg(
        long,
        env = "TOLLGATE_REDIS_CLIENT_KEY",
        requires = "redis_client_cert"
    )]
    redis_client_key: Option<PathBuf>,

    /// Comma-separated plugins this node loads (default: all bundled). A
    /// config using another plugin is rejected (NACKed) by this node.
    #[arg(long, env = "TOLLGATE_PLUGINS", value_delimiter = ',')]
    plugins: Option<Vec<String>>,
    /// How often the data plane tells the control plane it is alive (and
    /// which version it serves), in milliseconds (at least 100).
    #[arg(long, env = "TOLLGATE_HEARTBEAT_INTERVAL_MS", default_value_t = 5_000)]
    heartbeat_interval_ms: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();

    // The main thread's runtime runs the background tasks (config stream,
    // status port, trace export) and proxy worker 0; the other workers get
    // a thread and runtime each (see `proxy::server`).
    let workers = args
        .worker_threads
        .filter(|n| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mut runtime = tokio::runtime::Builder::new_current_thread();
    runtime.enable_all();
    let runtime = match runtime.build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("tollgate-dp: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    // Trace export runs its batch task on this runtime.
    let _runtime_context = runtime.enter();
    let node_id = args
        .node_id
        .clone()
        .filter(|id| !id.is_empty())
        .unwrap_or_else(tollgate_data_plane::config::default_node_id);
    let telemetry = match telemetry::init(&TelemetryConfig {
        service_name: "tollgate-dp".to_owned(),
        instance_id: node_id.clone(),
        json_logs: args.log_json,
        otlp_endpoint: args.otlp_endpoint.clone().filter(|e| !e.is_empty()),
        sample_ratio: args.trace_sample_ratio,
    }) {
        Ok(guard) => guard,
        Err(err) => {
            eprintln!("tollgate-dp: {err}");
            return ExitCode::from(2);
        }
    };

    let trusted_proxies = match TrustedProxies::parse(&args.trusted_proxies) {
        Ok(list) => list,
        Err(err) => {
            tracing::error!("invalid --trusted-proxies: {err}");
            return ExitCode::from(2);
        }
    };
    let path_policy = match (
        EncodedSlashes::parse(&args.encoded_slashes),
        PathParameters::parse(&args.path_parameters),
    ) {
        (Some(encoded_slashes), Some(path_parameters)) => PathPolicy {
            encoded_slashes,
            path_parameters,
        },
        _ => {
            tracing::error!(
                "--encoded-slashes must be reject, decode or keep; --path-parameters must be reject, strip or keep"
            );
            return ExitCode::from(2);
        }
    };
    let untrusted_headers = match UntrustedHeaders::new(&args.untrusted_headers) {
        Ok(list) => list,
        Err(err) => {
            tracing::error!("invalid --untrusted-headers: {err}");
            return ExitCode::from(2);
        }
    };
    if args.header_read_timeout_ms == 0
        || args.body_idle_timeout_ms == 0
        || args.body_timeout_ms == 0
        || args.send_timeout_ms == 0
    {
        tracing::error!(
            "--header-read-timeout-ms, --body-idle-timeout-ms, --body-timeout-ms and --send-timeout-ms must be at least 1"
        );
        return ExitCode::from(2);
    }
    if args.body_buffer_bytes > 16 * 1024 * 1024 {
        tracing::error!("--body-buffer-bytes must be at most 16 MiB");
        return ExitCode::from(2);
    }
    let join_token = match (&args.join_token, &args.join_token_file) {
        (_, Some(path)) => match std::fs::read_to_string(path) {
            Ok(text) => Some(text.trim().to_string()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                tracing::info!(path = %path.display(), "no --join-token-file; using the certificate in --state-dir");
                None
            }
            Err(error) => {
                tracing::error!("--join-token-file {}: {error}", path.display());
                return ExitCode::from(2);
            }
        },
        (token, None) => token.clone(),
    };
    let config = DpConfig {
        control_plane: args.control_plane,
        listen: args.listen,
        tls_listen: args.tls_listen,
        tls_refuse_untrusted_client_certs: args.tls_refuse_untrusted_client_certs,
        status_listen: args.status_listen,
        node_id: Some(node_id),
        config_cache: args.config_cache,
        trusted_proxies,
        path_policy,
        untrusted_headers,
        cluster_token: args.cluster_token.filter(|t| !t.is_empty()),
        state_dir: args.state_dir,
        join_token: join_token.filter(|t| !t.is_empty()),
        control_plane_server_name: args.control_plane_server_name,
        max_header_bytes: args.max_header_bytes,
        max_headers: args.max_headers,
        max_uri_bytes: args.max_uri_bytes,
        header_read_timeout: Duration::from_millis(args.header_read_timeout_ms),
        body_idle_timeout: Duration::from_millis(args.body_idle_timeout_ms),
        body_timeout: Duration::from_millis(args.body_timeout_ms),
        body_min_rate: args.body_min_rate,
        body_min_rate_grace: Duration::from_millis(args.body_min_rate_grace_ms),
        body_buffer_bytes: args.body_buffer_bytes,
        send_timeout: Duration::from_millis(args.send_timeout_ms),
        upstream_http1_native: args.upstream_http1 == "native",
        drain_timeout: Duration::from_secs(args.drain_timeout_s),
        max_connections: args.max_connections,
        access_log: args.access_log,
        request_metrics: args.request_metrics,
        usage_report_interval: (args.usage_report_interval_ms > 0)
            .then(|| std::time::Duration::from_millis(args.usage_report_interval_ms)),
        redis_url: args.redis_url.filter(|url| !url.is_empty()),
        redis_ca_file: args.redis_ca_file,
        redis_client_cert: args.redis_client_cert,
        redis_client_key: args.redis_client_key,
        plugins: args.plugins,
        heartbeat_interval: Duration::from_millis(args.heartbeat_interval_ms.max(100)),
    };

    let result = runtime.block_on(tollgate_data_plane::run(config, workers));
    runtime.block_on(telemetry.shutdown());
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err}");
            ExitCode::FAILURE
        }
    }
}
