//! `jwt`: a consumer proves who it is with a signed JSON Web Token.
//!
//! The token comes from `Authorization: Bearer <token>` (header
//! configurable). Verification follows RFC 8725:
//!
//! - The key is looked up in the snapshot's [`ConsumerIndex`] by the token's
//!   `kid` header (credentials with `key_claim: kid`), else by its `iss`
//!   claim. `kid` is only a map key; `jku`, `x5u`, `jwk` and `x5c` in a token
//!   are ignored, so no key is ever fetched or taken from the token itself.
//! - `alg: none` is refused outright. The token's `alg` must be in the
//!   plugin's allow-list *and* be the credential's own algorithm; the key
//!   was built for that algorithm's family when the snapshot compiled, so an
//!   RSA/EC public key can never be used as an HMAC secret.
//! - The signature is checked first; only then the claims: `exp` (required
//!   by default), `nbf`, with the configured leeway; `aud` and `iss` when
//!   the plugin lists accepted values. `exp`/`nbf` of the wrong type are
//!   refused rather than ignored.
//!
//! Signature checks cost tens of microseconds (RS256 ~32 µs, ES256 ~130 µs),
//! so verified tokens are cached in one bounded, process-wide cache
//! ([`TOKEN_CACHE_CAPACITY`] entries). The cache key is the SHA-256 of the
//! token together with the plugin instance's id and the consumer index's
//! generation, both unique to one compiled snapshot: a rotated key or a
//! deleted consumer takes effect on the next request, because the new
//! snapshot can never see the old entries. An entry is never used at or past
//! the token's `exp`, and lives at most [`MAX_CACHE_TTL`].
//!
//! Claims named in `forward_claims` are turned into upstream headers once,
//! when the token is verified, and cached with it.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};
use http::request;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use moka::sync::Cache;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tollgate_shared::model::JwtKeyClaim;
use tollgate_shared::plugins::{is_gateway_owned_header, JwtConfig};

use crate::auth::{AuthAttempt, Authenticated, TokenReject};
use crate::consumers::{parse_algorithm, ConsumerIdentity, ConsumerIndex, CredentialOwner, JwtKey};

mod plugin;
pub use plugin::JwtFactory;

/// Verified tokens kept at most, across every route and snapshot.
pub const TOKEN_CACHE_CAPACITY: u64 = 65_536;
/// Longest a verified token is cached (tokens without `exp`, or far-off `exp`).
pub const MAX_CACHE_TTL: Duration = Duration::from_secs(300);
/// Longest token accepted; real tokens are a few hundred bytes to a few KiB.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Longest claim value forwarded as a header.
const MAX_CLAIM_HEADER_BYTES: usize = 4 * 1024;

/// A verified token, as cached.
#[derive(Debug)]
pub struct VerifiedToken {
    owner: CredentialOwner,
    /// `exp` in seconds since the epoch; `None` when the token has none.
    expires_at: Option<u64>,
    claim_headers: Box<[(HeaderName, HeaderValue)]>,
    /// How long the cache may keep it (computed when verified).
    ttl: Duration,
}

impl VerifiedToken {
    pub fn owner(&self) -> &CredentialOwner {
        &self.owner
    }

    /// The `forward_claims` headers, built once when the token was verified.
    pub fn claim_headers(&self) -> &[(HeaderName, HeaderValue)] {
        &self.claim_headers
    }

    /// Usable strictly before `exp` (the leeway is for clock skew on
    /// verification, not for stretching a cached verdict).
    fn usable_at(&self, now: u64) -> bool {
        !matches!(self.expires_at, Some(exp) if now >= exp)
    }
}

struct TtlFromToken;

impl moka::Expiry<[u8; 32], Arc<VerifiedToken>> for TtlFromToken {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        value: &Arc<VerifiedToken>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

type TokenCache = Cache<[u8; 32], Arc<VerifiedToken>>;

fn token_cache() -> &'static TokenCache {
    static CACHE: OnceLock<TokenCache> = OnceLock::new();
    CACHE.get_or_init(|| {
        Cache::builder()
            .max_capacity(TOKEN_CACHE_CAPACITY)
            .expire_after(TtlFromToken)
            .build()
    })
}

