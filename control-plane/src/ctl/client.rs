//! The CLI's connection to the admin API: one channel, the admin token sent
//! as `authorization: Bearer` on every call, message limits as large as the
//! server's.

use std::time::Duration;

use tollgate_shared::proto::admin::admin_client::AdminClient;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

use crate::error::CpError;
use crate::server::MAX_MESSAGE_BYTES;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// Adds the bearer token, if any.
#[derive(Clone)]
pub struct TokenInterceptor {
    header: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl Interceptor for TokenInterceptor {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(header) = &self.header {
            request
                .metadata_mut()
                .insert("authorization", header.clone());
        }
        Ok(request)
    }
}

pub type Client = AdminClient<InterceptedService<Channel, TokenInterceptor>>;

/// `server` as a URL: `host:port` without a scheme is taken as `http://host:port`.
pub fn server_url(server: &str) -> String {
    if server.contains("://") {
        server.to_string()
    } else {
        format!("http://{server}")
    }
}

/// Whether a failed call was answered by something that is not a gRPC
/// server (a data plane's proxy or status port, a web server): its HTTP
/// answer reached tonic as a non-gRPC body or a broken HTTP/2 exchange.
pub fn answered_by_non_grpc(status: &tonic::Status) -> bool {
    use tonic::Code;
    matches!(
        status.code(),
        Code::Unknown | Code::Internal | Code::Unimplemented
    ) && [
        "invalid compression flag",
        "grpc-status header missing",
        "while receiving response with status",
        "invalid content-type",
        "transport error",
        // A data plane's proxy answers a gRPC call it has no route for as a
        // gRPC error of its own (`<error>: <message>`).
        "no_route: ",
    ]
    .iter()
    .any(|sign| status.message().contains(sign))
}

/// Connects to `server` (`http://host:port`; `host:port` means http).
pub async fn connect(server: &str, token: Option<&str>) -> Result<Client, CpError> {
    let server = &server_url(server);
    let connect_error = |message: String| CpError::Connect {
        server: server.to_string(),
        message,
    };
    let header = match token.filter(|t| !t.is_empty()) {
        Some(token) => Some(
            format!("Bearer {token}")
                .parse::<MetadataValue<_>>()
                .map_err(|_| connect_error("the token must be printable ASCII".into()))?,
        ),
        None => None,
    };
    let endpoint = Endpoint::from_shared(server.to_string())
        .map_err(|e| connect_error(format!("not a valid URL: {e}")))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CALL_TIMEOUT);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| connect_error(describe_transport_error(&e)))?;
    Ok(
        AdminClient::with_interceptor(channel, TokenInterceptor { header })
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
    )
}

/// The innermost cause of a transport error ("Connection refused"), which is
/// what an operator can act on.
fn describe_transport_error(error: &tonic::transport::Error) -> String {
    let mut source: &dyn std::error::Error = error;
    while let Some(next) = source.source() {
        source = next;
    }
    source.to_string()
}
