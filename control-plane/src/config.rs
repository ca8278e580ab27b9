//! `tollgate-cp`'s settings: command-line flags (each also an environment
//! variable) and the policy checks made before anything listens.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::auth::check_token_text;
use crate::error::CpError;
use crate::listener::ConnLimits;
use crate::pki::PemFiles;

/// Command-line flags of `tollgate-cp`.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "tollgate-cp",
    version,
    about = "Tollgate control plane: stores the gateway config and streams it to data planes"
)]
pub struct CpArgs {
    /// Address of the admin gRPC API (and of the config stream unless
    /// --stream-listen is given). A non-loopback address requires --admin-token.
    #[arg(long, env = "TOLLGATE_ADMIN_LISTEN", default_value = "127.0.0.1:7070")]
    pub admin_listen: SocketAddr,

    /// Directory of the config store (created with mode 0700).
    #[arg(long, env = "TOLLGATE_DATA_DIR", default_value = "./tollgate-data")]
    pub data_dir: PathBuf,

    /// Serve the config stream on its own address instead of the admin one.
    #[arg(long, env = "TOLLGATE_STREAM_LISTEN")]
    pub stream_listen: Option<SocketAddr>,

    /// Bearer token every admin call must carry.
    #[arg(long, env = "TOLLGATE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Bearer token data planes must present on the config stream; required
    /// when the stream listens beyond loopback.
    #[arg(long, env = "TOLLGATE_CLUSTER_TOKEN", hide_env_values = true)]
    pub cluster_token: Option<String>,

    /// Log JSON lines instead of text.
    #[arg(
        long,
        env = "TOLLGATE_LOG_JSON",
        action = clap::ArgAction::SetTrue,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub log_json: bool,

    /// Serve Prometheus metrics (`GET /metrics`) on this address.
    #[arg(long, env = "TOLLGATE_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Export traces (admin calls, config writes, snapshot builds) over
    /// OTLP/gRPC to this collector, e.g. http://127.0.0.1:4317. Off when unset.
    #[arg(long, env = "TOLLGATE_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// Fraction of new traces sampled (0.0 to 1.0); calls that carry a
    /// sampled W3C traceparent are always traced.
    #[arg(long, env = "TOLLGATE_TRACE_SAMPLE_RATIO", default_value_t = 1.0)]
    pub trace_sample_ratio: f64,

    /// Open connections per listener; beyond it a new connection is closed at
    /// once. Lowered automatically to the open-files limit less 64.
    #[arg(long, env = "TOLLGATE_CP_MAX_CONNECTIONS", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// A connection that has not sent the HTTP/2 preface this long after
    /// connecting is closed.
    #[arg(long, env = "TOLLGATE_CP_HANDSHAKE_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub handshake_timeout_ms: u64,

    /// A connection with no call in progress for this long is closed (an open
    /// config stream is a call in progress); 0 = never.
    #[arg(long, env = "TOLLGATE_CP_IDLE_TIMEOUT_MS", default_value_t = 300_000)]
    pub idle_timeout_ms: u64,

    /// A data plane whose stream cannot take a newer snapshot for this long
    /// (it stopped reading) is disconnected; meanwhile it is sent only the
    /// newest version.
    #[arg(long, env = "TOLLGATE_STREAM_MAX_LAG_MS", default_value_t = 60_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub stream_max_lag_ms: u64,

    /// How many revisions the history keeps for `history`, `diff --from` and
    /// `rollback --to` (their changed entities, secrets stored as in the
    /// live store).
    #[arg(long, env = "TOLLGATE_HISTORY_REVISIONS", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub history_revisions: u64,

    /// Serve the config stream over TLS with mutual authentication (cluster
    /// PKI): data planes join with a token and present their certificates.
    /// Always on when the stream listens beyond loopback; needs
    /// --stream-listen (a TLS listener serves one of the two APIs).
    #[arg(long, env = "TOLLGATE_STREAM_TLS")]
    pub stream_tls: bool,

    /// The cluster CA certificate (PEM) to use instead of the one the
    /// control plane creates in <data-dir>/pki/ on first start.
    #[arg(long, env = "TOLLGATE_CLUSTER_CA_CERT", requires = "cluster_ca_key")]
    pub cluster_ca_cert: Option<PathBuf>,

    /// The cluster CA's private key (PEM), with --cluster-ca-cert.
    #[arg(long, env = "TOLLGATE_CLUSTER_CA_KEY", requires = "cluster_ca_cert")]
    pub cluster_ca_key: Option<PathBuf>,

