//! Every answer the gateway makes itself, in ONE table.
//!
//! A [`Refusal`] is a typed reason ([`RefusalKind`]) plus what varies per
//! request: a more precise static message (which check a token failed), a
//! `Retry-After`, and extra headers (`WWW-Authenticate` challenges). The
//! kind alone decides the status and the machine-readable `error` code,
//! here and nowhere else; the proxy core turns a refusal into the JSON
//! response (`tollgate-proxy`'s `respond`), and metrics and the access log
//! read [`RefusalKind`] instead of the body. Messages are static text, so a
//! body can never echo request data (a credential).

use http::header::{HeaderName, HeaderValue};
use http::StatusCode;

/// Why the gateway answered a request itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusalKind {
    // The request itself.
    /// The request could not be parsed or is not acceptable as HTTP.
    BadRequest,
    /// The path cannot be normalized (bad escapes, `..` above the root...).
    BadPath,
    /// The request target is longer than the configured bound.
    UriTooLong,
    /// Too many header bytes or header fields.
    HeadersTooLarge,
    /// The request body is larger than the route's `max_body_bytes`.
    BodyTooLarge,
    /// The request body did not arrive within the body-idle timeout.
    BodyTimeout,
    /// The request body did not arrive within its deadline or at its
    /// minimum rate (a slow sender): the same answer as
    /// [`RefusalKind::BodyTimeout`], its own kind for metrics.
    BodyTooSlow,
    // Routing and the gateway's own state.
    /// No route matches host, path, method and headers.
    NoRoute,
    /// No config is in service yet: never answer 404 from an empty config.
    NotReady,
    /// The connection cap is reached.
    Overloaded,
    // Who is calling.
    /// No credential, and no anonymous consumer.
    MissingCredential,
    /// A wrong API key.
    InvalidApiKey,
    /// A bearer token that fails a check.
    InvalidToken,
    /// A bearer token that has expired (same `error` code as
    /// [`RefusalKind::InvalidToken`]; its own kind for metrics).
    ExpiredToken,
    /// A client certificate that does not verify against the route's CAs
    /// (untrusted, expired, revoked, not for client auth).
    InvalidClientCertificate,
    /// A client certificate that verifies but belongs to no consumer.
    UnknownClientCertificate,
    /// Authenticated (or not) but not admitted by the route's `acl`.
    Forbidden,
    /// The client IP is not admitted by `ip-restriction`.
    IpForbidden,
    // Quotas.
    /// Over a rate limit.
    RateLimited,
    /// The shared rate-limit store is down and the limit fails closed.
    RateLimitUnavailable,
    /// Too many requests in flight (`concurrency-limit`, `status: 429`).
    ConcurrencyLimited,
    /// Too many requests in flight (`concurrency-limit`, `status: 503`).
    ConcurrencyBusy,
    // The upstream.
    /// The service has no target with a non-zero weight.
    NoHealthyTarget,
    /// The upstream refused the connection, reset it, or closed it early.
    UpstreamUnavailable,
    /// The upstream answered something that is not valid HTTP framing.
    UpstreamMalformed,
    /// The upstream did not connect or answer within the service timeouts.
    UpstreamTimeout,
    /// The TLS handshake with the upstream failed (untrusted or mismatched
    /// certificate, protocol error); the reason is logged, never sent.
    UpstreamTlsError,
    // Transport.
    /// The route has `https_only` and the request arrived in plaintext.
    HttpsRequired,
    /// The route has `https_only` with `https_redirect`: a 308 to `https://`
    /// (the `Location` header is added by the handler).
    HttpsRedirect,
}

/// Why authentication or authorization refused: the metrics' `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthFailureReason {
    Missing,
    Invalid,
    Expired,
    Forbidden,
}

