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
//! So an untrusted certificate fails the *request* (401
//! `invalid_client_certificate`), not the handshake: other routes on the
//! same listener keep working for that client. rustls has no renegotiation
//! and no TLS 1.3 post-handshake authentication, so a connection's
//! certificate never changes after the handshake.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// Requests (never requires) a client certificate; see the module doc.
#[derive(Debug)]
pub struct RequestClientCertificate {
    hints: Vec<DistinguishedName>,
    provider: Arc<CryptoProvider>,
}

impl RequestClientCertificate {
    /// `subjects`: DER subjects of the CAs to list in the request.
    pub fn new(subjects: &[Vec<u8>], provider: Arc<CryptoProvider>) -> RequestClientCertificate {
        RequestClientCertificate {
            hints: subjects
                .iter()
                .map(|subject| DistinguishedName::from(subject.clone()))
                .collect(),
            provider,
        }
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

    /// Chain trust is each route's decision (`mtls-auth`), per request.
    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
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
