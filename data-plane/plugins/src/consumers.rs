//! The consumer index: every credential of a snapshot, compiled once into the
//! lookup structures the authentication plugins use on the hot path.
//!
//! Why a separate, per-snapshot index instead of plugins scanning
//! `config.consumers`:
//!
//! - **API keys** are found by the 32-byte SHA-256 of the presented key in a
//!   hash map, the same hash the control plane stores (`sha256:<hex>`). The
//!   data plane never holds a key in clear, and a lookup by digest has no
//!   per-byte comparison an attacker could time.
//! - **JWT keys** are parsed from PEM (or taken as HMAC secrets) here, once,
//!   into `jsonwebtoken::DecodingKey`s indexed by `iss` or `kid`. A bad PEM
//!   fails the compile (the snapshot is NACKed) instead of failing requests.
//!   The credential's algorithm decides the key type: an HMAC key is never
//!   built from a PEM, and an RSA/EC/Ed key is only ever used with its own
//!   algorithm, which is what defeats the "public key as HMAC secret" attack.
//! - **Identity headers** (`X-Consumer-Name`, `X-Consumer-Groups`) are built
//!   once per consumer, so forwarding an identity clones two `HeaderValue`s.
//!
//! Each compiled index gets a process-unique generation number; the JWT
//! verification cache keys on it, so a snapshot that rotates a key or deletes
//! a consumer makes every earlier cache entry unreachable at once.
//!
//! - **Client certificates** (`mtls` credentials) are keyed by what they
//!   match (fingerprint, URI or DNS SAN, subject CN), normalized once here.
//!
//! Later credential kinds (JWKS-fetched keys) slot in as further maps here;
//! the authentication plugins only ask the index "who owns this credential".
//!
//! Nothing in this module formats a secret: errors name the consumer and the
//! credential's position, never its value, and `Debug` is written by hand.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::header::{HeaderMap, HeaderValue};
use jsonwebtoken::{Algorithm, DecodingKey};
use tollgate_shared::model::{Consumer, JwtCredential, JwtKeyClaim};
use tollgate_shared::secrets::{api_key_digest, parse_hash};

use tollgate_plugin_api::identity::{X_CONSUMER_GROUPS, X_CONSUMER_NAME};
use tollgate_plugin_api::Identity;

/// The snapshot's consumer index, compiled once and shared by every
/// authentication plugin instance of the snapshot.
pub fn consumer_index(
    ctx: &tollgate_plugin_api::BuildCtx<'_>,
) -> Result<Arc<ConsumerIndex>, String> {
    ctx.scope
        .get_or_try_init(|| ConsumerIndex::compile(&ctx.config.consumers))
}

/// One consumer, with everything the hot path needs pre-built.
pub struct ConsumerIdentity {
    pub name: Arc<str>,
    pub groups: Arc<[Arc<str>]>,
    name_header: HeaderValue,
    /// `None` when the consumer has no groups (the header is then not sent).
    groups_header: Option<HeaderValue>,
}

impl ConsumerIdentity {
    fn new(consumer: &Consumer) -> Result<ConsumerIdentity, String> {
        let name_header = HeaderValue::from_str(&consumer.name).map_err(|_| {
            format!(
                "consumer {:?}: name: not a valid header value",
                consumer.name
            )
        })?;
        let groups_header = if consumer.groups.is_empty() {
            None
        } else {
            let joined = consumer.groups.join(", ");
            Some(HeaderValue::from_str(&joined).map_err(|_| {
                format!(
                    "consumer {:?}: groups: not valid in a header value",
                    consumer.name
                )
            })?)
        };
        Ok(ConsumerIdentity {
            name: Arc::from(consumer.name.as_str()),
            groups: consumer
                .groups
                .iter()
                .map(|g| Arc::from(g.as_str()))
                .collect(),
            name_header,
            groups_header,
        })
    }

    /// Sets `X-Consumer-Name` / `X-Consumer-Groups` (replacing any value).
    /// The core strips client copies first (`tollgate_plugin_api::identity`); the
    /// groups header is removed when this consumer has none.
    pub fn write_headers(&self, headers: &mut HeaderMap) {
        headers.insert(X_CONSUMER_NAME, self.name_header.clone());
        match &self.groups_header {
            Some(value) => {
                headers.insert(X_CONSUMER_GROUPS, value.clone());
            }
            None => {
                headers.remove(X_CONSUMER_GROUPS);
            }
        }
    }