    /// The stream's server certificate chain (PEM) instead of one made from
    /// the cluster CA at start; it must name the host data planes check
    /// (their --control-plane-server-name).
    #[arg(long, env = "TOLLGATE_STREAM_TLS_CERT", requires = "stream_tls_key")]
    pub stream_tls_cert: Option<PathBuf>,

    /// The key of --stream-tls-cert (PEM).
    #[arg(long, env = "TOLLGATE_STREAM_TLS_KEY", requires = "stream_tls_cert")]
    pub stream_tls_key: Option<PathBuf>,

    /// Lifetime of the client certificates issued to data planes; they
    /// renew at two thirds of it.
    #[arg(long, env = "TOLLGATE_DATA_PLANE_CERT_TTL_SECS", default_value_t = 7 * 24 * 3600,
          value_parser = clap::value_parser!(u64).range(3..=365 * 24 * 3600))]
    pub data_plane_cert_ttl_secs: u64,

    /// Allow a plaintext config stream beyond loopback, guarded by
    /// --cluster-token only (the behaviour before the cluster PKI). Anyone
    /// on the path can read the snapshots' secrets: avoid.
    #[arg(long, env = "TOLLGATE_INSECURE_PLAINTEXT_STREAM")]
    pub insecure_plaintext_stream: bool,

    /// Serve the admin API over TLS with a server certificate from the
    /// cluster CA (or --admin-tls-cert); operators may then authenticate
    /// with client certificates instead of tokens. Always on when the admin
    /// API listens beyond loopback, unless --insecure-plaintext-admin.
    #[arg(long, env = "TOLLGATE_ADMIN_TLS")]
    pub admin_tls: bool,

    /// The admin API's server certificate chain (PEM) instead of one made
    /// from the cluster CA at start (implies --admin-tls).
    #[arg(long, env = "TOLLGATE_ADMIN_TLS_CERT", requires = "admin_tls_key")]
    pub admin_tls_cert: Option<PathBuf>,

    /// The key of --admin-tls-cert (PEM).
    #[arg(long, env = "TOLLGATE_ADMIN_TLS_KEY", requires = "admin_tls_cert")]
    pub admin_tls_key: Option<PathBuf>,

    /// More names (DNS or IP) for the admin certificate made from the
    /// cluster CA, besides localhost, 127.0.0.1, ::1 and
    /// tollgate-control-plane; repeat or separate with commas.
    #[arg(long, env = "TOLLGATE_ADMIN_TLS_SAN", value_delimiter = ',')]
    pub admin_tls_san: Vec<String>,

    /// Also trust operator client certificates from this CA bundle (PEM),
    /// besides the cluster CA; they must name the operator and role in a
    /// URI SAN urn:tollgate:operator:<name>:<role>.
    #[arg(long, env = "TOLLGATE_ADMIN_CLIENT_CA")]
    pub admin_client_ca: Option<PathBuf>,

    /// Allow a plaintext admin API beyond loopback (tokens travel in clear
    /// text; anyone on the path can read and replay them): avoid.
    #[arg(long, env = "TOLLGATE_INSECURE_PLAINTEXT_ADMIN")]
    pub insecure_plaintext_admin: bool,
}

/// What [`crate::run`] needs.
#[derive(Debug, Clone)]
pub struct CpConfig {
    pub admin_listen: SocketAddr,
    pub data_dir: PathBuf,
    pub stream_listen: Option<SocketAddr>,
    pub admin_token: Option<String>,
    pub cluster_token: Option<String>,
    /// Where `GET /metrics` is served, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// Connection cap and timeouts of the gRPC listeners.
    pub conn_limits: ConnLimits,
    /// How long a stream may fall behind before it is cut off.
    pub stream_max_lag: Duration,
    /// Revisions kept in the history.
    pub history_revisions: usize,
    /// The cluster PKI settings.
    pub cluster: ClusterSettings,
    /// TLS on the admin API.
    pub admin_tls: AdminTlsSettings,
}

/// The admin API's TLS settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdminTlsSettings {
    /// `--admin-tls`; forced on beyond loopback unless `insecure_plaintext`.
    pub tls: bool,
    pub server_cert: Option<PemFiles>,
    pub extra_names: Vec<String>,
    pub client_ca: Option<PathBuf>,
    pub insecure_plaintext: bool,
}