impl RefusalKind {
    /// Every kind, for tests and documentation.
    pub const ALL: [RefusalKind; 29] = [
        RefusalKind::BadRequest,
        RefusalKind::BadPath,
        RefusalKind::UriTooLong,
        RefusalKind::HeadersTooLarge,
        RefusalKind::BodyTooLarge,
        RefusalKind::BodyTimeout,
        RefusalKind::BodyTooSlow,
        RefusalKind::NoRoute,
        RefusalKind::NotReady,
        RefusalKind::Overloaded,
        RefusalKind::MissingCredential,
        RefusalKind::InvalidApiKey,
        RefusalKind::InvalidToken,
        RefusalKind::ExpiredToken,
        RefusalKind::InvalidClientCertificate,
        RefusalKind::UnknownClientCertificate,
        RefusalKind::Forbidden,
        RefusalKind::IpForbidden,
        RefusalKind::RateLimited,
        RefusalKind::RateLimitUnavailable,
        RefusalKind::ConcurrencyLimited,
        RefusalKind::ConcurrencyBusy,
        RefusalKind::NoHealthyTarget,
        RefusalKind::UpstreamUnavailable,
        RefusalKind::UpstreamMalformed,
        RefusalKind::UpstreamTimeout,
        RefusalKind::UpstreamTlsError,
        RefusalKind::HttpsRequired,
        RefusalKind::HttpsRedirect,
    ];

    /// The table: status, `error` code, default message.
    const fn row(self) -> (StatusCode, &'static str, &'static str) {
        use RefusalKind::*;
        match self {
            BadRequest => (
                StatusCode::BAD_REQUEST,
                "bad_request",
                "the request is malformed",
            ),
            BadPath => (
                StatusCode::BAD_REQUEST,
                "invalid_path",
                "the request path cannot be normalized",
            ),
            UriTooLong => (
                StatusCode::URI_TOO_LONG,
                "uri_too_long",
                "the request target is too long",
            ),
            HeadersTooLarge => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request_headers_too_large",
                "the request headers are too large or too many",
            ),
            BodyTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "request_body_too_large",
                "the request body is larger than this route accepts",
            ),
            BodyTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                "request_body_timeout",
                "the request body stalled for longer than the body idle timeout",
            ),
            BodyTooSlow => (
                StatusCode::REQUEST_TIMEOUT,
                "request_body_timeout",
                "the request body did not arrive within its deadline",
            ),
            NoRoute => (
                StatusCode::NOT_FOUND,
                "no_route",
                "no route matches this request",
            ),
            NotReady => (
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                "the gateway has no configuration in service yet",
            ),
            Overloaded => (
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "the gateway is at its connection limit",
            ),
            MissingCredential => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this route requires a credential",
            ),
            InvalidApiKey => (
                StatusCode::UNAUTHORIZED,
                "invalid_api_key",
                "the API key is not valid",
            ),
            InvalidToken => (
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "the bearer token is not valid",
            ),
            ExpiredToken => (
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "the token has expired",
            ),
            InvalidClientCertificate => (
                StatusCode::UNAUTHORIZED,
                "invalid_client_certificate",
                "the client certificate is not trusted by this route",
            ),
            UnknownClientCertificate => (
                StatusCode::UNAUTHORIZED,
                "unknown_client_certificate",
                "the client certificate is valid but belongs to no consumer",
            ),
            Forbidden => (
                StatusCode::FORBIDDEN,
                "forbidden",
                "the consumer is not allowed to use this route",
            ),
            IpForbidden => (
                StatusCode::FORBIDDEN,
                "ip_forbidden",
                "the client address is not allowed to use this route",
            ),
            RateLimited => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "API rate limit exceeded",
            ),
            RateLimitUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "rate_limit_unavailable",
                "rate limiting is temporarily unavailable",
            ),
            ConcurrencyLimited => (
                StatusCode::TOO_MANY_REQUESTS,
                "concurrency_limited",
                "too many requests in flight",
            ),
            ConcurrencyBusy => (
                StatusCode::SERVICE_UNAVAILABLE,
                "concurrency_limited",
                "too many requests in flight",
            ),
            NoHealthyTarget => (
                StatusCode::SERVICE_UNAVAILABLE,
                "no_healthy_upstream",
                "the service has no healthy upstream target",
            ),
            UpstreamUnavailable => (
                StatusCode::BAD_GATEWAY,
                "upstream_unavailable",
                "the upstream refused or reset the connection",
            ),
            UpstreamMalformed => (
                StatusCode::BAD_GATEWAY,
                "upstream_malformed_response",
                "the upstream sent a malformed response",
            ),
            UpstreamTimeout => (
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                "the upstream did not answer in time",
            ),
            UpstreamTlsError => (
                StatusCode::BAD_GATEWAY,
                "upstream_tls_error",
                "the TLS handshake with the upstream failed",
            ),
            HttpsRequired => (
                StatusCode::UPGRADE_REQUIRED,
                "https_required",
                "this route is served over https only",
            ),
            HttpsRedirect => (
                StatusCode::PERMANENT_REDIRECT,
                "https_redirect",
                "this route is served over https only; follow Location",
            ),
        }
    }

    pub const fn status(self) -> StatusCode {
        self.row().0
    }

    /// The stable, machine-readable `error` field of the JSON body.
    pub const fn code(self) -> &'static str {
        self.row().1
    }

    /// The default human-readable sentence; never contains request data.
    pub const fn message(self) -> &'static str {
        self.row().2
    }

    /// The `Retry-After` (seconds) this kind always carries: the gateway's
    /// own temporary states.
    pub const fn default_retry_after(self) -> Option<u64> {
        match self {
            RefusalKind::NotReady | RefusalKind::Overloaded => Some(1),
            _ => None,
        }
    }

    /// Whether the JSON body repeats `retry_after` (the rate-limit answers,
    /// whose clients back off programmatically).
    pub const fn retry_after_in_body(self) -> bool {
        matches!(
            self,
            RefusalKind::RateLimited | RefusalKind::RateLimitUnavailable
        )
    }

    /// The auth-failure reason metrics count, for the kinds the
    /// authenticate and authorize phases answer with.
    pub const fn auth_failure(self) -> Option<AuthFailureReason> {
        match self {
            RefusalKind::MissingCredential => Some(AuthFailureReason::Missing),
            RefusalKind::InvalidApiKey
            | RefusalKind::InvalidToken
            | RefusalKind::InvalidClientCertificate
            | RefusalKind::UnknownClientCertificate => Some(AuthFailureReason::Invalid),
            RefusalKind::ExpiredToken => Some(AuthFailureReason::Expired),
            RefusalKind::Forbidden => Some(AuthFailureReason::Forbidden),
            _ => None,
        }
    }
}

