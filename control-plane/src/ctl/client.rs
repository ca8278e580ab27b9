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

/// Connects to `server` (`http://host:port`).
pub async fn connect(server: &str, token: Option<&str>) -> Result<Client, CpError> {
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
