//! TLS on the data plane: termination for clients (`--tls-listen`) and TLS
//! to upstreams (`protocol: https`, in [`upstream`]).
//!
//! Why it is shaped this way:
//! - The certificates come from the control plane, so the rustls
//!   [`ServerConfig`] is a product of the snapshot: [`server_config`] builds
//!   it once per snapshot compile (chains and keys parsed, the SNI index
//!   built) and it lives in the `CompiledSnapshot`. A handshake only loads the
//!   snapshot pointer and clones an `Arc`: no lock, no parsing, nothing built
//!   per connection. Rotation is therefore the snapshot swap itself: new
//!   handshakes see the new certificate once the data plane has ACKed, open
//!   connections keep the config they were accepted with.
//! - Session resumption survives rotations: the ticket keys ([`TlsShared`])
//!   and the stateful session cache are made once per process and handed to
//!   every snapshot's config, so a client resumes across config changes.
//! - Certificate choice ([`SniResolver`]) is explicit: the exact SNI, then
//!   the longest matching `*.` wildcard, then the certificate marked
//!   `default`; otherwise (or without SNI and no default) the handshake is
//!   refused with an alert, never answered with some other certificate.
//! - Client certificates ([`client_auth`]): requested, never required, when
//!   some plugin of the snapshot checks them (`mtls-auth`); each request's
//!   route verifies the connection's chain itself.
//! - Versions are TLS 1.3 and 1.2 only, with rustls's cipher suites (AEAD
//!   only), ALPN `h2` and `http/1.1`.

pub mod client_auth;
pub mod upstream;

use std::collections::HashMap;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tollgate_shared::model::GatewayConfig;
use tollgate_telemetry::metrics::HandshakeResult;

/// Session-resumption state shared by every snapshot's [`ServerConfig`],
/// and the process's client-certificate policy.
#[derive(Debug)]
pub struct TlsShared {
    ticketer: Arc<dyn rustls::server::ProducesTickets>,
    sessions: Arc<ServerSessionMemoryCache>,
    /// `--tls-refuse-untrusted-client-certs`.
    pub client_cert_policy: client_auth::ClientCertPolicy,
}

/// Stateful sessions kept for TLS 1.2 resumption by id.
const SESSION_CACHE_SIZE: usize = 16 * 1024;

impl TlsShared {
    /// Ticket keys (rotated by rustls every 6 hours) and the session cache.
    pub fn new() -> Result<TlsShared, String> {
        let ticketer = rustls::crypto::ring::Ticketer::new()
            .map_err(|err| format!("cannot create the TLS session ticketer: {err}"))?;
        Ok(TlsShared {
            ticketer,
            sessions: ServerSessionMemoryCache::new(SESSION_CACHE_SIZE),
            client_cert_policy: client_auth::ClientCertPolicy::default(),
        })
    }
}

/// The crypto provider everything here uses, made once. ring, because it
/// builds with a plain C compiler (aws-lc-rs needs cmake and clang); rustls
/// marks ring's provider deprecated only because it lacks the post-quantum
/// hybrid key exchange, which aws-lc-rs has.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
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

/// What a TLS connection negotiated, for the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsInfo {
    /// `TLSv1.3` or `TLSv1.2`.
    pub version: &'static str,
    /// `h2`, `http/1.1`, or empty when the client offered no ALPN.
    pub alpn: &'static str,
}

impl TlsInfo {
    pub fn of(connection: &rustls::ServerConnection) -> TlsInfo {
        TlsInfo {
            version: match connection.protocol_version() {
                Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
                Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
                _ => "",
            },
            alpn: match connection.alpn_protocol() {
                Some(b"h2") => "h2",
                Some(b"http/1.1") => "http/1.1",
                _ => "",
            },
        }
    }
}

/// Builds the server config of a validated snapshot; `None` when it has no
/// certificate to serve (then every handshake is refused as
/// `no_certificate`). CA-only entries (no SNI, not the default) are skipped.
/// With `client_cas` (the CA certificates of the snapshot's plugins that
/// check client certificates), clients are asked for one ([`client_auth`]).
pub fn server_config(
    config: &GatewayConfig,
    shared: &TlsShared,
    client_cas: &[Vec<u8>],
) -> Result<Option<Arc<ServerConfig>>, String> {
    let served = |c: &tollgate_shared::model::Certificate| !c.snis.is_empty() || c.default;
    if !config.certificates.iter().any(served) {
        return Ok(None);
    }
    let resolver = SniResolver::build(config)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|err| format!("TLS: {err}"))?;
    let builder = if client_cas.is_empty() {
        builder.with_no_client_auth()
    } else {
        builder.with_client_cert_verifier(Arc::new(client_auth::RequestClientCertificate::new(
            client_cas,
            shared.client_cert_policy,
            provider(),
        )?))
    };
    let mut server = builder.with_cert_resolver(Arc::new(resolver));
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    server.ticketer = Arc::clone(&shared.ticketer);
    server.session_storage = Arc::clone(&shared.sessions) as _;
    Ok(Some(Arc::new(server)))
}

/// `(name, notAfter)` of each certificate, for the expiry gauge.
pub fn expiries(config: &GatewayConfig) -> Vec<(&str, i64)> {
    config
        .certificates
        .iter()
        .filter_map(|certificate| {
            tollgate_shared::certs::leaf_facts(&certificate.cert_pem)
                .ok()
                .map(|facts| (certificate.name.as_str(), facts.not_after))
        })
        .collect()
}

