//! The data plane's identity in the cluster PKI (issue 17): its key and
//! client certificate in `--state-dir`, the TLS connector of the config
//! stream, and renewal.
//!
//! - First start (`--join-token`, no certificate in the state dir): make a
//!   key (ECDSA P-256) and a CSR naming the node id, connect to the control
//!   plane trusting only a CA whose SHA-256 is the one inside the token
//!   (checked during the handshake, before the token is sent), call `Join`,
//!   and keep `key.pem` (0600), `cert.pem` and `ca.pem` in the state dir,
//!   each written atomically.
//! - Later starts load them; the node id is the certificate's.
//! - Every stream connection is TLS with that certificate, verifying the
//!   control plane against `ca.pem` and the server name
//!   (`--control-plane-server-name`).
//! - At two thirds of the certificate's lifetime a new key and CSR go out
//!   over `Renew` (mTLS, on a connection of its own); the new pair is
//!   written and used for every connection from then on. The open stream is
//!   not touched: no gap. A failed renewal is retried every few seconds
//!   (never later than a tenth of the time left).

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper_util::rt::TokioIo;
use rcgen::{CertificateParams, DnType, KeyPair};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::client::TlsStream;
use tollgate_shared::cluster_pki::{self, JoinToken};
use tollgate_shared::private_files;
use tollgate_shared::proto::stream::config_stream_client::ConfigStreamClient;
use tollgate_shared::proto::stream::{CertificateResponse, JoinRequest, RenewRequest};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::error::DpError;

const KEY_FILE: &str = "key.pem";
const CERT_FILE: &str = "cert.pem";
const CA_FILE: &str = "ca.pem";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause between join attempts while the control plane is unreachable.
const JOIN_RETRY: Duration = Duration::from_secs(1);

fn failed(message: impl std::fmt::Display) -> DpError {
    DpError::Cluster(message.to_string())
}

/// The certificate in use.
struct Current {
    config: Arc<ClientConfig>,
    /// When this data plane got the certificate (the file's mtime once
    /// reloaded): its `notBefore` is backdated for clock skew, so the
    /// renewal point is counted from here.
    received: i64,
    not_after: i64,
}

/// This data plane's cluster identity.
pub struct ClusterIdentity {
    dir: PathBuf,
    node_id: String,
    server_name: ServerName<'static>,
    current: RwLock<Current>,
}

impl std::fmt::Debug for ClusterIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterIdentity")
            .field("dir", &self.dir)
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    crate::tls::provider()
}

/// A new key and a CSR whose subject CN is `node_id`.
fn key_and_csr(node_id: &str) -> Result<(KeyPair, String), DpError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(failed)?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, node_id);
    let csr = params
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .map_err(failed)?;
    Ok((key, csr))
}

impl ClusterIdentity {
    /// Loads the identity kept in `dir`, or joins with `join_token` to make
    /// one. `node_id` names a new data plane; a kept certificate's node id
    /// wins over it.
    pub async fn establish(
        dir: &Path,
        join_token: Option<&str>,
        control_plane: &str,
        server_name: &str,
        node_id: &str,
    ) -> Result<Arc<ClusterIdentity>, DpError> {
        let control_plane = Endpoint::from_shared(control_plane.to_string())
            .map_err(|e| DpError::ControlPlaneAddress {
                address: control_plane.to_string(),
                message: e.to_string(),
            })?
            .connect_timeout(CONNECT_TIMEOUT);
        let control_plane = &control_plane;
        let server_name = ServerName::try_from(server_name.to_string()).map_err(|_| {
            failed(format!(
                "--control-plane-server-name {server_name:?}: not a DNS name or IP"
            ))
        })?;
        private_files::create_private_dir(dir).map_err(failed)?;
        let kept = dir.join(CERT_FILE).exists() && dir.join(KEY_FILE).exists();
        if kept {
            match Self::load(dir, server_name.clone()) {
                Ok(identity) if identity.not_after() > now_secs() => {
                    tracing::info!(
                        node_id = %identity.node_id,
                        not_after = identity.not_after(),
                        state_dir = %dir.display(),
                        "cluster certificate loaded"
                    );
                    return Ok(Arc::new(identity));
                }
                Ok(_) if join_token.is_none() => {
                    return Err(failed(format!(
                        "the certificate in {} has expired: join again with a new --join-token",
                        dir.display()
                    )))
                }
                Ok(_) => tracing::warn!("the kept cluster certificate has expired; joining again"),
                Err(err) if join_token.is_none() => return Err(err),
                Err(err) => {
                    tracing::warn!(error = %err, "the kept cluster certificate is unusable; joining again")
                }
            }
        }
        let Some(token) = join_token else {
            return Err(failed(format!(
                "{} holds no cluster certificate: start with --join-token (from `tollgatectl \
                 dataplanes token create`)",
                dir.display()
            )));
        };
        let token = JoinToken::parse(token).map_err(|e| failed(format!("--join-token: {e}")))?;
        let (key, csr_pem) = key_and_csr(node_id)?;
        let response = join(control_plane, &server_name, &token, csr_pem).await?;
        let ca_der = CertificateDer::from_pem_slice(response.ca_pem.as_bytes())
            .map_err(|e| failed(format!("join: the CA in the answer does not parse: {e}")))?;
        if cluster_pki::ca_pin(ca_der.as_ref()) != token.ca_pin {
            return Err(failed(
                "join: the control plane answered with another CA than the token pins",
            ));
        }
        private_files::write_private(&dir.join(KEY_FILE), key.serialize_pem().as_bytes())
            .map_err(failed)?;
        private_files::write_private(&dir.join(CA_FILE), response.ca_pem.as_bytes())
            .map_err(failed)?;
        private_files::write_private(&dir.join(CERT_FILE), response.certificate_pem.as_bytes())
            .map_err(failed)?;
        let identity = Self::load(dir, server_name)?;
        tracing::info!(
            node_id = %identity.node_id,
            not_after = identity.not_after(),
            state_dir = %dir.display(),
            "joined the cluster"
        );
        Ok(Arc::new(identity))
    }

