//! The authenticate phase as a whole: a route's authentication methods
//! (`key-auth`, `jwt`) run as one set, and the reasons a request is refused.
//!
//! Semantics, in order:
//!
//! 1. Identity headers sent by the client are removed: only the gateway
//!    asserts who is calling. `X-Consumer-*` goes on every request, before
//!    any plugin runs (the proxy handler calls
//!    [`strip_identity_headers`](super::consumers::strip_identity_headers));
//!    the headers a `jwt` plugin forwards claims in go here.
//! 2. Each method looks for its credential. The first that authenticates a
//!    consumer wins; the rest do not run (a cheap key check spares a
//!    signature check).
//! 3. If none authenticates but some credential was presented and is wrong,
//!    the request gets 401 for that credential, even if an `anonymous`
//!    consumer is configured: a client with a broken key hears about it
//!    instead of being silently downgraded.
//! 4. If no credential was presented at all, the first method's `anonymous`
//!    consumer (if any) is used; otherwise 401, with one `WWW-Authenticate`
//!    challenge per scheme the route accepts.
//!
//! Refusals ([`AuthError`]) are `Copy` and carry only static text: a JSON
//! error body can never echo a credential.

use std::sync::Arc;

use http::header::{HeaderName, HeaderValue, WWW_AUTHENTICATE};
use http::{request, Response, StatusCode};

use super::consumers::{ConsumerIdentity, CredentialOwner, X_ANONYMOUS_CONSUMER};
use super::context::Identity;
use super::jwt::{JwtAuth, VerifiedToken};
use super::key_auth::KeyAuth;
use crate::proxy::body::ResponseBody;

/// What one authentication method found.
#[derive(Debug)]
pub enum AuthAttempt<'a> {
    Authenticated(Authenticated<'a>),
    /// The request carries no credential for this method.
    NoCredential,
    /// A credential was presented and is not valid.
    Rejected(AuthError),
}

/// A consumer proven by a credential: borrowed from the snapshot's index
/// (API keys) or shared with the token cache (JWTs), so finding it moves no
/// reference count; only the request's [`Identity`] takes its own.
#[derive(Debug)]
pub enum Authenticated<'a> {
    Indexed(&'a CredentialOwner),
    Verified(Arc<VerifiedToken>),
}

impl Authenticated<'_> {
    pub fn owner(&self) -> &CredentialOwner {
        match self {
            Authenticated::Indexed(owner) => owner,
            Authenticated::Verified(token) => token.owner(),
        }
    }

    /// Upstream headers derived from the credential (JWT `forward_claims`).
    pub fn claim_headers(&self) -> &[(HeaderName, HeaderValue)] {
        match self {
            Authenticated::Indexed(_) => &[],
            Authenticated::Verified(token) => token.claim_headers(),
        }
    }
}

/// Why an API key was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyReject {
    /// No consumer has this key.
    Unknown,
    /// The key was sent more than once.
    Duplicate,
}

/// Why a bearer token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenReject {
    /// Not three base64url segments with a JSON header and payload.
    Malformed,
    /// The token was sent more than once.
    Duplicate,
    TooLong,
    /// `alg: none`.
    Unsigned,
    /// The algorithm is not allowed by the route, or not the key's algorithm.
    AlgorithmNotAllowed,
    /// The header lists critical extensions (`crit`) we do not implement.
    UnsupportedCritical,
    /// No credential matches the token's `kid` or `iss`.
    UnknownKey,
    BadSignature,
    Expired,
    NotYetValid,
    /// A required claim (`exp`, `aud`, `iss`) is absent or not well-typed.
    MissingClaim,
    WrongAudience,
    WrongIssuer,
}