static INSTANCE_IDS: AtomicU64 = AtomicU64::new(1);

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One compiled `jwt` plugin instance.
pub struct JwtAuth {
    /// Process-unique; part of every cache key of this instance.
    id: u64,
    header: HeaderName,
    /// `Authorization` demands the `Bearer` scheme; a custom header may also
    /// carry the bare token.
    scheme_required: bool,
    /// One prepared validation per algorithm the plugin allows.
    validations: Box<[(Algorithm, Validation)]>,
    forward_claims: Box<[(Box<str>, HeaderName)]>,
    forwarded_headers: Box<[HeaderName]>,
    anonymous: Option<Arc<ConsumerIdentity>>,
    index: Arc<ConsumerIndex>,
}

impl std::fmt::Debug for JwtAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtAuth")
            .field("id", &self.id)
            .field("header", &self.header)
            .field(
                "algorithms",
                &self.validations.iter().map(|(a, _)| *a).collect::<Vec<_>>(),
            )
            .field("forward_claims", &self.forward_claims)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct TokenHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<serde::de::IgnoredAny>,
}

impl JwtAuth {
    pub fn new(config: &JwtConfig, index: &Arc<ConsumerIndex>) -> Result<JwtAuth, String> {
        let header = HeaderName::from_bytes(config.header.as_bytes()).map_err(|_| {
            format!(
                "config.header: {:?} is not a valid header name",
                config.header
            )
        })?;
        let mut validations = Vec::new();
        for (i, name) in config.algorithms.iter().enumerate() {
            let algorithm = parse_algorithm(name)
                .ok_or_else(|| format!("config.algorithms[{i}]: unsupported algorithm {name:?}"))?;
            if validations.iter().any(|(a, _)| *a == algorithm) {
                continue;
            }
            validations.push((algorithm, validation(config, algorithm)));
        }
        if validations.is_empty() {
            return Err("config.algorithms: at least one algorithm is required".into());
        }
        let mut forward_claims = Vec::new();
        for (claim, name) in &config.forward_claims {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                format!("config.forward_claims.{claim}: {name:?} is not a valid header name")
            })?;
            if is_gateway_owned_header(name.as_str()) {
                return Err(format!(
                    "config.forward_claims.{claim}: {name} is set by the gateway itself"
                ));
            }
            forward_claims.push((Box::from(claim.as_str()), name));
        }
        let mut forwarded_headers: Vec<HeaderName> = Vec::new();
        for (_, name) in &forward_claims {
            if !forwarded_headers.contains(name) {
                forwarded_headers.push(name.clone());
            }
        }
        let anonymous =
            match &config.anonymous {
                Some(name) => Some(index.consumer(name).cloned().ok_or_else(|| {
                    format!("config.anonymous: consumer {name:?} does not exist")
                })?),
                None => None,
            };
        Ok(JwtAuth {
            id: INSTANCE_IDS.fetch_add(1, Ordering::Relaxed),
            scheme_required: header == AUTHORIZATION,
            header,
            validations: validations.into_boxed_slice(),
            forward_claims: forward_claims.into_boxed_slice(),
            forwarded_headers: forwarded_headers.into_boxed_slice(),
            anonymous,
            index: index.clone(),
        })
    }

    pub fn anonymous(&self) -> Option<&Arc<ConsumerIdentity>> {
        self.anonymous.as_ref()
    }

    /// The headers this plugin sets from claims (never taken from clients).
    pub fn forwarded_headers(&self) -> &[HeaderName] {
        &self.forwarded_headers
    }

    pub fn authenticate(&self, request: &mut request::Parts) -> AuthAttempt<'_> {
        let token = match self.bearer_token(&request.headers) {
            Ok(Some(token)) => token,
            Ok(None) => return AuthAttempt::NoCredential,
            Err(reject) => return AuthAttempt::Rejected(reject.into()),
        };
        let now = unix_now();
        let cache_key = self.cache_key(token);
        let cache = token_cache();
        if let Some(hit) = cache.get(&cache_key) {
            if hit.usable_at(now) {
                return AuthAttempt::Authenticated(Authenticated::Verified(hit));
            }
            cache.invalidate(&cache_key);
        }
        match self.verify(token, now) {
            Ok(verified) => {
                let verified = Arc::new(verified);
                if verified.usable_at(now) && !verified.ttl.is_zero() {
                    cache.insert(cache_key, verified.clone());
                }
                AuthAttempt::Authenticated(Authenticated::Verified(verified))
            }
            Err(reject) => AuthAttempt::Rejected(reject.into()),
        }
    }

    /// The token, `None` when this request carries none for us.
    fn bearer_token<'h>(&self, headers: &'h HeaderMap) -> Result<Option<&'h str>, TokenReject> {
        let mut values = headers.get_all(&self.header).iter();
        let Some(value) = values.next() else {
            return Ok(None);
        };
        if values.next().is_some() {
            return Err(TokenReject::Duplicate);
        }
        let text = value.to_str().map_err(|_| TokenReject::Malformed)?.trim();
        let token = match split_scheme(text) {
            Some(token) => token,
            // Another scheme (`Basic ...`) is not ours to judge.
            None if self.scheme_required => return Ok(None),
            None => text,
        };
        if token.is_empty() {
            return if self.scheme_required {
                Err(TokenReject::Malformed)
            } else {
                Ok(None)
            };
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenReject::TooLong);
        }
        Ok(Some(token))
    }

    fn cache_key(&self, token: &str) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(self.id.to_le_bytes());
        hasher.update(self.index.generation().to_le_bytes());
        hasher.update(token.as_bytes());
        hasher.finalize().into()
    }

    /// The full check of a token not in the cache.
    fn verify(&self, token: &str, now: u64) -> Result<VerifiedToken, TokenReject> {
        let mut segments = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature), None) = (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) else {
            return Err(TokenReject::Malformed);
        };
        let header: TokenHeader = decode_segment(header_b64)?;
        if header.alg.eq_ignore_ascii_case("none") {
            return Err(TokenReject::Unsigned);
        }
        if signature.is_empty() {
            return Err(TokenReject::Malformed);
        }
        if header.crit.is_some() {
            return Err(TokenReject::UnsupportedCritical);
        }
        let algorithm = parse_algorithm(&header.alg).ok_or(TokenReject::AlgorithmNotAllowed)?;
        let validation = self
            .validations
            .iter()
            .find(|(a, _)| *a == algorithm)
            .map(|(_, v)| v)
            .ok_or(TokenReject::AlgorithmNotAllowed)?;
        let claims: serde_json::Map<String, serde_json::Value> = decode_segment(payload_b64)?;
        let key = self.find_key(header.kid.as_deref(), &claims)?;
        if key.algorithm != algorithm {
            return Err(TokenReject::AlgorithmNotAllowed);
        }
        jsonwebtoken::decode::<serde::de::IgnoredAny>(token, &key.key, validation)
            .map_err(|err| reject_reason(err.kind()))?;
        let expires_at = numeric_claim(&claims, "exp")?;
        numeric_claim(&claims, "nbf")?;
        let ttl = match expires_at {
            Some(exp) => Duration::from_secs(exp.saturating_sub(now)).min(MAX_CACHE_TTL),
            None => MAX_CACHE_TTL,
        };
        Ok(VerifiedToken {
            owner: key.owner.clone(),
            expires_at,
            claim_headers: self.claim_headers(&claims),
            ttl,
        })
    }

    /// The credential for the token: by `kid` if one is registered under it,
    /// else by `iss`.
    fn find_key(
        &self,
        kid: Option<&str>,
        claims: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<&Arc<JwtKey>, TokenReject> {
        if let Some(kid) = kid {
            if let Some(key) = self.index.jwt_key(JwtKeyClaim::Kid, kid) {
                return Ok(key);
            }
        }
        claims
            .get("iss")
            .and_then(|iss| iss.as_str())
            .and_then(|iss| self.index.jwt_key(JwtKeyClaim::Iss, iss))
            .ok_or(TokenReject::UnknownKey)
    }

    fn claim_headers(
        &self,
        claims: &serde_json::Map<String, serde_json::Value>,
    ) -> Box<[(HeaderName, HeaderValue)]> {
        if self.forward_claims.is_empty() {
            return Box::new([]);
        }
        self.forward_claims
            .iter()
            .filter_map(|(claim, name)| {
                let text = match claims.get(&**claim)? {
                    serde_json::Value::Null => return None,
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                if text.len() > MAX_CLAIM_HEADER_BYTES {
                    return None;
                }
                // Control characters make an invalid header value: skipped.
                Some((name.clone(), HeaderValue::from_str(&text).ok()?))
            })
            .collect()
    }
}

/// `Bearer <token>` (scheme case-insensitive) -> the token.
fn split_scheme(value: &str) -> Option<&str> {
    if value.eq_ignore_ascii_case("bearer") {
        return Some("");
    }
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case("bearer") || !rest.starts_with([' ', '\t']) {
        return None;
    }
    Some(rest.trim_start())
}

fn decode_segment<T: serde::de::DeserializeOwned>(segment: &str) -> Result<T, TokenReject> {
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| TokenReject::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| TokenReject::Malformed)
}