    fn load(dir: &Path, server_name: ServerName<'static>) -> Result<ClusterIdentity, DpError> {
        let read = |name: &str| private_files::read_text(&dir.join(name)).map_err(failed);
        let (ca, cert, key) = (read(CA_FILE)?, read(CERT_FILE)?, read(KEY_FILE)?);
        let (node_id, mut current) = client_config(&ca, &cert, &key)?;
        let written = std::fs::metadata(dir.join(CERT_FILE))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(0));
        if let Some(written) = written {
            current.received = written.min(now_secs());
        }
        Ok(ClusterIdentity {
            dir: dir.to_path_buf(),
            node_id,
            server_name,
            current: RwLock::new(current),
        })
    }

    /// The node id the certificate names.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Current> {
        self.current.read().unwrap_or_else(|e| e.into_inner())
    }

    /// When the certificate in use expires (Unix seconds).
    pub fn not_after(&self) -> i64 {
        self.read().not_after
    }

    /// Connects the stream's channels with the certificate in use at the
    /// time of each connection.
    pub fn connector(self: &Arc<Self>) -> Connector {
        Connector {
            identity: self.clone(),
        }
    }

    /// When to renew: two thirds into the certificate's lifetime (from
    /// when it was received), at least a second from now.
    fn renew_at(&self) -> i64 {
        let current = self.read();
        let at = current.received + (current.not_after - current.received) * 2 / 3;
        at.max(now_secs() + 1)
    }

    /// Renews the certificate before it expires, until `shutdown`.
    pub async fn renew_loop(
        self: Arc<Self>,
        endpoint: Endpoint,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut retry = None;
        loop {
            let wait = match retry {
                Some(delay) => delay,
                None => {
                    Duration::from_secs(u64::try_from(self.renew_at() - now_secs()).unwrap_or(0))
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
            match self.renew(&endpoint).await {
                Ok(()) => retry = None,
                Err(err) => {
                    let left = self.not_after() - now_secs();
                    let delay =
                        Duration::from_secs(u64::try_from(left / 10).unwrap_or(0).clamp(1, 30));
                    tracing::warn!(error = %err, seconds_left = left, retry_in = ?delay, "cluster certificate renewal failed");
                    retry = Some(delay);
                }
            }
        }
    }

    async fn renew(self: &Arc<Self>, endpoint: &Endpoint) -> Result<(), DpError> {
        let (key, csr_pem) = key_and_csr(&self.node_id)?;
        let channel = endpoint
            .connect_with_connector(self.connector())
            .await
            .map_err(|e| failed(format!("renew: connect: {e}")))?;
        let response = ConfigStreamClient::new(channel)
            .renew(RenewRequest { csr_pem })
            .await
            .map_err(|status| failed(format!("renew: {}: {}", status.code(), status.message())))?
            .into_inner();
        let ca = private_files::read_text(&self.dir.join(CA_FILE)).map_err(failed)?;
        let key_pem = key.serialize_pem();
        let (node_id, current) = client_config(&ca, &response.certificate_pem, &key_pem)?;
        if node_id != self.node_id {
            return Err(failed("renew: the new certificate names another node"));
        }
        // The key first: a crash between the two leaves the old certificate
        // with a key it does not match, which the next start reports (and a
        // new --join-token repairs).
        private_files::write_private(&self.dir.join(KEY_FILE), key_pem.as_bytes())
            .map_err(failed)?;
        private_files::write_private(
            &self.dir.join(CERT_FILE),
            response.certificate_pem.as_bytes(),
        )
        .map_err(failed)?;
        let not_after = current.not_after;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = current;
        tracing::info!(node_id = %self.node_id, not_after, "cluster certificate renewed");
        Ok(())
    }
}

/// The client TLS config for a CA, certificate and key (PEM), and the
/// certificate's node id.
fn client_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<(String, Current), DpError> {
    let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes())
        .map_err(|e| failed(format!("{CA_FILE}: {e}")))?;
    let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| failed(format!("{CERT_FILE}: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| failed(format!("{KEY_FILE}: {e}")))?;
    let node_id = cluster_pki::node_id_of(cert.as_ref()).ok_or_else(|| {
        failed(format!(
            "{CERT_FILE}: not a data-plane certificate of the cluster CA"
        ))
    })?;
    let (not_before, not_after) = cluster_pki::validity_of(cert.as_ref())
        .ok_or_else(|| failed(format!("{CERT_FILE}: unreadable validity")))?;
    let mut roots = RootCertStore::empty();
    roots
        .add(ca)
        .map_err(|e| failed(format!("{CA_FILE}: {e}")))?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(failed)?
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![cert], key)
        .map_err(|e| failed(format!("{CERT_FILE} and {KEY_FILE} do not match: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok((
        node_id,
        Current {
            config: Arc::new(config),
            received: now_secs().max(not_before),
            not_after,
        },
    ))
}

/// `Join`, retried while the control plane cannot be reached; any answer
/// other than a certificate is final.
async fn join(
    control_plane: &Endpoint,
    server_name: &ServerName<'static>,
    token: &JoinToken,
    csr_pem: String,
) -> Result<CertificateResponse, DpError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(failed)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCa {
            pin: token.ca_pin,
            provider: provider(),
        }))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = Connector::fixed(Arc::new(config), server_name.clone());
    let mut attempts: u64 = 0;
    loop {
        attempts += 1;
        let channel: Result<Channel, _> = control_plane
            .connect_with_connector(connector.clone())
            .await;
        let error = match channel {
            Ok(channel) => {
                let request = JoinRequest {
                    token: JoinToken::format(&token.secret, &token.ca_pin),
                    csr_pem: csr_pem.clone(),
                };
                match ConfigStreamClient::new(channel).join(request).await {
                    Ok(response) => return Ok(response.into_inner()),
                    Err(status) if status.code() == tonic::Code::Unavailable => {
                        format!("{}: {}", status.code(), status.message())
                    }
                    Err(status) => {
                        return Err(failed(format!(
                            "join refused by the control plane: {}",
                            status.message()
                        )))
                    }
                }
            }
            Err(err) => crate::upstream::DisplayChain(&err).to_string(),
        };
        if error.contains("join token hash") {
            return Err(failed(error));
        }
        if attempts == 1 || attempts.is_multiple_of(10) {
            tracing::warn!(control_plane = %control_plane.uri(), %error, attempts, "cannot join yet; retrying");
        }
        tokio::time::sleep(JOIN_RETRY).await;
    }
}