    /// The request-context identity (Arc clones only).
    pub fn identity(&self, credential: Option<&Arc<str>>, anonymous: bool) -> Identity {
        Identity {
            consumer: self.name.clone(),
            groups: self.groups.clone(),
            credential: credential.cloned(),
            anonymous,
        }
    }
}

impl fmt::Debug for ConsumerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsumerIdentity")
            .field("name", &self.name)
            .field("groups", &self.groups)
            .finish()
    }
}

/// What a credential lookup yields: the owner, and a stable non-secret id of
/// the credential (rate-limit scope `credential`, logs).
#[derive(Debug, Clone)]
pub struct CredentialOwner {
    pub consumer: Arc<ConsumerIdentity>,
    /// `key:sha256:<16 hex>` or `jwt:iss:<key>` / `jwt:kid:<key>`.
    pub credential: Arc<str>,
}

/// A JWT verification key of one consumer.
pub struct JwtKey {
    pub owner: CredentialOwner,
    /// The only algorithm this key verifies.
    pub algorithm: Algorithm,
    pub key: DecodingKey,
}

impl fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtKey")
            .field("owner", &self.owner)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// A SHA-256 digest as a map key. The digest is already uniformly
/// distributed, so its first 8 bytes are the hash: no second hash per lookup.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Digest([u8; 32]);

impl Hash for Digest {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let mut first = [0u8; 8];
        first.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(first));
    }
}

#[derive(Default, Clone, Copy)]
struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
    fn write(&mut self, bytes: &[u8]) {
        // Not used by `Digest`; FNV-1a keeps the hasher total anyway.
        for byte in bytes {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(0x100_0000_01b3);
        }
    }
}

#[derive(Default, Clone, Copy)]
struct DigestState;

impl BuildHasher for DigestState {
    type Hasher = DigestHasher;
    fn build_hasher(&self) -> DigestHasher {
        DigestHasher(0xcbf2_9ce4_8422_2325)
    }
}

static GENERATION: AtomicU64 = AtomicU64::new(1);

/// Every credential of one snapshot, ready for lookups.
pub struct ConsumerIndex {
    generation: u64,
    consumers: HashMap<Box<str>, Arc<ConsumerIdentity>>,
    api_keys: HashMap<Digest, CredentialOwner, DigestState>,
    jwt_by_iss: HashMap<Box<str>, Arc<JwtKey>>,
    jwt_by_kid: HashMap<Box<str>, Arc<JwtKey>>,
    /// Client-certificate credentials by `(kind, normalized value)`
    /// (`tollgate_shared::model::MtlsCredential::key`).
    mtls: HashMap<(&'static str, Box<str>), CredentialOwner>,
}

impl fmt::Debug for ConsumerIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsumerIndex")
            .field("generation", &self.generation)
            .field("consumers", &self.consumers.len())
            .field("api_keys", &self.api_keys.len())
            .field("jwt_keys", &(self.jwt_by_iss.len() + self.jwt_by_kid.len()))
            .field("mtls", &self.mtls.len())
            .finish()
    }
}

impl ConsumerIndex {
    /// An index with no consumers (snapshots without any).
    pub fn empty() -> ConsumerIndex {
        ConsumerIndex {
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
            consumers: HashMap::new(),
            api_keys: HashMap::default(),
            jwt_by_iss: HashMap::new(),
            jwt_by_kid: HashMap::new(),
            mtls: HashMap::new(),
        }
    }

