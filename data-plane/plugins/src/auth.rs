//! What the credential plugins (`key-auth`, `jwt`) share: what one method
//! found, the reasons a credential is refused, and the bridge to the plugin
//! API's [`Authenticator`], which runs a route's methods as one any-of set
//! (`tollgate_plugin_api::AuthSet`: the order, anonymous and challenge rules
//! live there).
//!
//! Refusals ([`AuthError`]) are `Copy` and carry only static text: a JSON
//! error body can never echo a credential.

use std::sync::Arc;

use http::header::{HeaderName, HeaderValue, WWW_AUTHENTICATE};
use http::request;
use tollgate_plugin_api::{self as api, Identity, Refusal, RefusalKind};

use crate::consumers::CredentialOwner;
use crate::jwt::VerifiedToken;

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

/// Why a credential plugin refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
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

/// The `WWW-Authenticate` challenge of `key-auth`.
pub const KEY_CHALLENGE: HeaderValue = HeaderValue::from_static("Key realm=\"tollgate\"");
/// The `WWW-Authenticate` challenge of `jwt` (RFC 6750 §3).
pub const BEARER_CHALLENGE: HeaderValue = HeaderValue::from_static("Bearer realm=\"tollgate\"");

impl AuthError {
    /// The refusal the client gets: its kind from the one table, a precise
    /// static message, and the challenge of the refused scheme (RFC 9110
    /// §11.6.1; for bearer tokens RFC 6750 §3 with `error`).
    pub fn refusal(self) -> Refusal {
        match self {
            AuthError::InvalidKey(KeyReject::Unknown) => Refusal::new(RefusalKind::InvalidApiKey)
                .with_header(WWW_AUTHENTICATE, KEY_CHALLENGE),
            AuthError::InvalidKey(KeyReject::Duplicate) => Refusal::new(RefusalKind::InvalidApiKey)
                .with_message("the API key is sent more than once")
                .with_header(WWW_AUTHENTICATE, KEY_CHALLENGE),
            AuthError::InvalidToken(reject) => {
                let kind = match reject {
                    TokenReject::Expired => RefusalKind::ExpiredToken,
                    _ => RefusalKind::InvalidToken,
                };
                let text = format!(
                    "Bearer realm=\"tollgate\", error=\"invalid_token\", error_description=\"{}\"",
                    reject.message()
                );
                let challenge = HeaderValue::from_str(&text).unwrap_or(BEARER_CHALLENGE);
                Refusal::new(kind)
                    .with_message(reject.message())
                    .with_header(WWW_AUTHENTICATE, challenge)
            }
            AuthError::Forbidden => Refusal::new(RefusalKind::Forbidden),
            AuthError::NoConsumer => Refusal::new(RefusalKind::Forbidden)
                .with_message("this route admits only identified consumers"),
        }
    }
}

/// A method's own attempt as the plugin API sees it: on success the
/// identity headers (and claim headers) are set on the request.
pub fn to_api(attempt: AuthAttempt<'_>, request: &mut request::Parts) -> api::AuthAttempt {
    match attempt {
        AuthAttempt::Authenticated(found) => {
            let owner = found.owner();
            owner.consumer.write_headers(&mut request.headers);
            for (name, value) in found.claim_headers() {
                request.headers.insert(name.clone(), value.clone());
            }
            api::AuthAttempt::Authenticated(owner.consumer.identity(Some(&owner.credential), false))
        }
        AuthAttempt::NoCredential => api::AuthAttempt::NoCredential,
        AuthAttempt::Rejected(error) => api::AuthAttempt::Rejected(error.refusal()),
    }
}

/// The identity of a method's `anonymous` consumer, its headers written.
pub fn anonymous_identity(
    consumer: Option<&Arc<crate::consumers::ConsumerIdentity>>,
    request: &mut request::Parts,
) -> Option<Identity> {
    let consumer = consumer?;
    consumer.write_headers(&mut request.headers);
    Some(consumer.identity(None, true))
}

/// The factory, [`tollgate_plugin_api::Plugin`] and [`tollgate_plugin_api::Authenticator`] of a
/// credential method (`key-auth`, `jwt`): they differ only in their names, config type, challenge
/// and the upstream headers they own, so one declaration writes all three. The method type has
/// inherent `new(&Config, &Arc<ConsumerIndex>)`, `authenticate(&mut Parts) -> AuthAttempt<'_>`
/// and `anonymous() -> Option<&Arc<ConsumerIdentity>>`.
macro_rules! credential_plugin {
    ($factory:ident, $method:ty, $config:ty, $name:literal, $challenge:expr $(, owned_headers: $owned:path)?) => {
        pub struct $factory;

        impl tollgate_plugin_api::PluginFactory for $factory {
            fn name(&self) -> &'static str {
                $name
            }

            fn phase(&self) -> tollgate_plugin_api::Phase {
                tollgate_plugin_api::Phase::Authenticate
            }

            fn prepare(&self, ctx: &tollgate_plugin_api::BuildCtx<'_>) -> Result<(), String> {
                crate::consumers::consumer_index(ctx).map(drop)
            }

            fn build(
                &self,
                config: &serde_json::Value,
                ctx: &tollgate_plugin_api::BuildCtx<'_>,
            ) -> Result<std::sync::Arc<dyn tollgate_plugin_api::Plugin>, String> {
                let config = tollgate_shared::plugins::parse::<$config>(config)?;
                let index = crate::consumers::consumer_index(ctx)?;
                Ok(std::sync::Arc::new(<$method>::new(&config, &index)?))
            }
        }

        impl tollgate_plugin_api::Plugin for $method {
            fn name(&self) -> &'static str {
                $name
            }

            fn phase(&self) -> tollgate_plugin_api::Phase {
                tollgate_plugin_api::Phase::Authenticate
            }

            fn authenticator(&self) -> Option<&dyn tollgate_plugin_api::Authenticator> {
                Some(self)
            }
        }

        impl tollgate_plugin_api::Authenticator for $method {
            fn authenticate(&self, request: &mut http::request::Parts) -> tollgate_plugin_api::AuthAttempt {
                let attempt = <$method>::authenticate(self, request);
                crate::auth::to_api(attempt, request)
            }

            fn challenge(&self) -> http::HeaderValue {
                $challenge
            }

            fn anonymous(&self, request: &mut http::request::Parts) -> Option<tollgate_plugin_api::Identity> {
                crate::auth::anonymous_identity(<$method>::anonymous(self), request)
            }

            fn has_anonymous(&self) -> bool {
                <$method>::anonymous(self).is_some()
            }

            $(
            fn owned_headers(&self) -> &[http::header::HeaderName] {
                $owned(self)
            }
            )?
        }
    };
}