/// A NumericDate claim: absent is `None`, a non-negative number is its whole
/// seconds, anything else is refused (a string `exp` must not mean "no expiry").
fn numeric_claim(
    claims: &serde_json::Map<String, serde_json::Value>,
    name: &str,
) -> Result<Option<u64>, TokenReject> {
    match claims.get(name) {
        None => Ok(None),
        Some(value) => {
            if let Some(seconds) = value.as_u64() {
                Ok(Some(seconds))
            } else {
                match value.as_f64() {
                    Some(seconds) if seconds >= 0.0 && seconds.is_finite() => {
                        // Whole seconds; the fraction never extends validity.
                        Ok(Some(seconds as u64))
                    }
                    _ => Err(TokenReject::MissingClaim),
                }
            }
        }
    }
}

fn reject_reason(kind: &ErrorKind) -> TokenReject {
    match kind {
        ErrorKind::InvalidSignature => TokenReject::BadSignature,
        ErrorKind::ExpiredSignature => TokenReject::Expired,
        ErrorKind::ImmatureSignature => TokenReject::NotYetValid,
        ErrorKind::InvalidAudience => TokenReject::WrongAudience,
        ErrorKind::InvalidIssuer => TokenReject::WrongIssuer,
        ErrorKind::MissingRequiredClaim(_) => TokenReject::MissingClaim,
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
            TokenReject::AlgorithmNotAllowed
        }
        // Bad ECDSA/RSA signature encodings are bad signatures too.
        ErrorKind::InvalidEcdsaKey | ErrorKind::InvalidRsaKey(_) => TokenReject::BadSignature,
        _ => TokenReject::Malformed,
    }
}

