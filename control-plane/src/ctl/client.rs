//! The CLI's connection to the admin API: one channel, the admin token sent
//! as `authorization: Bearer` on every call, message limits as large as the
//! server's.
//!
//! An `https://` server is dialed over TLS (rustls, HTTP/2 by ALPN), trusting
//! only `--ca-cert` (the cluster CA, or the CA of `--admin-tls-cert`) and
//! checking the URL's host against the certificate; `--client-cert` and
//! `--client-key` present an operator certificate. tonic is built without
//! TLS, so the connector is ours. Errors name the flag whose file is at
//! fault.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

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
        // A TLS server (a TLS admin API) answering a plaintext client.
        "h2 protocol error",
        // A data plane's proxy answers a gRPC call it has no route for as a
        // gRPC error of its own (`<error>: <message>`).
        "no_route: ",
    ]
    .iter()
    .any(|sign| status.message().contains(sign))
}

/// How to reach a TLS admin API.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// CA certificate (PEM) the admin API's certificate must chain to (the
    /// cluster CA, <data-dir>/pki/ca.pem); needed for an https:// --server.
    #[arg(long, env = "TOLLGATE_CA_CERT", global = true)]
    pub ca_cert: Option<PathBuf>,

    /// Operator client certificate (PEM), instead of or besides a token.
    #[arg(long, env = "TOLLGATE_CLIENT_CERT", global = true)]
    pub client_cert: Option<PathBuf>,

    /// The key of --client-cert (PEM).
    #[arg(long, env = "TOLLGATE_CLIENT_KEY", global = true)]
    pub client_key: Option<PathBuf>,
}

fn flag_error(flag: &str, path: &Path, message: impl std::fmt::Display) -> CpError {
    CpError::File {
        path: format!("{flag} {}", path.display()),
        message: message.to_string(),
    }
}

fn read_pem(flag: &str, path: &Path) -> Result<String, CpError> {
    tollgate_shared::private_files::read_text(path).map_err(|e| CpError::File {
        path: flag.to_string(),
        message: e,
    })
}

impl TlsArgs {
    fn any(&self) -> bool {
        self.ca_cert.is_some() || self.client_cert.is_some() || self.client_key.is_some()
    }

