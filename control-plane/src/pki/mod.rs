//! The cluster PKI (issue 17): the CA that authenticates both ends of the
//! config stream.
//!
//! - [`ClusterPki`]: the cluster CA, created on first start in
//!   `<data-dir>/pki/` (ECDSA P-256; directory 0700, key 0600, each file
//!   written atomically) or given with `--cluster-ca-cert`/`--cluster-ca-key`;
//!   the stream's server certificate (made at every start for the name
//!   [`SERVER_NAME`], or given with `--stream-tls-cert`/`--stream-tls-key`);
//!   and the signing of data planes' CSRs into short-lived client
//!   certificates (`--data-plane-cert-ttl-secs`, 7 days by default).
//! - [`joins`]: one-time join tokens (stored as SHA-256 digests with expiry,
//!   consumed atomically) and the revoked node ids.
//! - [`transport`]: the TLS accept loop of the stream listener; it reads the
//!   verified data plane's node id from its certificate into the
//!   connection's info, where the stream handlers find it.
//! - [`enroll`]: the `Join` and `Renew` calls.
//! - [`operators`]: operator client certificates for the admin API (signed
//!   here, [`ClusterPki::sign_operator`]), and their revocation.
//! - The admin API's TLS config ([`ClusterPki::admin_server_config`]): a
//!   server certificate from the CA (or given files), operator certificates
//!   from the CA or `--admin-client-ca` verified when presented.
//!
//! Why a private CA and a fixed server name: data planes trust only the CA
//! they pinned at join time (by the hash inside the token), so the name they
//! check need not be a DNS name an outside CA would vouch for, and a data
//! plane can dial the control plane by any address. The CA issues client
//! certificates with the `clientAuth` EKU only, so a data plane's
//! certificate cannot serve as a control plane's.

pub mod enroll;
pub mod joins;
pub mod operators;
pub mod transport;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use tollgate_shared::cluster_pki::{
    self, DATA_PLANE_OU, OPERATOR_OU, OPERATOR_URI_PREFIX, SERVER_NAME,
};
use tollgate_shared::private_files as files;

use crate::access::Role;
use crate::error::CpError;

/// Files of a CA or a certificate given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PemFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// How long a data-plane certificate is valid by default.
pub const DEFAULT_CERT_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Issued certificates start this far in the past (clock skew).
const BACKDATE: Duration = Duration::from_secs(300);
/// The generated CA's lifetime.
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// The generated server certificate's lifetime (remade at every start).
const SERVER_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// A certificate issued to a data plane.
#[derive(Debug, Clone)]
pub struct Issued {
    pub node_id: String,
    pub cert_pem: String,
    pub not_after: i64,
}

/// The cluster CA and what it signs.
pub struct ClusterPki {
    issuer: rcgen::Certificate,
    issuer_key: KeyPair,
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    cert_ttl: Duration,
}

impl std::fmt::Debug for ClusterPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterPki")
            .field("ca_pin", &hex::encode(self.ca_pin()))
            .field("cert_ttl", &self.cert_ttl)
            .finish_non_exhaustive()
    }
}

fn startup(message: impl std::fmt::Display) -> CpError {
    CpError::Startup(format!("cluster PKI: {message}"))
}

fn offset(time: SystemTime) -> time::OffsetDateTime {
    time::OffsetDateTime::from(time)
}

impl ClusterPki {
    /// Loads the CA from `given`, or from `<data_dir>/pki/`, creating it
    /// there on first start. Blocking (files).
    pub fn open(
        data_dir: &Path,
        given: Option<&PemFiles>,
        cert_ttl: Duration,
    ) -> Result<ClusterPki, CpError> {
        let (ca_pem, key_pem) = match given {
            Some(files) => (
                files::read_text(&files.cert).map_err(startup)?,
                files::read_text(&files.key).map_err(startup)?,
            ),
            None => {
                let dir = data_dir.join("pki");
                let cert_path = dir.join("ca.pem");
                let key_path = dir.join("ca-key.pem");
                if cert_path.exists() || key_path.exists() {
                    (
                        files::read_text(&cert_path).map_err(startup)?,
                        files::read_text(&key_path).map_err(startup)?,
                    )
                } else {
                    let (cert, key) = new_ca()?;
                    files::create_private_dir(&dir).map_err(startup)?;
                    // The key first: a CA certificate without its key on disk
                    // would be reloaded as a broken pair.
                    files::write_private(&key_path, key.as_bytes()).map_err(startup)?;
                    files::write_private(&cert_path, cert.as_bytes()).map_err(startup)?;
                    tracing::info!(dir = %dir.display(), "created the cluster CA");
                    (cert, key)
                }
            }
        };
        Self::from_pem(&ca_pem, &key_pem, cert_ttl)
    }

