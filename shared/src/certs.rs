//! Certificate facts and checks, shared by the control plane (at write time)
//! and the data plane (when it builds its TLS server config).
//!
//! Why one module: the data plane must never be handed a certificate it
//! cannot serve, so everything that can be checked without a clock is checked
//! by [`crate::validate::validate`] on both sides (PEM parses, key matches the
//! leaf, every SNI covered by the leaf's SANs, no SNI claimed twice, at most
//! one default). Validity in time is checked only at write time
//! ([`check_validity`], called by the control plane for the certificates a
//! write adds or changes): a data plane that NACKed every snapshot once some
//! certificate expired would stop taking unrelated changes.
//!
//! Secrets: the private key is parsed here, and no message built here ever
//! contains any of its text (errors say what is wrong, never what was given).
//! Parsing uses rustls-pki-types (PEM) and the ring provider (keys), the same
//! code the data plane serves with, so "accepted" means "servable".

use std::sync::Arc;

use rustls::crypto::ring::sign::any_supported_type;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::model::{Certificate, CertificateInfo, GatewayConfig, Service};
use crate::ConfigError;

/// A certificate expiring sooner than this is accepted with a warning.
pub const EXPIRY_WARNING_DAYS: i64 = 30;

/// The chain in `pem`, leaf first; `field` names it in errors.
pub fn parse_chain(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let mut chain = Vec::new();
    for (i, item) in CertificateDer::pem_slice_iter(pem.as_bytes()).enumerate() {
        let der = item.map_err(|_| format!("certificate {i} of the chain is not valid PEM"))?;
        X509Certificate::from_der(der.as_ref()).map_err(|_| {
            format!("certificate {i} of the chain is not a valid X.509 certificate")
        })?;
        chain.push(der);
    }
    if chain.is_empty() {
        return Err("must be a PEM certificate chain (no CERTIFICATE block found)".into());
    }
    Ok(chain)
}

/// The private key in `pem`. The error never quotes the input.
pub fn parse_key(pem: &str) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|_| "must be a PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC)".to_string())
}

/// The chain and key as rustls serves them, after checking that the key is
/// one rustls can sign with and that it belongs to the leaf. Errors are
/// prefixed with the field they are about.
pub fn certified_key(cert_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>, String> {
    let chain = parse_chain(cert_pem).map_err(|m| format!("cert_pem: {m}"))?;
    let key = parse_key(key_pem).map_err(|m| format!("key_pem: {m}"))?;
    let signing = any_supported_type(&key).map_err(|_| {
        "key_pem: unsupported key type (RSA, ECDSA P-256/P-384 and Ed25519 are served)".to_string()
    })?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) => Ok(Arc::new(certified)),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err("key_pem: does not match the certificate's public key".into())
        }
        // The provider cannot tell (unknown key type): refuse rather than
        // serve a pair nobody checked.
        Err(_) => Err("key_pem: cannot check that it matches the certificate".into()),
    }
}

/// Facts about a leaf certificate, for checks and reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafFacts {
    pub subject: String,
    pub issuer: String,
    /// DNS names (lower-case) and IP addresses from subjectAltName.
    pub sans: Vec<String>,
    pub not_before: i64,
    pub not_after: i64,
    /// `sha256:<hex>` of the DER.
    pub fingerprint: String,
}

/// The facts of the first certificate of `cert_pem`.
pub fn leaf_facts(cert_pem: &str) -> Result<LeafFacts, String> {
    let chain = parse_chain(cert_pem)?;
    facts_of(&chain[0])
}

fn facts_of(der: &CertificateDer<'_>) -> Result<LeafFacts, String> {
    let (_, cert) = X509Certificate::from_der(der.as_ref())
        .map_err(|_| "the leaf is not a valid X.509 certificate".to_string())?;
    let mut sans = Vec::new();
    if let Ok(Some(extension)) = cert.subject_alternative_name() {
        for name in &extension.value.general_names {
            match name {
                GeneralName::DNSName(dns) => sans.push(dns.to_ascii_lowercase()),
                GeneralName::IPAddress(bytes) => match bytes.len() {
                    4 => sans.push(
                        std::net::Ipv4Addr::from([bytes[0], bytes[1], bytes[2], bytes[3]])
                            .to_string(),
                    ),
                    16 => {
                        let mut octets = [0u8; 16];
                        octets.copy_from_slice(bytes);
                        sans.push(std::net::Ipv6Addr::from(octets).to_string());
                    }
                    _ => {}
                },
                _ => {}
            }
        }
    }
    let validity = cert.validity();
    Ok(LeafFacts {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        sans,
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
        fingerprint: format!(
            "{}{}",
            crate::secrets::HASH_PREFIX,
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(der.as_ref()))
        ),
    })
}

