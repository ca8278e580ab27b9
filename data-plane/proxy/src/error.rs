//! [`DpError`]: what the data plane's startup fails with (unbindable
//! sockets, a bad control plane address or token, no runtime, no signal
//! handlers). Snapshot and cache problems are not fatal and are reported as
//! NACKs and log lines instead. Why a request was answered by the gateway
//! itself is a `tollgate_plugin_api::Refusal`, turned into a response in
//! [`crate::respond`].

use std::net::SocketAddr;

/// Startup and background-task failures of `tollgate-dp`.
#[derive(Debug, thiserror::Error)]
pub enum DpError {
    #[error("cannot bind the {what} listener on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid --control-plane address {address:?}: {message}")]
    ControlPlaneAddress { address: String, message: String },
    #[error("invalid --cluster-token: {0}")]
    ClusterToken(String),
    #[error("invalid --plugins: {0}")]
    Plugins(String),
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot install signal handlers: {0}")]
    Signal(std::io::Error),
    #[error("cannot start the access log: {0}")]
    AccessLog(std::io::Error),
    #[error("cannot set up TLS: {0}")]
    Tls(String),
    /// Joining the cluster or loading the kept certificate (`--state-dir`).
    #[error("cluster identity: {0}")]
    Cluster(String),
    #[error("cannot set up telemetry: {0}")]
    Telemetry(#[from] tollgate_shared::telemetry::TelemetryError),
}