impl TokenReject {
    pub const fn message(self) -> &'static str {
        match self {
            TokenReject::Malformed => "the bearer token is malformed",
            TokenReject::Duplicate => "the bearer token is sent more than once",
            TokenReject::TooLong => "the bearer token is too long",
            TokenReject::Unsigned => "unsigned tokens (alg none) are not accepted",
            TokenReject::AlgorithmNotAllowed => "the token's algorithm is not allowed",
            TokenReject::UnsupportedCritical => "the token requires unsupported extensions",
            TokenReject::UnknownKey => "no key is registered for the token's issuer or key id",
            TokenReject::BadSignature => "the token's signature is invalid",
            TokenReject::Expired => "the token has expired",
            TokenReject::NotYetValid => "the token is not valid yet",
            TokenReject::MissingClaim => "the token lacks a required claim",
            TokenReject::WrongAudience => "the token is not meant for this audience",
            TokenReject::WrongIssuer => "the token's issuer is not accepted",
        }
    }
}

/// The authentication schemes a route accepts, for `WWW-Authenticate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Challenges {
    pub key: bool,
    pub bearer: bool,
}

/// Why the gateway refused a request in the authenticate or authorize phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// No credential, and no anonymous consumer: 401.
    MissingCredential(Challenges),
    /// A wrong API key: 401.
    InvalidKey(KeyReject),
    /// A bad bearer token: 401.
    InvalidToken(TokenReject),
    /// Authenticated, but the route's `acl` does not admit the consumer: 403.
    Forbidden,
    /// The route has an `acl` but no authentication plugin identified anyone: 403.
    NoConsumer,
}

impl From<KeyReject> for AuthError {
    fn from(reject: KeyReject) -> Self {
        AuthError::InvalidKey(reject)
    }
}

impl From<TokenReject> for AuthError {
    fn from(reject: TokenReject) -> Self {
        AuthError::InvalidToken(reject)
    }
}

const KEY_CHALLENGE: &str = "Key realm=\"tollgate\"";
const BEARER_CHALLENGE: &str = "Bearer realm=\"tollgate\"";

impl AuthError {
    pub const fn status(self) -> StatusCode {
        match self {
            AuthError::MissingCredential(_)
            | AuthError::InvalidKey(_)
            | AuthError::InvalidToken(_) => StatusCode::UNAUTHORIZED,
            AuthError::Forbidden | AuthError::NoConsumer => StatusCode::FORBIDDEN,
        }
    }

    /// The stable, machine-readable `error` field of the JSON body.
    pub const fn code(self) -> &'static str {
        match self {
            AuthError::MissingCredential(_) => "unauthorized",
            AuthError::InvalidKey(_) => "invalid_api_key",
            AuthError::InvalidToken(_) => "invalid_token",
            AuthError::Forbidden | AuthError::NoConsumer => "forbidden",
        }
    }

    /// A sentence for the body; static, so it never contains request data.
    pub const fn message(self) -> &'static str {
        match self {
            AuthError::MissingCredential(_) => "this route requires a credential",
            AuthError::InvalidKey(KeyReject::Unknown) => "the API key is not valid",
            AuthError::InvalidKey(KeyReject::Duplicate) => "the API key is sent more than once",
            AuthError::InvalidToken(reject) => reject.message(),
            AuthError::Forbidden => "the consumer is not allowed to use this route",
            AuthError::NoConsumer => "this route admits only identified consumers",
        }
    }

    /// The `WWW-Authenticate` challenges of a 401 (RFC 9110 §11.6.1; for
    /// bearer tokens RFC 6750 §3, with `error` only when a token was sent).
    pub fn challenges(self) -> Vec<HeaderValue> {
        match self {
            AuthError::MissingCredential(schemes) => {
                let mut out = Vec::with_capacity(2);
                if schemes.key {
                    out.push(HeaderValue::from_static(KEY_CHALLENGE));
                }
                if schemes.bearer {
                    out.push(HeaderValue::from_static(BEARER_CHALLENGE));
                }
                out
            }
            AuthError::InvalidKey(_) => vec![HeaderValue::from_static(KEY_CHALLENGE)],
            AuthError::InvalidToken(reject) => {
                let text = format!(
                    "{BEARER_CHALLENGE}, error=\"invalid_token\", error_description=\"{}\"",
                    reject.message()
                );
                HeaderValue::from_str(&text)
                    .map(|value| vec![value])
                    .unwrap_or_else(|_| vec![HeaderValue::from_static(BEARER_CHALLENGE)])
            }
            AuthError::Forbidden | AuthError::NoConsumer => Vec::new(),
        }
    }

    /// The JSON body: `{"error":..., "message":..., "request_id":...}`.
    pub fn body(self, request_id: Option<&HeaderValue>) -> String {
        crate::error::json_error_body(self.code(), self.message(), request_id)
    }

    /// The complete response, `X-Request-Id` echoed, with its challenges.
    pub fn into_response(self, request_id: Option<&HeaderValue>) -> Response<ResponseBody> {
        let mut response = crate::error::json_error_response(
            self.status(),
            self.code(),
            self.message(),
            request_id,
        );
        let headers = response.headers_mut();
        for challenge in self.challenges() {
            headers.append(WWW_AUTHENTICATE, challenge);
        }
        response
    }
}