/// One refusal: its kind and what varies per request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub kind: RefusalKind,
    /// A more precise static sentence than the kind's default.
    pub message: Option<&'static str>,
    /// `Retry-After` in seconds (at least 1 when sent).
    pub retry_after_s: Option<u64>,
    /// Extra response headers (`WWW-Authenticate`), appended in order.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl From<RefusalKind> for Refusal {
    fn from(kind: RefusalKind) -> Self {
        Refusal::new(kind)
    }
}

impl Refusal {
    pub const fn new(kind: RefusalKind) -> Self {
        Refusal {
            kind,
            message: None,
            retry_after_s: kind.default_retry_after(),
            headers: Vec::new(),
        }
    }

    pub fn with_message(mut self, message: &'static str) -> Self {
        self.message = Some(message);
        self
    }

    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after_s = Some(seconds.max(1));
        self
    }

    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    pub fn status(&self) -> StatusCode {
        self.kind.status()
    }

    pub fn code(&self) -> &'static str {
        self.kind.code()
    }

    pub fn message(&self) -> &'static str {
        self.message.unwrap_or(self.kind.message())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn every_kind_has_its_own_code_but_expired_tokens_slow_bodies_and_concurrency() {
        let mut codes: HashMap<&str, RefusalKind> = HashMap::new();
        for kind in RefusalKind::ALL {
            if let Some(other) = codes.insert(kind.code(), kind) {
                // Same meaning, a status of the operator's choice.
                assert!(
                    [
                        (RefusalKind::InvalidToken, RefusalKind::ExpiredToken),
                        (RefusalKind::BodyTimeout, RefusalKind::BodyTooSlow),
                        (
                            RefusalKind::ConcurrencyLimited,
                            RefusalKind::ConcurrencyBusy
                        ),
                    ]
                    .contains(&(other, kind)),
                    "{other:?} and {kind:?} share a code"
                );
            }
            assert!(
                kind.status().is_client_error()
                    || kind.status().is_server_error()
                    || kind == RefusalKind::HttpsRedirect
            );
            assert!(!kind.message().is_empty());
        }
        assert_eq!(RefusalKind::UpstreamTimeout.status(), 504);
        assert_eq!(RefusalKind::NotReady.status(), 503);
        assert_eq!(RefusalKind::UpstreamMalformed.status(), 502);
        assert_eq!(RefusalKind::IpForbidden.status(), 403);
        assert_eq!(Refusal::new(RefusalKind::NotReady).retry_after_s, Some(1));
        assert_eq!(
            Refusal::new(RefusalKind::RateLimited)
                .with_retry_after(0)
                .retry_after_s,
            Some(1)
        );
    }
}