/// The cluster PKI's settings (`crate::pki`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// `--stream-tls`; forced on beyond loopback unless `insecure_plaintext`.
    pub stream_tls: bool,
    pub ca: Option<PemFiles>,
    pub server_cert: Option<PemFiles>,
    pub cert_ttl: Duration,
    pub insecure_plaintext: bool,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            stream_tls: false,
            ca: None,
            server_cert: None,
            cert_ttl: crate::pki::DEFAULT_CERT_TTL,
            insecure_plaintext: false,
        }
    }
}

/// Default of `--stream-max-lag-ms`.
pub const DEFAULT_STREAM_MAX_LAG: Duration = Duration::from_secs(60);

impl From<CpArgs> for CpConfig {
    fn from(args: CpArgs) -> CpConfig {
        // An empty variable (TOLLGATE_ADMIN_TOKEN=) means "no token".
        let non_empty = |token: Option<String>| token.filter(|t| !t.is_empty());
        CpConfig {
            admin_listen: args.admin_listen,
            data_dir: args.data_dir,
            stream_listen: args.stream_listen,
            admin_token: non_empty(args.admin_token),
            cluster_token: non_empty(args.cluster_token),
            metrics_listen: args.metrics_listen,
            conn_limits: ConnLimits {
                max_connections: args.max_connections as usize,
                handshake_timeout: Duration::from_millis(args.handshake_timeout_ms),
                idle_timeout: (args.idle_timeout_ms > 0)
                    .then(|| Duration::from_millis(args.idle_timeout_ms)),
            },
            stream_max_lag: Duration::from_millis(args.stream_max_lag_ms),
            history_revisions: args.history_revisions as usize,
            cluster: ClusterSettings {
                stream_tls: args.stream_tls,
                ca: pem_files(args.cluster_ca_cert, args.cluster_ca_key),
                server_cert: pem_files(args.stream_tls_cert, args.stream_tls_key),
                cert_ttl: Duration::from_secs(args.data_plane_cert_ttl_secs),
                insecure_plaintext: args.insecure_plaintext_stream,
            },
            admin_tls: AdminTlsSettings {
                tls: args.admin_tls,
                server_cert: pem_files(args.admin_tls_cert, args.admin_tls_key),
                extra_names: args.admin_tls_san,
                client_ca: args.admin_client_ca,
                insecure_plaintext: args.insecure_plaintext_admin,
            },
        }
    }
}

fn pem_files(cert: Option<PathBuf>, key: Option<PathBuf>) -> Option<PemFiles> {
    Some(PemFiles {
        cert: cert?,
        key: key?,
    })
}

impl CpConfig {
    /// A config for tests and embedding: loopback admin API, no tokens.
    pub fn local(admin_listen: SocketAddr, data_dir: PathBuf) -> CpConfig {
        CpConfig {
            admin_listen,
            data_dir,
            stream_listen: None,
            admin_token: None,
            cluster_token: None,
            metrics_listen: None,
            conn_limits: ConnLimits::default(),
            stream_max_lag: DEFAULT_STREAM_MAX_LAG,
            history_revisions: crate::store::history::DEFAULT_KEEP,
            cluster: ClusterSettings::default(),
            admin_tls: AdminTlsSettings::default(),
        }
    }

    /// Whether the admin API is served over TLS: asked for (or given a
    /// certificate), or needed because it listens beyond loopback.
    pub fn admin_tls(&self) -> bool {
        let admin = &self.admin_tls;
        admin.tls
            || admin.server_cert.is_some()
            || (!self.admin_listen.ip().is_loopback() && !admin.insecure_plaintext)
    }

    /// Whether the config stream is served over TLS: asked for, or needed
    /// because it listens beyond loopback.
    pub fn stream_tls(&self) -> bool {
        self.cluster.stream_tls
            || (!self.stream_address().ip().is_loopback() && !self.cluster.insecure_plaintext)
    }

    /// Where the config stream is served.
    pub fn stream_address(&self) -> SocketAddr {
        self.stream_listen.unwrap_or(self.admin_listen)
    }