/// The prepared validation for one algorithm of a plugin instance.
fn validation(config: &JwtConfig, algorithm: Algorithm) -> Validation {
    let mut validation = Validation::new(algorithm);
    let mut required: Vec<&str> = Vec::new();
    if config.require_exp {
        required.push("exp");
    }
    validation.leeway = config.leeway_s;
    validation.validate_exp = true;
    validation.validate_nbf = true;
    if config.audiences.is_empty() {
        validation.validate_aud = false;
    } else {
        validation.aud = Some(config.audiences.iter().cloned().collect::<HashSet<_>>());
        required.push("aud");
    }
    if !config.issuers.is_empty() {
        validation.iss = Some(config.issuers.iter().cloned().collect::<HashSet<_>>());
        required.push("iss");
    }
    validation.set_required_spec_claims(&required);
    validation
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::auth::AuthError;
    use crate::consumers::tests::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;
    use tollgate_shared::model::Consumer;

    const HS_SECRET: &str = "hs-secret-for-tests-0123456789";

    pub(crate) fn hs_token(secret: &str, claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("encode")
    }

    fn token(alg: Algorithm, pem: &str, kid: Option<&str>, claims: serde_json::Value) -> String {
        let key = match alg {
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => EncodingKey::from_rsa_pem(pem.as_bytes()),
            Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(pem.as_bytes()),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(pem.as_bytes()),
            _ => Ok(EncodingKey::from_secret(pem.as_bytes())),
        }
        .expect("encoding key");
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_string);
        encode(&header, &claims, &key).expect("encode")
    }

    fn later() -> u64 {
        unix_now() + 3_600
    }

    fn consumers() -> Vec<Consumer> {
        let mut kid = pem_credential("key-2024", "RS256", RSA2_PUBLIC_PEM);
        kid.key_claim = JwtKeyClaim::Kid;
        vec![
            jwt_consumer("hs", &["g-hs"], hs_credential("hs-iss", "HS256", HS_SECRET)),
            jwt_consumer("hs512", &[], hs_credential("hs512-iss", "HS512", HS_SECRET)),
            jwt_consumer(
                "rs",
                &["g-rs"],
                pem_credential("rs-iss", "RS256", RSA_PUBLIC_PEM),
            ),
            jwt_consumer(
                "rs512",
                &[],
                pem_credential("rs512-iss", "RS512", RSA_PUBLIC_PEM),
            ),
            jwt_consumer("es", &[], pem_credential("es-iss", "ES256", EC_PUBLIC_PEM)),
            jwt_consumer(
                "es384",
                &[],
                pem_credential("es384-iss", "ES384", EC384_PUBLIC_PEM),
            ),
            jwt_consumer("ed", &[], pem_credential("ed-iss", "EdDSA", ED_PUBLIC_PEM)),
            jwt_consumer("kid-owner", &[], kid),
            key_consumer("anon", &["public"], "anon-unused-key"),
        ]
    }

    fn plugin_with(consumers: &[Consumer], config: serde_json::Value) -> JwtAuth {
        let index = Arc::new(ConsumerIndex::compile(consumers).expect("index"));
        let config: JwtConfig = serde_json::from_value(config).expect("config");
        JwtAuth::new(&config, &index).expect("plugin")
    }

    fn plugin(config: serde_json::Value) -> JwtAuth {
        plugin_with(&consumers(), config)
    }

    fn run<'a>(plugin: &'a JwtAuth, authorization: &str) -> AuthAttempt<'a> {
        let mut parts = http::Request::builder()
            .uri("/")
            .header("authorization", authorization)
            .body(())
            .expect("request")
            .into_parts()
            .0;
        plugin.authenticate(&mut parts)
    }

    fn accepted<'a>(plugin: &'a JwtAuth, token: &str) -> Authenticated<'a> {
        match run(plugin, &format!("Bearer {token}")) {
            AuthAttempt::Authenticated(found) => found,
            other => panic!("token refused: {other:?}"),
        }
    }

    fn refused(plugin: &JwtAuth, token: &str) -> TokenReject {
        match run(plugin, &format!("Bearer {token}")) {
            AuthAttempt::Rejected(AuthError::InvalidToken(reason)) => reason,
            other => panic!("token not refused: {other:?}"),
        }
    }

    #[test]
    fn every_algorithm_verifies_with_its_own_key() {
        let plugin = plugin(json!({}));
        let cases = [
            (Algorithm::HS256, HS_SECRET, "hs-iss", "hs"),
            (Algorithm::HS512, HS_SECRET, "hs512-iss", "hs512"),
            (Algorithm::RS256, RSA_PRIVATE_PEM, "rs-iss", "rs"),
            (Algorithm::RS512, RSA_PRIVATE_PEM, "rs512-iss", "rs512"),
            (Algorithm::ES256, EC_PRIVATE_PEM, "es-iss", "es"),
            (Algorithm::ES384, EC384_PRIVATE_PEM, "es384-iss", "es384"),
            (Algorithm::EdDSA, ED_PRIVATE_PEM, "ed-iss", "ed"),
        ];
        for (alg, key, iss, consumer) in cases {
            let token = token(alg, key, None, json!({"iss": iss, "exp": later()}));
            let found = accepted(&plugin, &token);
            assert_eq!(&*found.owner().consumer.name, consumer, "{alg:?}");
            assert_eq!(&*found.owner().credential, format!("jwt:iss:{iss}"));
        }
    }

    #[test]
    fn missing_and_malformed_tokens() {
        let plugin = plugin(json!({}));
        let mut parts = http::Request::builder()
            .uri("/")
            .body(())
            .expect("request")
            .into_parts()
            .0;
        assert!(matches!(
            plugin.authenticate(&mut parts),
            AuthAttempt::NoCredential
        ));
        assert!(matches!(
            run(&plugin, "Basic dXNlcjpwYXNz"),
            AuthAttempt::NoCredential
        ));
        for bad in [
            "abc",
            "a.b",
            "a.b.c.d",
            "!!!.???.sig",
            "e30.e30.",
            "e30.e30.c2ln",
        ] {
            assert_eq!(refused(&plugin, bad), TokenReject::Malformed, "{bad}");
        }
        assert!(matches!(
            run(&plugin, "Bearer "),
            AuthAttempt::Rejected(AuthError::InvalidToken(TokenReject::Malformed))
        ));
        let long = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(refused(&plugin, &long), TokenReject::TooLong);
        // Lower-case scheme is fine.
        let token = hs_token(HS_SECRET, json!({"iss": "hs-iss", "exp": later()}));
        assert!(matches!(
            run(&plugin, &format!("bearer  {token}")),
            AuthAttempt::Authenticated(_)
        ));
        // Two Authorization headers are ambiguous.
        let mut parts = http::Request::builder()
            .uri("/")
            .header("authorization", format!("Bearer {token}"))
            .header("authorization", "Bearer x.y.z")
            .body(())
            .expect("request")
            .into_parts()
            .0;
        assert!(matches!(
            plugin.authenticate(&mut parts),
            AuthAttempt::Rejected(AuthError::InvalidToken(TokenReject::Duplicate))
        ));
    }

    #[test]
    fn time_claims_are_enforced_with_leeway() {
        let plugin = plugin(json!({"leeway_s": 5}));
        let now = unix_now();
        let expired = hs_token(HS_SECRET, json!({"iss": "hs-iss", "exp": now - 60}));
        assert_eq!(refused(&plugin, &expired), TokenReject::Expired);
        let within_leeway = hs_token(HS_SECRET, json!({"iss": "hs-iss", "exp": now - 2}));
        accepted(&plugin, &within_leeway);
        let future = hs_token(
            HS_SECRET,
            json!({"iss": "hs-iss", "exp": later(), "nbf": now + 600}),
        );
        assert_eq!(refused(&plugin, &future), TokenReject::NotYetValid);
        let no_exp = hs_token(HS_SECRET, json!({"iss": "hs-iss"}));
        assert_eq!(refused(&plugin, &no_exp), TokenReject::MissingClaim);
        let string_exp = hs_token(HS_SECRET, json!({"iss": "hs-iss", "exp": "never"}));
        assert_eq!(refused(&plugin, &string_exp), TokenReject::MissingClaim);

        let lax = super::tests::plugin(json!({"require_exp": false}));
        accepted(&lax, &no_exp);
        assert_eq!(refused(&lax, &string_exp), TokenReject::MissingClaim);
        let string_nbf = hs_token(HS_SECRET, json!({"iss": "hs-iss", "nbf": "later"}));
        assert_eq!(refused(&lax, &string_nbf), TokenReject::MissingClaim);
    }

    #[test]
    fn audience_and_issuer_are_checked_when_configured() {
        let plugin = plugin(json!({"audiences": ["orders"], "issuers": ["hs-iss"]}));
        let ok = hs_token(
            HS_SECRET,
            json!({"iss": "hs-iss", "aud": "orders", "exp": later()}),
        );
        accepted(&plugin, &ok);
        let many = hs_token(
            HS_SECRET,
            json!({"iss": "hs-iss", "aud": ["x", "orders"], "exp": later()}),
        );
        accepted(&plugin, &many);
        let wrong_aud = hs_token(
            HS_SECRET,
            json!({"iss": "hs-iss", "aud": "billing", "exp": later()}),
        );
        assert_eq!(refused(&plugin, &wrong_aud), TokenReject::WrongAudience);
        let no_aud = hs_token(HS_SECRET, json!({"iss": "hs-iss", "exp": later()}));
        assert_eq!(refused(&plugin, &no_aud), TokenReject::MissingClaim);
        // A registered issuer the route does not accept.
        let other = token(
            Algorithm::RS256,
            RSA_PRIVATE_PEM,
            None,
            json!({"iss": "rs-iss", "aud": "orders", "exp": later()}),
        );
        assert_eq!(refused(&plugin, &other), TokenReject::WrongIssuer);
        // Without audiences configured, any aud is fine.
        let open = super::tests::plugin(json!({}));
        accepted(&open, &wrong_aud);
    }

    #[test]
    fn forged_tokens_are_refused() {
        let plugin = plugin(json!({}));
        let good = hs_token(HS_SECRET, json!({"iss": "hs-iss", "exp": later()}));
        // Tampered payload, original signature.
        let (head, rest) = good.split_once('.').expect("dot");
        let (_, sig) = rest.split_once('.').expect("dot");
        let payload = URL_SAFE_NO_PAD
            .encode(json!({"iss": "hs-iss", "exp": later(), "admin": true}).to_string());
        assert_eq!(
            refused(&plugin, &format!("{head}.{payload}.{sig}")),
            TokenReject::BadSignature
        );
        // Flipped signature byte.
        let mut tampered = good.clone().into_bytes();
        let last = tampered.len() - 2;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).expect("ascii");
        assert_eq!(refused(&plugin, &tampered), TokenReject::BadSignature);
        // Wrong secret.
        let wrong = hs_token(
            "another-secret-0123456789",
            json!({"iss": "hs-iss", "exp": later()}),
        );
        assert_eq!(refused(&plugin, &wrong), TokenReject::BadSignature);

        // alg: none, with and without a signature segment, any case.
        for alg in ["none", "None", "NONE"] {
            let header = URL_SAFE_NO_PAD.encode(json!({"alg": alg, "typ": "JWT"}).to_string());
            let body = URL_SAFE_NO_PAD.encode(json!({"iss": "hs-iss", "exp": later()}).to_string());
            assert_eq!(
                refused(&plugin, &format!("{header}.{body}.")),
                TokenReject::Unsigned
            );
            assert_eq!(
                refused(&plugin, &format!("{header}.{body}.{sig}")),
                TokenReject::Unsigned
            );
        }

        // The RS256 public key used as an HS256 secret for an RS256 issuer.
        let confused = token(
            Algorithm::HS256,
            RSA_PUBLIC_PEM,
            None,
            json!({"iss": "rs-iss", "exp": later()}),
        );
        assert_eq!(
            refused(&plugin, &confused),
            TokenReject::AlgorithmNotAllowed
        );
        let confused_kid = token(
            Algorithm::HS256,
            RSA2_PUBLIC_PEM,
            Some("key-2024"),
            json!({"exp": later()}),
        );
        assert_eq!(
            refused(&plugin, &confused_kid),
            TokenReject::AlgorithmNotAllowed
        );

        // Signed by someone else's key for this issuer.
        let other_key = token(
            Algorithm::RS256,
            RSA2_PRIVATE_PEM,
            None,
            json!({"iss": "rs-iss", "exp": later()}),
        );
        assert_eq!(refused(&plugin, &other_key), TokenReject::BadSignature);

        // Unknown issuer, no issuer.
        let unknown = hs_token(HS_SECRET, json!({"iss": "who", "exp": later()}));
        assert_eq!(refused(&plugin, &unknown), TokenReject::UnknownKey);
        let anonymous = hs_token(HS_SECRET, json!({"exp": later()}));
        assert_eq!(refused(&plugin, &anonymous), TokenReject::UnknownKey);

        // `crit` extensions are refused; `jku` is ignored (never fetched).
        let mut header = Header::new(Algorithm::HS256);
        header.jku = Some("http://127.0.0.1:1/keys".into());
        let with_jku = encode(
            &header,
            &json!({"iss": "hs-iss", "exp": later()}),
            &EncodingKey::from_secret(HS_SECRET.as_bytes()),
        )
        .expect("encode");
        accepted(&plugin, &with_jku);
        let crit_header =
            URL_SAFE_NO_PAD.encode(json!({"alg": "HS256", "crit": ["exp"]}).to_string());
        let crit = format!("{crit_header}.{}.{sig}", URL_SAFE_NO_PAD.encode("{}"));
        assert_eq!(refused(&plugin, &crit), TokenReject::UnsupportedCritical);
    }

    #[test]
    fn algorithm_allow_lists_apply_per_plugin_and_per_credential() {
        let rs_only = plugin(json!({"algorithms": ["RS256"]}));
        let hs = hs_token(HS_SECRET, json!({"iss": "hs-iss", "exp": later()}));
        assert_eq!(refused(&rs_only, &hs), TokenReject::AlgorithmNotAllowed);
        let rs = token(
            Algorithm::RS256,
            RSA_PRIVATE_PEM,
            None,
            json!({"iss": "rs-iss", "exp": later()}),
        );
        accepted(&rs_only, &rs);
        // The credential says RS512: an RS256 token for that issuer is refused
        // even though the plugin allows RS256.
        let rs256_for_512 = token(
            Algorithm::RS256,
            RSA_PRIVATE_PEM,
            None,
            json!({"iss": "rs512-iss", "exp": later()}),
        );
        assert_eq!(
            refused(&plugin(json!({})), &rs256_for_512),
            TokenReject::AlgorithmNotAllowed
        );
        // PS256 is not supported at all.
        let ps = token(
            Algorithm::PS256,
            RSA_PRIVATE_PEM,
            None,
            json!({"iss": "rs-iss", "exp": later()}),
        );
        assert_eq!(
            refused(&plugin(json!({})), &ps),
            TokenReject::AlgorithmNotAllowed
        );
    }

    #[test]
    fn kid_is_a_lookup_key() {
        let plugin = plugin(json!({}));
        let by_kid = token(
            Algorithm::RS256,
            RSA2_PRIVATE_PEM,
            Some("key-2024"),
            json!({"iss": "rs-iss", "exp": later()}),
        );
        let found = accepted(&plugin, &by_kid);
        assert_eq!(&*found.owner().consumer.name, "kid-owner");
        let traversal = token(
            Algorithm::RS256,
            RSA2_PRIVATE_PEM,
            Some("../../etc/passwd"),
            json!({"exp": later()}),
        );
        assert_eq!(refused(&plugin, &traversal), TokenReject::UnknownKey);
        // An unknown kid falls back to the issuer.
        let fallback = token(
            Algorithm::RS256,
            RSA_PRIVATE_PEM,
            Some("nope"),
            json!({"iss": "rs-iss", "exp": later()}),
        );
        assert_eq!(&*accepted(&plugin, &fallback).owner().consumer.name, "rs");
    }

    #[test]
    fn claims_are_forwarded_as_headers() {
        let plugin = plugin(
            json!({"forward_claims": {"sub": "x-user-id", "roles": "x-roles", "n": "x-n", "evil": "x-evil"}}),
        );
        let token = hs_token(
            HS_SECRET,
            json!({"iss": "hs-iss", "exp": later(), "sub": "user-7", "roles": ["a", "b"], "n": 5, "evil": "a\r\nb"}),
        );
        let found = accepted(&plugin, &token);
        let headers = found.claim_headers();
        let get = |n: &str| {
            headers
                .iter()
                .find(|(h, _)| h == n)
                .map(|(_, v)| v.to_str().expect("ascii").to_string())
        };
        assert_eq!(get("x-user-id").as_deref(), Some("user-7"));
        assert_eq!(get("x-roles").as_deref(), Some("[\"a\",\"b\"]"));
        assert_eq!(get("x-n").as_deref(), Some("5"));
        assert_eq!(get("x-evil"), None, "CR/LF never reach a header");
        assert_eq!(plugin.forwarded_headers().len(), 4);
        let config: JwtConfig =
            serde_json::from_value(json!({"forward_claims": {"sub": "X-Consumer-Name"}}))
                .expect("config");
        let index = Arc::new(ConsumerIndex::compile(&[]).expect("index"));
        assert!(JwtAuth::new(&config, &index).is_err());
    }

    #[test]
    fn verified_tokens_are_cached_per_snapshot_and_never_past_exp() {
        let consumers = consumers();
        let plugin = plugin_with(&consumers, json!({}));
        let token = token(
            Algorithm::RS256,
            RSA_PRIVATE_PEM,
            None,
            json!({"iss": "rs-iss", "exp": later()}),
        );
        accepted(&plugin, &token);
        let key = plugin.cache_key(&token);
        assert!(
            token_cache().get(&key).is_some(),
            "verified token is cached"
        );
        accepted(&plugin, &token);

        // Key rotation: a new snapshot where rs-iss has another key. Same
        // token, new index generation and new plugin id: a cache miss, and
        // the old key's token is refused at once.
        let mut rotated = consumers.clone();
        for consumer in &mut rotated {
            if consumer.name == "rs" {
                consumer.credentials[0]
                    .jwt
                    .as_mut()
                    .expect("jwt")
                    .public_key = Some(RSA2_PUBLIC_PEM.to_string());
            }
        }
        let new_plugin = plugin_with(&rotated, json!({}));
        assert_ne!(new_plugin.cache_key(&token), key);
        assert_eq!(refused(&new_plugin, &token), TokenReject::BadSignature);
        let new_token = super::tests::token(
            Algorithm::RS256,
            RSA2_PRIVATE_PEM,
            None,
            json!({"iss": "rs-iss", "exp": later()}),
        );
        accepted(&new_plugin, &new_token);
        assert_eq!(refused(&new_plugin, &token), TokenReject::BadSignature);

        // A cached entry whose exp has passed is not used.
        let stale = Arc::new(VerifiedToken {
            owner: accepted(&plugin, &token).owner().clone(),
            expires_at: Some(unix_now() - 1),
            claim_headers: Box::new([]),
            ttl: MAX_CACHE_TTL,
        });
        let forged = "not.a.token";
        let forged_key = plugin.cache_key(forged);
        token_cache().insert(forged_key, stale);
        assert_eq!(refused(&plugin, forged), TokenReject::Malformed);
        assert!(
            token_cache().get(&forged_key).is_none(),
            "stale entry dropped"
        );

        // A token expiring within the leeway verifies but is not cached.
        let nearly = hs_token(HS_SECRET, json!({"iss": "hs-iss", "exp": unix_now() - 1}));
        accepted(&plugin, &nearly);
        assert!(token_cache().get(&plugin.cache_key(&nearly)).is_none());
    }

    #[test]
    fn anonymous_and_custom_header() {
        let plugin = plugin(json!({"anonymous": "anon", "header": "x-token"}));
        assert_eq!(&*plugin.anonymous().expect("anon").name, "anon");
        let token = hs_token(HS_SECRET, json!({"iss": "hs-iss", "exp": later()}));
        for value in [token.clone(), format!("Bearer {token}")] {
            let mut parts = http::Request::builder()
                .uri("/")
                .header("x-token", value)
                .body(())
                .expect("request")
                .into_parts()
                .0;
            assert!(matches!(
                plugin.authenticate(&mut parts),
                AuthAttempt::Authenticated(_)
            ));
        }
        // Authorization is not consulted when another header is configured.
        assert!(matches!(
            run(&plugin, &format!("Bearer {token}")),
            AuthAttempt::NoCredential
        ));
    }
}