pub(crate) use credential_plugin;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consumers::tests::{hs_credential, jwt_consumer, key_consumer};
    use crate::consumers::ConsumerIndex;
    use crate::jwt::tests::hs_token;
    use crate::jwt::JwtAuth;
    use crate::key_auth::KeyAuth;
    use serde_json::json;
    use tollgate_plugin_api::identity::{X_ANONYMOUS_CONSUMER, X_CONSUMER_GROUPS, X_CONSUMER_NAME};
    use tollgate_plugin_api::{AuthSet, Plugin};

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

    fn jwt(index: &Arc<ConsumerIndex>, config: serde_json::Value) -> Arc<dyn Plugin> {
        Arc::new(
            JwtAuth::new(&serde_json::from_value(config).expect("jwt config"), index).expect("jwt"),
        )
    }

    fn set(
        index: &Arc<ConsumerIndex>,
        key: serde_json::Value,
        jwt_config: Option<serde_json::Value>,
    ) -> AuthSet {
        let mut methods: Vec<Arc<dyn Plugin>> = vec![Arc::new(
            KeyAuth::new(&serde_json::from_value(key).expect("key config"), index)
                .expect("key-auth"),
        )];
        if let Some(config) = jwt_config {
            methods.push(jwt(index, config));
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

    fn challenges(refusal: &Refusal) -> Vec<&HeaderValue> {
        refusal
            .headers
            .iter()
            .filter(|(name, _)| name == WWW_AUTHENTICATE)
            .map(|(_, value)| value)
            .collect()
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
        assert_eq!(err.kind, RefusalKind::MissingCredential);
        assert_eq!(err.status(), http::StatusCode::UNAUTHORIZED);
        assert_eq!(challenges(&err), vec![KEY_CHALLENGE, BEARER_CHALLENGE]);

        let err = set
            .authenticate(&mut parts(&[("apikey", "wrong-key-1234")]))
            .expect_err("must be refused");
        assert_eq!(err, AuthError::InvalidKey(KeyReject::Unknown).refusal());
        assert_eq!(challenges(&err), vec![KEY_CHALLENGE]);

        let err = set
            .authenticate(&mut parts(&[("authorization", "Bearer abc.def")]))
            .expect_err("must be refused");
        assert_eq!(
            err,
            AuthError::InvalidToken(TokenReject::Malformed).refusal()
        );
        let challenge = challenges(&err).remove(0);
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
        // The core strips client identity headers before any plugin runs.
        tollgate_plugin_api::identity::strip_identity_headers(&mut req.headers);
        let identity = set.authenticate(&mut req).expect("anonymous");
        assert!(identity.anonymous);
        assert_eq!(&*identity.consumer, "guest");
        assert_eq!(identity.credential, None);
        assert_eq!(req.headers[X_CONSUMER_NAME], "guest");
        assert_eq!(req.headers[X_ANONYMOUS_CONSUMER], "true");
        let err = set
            .authenticate(&mut parts(&[("apikey", "wrong-key-1234")]))
            .expect_err("must be refused");
        assert_eq!(err, AuthError::InvalidKey(KeyReject::Unknown).refusal());
    }

    #[test]
    fn merged_sets_keep_order_and_schemes() {
        let index = index();
        let merged = set(&index, json!({}), Some(json!({})));
        assert_eq!(merged.len(), 2);
        assert_eq!(merged.name(), "authenticate");
        let single = set(&index, json!({}), None);
        assert_eq!(single.name(), "key-auth");
    }

    #[test]
    fn refusals_never_echo_the_credential() {
        let index = index();
        let set = set(&index, json!({}), Some(json!({})));
        let secret_key = "canary-key-do-not-echo";
        let err = set
            .authenticate(&mut parts(&[("apikey", secret_key)]))
            .expect_err("must be refused");
        assert_eq!(err.status(), http::StatusCode::UNAUTHORIZED);
        assert_eq!(err.code(), "invalid_api_key");
        assert!(!err.message().contains(secret_key));
        for (_, value) in &err.headers {
            assert!(!value.to_str().unwrap_or("").contains(secret_key));
        }
        assert_eq!(challenges(&err), vec![KEY_CHALLENGE]);
        let forbidden = AuthError::Forbidden.refusal();
        assert_eq!(forbidden.status(), http::StatusCode::FORBIDDEN);
        assert!(forbidden.headers.is_empty());
        assert_eq!(
            AuthError::InvalidToken(TokenReject::Expired).refusal().kind,
            RefusalKind::ExpiredToken
        );
    }
}
