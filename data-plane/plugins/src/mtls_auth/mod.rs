//! `mtls-auth`: a consumer proves who it is with a TLS client certificate.
//!
//! The certificate is negotiated once per connection (the listener asks for
//! one whenever some plugin of the snapshot checks client certificates, see
//! `tollgate_plugin_api::client_cert`), but this plugin decides per request:
//! the chain the connection presented is verified against *this* instance's
//! CAs (`ca_certificates`, with their CRLs), for client authentication, at
//! the current time, by rustls's WebPKI verifier. A request for another
//! route on the same connection (HTTP/1 keep-alive, HTTP/2 coalescing) is
//! checked against that route's CAs, so it cannot ride on an earlier check.
//!
//! The verified leaf maps to a consumer through its `mtls` credential
//! (fingerprint, URI SAN, DNS SAN, subject CN: the first that matches).
//! Answers: no certificate -> the anonymous consumer or 401 `unauthorized`;
//! a certificate that does not verify (unknown CA, expired, revoked, not for
//! client auth) -> 401 `invalid_client_certificate`; one that verifies but
//! maps to no consumer -> 401 `unknown_client_certificate`. The reason is
//! logged at debug, never sent beyond the static message.
//!
//! The verdict (chain check and mapping) is kept on the connection per
//! instance ([`ClientCertificate::memo`]); a new snapshot (a new CRL) builds
//! new instances, so open connections are judged again. Expiry is compared
//! on every request, so a long connection does not outlive its certificate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::header::{HeaderName, HeaderValue};
use http::request;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use tollgate_plugin_api::{self as api, ClientCertificate, Identity, Refusal, RefusalKind};
use tollgate_shared::model::GatewayConfig;
use tollgate_shared::plugins::MtlsAuthConfig;

use crate::consumers::{ConsumerIdentity, ConsumerIndex, CredentialOwner};

mod plugin;
pub use plugin::MtlsAuthFactory;

/// Process-unique instance ids: the key of verdicts kept on connections.
static INSTANCE: AtomicU64 = AtomicU64::new(1);

/// Headers about the client certificate that only the gateway may set.
static OWNED_HEADERS: [HeaderName; 1] = [HeaderName::from_static("x-forwarded-client-cert")];

/// Why a presented certificate was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertReject {
    /// Not issued (through the presented intermediates) by a trusted CA, or
    /// a bad signature, or not parseable.
    Untrusted,
    Expired,
    Revoked,
    /// Its extended key usage does not allow client authentication.
    NotForClientAuth,
}

impl CertReject {
    pub const fn message(self) -> &'static str {
        match self {
            CertReject::Untrusted => "the client certificate is not issued by a trusted CA",
            CertReject::Expired => "the client certificate has expired or is not valid yet",
            CertReject::Revoked => "the client certificate has been revoked",
            CertReject::NotForClientAuth => {
                "the client certificate is not valid for client authentication"
            }
        }
    }

    fn of(error: &rustls::Error) -> CertReject {
        match error {
            rustls::Error::InvalidCertificate(reason) => match reason {
                CertificateError::Revoked => CertReject::Revoked,
                CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. } => CertReject::Expired,
                CertificateError::InvalidPurpose
                | CertificateError::InvalidPurposeContext { .. } => CertReject::NotForClientAuth,
                _ => CertReject::Untrusted,
            },
            _ => CertReject::Untrusted,
        }
    }

    fn refusal(self) -> Refusal {
        Refusal::new(RefusalKind::InvalidClientCertificate).with_message(self.message())
    }
}

/// What one instance decided about one connection's certificate.
#[derive(Debug)]
enum Verdict {
    /// Verified and mapped; valid until `not_after` (Unix seconds).
    Consumer {
        owner: CredentialOwner,
        not_after: i64,
    },
    /// Verified, but no consumer has a matching `mtls` credential.
    Unmapped {
        not_after: i64,
    },
    Rejected(CertReject),
}

pub struct MtlsAuth {
    id: u64,
    verifier: Arc<dyn ClientCertVerifier>,
    /// The trusted CA certificates (DER), for the listener's request.
    ca_certificates: Vec<Vec<u8>>,
    anonymous: Option<Arc<ConsumerIdentity>>,
    index: Arc<ConsumerIndex>,
}

impl std::fmt::Debug for MtlsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MtlsAuth")
            .field("id", &self.id)
            .field("cas", &self.ca_certificates.len())
            .finish_non_exhaustive()
    }
}

/// The crypto provider the verifier uses (ring, as everywhere in Tollgate).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<Arc<rustls::crypto::CryptoProvider>> =
        std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            #[allow(deprecated)]
            let provider = rustls::crypto::ring::default_provider();
            Arc::new(provider)
        })
        .clone()
}