/// Picks the certificate for a ClientHello (see the module doc).
#[derive(Debug, Default)]
pub struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` stored under `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl SniResolver {
    /// Parses every certificate of `config` (already validated).
    pub fn build(config: &GatewayConfig) -> Result<SniResolver, String> {
        let mut resolver = SniResolver::default();
        for certificate in &config.certificates {
            let label = format!("certificate {:?}", certificate.name);
            if certificate.snis.is_empty() && !certificate.default {
                continue; // a CA for upstream TLS, never served
            }
            let key = certificate
                .key_pem
                .as_deref()
                .ok_or_else(|| format!("{label}: key_pem: missing from the snapshot"))?;
            let certified = tollgate_shared::certs::certified_key(&certificate.cert_pem, key)
                .map_err(|m| format!("{label}: {m}"))?;
            for sni in &certificate.snis {
                let sni = sni.to_ascii_lowercase();
                match sni.strip_prefix("*.") {
                    Some(suffix) => resolver
                        .wildcard
                        .insert(suffix.to_string(), Arc::clone(&certified)),
                    None => resolver.exact.insert(sni, Arc::clone(&certified)),
                };
            }
            if certificate.default {
                resolver.default = Some(Arc::clone(&certified));
            }
        }
        Ok(resolver)
    }

    /// The certificate for `server_name` (compared lower-case, without a
    /// trailing dot); no allocation unless the name needs lower-casing.
    pub fn pick(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = server_name {
            let name = name.trim_end_matches('.');
            // rustls hands over lower-case names; copy only when it did not.
            let name: std::borrow::Cow<'_, str> = if name.bytes().any(|b| b.is_ascii_uppercase()) {
                std::borrow::Cow::Owned(name.to_ascii_lowercase())
            } else {
                std::borrow::Cow::Borrowed(name)
            };
            if let Some(found) = self.exact.get(name.as_ref()) {
                return Some(Arc::clone(found));
            }
            // Longest wildcard first: a.b.example.com tries b.example.com,
            // then example.com, then com.
            let mut rest = name.as_ref();
            while let Some((_, suffix)) = rest.split_once('.') {
                if let Some(found) = self.wildcard.get(suffix) {
                    return Some(Arc::clone(found));
                }
                rest = suffix;
            }
        }
        self.default.clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(client_hello.server_name())
    }
}

/// Sorts a failed server handshake into a `tollgate_tls_handshakes_total`
/// result from the error tokio-rustls returned.
pub fn classify_handshake_error(err: &std::io::Error) -> HandshakeResult {
    let Some(tls) = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return HandshakeResult::Protocol;
    };
    match tls {
        rustls::Error::AlertReceived(_) => HandshakeResult::Alert,
        // What rustls says when the resolver found no certificate.
        rustls::Error::General(message) if message.contains("certificate") => {
            HandshakeResult::NoCertificate
        }
        _ => HandshakeResult::Protocol,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate(name: &str, snis: &[&str], default: bool) -> String {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let sans: Vec<String> = snis.iter().map(|s| s.to_string()).collect();
        let cert = rcgen::CertificateParams::new(sans)
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        format!(
            "  - name: {name}\n    cert_pem: {:?}\n    key_pem: {:?}\n    snis: {snis:?}\n    default: {default}\n",
            cert.pem(),
            key.serialize_pem()
        )
    }

    fn config(certificates: &[String]) -> GatewayConfig {
        let yaml = format!("certificates:\n{}", certificates.concat());
        let config = GatewayConfig::from_yaml(&yaml).expect("yaml");
        tollgate_shared::validate::validate(&config).expect("valid");
        config
    }

    fn end_entity(key: &Option<Arc<CertifiedKey>>) -> Vec<u8> {
        key.as_ref()
            .and_then(|k| k.end_entity_cert().ok())
            .map(|c| c.to_vec())
            .unwrap_or_default()
    }

    #[test]
    fn exact_then_longest_wildcard_then_default() {
        let config = config(&[
            certificate("api", &["api.example.com"], false),
            certificate("wild", &["*.example.com"], false),
            certificate("deep", &["*.b.example.com"], false),
        ]);
        let resolver = SniResolver::build(&config).expect("builds");
        let exact = end_entity(&resolver.pick(Some("api.example.com")));
        let wild = end_entity(&resolver.pick(Some("x.example.com")));
        let deep = end_entity(&resolver.pick(Some("a.b.example.com")));
        assert!(!exact.is_empty() && !wild.is_empty() && !deep.is_empty());
        assert_ne!(exact, wild);
        assert_ne!(wild, deep);
        assert_eq!(end_entity(&resolver.pick(Some("API.example.com."))), exact);
        assert!(
            resolver.pick(Some("example.org")).is_none(),
            "no match, no default"
        );
        assert!(resolver.pick(None).is_none(), "no SNI, no default");

        let config = config_with_default();
        let resolver = SniResolver::build(&config).expect("builds");
        assert!(resolver.pick(None).is_some());
        assert!(resolver.pick(Some("example.org")).is_some());
    }

    fn config_with_default() -> GatewayConfig {
        config(&[
            certificate("api", &["api.example.com"], false),
            certificate("fallback", &["fallback.example.net"], true),
        ])
    }

    #[test]
    fn server_config_offers_h2_and_resumption() {
        let shared = TlsShared::new().expect("shared");
        let server = server_config(&config_with_default(), &shared, &[])
            .expect("builds")
            .expect("has certificates");
        assert_eq!(
            server.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        assert!(server.ticketer.enabled());
        assert!(server_config(&GatewayConfig::default(), &shared, &[])
            .expect("builds")
            .is_none());
    }
}
