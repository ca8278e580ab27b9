//! TLS to upstream targets (`protocol: https`, and `h2`: HTTP/2 over TLS).
//!
//! A service's [`UpstreamTlsClient`] (the rustls client config: trusted
//! roots, verification, ALPN `http/1.1` (or `h2` for `protocol: h2`), session resumption) is built once
//! per snapshot compile and shared by its targets. Each target's connections
//! then go through the same keep-alive pool as plaintext ones
//! ([`crate::pool`]): the TLS handshake happens once per pooled connection,
//! not per request. Trust: the service's `ca_pem`, or the `cert_pem` of the
//! certificate named by `ca_certificate`, or else the platform roots (read
//! once per process). `verify: false` accepts any certificate (handshake
//! signatures are still checked) and is logged as a warning at every compile.
//!
//! The name verified and sent as SNI is `tls.sni`, else `host_header`, else
//! the target's host (an IP target is verified against the certificate's IP
//! SANs and sends no SNI, as RFC 6066 requires).

use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::TlsConnector;
use tollgate_shared::model::{GatewayConfig, Protocol, Service};

/// One service's TLS client side.
pub struct UpstreamTlsClient {
    pub connector: TlsConnector,
    /// The name to verify and send, when not the target's host.
    pub server_name: Option<ServerName<'static>>,
    /// Identifies the settings, so connections made under other settings
    /// are never shared (part of the connection cache key).
    pub identity: String,
}

impl std::fmt::Debug for UpstreamTlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTlsClient")
            .field("server_name", &self.server_name)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl UpstreamTlsClient {
    /// The name to verify for a target whose host is `host`.
    pub fn name_for(&self, host: &str) -> Result<ServerName<'static>, String> {
        match &self.server_name {
            Some(name) => Ok(name.clone()),
            None => ServerName::try_from(host.to_string())
                .map_err(|_| format!("{host:?} is not a valid TLS server name")),
        }
    }
}

/// The platform's trusted roots, loaded on first use (a file read, at
/// snapshot compile time, never on the request path).
fn platform_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut store = RootCertStore::empty();
            let loaded = rustls_native_certs::load_native_certs();
            for error in &loaded.errors {
                tracing::warn!(error = %error, "cannot read some platform root certificates");
            }
            let (added, ignored) = store.add_parsable_certificates(loaded.certs);
            tracing::debug!(added, ignored, "platform root certificates loaded");
            Arc::new(store)
        })
        .clone()
}

/// The TLS client of `service`, or `None` for plaintext protocols.
pub fn client_for(
    service: &Service,
    config: &GatewayConfig,
) -> Result<Option<Arc<UpstreamTlsClient>>, String> {
    if !service.protocol.uses_tls() {
        return Ok(None);
    }
    let tls = service.tls.clone().unwrap_or_default();
    let ca_pem = match (&tls.ca_pem, &tls.ca_certificate) {
        (Some(pem), _) => Some(pem.clone()),
        (None, Some(name)) => Some(
            config
                .certificates
                .iter()
                .find(|c| &c.name == name)
                .map(|c| c.cert_pem.clone())
                .ok_or_else(|| {
                    format!("tls.ca_certificate: certificate {name:?} does not exist")
                })?,
        ),
        (None, None) => None,
    };
    let roots = match &ca_pem {
        Some(pem) => {
            let mut store = RootCertStore::empty();
            for der in
                tollgate_shared::certs::parse_chain(pem).map_err(|m| format!("tls.ca_pem: {m}"))?
            {
                store
                    .add(der)
                    .map_err(|err| format!("tls.ca_pem: not a usable CA certificate: {err}"))?;
            }
            Arc::new(store)
        }
        None => platform_roots(),
    };
    let builder = ClientConfig::builder_with_provider(super::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|err| format!("tls: {err}"))?;
    let mut client = if tls.verify() {
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        tracing::warn!(service = %service.name, "tls.verify is false: upstream certificates are NOT verified");
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(super::provider())))
            .with_no_client_auth()
    };
    // The protocol the connections will speak, and nothing else: an `h2`
    // target that does not agree to HTTP/2 is refused at the handshake.
    let alpn: &[u8] = if service.protocol == Protocol::H2 {
        b"h2"
    } else {
        b"http/1.1"
    };
    client.alpn_protocols = vec![alpn.to_vec()];
    let server_name = match tls.sni.as_deref().or(service.host_header.as_deref()) {
        Some(name) => {
            let host = name.rsplit_once(':').map_or(name, |(host, port)| {
                if port.bytes().all(|b| b.is_ascii_digit()) {
                    host
                } else {
                    name
                }
            });
            Some(
                ServerName::try_from(host.to_string())
                    .map_err(|_| format!("tls.sni: {host:?} is not a valid TLS server name"))?,
            )
        }
        None => None,
    };
    let identity = format!(
        "{}|{}|{}|{}",
        String::from_utf8_lossy(alpn),
        ca_pem.as_deref().map_or_else(
            || "platform".to_string(),
            tollgate_shared::secrets::fingerprint
        ),
        server_name
            .as_ref()
            .map_or_else(String::new, |n| n.to_str().into_owned()),
        tls.verify()
    );
    Ok(Some(Arc::new(UpstreamTlsClient {
        connector: TlsConnector::from(Arc::new(client)),
        server_name,
        identity,
    })))
}

/// `verify: false`: any certificate is accepted, but the handshake's
/// signatures are still verified with the provider's algorithms.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