/// One authentication method (enum dispatch, no trait objects).
#[derive(Debug)]
pub enum Authenticator {
    KeyAuth(KeyAuth),
    Jwt(JwtAuth),
}

impl Authenticator {
    fn authenticate(&self, request: &mut request::Parts) -> AuthAttempt<'_> {
        match self {
            Authenticator::KeyAuth(method) => method.authenticate(request),
            Authenticator::Jwt(method) => method.authenticate(request),
        }
    }

    fn anonymous(&self) -> Option<&Arc<ConsumerIdentity>> {
        match self {
            Authenticator::KeyAuth(method) => method.anonymous(),
            Authenticator::Jwt(method) => method.anonymous(),
        }
    }

    fn forwarded_headers(&self) -> &[HeaderName] {
        match self {
            Authenticator::KeyAuth(_) => &[],
            Authenticator::Jwt(method) => method.forwarded_headers(),
        }
    }
}

/// The authentication methods of one route, run as one phase. Built when
/// the snapshot compiles.
#[derive(Debug, Clone)]
pub struct AuthSet {
    methods: Box<[Arc<Authenticator>]>,
    challenges: Challenges,
    anonymous: Option<Arc<ConsumerIdentity>>,
    /// Headers the methods set upstream (claims), removed from the client's request.
    owned_headers: Box<[HeaderName]>,
}

const ANONYMOUS_TRUE: HeaderValue = HeaderValue::from_static("true");

impl AuthSet {
    /// A set of the given methods, in the order they are tried.
    pub fn new(methods: Vec<Arc<Authenticator>>) -> AuthSet {
        let mut challenges = Challenges::default();
        let mut owned_headers: Vec<HeaderName> = Vec::new();
        for method in &methods {
            match method.as_ref() {
                Authenticator::KeyAuth(_) => challenges.key = true,
                Authenticator::Jwt(_) => challenges.bearer = true,
            }
            for name in method.forwarded_headers() {
                if !owned_headers.contains(name) {
                    owned_headers.push(name.clone());
                }
            }
        }
        let anonymous = methods.iter().find_map(|m| m.anonymous().cloned());
        AuthSet {
            methods: methods.into_boxed_slice(),
            challenges,
            anonymous,
            owned_headers: owned_headers.into_boxed_slice(),
        }
    }

