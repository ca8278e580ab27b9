//! The control plane's one error type, and its one mapping to a gRPC status.
//!
//! Every fallible path in the crate ends in a [`CpError`]; the admin and stream
//! services turn it into a [`tonic::Status`] in exactly one place
//! ([`From<CpError> for Status`]), so the code an operator sees for a given
//! failure never depends on which handler hit it. Storage failures are logged
//! here with their detail and reported to the caller as a bare `INTERNAL`:
//! the caller cannot act on sled internals, and they may name paths.
//!
//! Codes say whose fault it was: `INVALID_ARGUMENT` for a request that is
//! wrong whatever the server holds (bad field, undecodable message: see
//! `crate::listener::fix_status`), `UNAUTHENTICATED` for a missing or wrong
//! token, `PERMISSION_DENIED` for a token whose role is too low, `RESOURCE_EXHAUSTED` for a config over a whole-config limit (entity
//! counts, encoded size) or a message over the size cap, and `INTERNAL` only
//! for faults of the server, logged with a request id that the message
//! carries. No message is longer than [`MAX_STATUS_MESSAGE`] bytes.

use std::net::SocketAddr;
use std::path::PathBuf;

use tollgate_shared::limits::truncate;
use tollgate_shared::ConfigError;

/// Longest `grpc-message` sent: errors quote input only in cut form, and
/// this caps whatever a message holds.
pub const MAX_STATUS_MESSAGE: usize = 4 * 1024;

use crate::kind::EntityKind;

#[derive(Debug, thiserror::Error)]
pub enum CpError {
    /// The desired state failed validation; the text names entity and field.
    #[error(transparent)]
    Invalid(#[from] ConfigError),

    /// The request itself is malformed (missing entity, unknown kind...).
    #[error("{0}")]
    BadRequest(String),

    #[error("{kind} {} does not exist", tollgate_shared::limits::show(.name))]
    NotFound { kind: EntityKind, name: String },

    #[error("{kind} {} already exists", tollgate_shared::limits::show(.name))]
    AlreadyExists { kind: EntityKind, name: String },

    /// The resulting config would be over a whole-config limit.
    #[error("{0}")]
    OverLimit(String),

    #[error("{0}")]
    Unauthenticated(&'static str),

    /// The caller is known but its role does not allow the call; the text
    /// names the call, the role it needs and the caller's role.
    #[error("{0}")]
    PermissionDenied(String),

    /// A join or renewal refused: unknown, used or expired join token, or
    /// no client certificate where one is needed (cluster PKI).
    #[error("{0}")]
    JoinRefused(String),

    /// An operator client certificate refused on the admin API: revoked,
    /// expired, a data plane's, or naming no operator.
    #[error("{0}")]
    CertificateRefused(String),

    /// The call needs a setting the server was not started with.
    #[error("{0}")]
    FailedPrecondition(String),

    /// sled failed; the detail is logged, never returned to a caller.
    #[error("storage error: {0}")]
    Storage(#[from] sled::Error),

    /// The data directory holds something this build cannot read.
    #[error("data directory {path}: {message}")]
    StoreFormat { path: PathBuf, message: String },

    #[error("data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A configuration the server refuses to start with.
    #[error("{0}")]
    Startup(String),

    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },

    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),

    /// An internal invariant failed (a task panicked, encoding failed).
    #[error("internal error: {0}")]
    Internal(String),

    // ----- tollgatectl -----
    /// The CLI could not reach the control plane.
    #[error("cannot connect to {server}: {message}")]
    Connect { server: String, message: String },

    /// The control plane answered a CLI call with an error status.
    #[error("{}", describe_status(.0))]
    Rpc(Box<tonic::Status>),

    /// A file the CLI was asked to read.
    #[error("{path}: {message}")]
    File { path: String, message: String },

    /// `diff --exit-code` found changes (exit 1, nothing on stderr).
    #[error("there are changes")]
    Drift,

    /// `--wait`: some data planes rejected the version or did not answer.
    #[error("{0}")]
    Rollout(String),

    /// Writing the CLI's output failed (closed pipe...).
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
}

/// How the CLI shows an error status: validation and lookup errors as the
/// server's message alone (it already names the entity), others with the code.
fn describe_status(status: &tonic::Status) -> String {
    use tonic::Code;
    match status.code() {
        Code::InvalidArgument | Code::NotFound | Code::AlreadyExists => {
            status.message().to_string()
        }
        Code::ResourceExhausted => format!("over a limit: {}", status.message()),
        Code::Unauthenticated => format!("unauthenticated: {}", status.message()),
        Code::PermissionDenied => format!("permission denied: {}", status.message()),
        Code::Unavailable => format!("control plane unavailable: {}", status.message()),
        code => format!("{}: {}", code.description(), status.message()),
    }
}

impl From<tonic::Status> for CpError {
    fn from(status: tonic::Status) -> Self {
        CpError::Rpc(Box::new(status))
    }
}

impl From<CpError> for tonic::Status {
    fn from(error: CpError) -> Self {
        use tonic::Status;
        let cut = |text: String| truncate(&text, MAX_STATUS_MESSAGE);
        match error {
            CpError::Invalid(err) if err.over_limit => {
                Status::resource_exhausted(cut(err.to_string()))
            }
            CpError::Invalid(err) => Status::invalid_argument(cut(err.to_string())),
            CpError::BadRequest(message) => Status::invalid_argument(cut(message)),
            err @ CpError::NotFound { .. } => Status::not_found(cut(err.to_string())),
            err @ CpError::AlreadyExists { .. } => Status::already_exists(cut(err.to_string())),
            CpError::OverLimit(message) => Status::resource_exhausted(cut(message)),
            CpError::Unauthenticated(message) => Status::unauthenticated(message),
            CpError::PermissionDenied(message) => Status::permission_denied(cut(message)),
            CpError::JoinRefused(message) => Status::unauthenticated(cut(message)),
            CpError::CertificateRefused(message) => Status::unauthenticated(cut(message)),
            CpError::FailedPrecondition(message) => Status::failed_precondition(cut(message)),
            CpError::Rpc(status) => *status,
            other => {
                let request_id = uuid::Uuid::new_v4().simple().to_string();
                tracing::error!(error = %other, %request_id, "request failed");
                Status::internal(format!(
                    "internal error (request id {request_id}); see the control plane log"
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_gets_the_code_of_whose_fault_it_was() {
        let internal = tonic::Status::from(CpError::Internal("sled went away".into()));
        assert_eq!(internal.code(), tonic::Code::Internal);
        assert!(internal.message().contains("request id "), "{internal:?}");
        assert!(
            !internal.message().contains("sled"),
            "detail stays in the log"
        );

        let over = tonic::Status::from(CpError::Invalid(ConfigError::whole_over_limit(
            "routes: at most 100000 entities allowed (got 100001)",
        )));
        assert_eq!(over.code(), tonic::Code::ResourceExhausted);
        let invalid = tonic::Status::from(CpError::Invalid(ConfigError::new(
            "route",
            "r",
            "paths[0]: bad",
        )));
        assert_eq!(invalid.code(), tonic::Code::InvalidArgument);

        let huge = tonic::Status::from(CpError::BadRequest("x".repeat(1 << 20)));
        assert!(huge.message().len() <= MAX_STATUS_MESSAGE);
        let missing = tonic::Status::from(CpError::NotFound {
            kind: EntityKind::Route,
            name: "n".repeat(1 << 20),
        });
        assert_eq!(missing.code(), tonic::Code::NotFound);
        assert!(
            missing.message().len() < 400,
            "{} bytes",
            missing.message().len()
        );
    }
}