/// Trusts the server if its chain holds the CA the join token pins, and the
/// server certificate verifies against that CA for the server name.
#[derive(Debug)]
struct PinnedCa {
    pin: [u8; 32],
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|ca| cluster_pki::ca_pin(ca.as_ref()) == self.pin)
            .ok_or_else(|| {
                rustls::Error::General(
                    "the control plane's CA does not match the join token hash".into(),
                )
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        verifier.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Dials the control plane: TCP, then TLS with the identity's current
/// config (or a fixed one, for `Join`).
#[derive(Clone)]
pub struct Connector {
    identity: Arc<ClusterIdentity>,
}

/// A connector with a fixed config (join).
#[derive(Clone)]
struct FixedConnector {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
}

impl Connector {
    fn fixed(config: Arc<ClientConfig>, server_name: ServerName<'static>) -> FixedConnector {
        FixedConnector {
            config,
            server_name,
        }
    }
}

type Connecting = Pin<
    Box<dyn std::future::Future<Output = Result<TokioIo<TlsStream<TcpStream>>, BoxError>> + Send>,
>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn dial(
    uri: Uri,
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
) -> Result<TokioIo<TlsStream<TcpStream>>, BoxError> {
    let host = uri.host().ok_or("the control plane address has no host")?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(443);
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host.as_str(), port)))
        .await
        .map_err(|_| "connect timed out")??;
    let _ = tcp.set_nodelay(true);
    let tls = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio_rustls::TlsConnector::from(config).connect(server_name, tcp),
    )
    .await
    .map_err(|_| "TLS handshake timed out")??;
    Ok(TokioIo::new(tls))
}

impl tonic::codegen::Service<Uri> for Connector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = BoxError;
    type Future = Connecting;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let config = self.identity.read().config.clone();
        Box::pin(dial(uri, config, self.identity.server_name.clone()))
    }
}

impl tonic::codegen::Service<Uri> for FixedConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = BoxError;
    type Future = Connecting;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(dial(uri, self.config.clone(), self.server_name.clone()))
    }
}