    /// Compiles the consumers of a snapshot. Errors name the consumer and the
    /// credential, never a secret; any error NACKs the snapshot.
    pub fn compile(consumers: &[Consumer]) -> Result<ConsumerIndex, String> {
        let mut index = ConsumerIndex::empty();
        for consumer in consumers {
            let identity = Arc::new(ConsumerIdentity::new(consumer)?);
            if index
                .consumers
                .insert(consumer.name.as_str().into(), identity.clone())
                .is_some()
            {
                return Err(format!(
                    "consumer {:?}: defined more than once",
                    consumer.name
                ));
            }
            for (i, credential) in consumer.credentials.iter().enumerate() {
                let at = |message: &str| {
                    format!("consumer {:?}: credentials[{i}]: {message}", consumer.name)
                };
                let digest = match (&credential.api_key, &credential.api_key_hash) {
                    (Some(key), _) => Some(api_key_digest(key.as_bytes())),
                    (None, Some(hash)) => Some(parse_hash(hash).ok_or_else(|| {
                        at("api_key_hash: must be \"sha256:\" followed by 64 hex digits")
                    })?),
                    (None, None) => None,
                };
                if let Some(digest) = digest {
                    let owner = CredentialOwner {
                        consumer: identity.clone(),
                        credential: Arc::from(format!("key:sha256:{}", hex_prefix(&digest, 8))),
                    };
                    if index.api_keys.insert(Digest(digest), owner).is_some() {
                        return Err(at("api_key: the same key belongs to another credential"));
                    }
                }
                if let Some(jwt) = &credential.jwt {
                    let key = compile_jwt_key(jwt).map_err(|m| at(&m))?;
                    let (map, label) = match jwt.key_claim {
                        JwtKeyClaim::Iss => (&mut index.jwt_by_iss, "iss"),
                        JwtKeyClaim::Kid => (&mut index.jwt_by_kid, "kid"),
                    };
                    let entry = Arc::new(JwtKey {
                        owner: CredentialOwner {
                            consumer: identity.clone(),
                            credential: Arc::from(format!("jwt:{label}:{}", jwt.key)),
                        },
                        algorithm: key.0,
                        key: key.1,
                    });
                    if map.insert(jwt.key.as_str().into(), entry).is_some() {
                        return Err(at(&format!(
                            "jwt.key: {:?} is already a JWT key of another credential",
                            jwt.key
                        )));
                    }
                }
                if let Some(mtls) = &credential.mtls {
                    let (kind, value) = mtls.key().ok_or_else(|| {
                        at("mtls: exactly one of subject_cn, san_dns, san_uri or fingerprint_sha256 must be set")
                    })?;
                    let owner = CredentialOwner {
                        consumer: identity.clone(),
                        credential: Arc::from(format!("mtls:{kind}:{value}")),
                    };
                    if index.mtls.insert((kind, value.into()), owner).is_some() {
                        return Err(at(&format!(
                            "mtls.{kind}: already an mtls credential of another consumer"
                        )));
                    }
                }
                if digest.is_none() && credential.jwt.is_none() && credential.mtls.is_none() {
                    return Err(at(
                        "kind: exactly one of api_key, api_key_hash, jwt or mtls must be set",
                    ));
                }
            }
        }
        Ok(index)
    }

    /// Process-unique number of this compiled index.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn consumer(&self, name: &str) -> Option<&Arc<ConsumerIdentity>> {
        self.consumers.get(name)
    }

    /// The owner of an API key, by the key's SHA-256 digest.
    #[inline]
    pub fn api_key_owner(&self, digest: &[u8; 32]) -> Option<&CredentialOwner> {
        self.api_keys.get(&Digest(*digest))
    }

    /// The owner of a verified client certificate: by fingerprint, then URI
    /// SANs, DNS SANs, and last the subject CN.
    pub fn mtls_owner(
        &self,
        identity: &tollgate_shared::certs::ClientIdentity,
    ) -> Option<&CredentialOwner> {
        if self.mtls.is_empty() {
            return None;
        }
        let find = |kind: &'static str, value: &str| self.mtls.get(&(kind, Box::from(value)));
        find("fingerprint_sha256", &identity.fingerprint_sha256)
            .or_else(|| identity.san_uri.iter().find_map(|u| find("san_uri", u)))
            .or_else(|| identity.san_dns.iter().find_map(|d| find("san_dns", d)))
            .or_else(|| {
                identity
                    .subject_cn
                    .as_deref()
                    .and_then(|cn| find("subject_cn", cn))
            })
    }

    /// The JWT key registered for `value` of the given claim.
    pub fn jwt_key(&self, claim: JwtKeyClaim, value: &str) -> Option<&Arc<JwtKey>> {
        match claim {
            JwtKeyClaim::Iss => self.jwt_by_iss.get(value),
            JwtKeyClaim::Kid => self.jwt_by_kid.get(value),
        }
    }
}

fn hex_prefix(bytes: &[u8], n: usize) -> String {
    bytes.iter().take(n).map(|b| format!("{b:02x}")).collect()
}

/// Parses a JWT algorithm name as the model spells it.
pub fn parse_algorithm(name: &str) -> Option<Algorithm> {
    Some(match name {
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    })
}