impl MtlsAuth {
    /// Builds the verifier of `config`'s CAs (every certificate of each named
    /// entry's `cert_pem` is a trust anchor; its `crl_pem` is checked).
    pub fn new(
        config: &MtlsAuthConfig,
        gateway: &GatewayConfig,
        index: &Arc<ConsumerIndex>,
    ) -> Result<MtlsAuth, String> {
        let mut roots = RootCertStore::empty();
        let mut ca_certificates: Vec<Vec<u8>> = Vec::new();
        let mut crls: Vec<CertificateRevocationListDer<'static>> = Vec::new();
        for (i, name) in config.ca_certificates.iter().enumerate() {
            let field = format!("config.ca_certificates[{i}]");
            let entry = gateway
                .certificates
                .iter()
                .find(|c| &c.name == name)
                .ok_or_else(|| format!("{field}: certificate {name:?} does not exist"))?;
            let chain = tollgate_shared::certs::parse_chain(&entry.cert_pem)
                .map_err(|m| format!("{field}: certificate {name:?}: cert_pem: {m}"))?;
            for der in chain {
                ca_certificates.push(der.as_ref().to_vec());
                roots.add(der).map_err(|_| {
                    format!("{field}: certificate {name:?}: cert_pem: not usable as a trust anchor")
                })?;
            }
            if let Some(crl_pem) = &entry.crl_pem {
                for crl in CertificateRevocationListDer::pem_slice_iter(crl_pem.as_bytes()) {
                    crls.push(crl.map_err(|_| {
                        format!("{field}: certificate {name:?}: crl_pem: not valid PEM")
                    })?);
                }
            }
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .with_crls(crls)
            // A CA without a CRL: nothing to check against, not a refusal.
            .allow_unknown_revocation_status()
            .build()
            .map_err(|err| format!("config.ca_certificates: {err}"))?;
        let anonymous =
            match &config.anonymous {
                Some(name) => Some(index.consumer(name).cloned().ok_or_else(|| {
                    format!("config.anonymous: consumer {name:?} does not exist")
                })?),
                None => None,
            };
        Ok(MtlsAuth {
            id: INSTANCE.fetch_add(1, Ordering::Relaxed),
            verifier,
            ca_certificates,
            anonymous,
            index: index.clone(),
        })
    }

    /// Verifies and maps a presented chain (once per connection and instance).
    fn decide(&self, certificate: &ClientCertificate) -> Verdict {
        let leaf = CertificateDer::from(certificate.leaf());
        let intermediates: Vec<CertificateDer<'_>> = certificate
            .intermediates()
            .iter()
            .map(|der| CertificateDer::from(der.as_slice()))
            .collect();
        if let Err(err) = self
            .verifier
            .verify_client_cert(&leaf, &intermediates, UnixTime::now())
        {
            let reject = CertReject::of(&err);
            tracing::debug!(error = %err, reason = reject.message(), "client certificate refused");
            return Verdict::Rejected(reject);
        }
        let Ok(identity) = tollgate_shared::certs::client_identity(certificate.leaf()) else {
            return Verdict::Rejected(CertReject::Untrusted);
        };
        match self.index.mtls_owner(&identity) {
            Some(owner) => Verdict::Consumer {
                owner: owner.clone(),
                not_after: identity.not_after,
            },
            None => Verdict::Unmapped {
                not_after: identity.not_after,
            },
        }
    }

    /// The attempt of this method on a request.
    pub fn attempt(&self, request: &mut request::Parts) -> api::AuthAttempt {
        let Some(certificate) = request.extensions.get::<Arc<ClientCertificate>>().cloned() else {
            return api::AuthAttempt::NoCredential;
        };
        let verdict = certificate.memo(self.id, || self.decide(&certificate));
        let now = UnixTime::now().as_secs();
        let expired = |not_after: i64| u64::try_from(not_after).map_or(true, |t| now > t);
        match &*verdict {
            Verdict::Rejected(reject) => api::AuthAttempt::Rejected(reject.refusal()),
            Verdict::Consumer { not_after, .. } | Verdict::Unmapped { not_after }
                if expired(*not_after) =>
            {
                api::AuthAttempt::Rejected(CertReject::Expired.refusal())
            }
            Verdict::Unmapped { .. } => {
                api::AuthAttempt::Rejected(Refusal::new(RefusalKind::UnknownClientCertificate))
            }
            Verdict::Consumer { owner, .. } => {
                owner.consumer.write_headers(&mut request.headers);
                api::AuthAttempt::Authenticated(
                    owner.consumer.identity(Some(&owner.credential), false),
                )
            }
        }
    }

    /// The consumer used when no certificate is presented, if any.
    pub fn anonymous(&self) -> Option<&Arc<ConsumerIdentity>> {
        self.anonymous.as_ref()
    }

    pub fn ca_certificates(&self) -> &[Vec<u8>] {
        &self.ca_certificates
    }

    pub fn owned_headers(&self) -> &[HeaderName] {
        &OWNED_HEADERS
    }
}

/// No HTTP scheme announces a TLS client certificate: the empty challenge
/// tells the auth set to list none for this method.
pub const NO_CHALLENGE: HeaderValue = HeaderValue::from_static("");

/// The identity of the anonymous consumer, its headers written.
pub fn anonymous_identity(auth: &MtlsAuth, request: &mut request::Parts) -> Option<Identity> {
    crate::auth::anonymous_identity(auth.anonymous(), request)
}

#[cfg(test)]
mod tests;