/// What `mtls-auth` maps a client certificate by (its leaf, already
/// verified): see [`crate::model::MtlsCredential`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientIdentity {
    pub subject_cn: Option<String>,
    /// DNS names of the subjectAltName, lower-case.
    pub san_dns: Vec<String>,
    pub san_uri: Vec<String>,
    /// SHA-256 of the DER, bare lower-case hex.
    pub fingerprint_sha256: String,
    pub not_after: i64,
}

/// The identity facts of a client certificate's DER.
pub fn client_identity(der: &[u8]) -> Result<ClientIdentity, String> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|_| "the client certificate is not valid X.509".to_string())?;
    let mut identity = ClientIdentity {
        subject_cn: cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string),
        fingerprint_sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(der)),
        not_after: cert.validity().not_after.timestamp(),
        ..ClientIdentity::default()
    };
    if let Ok(Some(extension)) = cert.subject_alternative_name() {
        for name in &extension.value.general_names {
            match name {
                GeneralName::DNSName(dns) => identity.san_dns.push(dns.to_ascii_lowercase()),
                GeneralName::URI(uri) => identity.san_uri.push(uri.to_string()),
                _ => {}
            }
        }
    }
    Ok(identity)
}

/// Checks a CA's `crl_pem`: PEM CRLs (at least one), each issued by the CA
/// of `cert_pem` (its first certificate). The signature is checked by the
/// data plane's verifier when it uses the list.
pub fn check_crl(cert_pem: &str, crl_pem: &str) -> Result<(), String> {
    use rustls_pki_types::CertificateRevocationListDer;
    use x509_parser::revocation_list::CertificateRevocationList;
    let chain = parse_chain(cert_pem).map_err(|m| format!("cert_pem: {m}"))?;
    let (_, ca) = X509Certificate::from_der(chain[0].as_ref())
        .map_err(|_| "cert_pem: not a valid X.509 certificate".to_string())?;
    let mut count = 0;
    for (i, item) in CertificateRevocationListDer::pem_slice_iter(crl_pem.as_bytes()).enumerate() {
        let der = item.map_err(|_| format!("crl_pem: CRL {i} is not valid PEM"))?;
        let (_, crl) = CertificateRevocationList::from_der(der.as_ref())
            .map_err(|_| format!("crl_pem: CRL {i} is not a valid X.509 CRL"))?;
        if crl.issuer() != ca.subject() {
            return Err(format!(
                "crl_pem: CRL {i} is issued by {:?}, not by this CA ({:?})",
                crl.issuer().to_string(),
                ca.subject().to_string()
            ));
        }
        count += 1;
    }
    if count == 0 {
        return Err("crl_pem: must be a PEM X509 CRL (no X509 CRL block found)".into());
    }
    Ok(())
}

/// What reads show about `cert_pem`.
pub fn info(cert_pem: &str) -> Result<CertificateInfo, String> {
    let facts = leaf_facts(cert_pem)?;
    Ok(CertificateInfo {
        subject: facts.subject,
        issuer: facts.issuer,
        sans: facts.sans,
        not_before: rfc3339(facts.not_before),
        not_after: rfc3339(facts.not_after),
        not_after_unix: facts.not_after,
        fingerprint: facts.fingerprint,
    })
}