    fn from_pem(ca_pem: &str, key_pem: &str, cert_ttl: Duration) -> Result<ClusterPki, CpError> {
        let issuer_key = KeyPair::from_pem(key_pem)
            .map_err(|e| startup(format!("the CA key does not parse: {e}")))?;
        let params = CertificateParams::from_ca_cert_pem(ca_pem)
            .map_err(|e| startup(format!("the CA certificate does not parse: {e}")))?;
        let ca_der = rustls_pki_types::pem::PemObject::from_pem_slice(ca_pem.as_bytes())
            .map_err(|e| startup(format!("the CA certificate does not parse: {e}")))?;
        // rcgen only needs the issuer's name and key here; the certificate
        // it makes is never shown (the one from the file is).
        let issuer = params
            .self_signed(&issuer_key)
            .map_err(|e| startup(format!("the CA key does not fit: {e}")))?;
        if issuer.der().is_empty() {
            return Err(startup("empty CA certificate"));
        }
        Ok(ClusterPki {
            issuer,
            issuer_key,
            ca_pem: ca_pem.to_string(),
            ca_der,
            cert_ttl,
        })
    }

    /// The CA certificate (PEM) data planes trust.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// SHA-256 of the CA certificate: the pin inside join tokens.
    pub fn ca_pin(&self) -> [u8; 32] {
        cluster_pki::ca_pin(self.ca_der.as_ref())
    }

    /// The stream listener's TLS config: the server certificate (given, or
    /// made now from the CA), client certificates from the CA verified when
    /// presented (`Join` comes without one; the handlers require one for the
    /// rest), HTTP/2 only.
    pub fn server_config(
        &self,
        given: Option<&PemFiles>,
    ) -> Result<Arc<rustls::ServerConfig>, CpError> {
        let (chain, key) = match given {
            Some(files) => load_chain(files, "--stream-tls")?,
            None => self.server_certificate(&[])?,
        };
        self.tls_config(chain, key, &[], "stream")
    }

    /// The admin listener's TLS config: the server certificate (given with
    /// `--admin-tls-cert/--admin-tls-key`, or made now from the CA for
    /// [`SERVER_NAME`], `localhost`, 127.0.0.1, ::1 and `extra_names`);
    /// client certificates from the CA or from `client_ca` (PEM bundle,
    /// `--admin-client-ca`) verified when presented (a token works without
    /// one). HTTP/2 only.
    pub fn admin_server_config(
        &self,
        given: Option<&PemFiles>,
        client_ca: Option<&Path>,
        extra_names: &[String],
    ) -> Result<Arc<rustls::ServerConfig>, CpError> {
        let (chain, key) = match given {
            Some(files) => load_chain(files, "--admin-tls")?,
            None => self.server_certificate(extra_names)?,
        };
        let extra_roots = match client_ca {
            Some(path) => {
                let pem = files::read_text(path).map_err(startup)?;
                let roots: Vec<CertificateDer<'static>> =
                    rustls_pki_types::pem::PemObject::pem_slice_iter(pem.as_bytes())
                        .collect::<Result<_, _>>()
                        .map_err(|e| startup(format!("--admin-client-ca: {e}")))?;
                if roots.is_empty() {
                    return Err(startup("--admin-client-ca: no certificate in the file"));
                }
                roots
            }
            None => Vec::new(),
        };
        self.tls_config(chain, key, &extra_roots, "admin")
    }

