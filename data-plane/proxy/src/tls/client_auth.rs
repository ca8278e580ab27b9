//! Asking TLS clients for a certificate, for `mtls-auth`.
//!
//! The listener cannot know at handshake time which route a connection's
//! requests will take (HTTP/2 carries many, for any host the certificate
//! covers), so it never decides trust here: when some plugin of the snapshot
//! checks client certificates, the server config *requests* one (listing
//! those plugins' CAs as acceptable authorities) but does not require it,
//! and accepts whatever chain the client presents once the client has proven
//! it holds the leaf's key (the handshake signature, checked here with the
//! provider's algorithms). The chain then rides on the connection
//! (`tollgate_plugin_api::ClientCertificate`) and every request's route
//! verifies it against its own CAs, CRLs and the current time.
//!
//! So by default an untrusted certificate fails the *request* (401
//! `invalid_client_certificate`), not the handshake: other routes on the
//! same listener keep working for that client. With
//! `--tls-refuse-untrusted-client-certs` ([`ClientCertPolicy::Refuse`]) a
//! presented certificate that chains to none of the snapshot's client CAs
//! (or is expired, or not for client auth) fails the handshake instead;
//! revocation stays per route (each `mtls-auth` instance's CRLs), and a
//! client without a certificate is still let in. rustls has no renegotiation
//! and no TLS 1.3 post-handshake authentication, so a connection's
//! certificate never changes after the handshake.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

/// What the handshake does with a presented certificate that no client CA
/// of the snapshot issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientCertPolicy {
    /// Let it in; the route answers 401 `invalid_client_certificate`.
    #[default]
    Answer,
    /// Fail the handshake.
    Refuse,
}

/// Requests (never requires) a client certificate; see the module doc.
#[derive(Debug)]
pub struct RequestClientCertificate {
    hints: Vec<DistinguishedName>,
    provider: Arc<CryptoProvider>,
    /// With [`ClientCertPolicy::Refuse`]: every client CA of the snapshot.
    union: Option<Arc<dyn ClientCertVerifier>>,
}

impl RequestClientCertificate {
    /// `cas`: the CA certificates (DER) of the snapshot's plugins; their
    /// subjects are listed in the request.
    pub fn new(
        cas: &[Vec<u8>],
        policy: ClientCertPolicy,
        provider: Arc<CryptoProvider>,
    ) -> Result<RequestClientCertificate, String> {
        let mut roots = RootCertStore::empty();
        for der in cas {
            roots
                .add(CertificateDer::from(der.clone()))
                .map_err(|err| format!("client CA: {err}"))?;
        }
        let hints = roots.subjects();
        let union = match policy {
            ClientCertPolicy::Answer => None,
            ClientCertPolicy::Refuse => Some(
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .allow_unauthenticated()
                    .build()
                    .map_err(|err| format!("client CAs: {err}"))?,
            ),
        };
        Ok(RequestClientCertificate {
            hints,
            provider,
            union,
        })
    }
}

impl ClientCertVerifier for RequestClientCertificate {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    /// Chain trust is each route's decision (`mtls-auth`), per request;
    /// under [`ClientCertPolicy::Refuse`] the chain must also verify to one
    /// of the snapshot's client CAs here.
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match &self.union {
            Some(union) => union.verify_client_cert(end_entity, intermediates, now),
            None => Ok(ClientCertVerified::assertion()),
        }
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