/// `2026-12-07T04:11:00Z`.
pub fn rfc3339(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let (year, month, day) = crate::calendar::civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Whether the SAN list covers `sni`: an exact name by an equal SAN or a
/// one-label wildcard SAN (`*.example.com` covers `a.example.com`), a
/// wildcard SNI only by the same wildcard SAN.
pub fn covers(sans: &[String], sni: &str) -> bool {
    let sni = sni.to_ascii_lowercase();
    sans.iter().any(|san| {
        if *san == sni {
            return true;
        }
        match (san.strip_prefix("*."), sni.starts_with("*.")) {
            (Some(suffix), false) => sni
                .split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
            _ => false,
        }
    })
}

/// The clock-free checks of one certificate (see the module doc): the
/// message starts with the field it is about.
pub fn check(certificate: &Certificate) -> Result<(), String> {
    let chain = parse_chain(&certificate.cert_pem).map_err(|m| format!("cert_pem: {m}"))?;
    match &certificate.key_pem {
        Some(key) => {
            certified_key(&certificate.cert_pem, key)?;
        }
        None if certificate.key_fingerprint.is_some() => {}
        // No key, no SNI, not the default: a CA certificate, only ever
        // trusted (a service's `tls.ca_certificate`), never served.
        None if certificate.snis.is_empty() && !certificate.default => return Ok(()),
        None => return Err("key_pem: required to serve snis or as the default".into()),
    }
    let facts = facts_of(&chain[0]).map_err(|m| format!("cert_pem: {m}"))?;
    if certificate.snis.is_empty() && !certificate.default {
        return Err(
            "snis: at least one SNI name is required (or default: true; a CA for \
                    tls.ca_certificate has no key_pem)"
                .into(),
        );
    }
    for (i, sni) in certificate.snis.iter().enumerate() {
        if !covers(&facts.sans, sni) {
            return Err(format!(
                "snis[{i}]: {sni:?} is not covered by the certificate's subjectAltName ({})",
                if facts.sans.is_empty() {
                    "none".to_string()
                } else {
                    facts.sans.join(", ")
                }
            ));
        }
    }
    Ok(())
}

/// Validity in time at `now` (Unix seconds): an error for an expired or
/// not-yet-valid certificate, a warning for one expiring within
/// [`EXPIRY_WARNING_DAYS`].
pub fn check_validity(cert_pem: &str, now: i64) -> Result<Option<String>, String> {
    let facts = leaf_facts(cert_pem).map_err(|m| format!("cert_pem: {m}"))?;
    if now < facts.not_before {
        return Err(format!(
            "cert_pem: not valid before {}",
            rfc3339(facts.not_before)
        ));
    }
    if now >= facts.not_after {
        return Err(format!("cert_pem: expired on {}", rfc3339(facts.not_after)));
    }
    let days = (facts.not_after - now) / 86_400;
    if days < EXPIRY_WARNING_DAYS {
        return Ok(Some(format!(
            "cert_pem: expires in {days} days ({})",
            rfc3339(facts.not_after)
        )));
    }
    Ok(None)
}

/// The write-time checks that need a clock or the previous state, run by
/// the control plane after [`crate::validate::validate`]: each certificate
/// the write adds or changes must be valid now (else an error naming it and
/// the field); one expiring within [`EXPIRY_WARNING_DAYS`] is accepted with a
/// warning, and so is a new or changed service with `tls.verify: false`.
/// Returns the warnings, each naming its entity and field.
pub fn check_write(
    current: &GatewayConfig,
    next: &GatewayConfig,
    now: i64,
) -> Result<Vec<String>, ConfigError> {
    let mut warnings = Vec::new();
    for certificate in &next.certificates {
        let unchanged = current
            .certificates
            .iter()
            .any(|old| old.name == certificate.name && old.cert_pem == certificate.cert_pem);
        if unchanged {
            continue;
        }
        let label = ConfigError::new("certificate", &certificate.name, "").entity;
        match check_validity(&certificate.cert_pem, now) {
            Err(message) => {
                return Err(ConfigError::new("certificate", &certificate.name, message))
            }
            Ok(Some(warning)) => warnings.push(format!("{label}: {warning}")),
            Ok(None) => {}
        }
    }
    for service in &next.services {
        let insecure = service.tls.as_ref().is_some_and(|tls| !tls.verify());
        let unchanged = current.services.iter().any(|old| old == service);
        if insecure && !unchanged {
            warnings.push(format!(
                "{}: tls.verify: false: the certificates of its targets are NOT verified",
                ConfigError::new("service", &service.name, "").entity
            ));
        }
    }
    Ok(warnings)
}

/// The current time in Unix seconds, for [`check_write`].
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX)
        })
}