    fn tls_config(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        extra_roots: &[CertificateDer<'static>],
        listener: &str,
    ) -> Result<Arc<rustls::ServerConfig>, CpError> {
        let mut roots = RootCertStore::empty();
        roots
            .add(self.ca_der.clone())
            .map_err(|e| startup(format!("the CA certificate is not usable as a root: {e}")))?;
        for root in extra_roots {
            roots
                .add(root.clone())
                .map_err(|e| startup(format!("--admin-client-ca: not usable as a root: {e}")))?;
        }
        // ring (as the data plane): builds with a plain C compiler; rustls
        // marks it deprecated only for lacking post-quantum key exchange.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .allow_unauthenticated()
                .build()
                .map_err(|e| startup(format!("client verifier: {e}")))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| startup(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| {
                startup(format!(
                    "the {listener} certificate does not fit its key: {e}"
                ))
            })?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }

    /// A server certificate for [`SERVER_NAME`], `localhost`, the loopback
    /// addresses and `extra_names` (DNS names or IP addresses), chained to
    /// the CA.
    fn server_certificate(
        &self,
        extra_names: &[String],
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), CpError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| startup(format!("server key: {e}")))?;
        let mut names = vec![
            SERVER_NAME.to_string(),
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ];
        names.extend(extra_names.iter().cloned());
        let mut params =
            CertificateParams::new(names).map_err(|e| startup(format!("--admin-tls-san: {e}")))?;
        params
            .distinguished_name
            .push(DnType::CommonName, SERVER_NAME);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = SystemTime::now();
        params.not_before = offset(now - BACKDATE);
        params.not_after = offset(now + SERVER_LIFETIME);
        params.serial_number = Some(random_serial());
        let cert = params
            .signed_by(&key, &self.issuer, &self.issuer_key)
            .map_err(|e| startup(format!("server certificate: {e}")))?;
        let key = PrivateKeyDer::try_from(key.serialize_der())
            .map_err(|e| startup(format!("server key: {e}")))?;
        Ok((vec![cert.der().clone(), self.ca_der.clone()], key))
    }

    /// Signs a data plane's CSR: subject CN = the CSR's CN (which must be a
    /// valid node id, and `expected` when given), OU [`DATA_PLANE_OU`], EKU
    /// `clientAuth` only, valid for the configured lifetime. Nothing else of
    /// the CSR (SANs, extensions) is copied.
    pub fn sign(&self, csr_pem: &str, expected: Option<&str>) -> Result<Issued, CpError> {
        let csr = parse_csr(csr_pem)?;
        let node_id = csr
            .params
            .distinguished_name
            .get(&DnType::CommonName)
            .and_then(dn_text)
            .ok_or_else(|| {
                CpError::BadRequest("csr_pem: the subject has no CN (node id)".into())
            })?;
        if !cluster_pki::valid_node_id(&node_id) {
            return Err(CpError::BadRequest(
                "csr_pem: the subject CN (node id) must be 1 to 256 printable characters".into(),
            ));
        }
        if let Some(expected) = expected {
            if node_id != expected {
                return Err(CpError::BadRequest(format!(
                    "csr_pem: the CN must stay {expected:?} (the node id of this certificate)"
                )));
            }
        }
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, node_id.as_str());
        name.push(DnType::OrganizationalUnitName, DATA_PLANE_OU);
        let uri = format!("urn:tollgate:data-plane:{}", uri_safe(&node_id));
        let (cert_pem, not_after) = self.issue_client(csr.public_key, name, uri, self.cert_ttl)?;
        Ok(Issued {
            node_id,
            cert_pem,
            not_after,
        })
    }

    /// Signs an operator's CSR ([`operators`]): CN = `name`, OU
    /// [`OPERATOR_OU`], URI SAN `urn:tollgate:operator:<name>:<role>`, EKU
    /// `clientAuth` only, valid for `ttl`. Only the CSR's public key is used.
    /// Returns the certificate (PEM) and who it names.
    pub fn sign_operator(
        &self,
        csr_pem: &str,
        name: &str,
        role: Role,
        ttl: Duration,
    ) -> Result<(String, operators::OperatorId), CpError> {
        crate::access::tokens::check_name(name)?;
        let csr = parse_csr(csr_pem)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        dn.push(DnType::OrganizationalUnitName, OPERATOR_OU);
        let uri = format!("{OPERATOR_URI_PREFIX}{name}:{role}");
        let (cert_pem, _) = self.issue_client(csr.public_key, dn, uri, ttl)?;
        let der: CertificateDer<'static> =
            rustls_pki_types::pem::PemObject::from_pem_slice(cert_pem.as_bytes())
                .map_err(|e| CpError::Internal(format!("reading an issued certificate: {e}")))?;
        let id = operators::identify(der.as_ref()).map_err(CpError::Internal)?;
        Ok((cert_pem, id))
    }

    /// A client certificate (EKU `clientAuth` only, not a CA) for `key`.
    fn issue_client(
        &self,
        key: rcgen::PublicKey,
        name: DistinguishedName,
        uri: String,
        ttl: Duration,
    ) -> Result<(String, i64), CpError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = name;
        params.subject_alt_names =
            vec![SanType::URI(uri.try_into().map_err(|_| {
                CpError::BadRequest("csr_pem: unusable name".into())
            })?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = SystemTime::now();
        let not_after = now + ttl;
        params.not_before = offset(now - BACKDATE);
        params.not_after = offset(not_after);
        params.serial_number = Some(random_serial());
        let cert = CertificateSigningRequestParams {
            params,
            public_key: key,
        }
        .signed_by(&self.issuer, &self.issuer_key)
        .map_err(|e| CpError::Internal(format!("signing a client certificate: {e}")))?;
        Ok((cert.pem(), offset(not_after).unix_timestamp()))
    }
}