/// Builds the decoding key of a JWT credential. The algorithm family decides
/// how the key material is read: HMAC algorithms take the secret's bytes (and
/// refuse anything that looks like a PEM), the others parse a PEM *public*
/// key of their own family.
fn compile_jwt_key(jwt: &JwtCredential) -> Result<(Algorithm, DecodingKey), String> {
    let algorithm = parse_algorithm(&jwt.algorithm).ok_or_else(|| {
        format!(
            "jwt.algorithm: {:?} is not one of {}",
            jwt.algorithm,
            tollgate_shared::model::JWT_ALGORITHMS.join(", ")
        )
    })?;
    let key = match algorithm {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            if jwt.public_key.is_some() {
                return Err(format!(
                    "jwt.public_key: {} uses a shared secret, not a public key",
                    jwt.algorithm
                ));
            }
            let secret = jwt.secret.as_deref().ok_or_else(|| {
                format!(
                    "jwt.secret: required for {} (the snapshot carries only its fingerprint)",
                    jwt.algorithm
                )
            })?;
            if secret.len() < 16 {
                return Err("jwt.secret: must be at least 16 bytes".into());
            }
            if secret.trim_start().starts_with("-----BEGIN") {
                return Err("jwt.secret: a PEM key is never an HMAC secret".into());
            }
            DecodingKey::from_secret(secret.as_bytes())
        }
        asymmetric => {
            if jwt.secret.is_some() {
                return Err(format!(
                    "jwt.secret: {} verifies with public_key, not a shared secret",
                    jwt.algorithm
                ));
            }
            let pem = jwt
                .public_key
                .as_deref()
                .ok_or_else(|| format!("jwt.public_key: required for {}", jwt.algorithm))?;
            if !pem.contains("PUBLIC KEY-----") || pem.contains("PRIVATE KEY") {
                return Err("jwt.public_key: must be a PEM public key".into());
            }
            let parsed = match asymmetric {
                Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 => {
                    DecodingKey::from_rsa_pem(pem.as_bytes())
                }
                Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(pem.as_bytes()),
                _ => DecodingKey::from_ed_pem(pem.as_bytes()),
            };
            parsed.map_err(|_| {
                format!(
                    "jwt.public_key: not a valid {} public key PEM",
                    family_name(asymmetric)
                )
            })?
        }
    };
    Ok((algorithm, key))
}