    /// One set of all the methods of several sets, in order.
    pub fn merge<'a>(sets: impl IntoIterator<Item = &'a AuthSet>) -> AuthSet {
        AuthSet::new(
            sets.into_iter()
                .flat_map(|set| set.methods.iter().cloned())
                .collect(),
        )
    }

    /// `key-auth` or `jwt` for a single method, `authenticate` for several.
    pub fn name(&self) -> &'static str {
        match (self.challenges.key, self.challenges.bearer) {
            (true, false) => "key-auth",
            (false, true) => "jwt",
            _ => "authenticate",
        }
    }

    pub fn len(&self) -> usize {
        self.methods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.methods.is_empty()
    }

    /// Runs the methods; on success the identity headers are set on the
    /// request and the identity is returned for the request context.
    pub fn authenticate(&self, request: &mut request::Parts) -> Result<Identity, AuthError> {
        for name in self.owned_headers.iter() {
            request.headers.remove(name);
        }
        let mut refusal = None;
        for method in self.methods.iter() {
            match method.authenticate(request) {
                AuthAttempt::Authenticated(found) => {
                    let owner = found.owner();
                    owner.consumer.write_headers(&mut request.headers);
                    for (name, value) in found.claim_headers() {
                        request.headers.insert(name.clone(), value.clone());
                    }
                    return Ok(owner.consumer.identity(Some(&owner.credential), false));
                }
                AuthAttempt::NoCredential => {}
                AuthAttempt::Rejected(error) => {
                    refusal.get_or_insert(error);
                }
            }
        }
        if let Some(error) = refusal {
            return Err(error);
        }
        match &self.anonymous {
            Some(anonymous) => {
                anonymous.write_headers(&mut request.headers);
                request.headers.insert(X_ANONYMOUS_CONSUMER, ANONYMOUS_TRUE);
                Ok(anonymous.identity(None, true))
            }
            None => Err(AuthError::MissingCredential(self.challenges)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::consumers::tests::{hs_credential, jwt_consumer, key_consumer};
    use crate::plugins::consumers::{ConsumerIndex, X_CONSUMER_GROUPS, X_CONSUMER_NAME};
    use crate::plugins::jwt::tests::hs_token;
    use http_body_util::BodyExt;
    use serde_json::json;

    const SECRET: &str = "jwt-hmac-secret-0123456789";

    fn index() -> Arc<ConsumerIndex> {
        Arc::new(
            ConsumerIndex::compile(&[
                key_consumer("alice", &["partners"], "alice-secret-key"),
                jwt_consumer(
                    "carol",
                    &["staff", "ops"],
                    hs_credential("issuer-c", "HS256", SECRET),
                ),
                key_consumer("guest", &["public"], "guest-unused-key"),
            ])
            .expect("compiles"),
        )
    }

    fn set(
        index: &Arc<ConsumerIndex>,
        key: serde_json::Value,
        jwt: Option<serde_json::Value>,
    ) -> AuthSet {
        let mut methods = vec![Arc::new(Authenticator::KeyAuth(
            KeyAuth::new(&serde_json::from_value(key).expect("key config"), index)
                .expect("key-auth"),
        ))];
        if let Some(jwt) = jwt {
            methods.push(Arc::new(Authenticator::Jwt(
                JwtAuth::new(&serde_json::from_value(jwt).expect("jwt config"), index)
                    .expect("jwt"),
            )));
        }
        AuthSet::new(methods)
    }

    fn parts(headers: &[(&str, &str)]) -> request::Parts {
        let mut builder = http::Request::builder().uri("/r");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).expect("request").into_parts().0
    }

    #[test]
    fn any_method_authenticates_and_identity_is_forwarded() {
        let index = index();
        let set = set(
            &index,
            json!({}),
            Some(json!({"forward_claims": {"sub": "x-user"}})),
        );
        let token = hs_token(
            SECRET,
            json!({"iss": "issuer-c", "sub": "u-1", "exp": 4102444800u64}),
        );
        let mut req = parts(&[
            ("authorization", &format!("Bearer {token}")),
            ("x-consumer-name", "admin"),
            ("x-consumer-groups", "admins"),
            ("x-user", "spoofed"),
        ]);
        let identity = set.authenticate(&mut req).expect("jwt authenticates");
        assert_eq!(&*identity.consumer, "carol");
        assert!(!identity.anonymous);
        assert_eq!(identity.credential.as_deref(), Some("jwt:iss:issuer-c"));
        assert_eq!(req.headers[X_CONSUMER_NAME], "carol");
        assert_eq!(req.headers[X_CONSUMER_GROUPS], "staff, ops");
        assert_eq!(req.headers["x-user"], "u-1");
        assert!(req.headers.get(X_ANONYMOUS_CONSUMER).is_none());

        // A wrong key does not stop a valid token from authenticating.
        let mut req = parts(&[
            ("apikey", "wrong-key-1234"),
            ("authorization", &format!("Bearer {token}")),
        ]);
        assert_eq!(&*set.authenticate(&mut req).expect("ok").consumer, "carol");

        let mut req = parts(&[("apikey", "alice-secret-key"), ("x-user", "spoofed")]);
        let identity = set.authenticate(&mut req).expect("key authenticates");
        assert_eq!(&*identity.consumer, "alice");
        assert!(
            req.headers.get("x-user").is_none(),
            "claim headers are never client-supplied"
        );
    }

    #[test]
    fn missing_credential_lists_every_scheme_and_wrong_one_is_reported() {
        let index = index();
        let set = set(&index, json!({}), Some(json!({})));
        let err = set
            .authenticate(&mut parts(&[("x-consumer-name", "alice")]))
            .expect_err("must be refused");
        assert_eq!(
            err,
            AuthError::MissingCredential(Challenges {
                key: true,
                bearer: true
            })
        );
        assert_eq!(err.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(err.challenges(), vec![KEY_CHALLENGE, BEARER_CHALLENGE]);

        let err = set
            .authenticate(&mut parts(&[("apikey", "wrong-key-1234")]))
            .expect_err("must be refused");
        assert_eq!(err, AuthError::InvalidKey(KeyReject::Unknown));
        assert_eq!(err.challenges(), vec![KEY_CHALLENGE]);

        let err = set
            .authenticate(&mut parts(&[("authorization", "Bearer abc.def")]))
            .expect_err("must be refused");
        assert_eq!(err, AuthError::InvalidToken(TokenReject::Malformed));
        let challenge = err.challenges().remove(0);
        assert!(challenge
            .to_str()
            .expect("ascii")
            .starts_with("Bearer realm=\"tollgate\", error=\"invalid_token\""));
    }

    #[test]
    fn anonymous_only_when_no_credential_is_presented() {
        let index = index();
        let set = set(&index, json!({"anonymous": "guest"}), None);
        let mut req = parts(&[("x-consumer-name", "alice")]);
        let identity = set.authenticate(&mut req).expect("anonymous");
        assert!(identity.anonymous);
        assert_eq!(&*identity.consumer, "guest");
        assert_eq!(identity.credential, None);
        assert_eq!(req.headers[X_CONSUMER_NAME], "guest");
        assert_eq!(req.headers[X_ANONYMOUS_CONSUMER], "true");
        let err = set
            .authenticate(&mut parts(&[("apikey", "wrong-key-1234")]))
            .expect_err("must be refused");
        assert_eq!(err, AuthError::InvalidKey(KeyReject::Unknown));
    }

    #[test]
    fn merged_sets_keep_order_and_schemes() {
        let index = index();
        let a = set(&index, json!({}), None);
        let b = AuthSet::new(vec![Arc::new(Authenticator::Jwt(
            JwtAuth::new(&serde_json::from_value(json!({})).expect("config"), &index).expect("jwt"),
        ))]);
        let merged = AuthSet::merge([&a, &b]);
        assert_eq!(merged.len(), 2);
        assert_eq!(
            merged.challenges,
            Challenges {
                key: true,
                bearer: true
            }
        );
    }

    #[tokio::test]
    async fn error_bodies_are_json_and_never_echo_the_credential() {
        let index = index();
        let set = set(&index, json!({}), Some(json!({})));
        let secret_key = "canary-key-do-not-echo";
        let err = set
            .authenticate(&mut parts(&[("apikey", secret_key)]))
            .expect_err("must be refused");
        let id = HeaderValue::from_static("req-1");
        let response = err.into_response(Some(&id));
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()[WWW_AUTHENTICATE], KEY_CHALLENGE);
        assert_eq!(
            response.headers()[crate::proxy::forward::X_REQUEST_ID],
            "req-1"
        );
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let text = String::from_utf8(body.to_vec()).expect("utf8");
        assert!(!text.contains(secret_key), "{text}");
        let json: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(json["error"], "invalid_api_key");
        assert_eq!(json["request_id"], "req-1");
        assert_eq!(AuthError::Forbidden.status(), StatusCode::FORBIDDEN);
        assert!(AuthError::Forbidden.challenges().is_empty());
    }
}