fn parse_csr(csr_pem: &str) -> Result<CertificateSigningRequestParams, CpError> {
    if csr_pem.len() > 16 * 1024 {
        return Err(CpError::BadRequest("csr_pem: larger than 16 KiB".into()));
    }
    CertificateSigningRequestParams::from_pem(csr_pem).map_err(|_| {
        CpError::BadRequest("csr_pem: not a PKCS#10 request with a valid signature".into())
    })
}

/// A certificate chain and its key from files; errors name `flag`.
fn load_chain(
    files: &PemFiles,
    flag: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), CpError> {
    let chain_pem = files::read_text(&files.cert).map_err(startup)?;
    let key_pem = files::read_text(&files.key).map_err(startup)?;
    let chain: Vec<CertificateDer<'static>> =
        rustls_pki_types::pem::PemObject::pem_slice_iter(chain_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| startup(format!("{flag}-cert: {e}")))?;
    if chain.is_empty() {
        return Err(startup(format!("{flag}-cert: no certificate in the file")));
    }
    let key = rustls_pki_types::pem::PemObject::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| startup(format!("{flag}-key: {e}")))?;
    Ok((chain, key))
}

fn dn_text(value: &rcgen::DnValue) -> Option<String> {
    match value {
        rcgen::DnValue::Utf8String(s) => Some(s.clone()),
        rcgen::DnValue::PrintableString(s) => Some(s.as_str().to_string()),
        rcgen::DnValue::Ia5String(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

/// The node id with anything outside URI-unreserved characters percent-encoded.
fn uri_safe(id: &str) -> String {
    percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn random_serial() -> SerialNumber {
    use rand::RngCore;
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

/// A new self-signed CA: (certificate PEM, key PEM).
fn new_ca() -> Result<(String, String), CpError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| startup(format!("CA key: {e}")))?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "Tollgate cluster CA");
    params
        .distinguished_name
        .push(DnType::OrganizationName, "tollgate");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = SystemTime::now();
    params.not_before = offset(now - BACKDATE);
    params.not_after = offset(now + CA_LIFETIME);
    params.serial_number = Some(random_serial());
    let cert = params
        .self_signed(&key)
        .map_err(|e| startup(format!("CA certificate: {e}")))?;
    Ok((cert.pem(), key.serialize_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csr(cn: &str) -> String {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, cn);
        params
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem")
    }

    #[test]
    fn creates_the_ca_once_owner_only_and_signs_node_certificates() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = ClusterPki::open(dir.path(), None, Duration::from_secs(60)).expect("creates");
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path().join("pki")), 0o700);
        assert_eq!(mode(&dir.path().join("pki/ca-key.pem")), 0o600);
        let again = ClusterPki::open(dir.path(), None, Duration::from_secs(60)).expect("reloads");
        assert_eq!(pki.ca_pin(), again.ca_pin(), "the same CA after a restart");

        let issued = again.sign(&csr("dp-1"), None).expect("signs");
        assert_eq!(issued.node_id, "dp-1");
        let der: CertificateDer<'static> =
            rustls_pki_types::pem::PemObject::from_pem_slice(issued.cert_pem.as_bytes())
                .expect("pem");
        assert_eq!(
            cluster_pki::node_id_of(der.as_ref()).as_deref(),
            Some("dp-1")
        );
        let (from, to) = cluster_pki::validity_of(der.as_ref()).expect("validity");
        assert!(to - from <= 60 + 300 + 1, "{from}..{to}");
        assert!(again.sign(&csr("dp-2"), Some("dp-1")).is_err());
        assert!(again.sign("not a csr", None).is_err());
        assert!(again.sign(&csr(""), None).is_err());
        assert!(again.server_config(None).is_ok());
    }
}