    /// Refuses settings that would expose the admin API or the secrets on the
    /// stream to the network unauthenticated.
    pub fn check(&self) -> Result<(), CpError> {
        if let Some(token) = &self.admin_token {
            check_token_text("--admin-token", token)?;
        }
        if let Some(token) = &self.cluster_token {
            check_token_text("--cluster-token", token)?;
        }
        if !self.admin_listen.ip().is_loopback() && self.admin_token.is_none() {
            return Err(CpError::Startup(format!(
                "refusing to serve the admin API on non-loopback address {} without \
                 --admin-token (TOLLGATE_ADMIN_TOKEN): anyone who can reach it could rewrite \
                 the gateway",
                self.admin_listen
            )));
        }
        let stream = self.stream_address();
        if self.admin_tls() && self.stream_listen.is_none() {
            return Err(CpError::Startup(format!(
                "the admin API is served over TLS (--admin-tls{}): give the config stream its \
                 own --stream-listen address",
                if self.admin_tls.tls || self.admin_tls.server_cert.is_some() {
                    ""
                } else {
                    ", always on beyond loopback unless --insecure-plaintext-admin"
                }
            )));
        }
        if !self.admin_tls()
            && (self.admin_tls.client_ca.is_some() || !self.admin_tls.extra_names.is_empty())
        {
            return Err(CpError::Startup(
                "--admin-client-ca and --admin-tls-san need a TLS admin API (--admin-tls)".into(),
            ));
        }
        if self.stream_tls() && self.stream_listen.is_none() {
            return Err(CpError::Startup(format!(
                "the config stream is served over TLS (--stream-tls{}), and the admin API is \
                 not: give the stream its own --stream-listen address",
                if self.cluster.stream_tls {
                    ""
                } else {
                    ", always on beyond loopback"
                }
            )));
        }
        if !stream.ip().is_loopback() && !self.stream_tls() && self.cluster_token.is_none() {
            return Err(CpError::Startup(format!(
                "refusing to serve the config stream on non-loopback address {stream} without \
                 --cluster-token (TOLLGATE_CLUSTER_TOKEN): snapshots carry secrets"
            )));
        }
        if self.stream_listen == Some(self.admin_listen) {
            return Err(CpError::Startup(
                "--stream-listen is the same address as --admin-listen; omit it to share the \
                 admin listener"
                    .into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(admin: &str, stream: Option<&str>) -> CpConfig {
        let mut config = CpConfig::local(admin.parse().expect("address"), PathBuf::from("unused"));
        config.stream_listen = stream.map(|s| s.parse().expect("address"));
        config
    }

    #[test]
    fn exposure_needs_tokens() {
        assert!(config("127.0.0.1:7070", None).check().is_ok());
        let err = config("0.0.0.0:7070", None).check().expect_err("must fail");
        assert!(err.to_string().contains("--admin-token"), "{err}");

        let mut with_admin = config("0.0.0.0:7070", None);
        with_admin.admin_token = Some("admin-token".into());
        let err = with_admin.check().expect_err("must fail");
        assert!(err.to_string().contains("--stream-listen"), "{err}");
        with_admin.cluster.insecure_plaintext = true;
        with_admin.admin_tls.insecure_plaintext = true;
        let err = with_admin.check().expect_err("must fail");
        assert!(err.to_string().contains("--cluster-token"), "{err}");
        with_admin.cluster_token = Some("cluster-token".into());
        assert!(with_admin.check().is_ok());

        // Beyond loopback the admin API is TLS too, unless opted out.
        let mut tls_admin = config("0.0.0.0:7070", Some("0.0.0.0:7071"));
        tls_admin.admin_token = Some("admin-token".into());
        assert!(tls_admin.admin_tls() && tls_admin.check().is_ok());
        tls_admin.admin_tls.insecure_plaintext = true;
        assert!(!tls_admin.admin_tls() && tls_admin.check().is_ok());
        let mut loopback = config("127.0.0.1:7070", None);
        assert!(!loopback.admin_tls());
        loopback.admin_tls.tls = true;
        let err = loopback.check().expect_err("must fail");
        assert!(err.to_string().contains("--stream-listen"), "{err}");
        let mut ca_without_tls = config("127.0.0.1:7070", None);
        ca_without_tls.admin_tls.client_ca = Some(PathBuf::from("ca.pem"));
        let err = ca_without_tls.check().expect_err("must fail");
        assert!(err.to_string().contains("--admin-tls"), "{err}");

        // Beyond loopback the stream is TLS: no cluster token needed.
        let tls = config("127.0.0.1:7070", Some("0.0.0.0:7071"));
        assert!(tls.stream_tls());
        assert!(tls.check().is_ok());
        let mut plain = config("127.0.0.1:7070", Some("0.0.0.0:7071"));
        plain.cluster.insecure_plaintext = true;
        let err = plain.check().expect_err("must fail");
        assert!(err.to_string().contains("--cluster-token"), "{err}");
        // Loopback stays plaintext unless asked.
        assert!(!config("127.0.0.1:7070", Some("127.0.0.1:7071")).stream_tls());
        let mut bad_token = config("127.0.0.1:7070", None);
        bad_token.admin_token = Some("has space".into());
        assert!(bad_token.check().is_err());
    }
}