    /// The client config for an https:// server.
    fn client_config(&self) -> Result<rustls::ClientConfig, CpError> {
        let Some(ca_path) = &self.ca_cert else {
            return Err(CpError::BadRequest(
                "an https:// --server needs --ca-cert (TOLLGATE_CA_CERT): the CA that signed \
                 the admin API's certificate, e.g. the control plane's <data-dir>/pki/ca.pem"
                    .into(),
            ));
        };
        let ca_pem = read_pem("--ca-cert", ca_path)?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(ca_pem.as_bytes()) {
            let cert: CertificateDer<'static> =
                cert.map_err(|e| flag_error("--ca-cert", ca_path, e))?;
            roots
                .add(cert)
                .map_err(|e| flag_error("--ca-cert", ca_path, e))?;
        }
        if roots.is_empty() {
            return Err(flag_error(
                "--ca-cert",
                ca_path,
                "no certificate in the file",
            ));
        }
        // ring, as the server side: no other C toolchain needed.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| CpError::Internal(e.to_string()))?
            .with_root_certificates(roots);
        let mut config = match (&self.client_cert, &self.client_key) {
            (None, None) => builder.with_no_client_auth(),
            (Some(cert_path), Some(key_path)) => {
                let cert_pem = read_pem("--client-cert", cert_path)?;
                let chain: Vec<CertificateDer<'static>> =
                    rustls_pki_types::pem::PemObject::pem_slice_iter(cert_pem.as_bytes())
                        .collect::<Result<_, _>>()
                        .map_err(|e| flag_error("--client-cert", cert_path, e))?;
                if chain.is_empty() {
                    return Err(flag_error(
                        "--client-cert",
                        cert_path,
                        "no certificate in the file",
                    ));
                }
                let key_pem = read_pem("--client-key", key_path)?;
                let key: PrivateKeyDer<'static> = rustls_pki_types::pem::PemObject::from_pem_slice(
                    key_pem.as_bytes(),
                )
                .map_err(|_| flag_error("--client-key", key_path, "no private key in the file"))?;
                builder.with_client_auth_cert(chain, key).map_err(|e| {
                    flag_error(
                        "--client-key",
                        key_path,
                        format!("does not fit --client-cert: {e}"),
                    )
                })?
            }
            (Some(_), None) => {
                return Err(CpError::BadRequest(
                    "--client-cert needs --client-key (TOLLGATE_CLIENT_KEY)".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(CpError::BadRequest(
                    "--client-key needs --client-cert (TOLLGATE_CLIENT_CERT)".into(),
                ))
            }
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }
}

/// Dials the admin API over TLS.
#[derive(Clone)]
struct TlsConnector {
    config: Arc<rustls::ClientConfig>,
    server_name: ServerName<'static>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tonic::codegen::Service<http::Uri> for TlsConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = BoxError;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connector = tokio_rustls::TlsConnector::from(self.config.clone());
        let server_name = self.server_name.clone();
        Box::pin(async move {
            let host = uri.host().ok_or("the URL has no host")?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let port = uri.port_u16().unwrap_or(443);
            let tcp = TcpStream::connect((host, port)).await?;
            let _ = tcp.set_nodelay(true);
            let tls = connector.connect(server_name, tcp).await?;
            Ok(TokioIo::new(tls))
        })
    }
}

/// Connects to `server` (`http://host:port`, `https://host:port`;
/// `host:port` means http).
pub async fn connect(server: &str, token: Option<&str>, tls: &TlsArgs) -> Result<Client, CpError> {
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
    let channel = if let Some(rest) = server.strip_prefix("https://") {
        let uri: http::Uri = server
            .parse()
            .map_err(|e| connect_error(format!("not a valid URL: {e}")))?;
        let host = uri
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let server_name = ServerName::try_from(host)
            .map_err(|e| connect_error(format!("the host is not a valid TLS name: {e}")))?;
        let connector = TlsConnector {
            config: Arc::new(tls.client_config()?),
            server_name,
        };
        // tonic dials `http://` itself; the connector does the TLS.
        let plain = format!("http://{rest}");
        Endpoint::from_shared(plain)
            .map_err(|e| connect_error(format!("not a valid URL: {e}")))?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(CALL_TIMEOUT)
            .connect_with_connector(connector)
            .await
            .map_err(|e| connect_error(describe_tls_error(&e, tls)))?
    } else {
        if tls.any() {
            return Err(CpError::BadRequest(format!(
                "--ca-cert, --client-cert and --client-key are for an https:// --server, not {server}"
            )));
        }
        endpoint.connect().await.map_err(|e| {
            let cause = describe_transport_error(&e);
            if cause.contains("refused") {
                connect_error(cause)
            } else {
                connect_error(format!(
                    "{cause} (if the admin API serves TLS, use https:// with --ca-cert)"
                ))
            }
        })?
    };
    Ok(
        AdminClient::with_interceptor(channel, TokenInterceptor { header })
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
    )
}

/// A TLS connection failure in the words of the flag to fix.
fn describe_tls_error(error: &tonic::transport::Error, tls: &TlsArgs) -> String {
    let cause = describe_transport_error(error);
    let file = |path: &Option<PathBuf>| {
        path.as_ref()
            .map_or_else(String::new, |p| format!(" {}", p.display()))
    };
    if cause.contains("UnknownIssuer") || cause.contains("BadSignature") {
        format!(
            "the admin API's certificate is not signed by the CA in --ca-cert{} ({cause})",
            file(&tls.ca_cert)
        )
    } else if cause.contains("NotValidForName") {
        format!("the admin API's certificate does not name this host ({cause})")
    } else if cause.contains("CertificateRequired")
        || cause.contains("UnknownCA")
        || cause.contains("BadCertificate")
        || cause.contains("CertificateExpired")
        || cause.contains("CertificateRevoked")
    {
        format!(
            "the admin API refused the client certificate --client-cert{} ({cause})",
            file(&tls.client_cert)
        )
    } else {
        cause
    }
}

/// Whether a call failed because the connection broke (as when a TLS
/// server refuses the client's certificate after a TLS 1.3 handshake).
pub fn broken_connection(status: &tonic::Status) -> bool {
    use tonic::Code;
    matches!(
        status.code(),
        Code::Unknown | Code::Cancelled | Code::Unavailable | Code::Internal
    ) && [
        "transport error",
        "operation was canceled",
        "h2 protocol",
        "connection",
    ]
    .iter()
    .any(|sign| status.message().contains(sign))
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