fn family_name(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 => "RSA",
        Algorithm::ES256 | Algorithm::ES384 => "EC",
        Algorithm::EdDSA => "Ed25519",
        _ => "HMAC",
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tollgate_shared::model::{Credential, JwtCredential};
    use tollgate_shared::secrets::hash_api_key;

    /// Test keys, generated once with openssl for these tests only.
    pub(crate) const RSA_PUBLIC_PEM: &str = include_str!("testdata/rsa_public.pem");
    pub(crate) const RSA_PRIVATE_PEM: &str = include_str!("testdata/rsa_private.pem");
    pub(crate) const RSA2_PUBLIC_PEM: &str = include_str!("testdata/rsa2_public.pem");
    pub(crate) const RSA2_PRIVATE_PEM: &str = include_str!("testdata/rsa2_private.pem");
    pub(crate) const EC_PUBLIC_PEM: &str = include_str!("testdata/ec_public.pem");
    pub(crate) const EC_PRIVATE_PEM: &str = include_str!("testdata/ec_private.pem");
    pub(crate) const EC384_PUBLIC_PEM: &str = include_str!("testdata/ec384_public.pem");
    pub(crate) const EC384_PRIVATE_PEM: &str = include_str!("testdata/ec384_private.pem");
    pub(crate) const ED_PUBLIC_PEM: &str = include_str!("testdata/ed_public.pem");
    pub(crate) const ED_PRIVATE_PEM: &str = include_str!("testdata/ed_private.pem");

    pub(crate) fn key_consumer(name: &str, groups: &[&str], key: &str) -> Consumer {
        Consumer {
            tags: Vec::new(),
            name: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            credentials: vec![Credential {
                api_key_hash: Some(hash_api_key(key)),
                ..Credential::default()
            }],
        }
    }

    pub(crate) fn jwt_consumer(name: &str, groups: &[&str], jwt: JwtCredential) -> Consumer {
        Consumer {
            tags: Vec::new(),
            name: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            credentials: vec![Credential {
                jwt: Some(jwt),
                ..Credential::default()
            }],
        }
    }

    pub(crate) fn hs_credential(key: &str, algorithm: &str, secret: &str) -> JwtCredential {
        JwtCredential {
            key: key.into(),
            algorithm: algorithm.into(),
            secret: Some(secret.into()),
            ..JwtCredential::default()
        }
    }

    pub(crate) fn pem_credential(key: &str, algorithm: &str, pem: &str) -> JwtCredential {
        JwtCredential {
            key: key.into(),
            algorithm: algorithm.into(),
            public_key: Some(pem.into()),
            ..JwtCredential::default()
        }
    }

    #[test]
    fn api_keys_are_found_by_digest_from_hash_or_clear_key() {
        let mut bob = key_consumer("bob", &[], "unused-key-0000");
        bob.credentials = vec![Credential {
            api_key: Some("bob-clear-key-123".into()),
            ..Credential::default()
        }];
        let index = ConsumerIndex::compile(&[
            key_consumer("alice", &["partners", "beta"], "alice-secret-key"),
            bob,
        ])
        .expect("compiles");
        let alice = index
            .api_key_owner(&api_key_digest(b"alice-secret-key"))
            .expect("alice");
        assert_eq!(&*alice.consumer.name, "alice");
        assert!(alice.credential.starts_with("key:sha256:"));
        assert!(!alice.credential.contains("alice-secret-key"));
        let bob = index
            .api_key_owner(&api_key_digest(b"bob-clear-key-123"))
            .expect("bob");
        assert_eq!(&*bob.consumer.name, "bob");
        assert!(index.api_key_owner(&api_key_digest(b"nobody")).is_none());

        let mut headers = HeaderMap::new();
        alice.consumer.write_headers(&mut headers);
        assert_eq!(headers[X_CONSUMER_NAME], "alice");
        assert_eq!(headers[X_CONSUMER_GROUPS], "partners, beta");
        headers.insert(X_CONSUMER_GROUPS, HeaderValue::from_static("spoof"));
        bob.consumer.write_headers(&mut headers);
        assert_eq!(headers[X_CONSUMER_NAME], "bob");
        assert!(headers.get(X_CONSUMER_GROUPS).is_none());
    }

    #[test]
    fn jwt_keys_compile_per_family_and_bad_material_is_an_error() {
        let index = ConsumerIndex::compile(&[
            jwt_consumer(
                "h",
                &[],
                hs_credential("hs-issuer", "HS256", "0123456789abcdef-secret"),
            ),
            jwt_consumer(
                "r",
                &[],
                pem_credential("rs-issuer", "RS256", RSA_PUBLIC_PEM),
            ),
            jwt_consumer(
                "e",
                &[],
                pem_credential("es-issuer", "ES256", EC_PUBLIC_PEM),
            ),
            jwt_consumer(
                "d",
                &[],
                pem_credential("ed-issuer", "EdDSA", ED_PUBLIC_PEM),
            ),
        ])
        .expect("compiles");
        for (iss, alg) in [
            ("hs-issuer", Algorithm::HS256),
            ("rs-issuer", Algorithm::RS256),
            ("es-issuer", Algorithm::ES256),
            ("ed-issuer", Algorithm::EdDSA),
        ] {
            let key = index.jwt_key(JwtKeyClaim::Iss, iss).expect(iss);
            assert_eq!(key.algorithm, alg);
        }
        assert!(index.jwt_key(JwtKeyClaim::Kid, "hs-issuer").is_none());

        let bad = [
            hs_credential("a", "HS256", "short"),
            hs_credential("a", "HS256", RSA_PUBLIC_PEM),
            pem_credential(
                "a",
                "RS256",
                "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n",
            ),
            pem_credential("a", "RS256", RSA_PRIVATE_PEM),
            pem_credential("a", "ES256", RSA_PUBLIC_PEM),
            pem_credential("a", "HS256", RSA_PUBLIC_PEM),
            pem_credential("a", "none", RSA_PUBLIC_PEM),
            JwtCredential {
                key: "a".into(),
                algorithm: "HS256".into(),
                secret_fingerprint: Some("sha256:00".into()),
                ..JwtCredential::default()
            },
        ];
        for credential in bad {
            let err = ConsumerIndex::compile(&[jwt_consumer("x", &[], credential.clone())])
                .expect_err("must not compile");
            assert!(err.starts_with("consumer \"x\": credentials[0]: "), "{err}");
            if let Some(secret) = &credential.secret {
                assert!(!err.contains(secret.as_str()), "{err}");
            }
        }
    }

    #[test]
    fn duplicates_are_errors_and_generations_differ() {
        let err = ConsumerIndex::compile(&[
            key_consumer("a", &[], "same-key-123456"),
            key_consumer("b", &[], "same-key-123456"),
        ])
        .expect_err("must be refused");
        assert!(err.contains("consumer \"b\""), "{err}");
        assert!(!err.contains("same-key-123456"), "{err}");
        let one = ConsumerIndex::compile(&[]).expect("empty");
        let two = ConsumerIndex::compile(&[]).expect("empty");
        assert_ne!(one.generation(), two.generation());
        let debug = format!("{one:?}");
        assert!(debug.contains("generation"));
    }
}