/// A service's `tls` block: only with `protocol: https`, one CA source at
/// most, a CA bundle that parses, a plausible `sni`.
pub fn check_upstream_tls(service: &Service) -> Result<(), String> {
    let Some(tls) = &service.tls else {
        return Ok(());
    };
    if !service.protocol.uses_tls() {
        return Err("tls: only with protocol: https or h2".into());
    }
    if tls.ca_pem.is_some() && tls.ca_certificate.is_some() {
        return Err("tls: set ca_pem or ca_certificate, not both".into());
    }
    if let Some(pem) = &tls.ca_pem {
        parse_chain(pem).map_err(|m| format!("tls.ca_pem: {m}"))?;
    }
    if let Some(sni) = &tls.sni {
        if rustls_pki_types::ServerName::try_from(sni.as_str()).is_err() || sni.contains('*') {
            return Err(format!("tls.sni: {sni:?} is not a valid server name"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("params");
        let cert = params.self_signed(&key).expect("cert");
        (cert.pem(), key.serialize_pem())
    }

    fn certificate(names: &[&str], snis: &[&str]) -> Certificate {
        let (cert_pem, key_pem) = self_signed(names);
        Certificate {
            tags: Vec::new(),
            name: "c".into(),
            cert_pem,
            key_pem: Some(key_pem),
            key_fingerprint: None,
            snis: snis.iter().map(|s| s.to_string()).collect(),
            default: false,
            crl_pem: None,
            info: None,
        }
    }

    #[test]
    fn a_good_pair_passes_and_shows_its_facts() {
        let cert = certificate(&["api.example.com", "*.example.com"], &["api.example.com"]);
        check(&cert).expect("valid");
        let info = info(&cert.cert_pem).expect("info");
        assert_eq!(info.sans, vec!["api.example.com", "*.example.com"]);
        assert!(info.fingerprint.starts_with("sha256:"));
    }

    #[test]
    fn mismatched_key_is_named_and_not_quoted() {
        let mut cert = certificate(&["a.example.com"], &["a.example.com"]);
        let (_, other_key) = self_signed(&["b.example.com"]);
        cert.key_pem = Some(other_key.clone());
        let err = check(&cert).unwrap_err();
        assert!(err.starts_with("key_pem: does not match"), "{err}");
        let body: String = other_key.lines().nth(1).unwrap_or_default().into();
        assert!(!err.contains(&body));
    }

    #[test]
    fn garbage_pem_is_named() {
        let mut cert = certificate(&["a.example.com"], &["a.example.com"]);
        cert.cert_pem = "-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n".into();
        assert!(check(&cert).unwrap_err().starts_with("cert_pem:"));
        let mut cert = certificate(&["a.example.com"], &["a.example.com"]);
        cert.key_pem =
            Some("-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n".into());
        assert!(check(&cert).unwrap_err().starts_with("key_pem:"));
    }

    #[test]
    fn snis_must_be_covered() {
        let cert = certificate(&["*.example.com"], &["a.example.com", "*.example.com"]);
        check(&cert).expect("wildcard covers");
        let cert = certificate(&["*.example.com"], &["a.b.example.com"]);
        assert!(check(&cert).unwrap_err().starts_with("snis[0]:"));
        let cert = certificate(&["a.example.com"], &["*.example.com"]);
        assert!(check(&cert).unwrap_err().starts_with("snis[0]:"));
    }

    #[test]
    fn a_ca_without_key_is_trusted_never_served_and_one_default_at_most() {
        let mut ca = certificate(&["ca.example.com"], &[]);
        ca.key_pem = None;
        check(&ca).expect("a CA entry needs no key");
        ca.snis = vec!["ca.example.com".into()];
        assert!(check(&ca).unwrap_err().starts_with("key_pem: required"));

        let mut first = certificate(&["a.example.com"], &["a.example.com"]);
        first.default = true;
        let mut second = certificate(&["b.example.com"], &["b.example.com"]);
        second.name = "d".into();
        second.default = true;
        let config = GatewayConfig {
            certificates: vec![first.clone(), second],
            ..GatewayConfig::default()
        };
        let err = crate::validate::validate(&config).unwrap_err().to_string();
        assert!(
            err.contains("default: certificate \"c\" is already the default"),
            "{err}"
        );
        let mut again = first.clone();
        again.name = "e".into();
        again.default = false;
        let config = GatewayConfig {
            certificates: vec![first, again],
            ..GatewayConfig::default()
        };
        let err = crate::validate::validate(&config).unwrap_err().to_string();
        assert!(
            err.contains("snis[0]: \"a.example.com\" is already served"),
            "{err}"
        );
    }

    #[test]
    fn validity_in_time() {
        let cert = certificate(&["a.example.com"], &["a.example.com"]);
        let facts = leaf_facts(&cert.cert_pem).expect("facts");
        assert_eq!(
            check_validity(&cert.cert_pem, facts.not_before + 1),
            Ok(None)
        );
        assert!(check_validity(&cert.cert_pem, facts.not_after)
            .unwrap_err()
            .contains("expired"));
        assert!(check_validity(&cert.cert_pem, facts.not_before - 10)
            .unwrap_err()
            .contains("not valid before"));
        let warning = check_validity(&cert.cert_pem, facts.not_after - 86_400 * 3)
            .expect("accepted")
            .expect("warned");
        assert!(warning.contains("expires in 3 days"), "{warning}");
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_767_225_599), "2025-12-31T23:59:59Z");
    }
}
