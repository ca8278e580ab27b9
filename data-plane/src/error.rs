//! Errors of the data plane, and the ONE table from a proxy failure to the
//! response the client gets.
//!
//! [`DpError`] is what startup fails with (unbindable sockets, a bad control
//! plane address or token, no runtime, no signal handlers); snapshot and cache
//! problems are not fatal and are reported as NACKs and log lines instead. [`ProxyError`] is why the
//! proxy answered a request itself instead of relaying the upstream's answer:
//! each kind has its own status code and its own machine-readable `error`
//! code, so a client (and an operator reading logs) can tell "no route" from
//! "not ready" from "upstream timed out" without parsing prose. The mapping
//! lives in [`ProxyError::status`] / [`ProxyError::code`] and nowhere else.

use std::net::SocketAddr;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::{Response, StatusCode};

use crate::proxy::body::ResponseBody;
use crate::proxy::forward::X_REQUEST_ID;

/// Startup and background-task failures of `tollgate-dp`.
#[derive(Debug, thiserror::Error)]
pub enum DpError {
    #[error("cannot bind the {what} listener on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid --control-plane address {address:?}: {message}")]
    ControlPlaneAddress { address: String, message: String },
    #[error("invalid --cluster-token: {0}")]
    ClusterToken(String),
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot install signal handlers: {0}")]
    Signal(std::io::Error),
    #[error("cannot start the access log: {0}")]
    AccessLog(std::io::Error),
    #[error("cannot set up telemetry: {0}")]
    Telemetry(#[from] tollgate_shared::telemetry::TelemetryError),
}

/// Why the proxy answered a request itself. Copy and allocation-free: the
/// body is only formatted when the response is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyError {
    /// The request could not be parsed or is not acceptable as HTTP.
    BadRequest,
    /// The path cannot be normalized (bad escapes, `..` above the root...).
    BadPath,
    /// No route matches host, path, method and headers.
    NoRoute,
    /// The request body did not arrive within the body-idle timeout.
    BodyTimeout,
    /// The request body is larger than the route's `max_body_bytes`.
    BodyTooLarge,
    /// The request target is longer than the configured bound.
    UriTooLong,
    /// Too many header bytes or header fields.
    HeadersTooLarge,
    /// The upstream refused the connection, reset it, or closed it early.
    UpstreamUnavailable,
    /// The upstream answered something that is not valid HTTP framing
    /// (e.g. both Content-Length and Transfer-Encoding).
    UpstreamMalformed,
    /// No config is in service yet: never answer 404 from an empty config.
    NotReady,
    /// The service has no target with a non-zero weight.
    NoHealthyTarget,
    /// The connection cap is reached.
    Overloaded,
    /// The upstream did not connect or answer within the service timeouts.
    UpstreamTimeout,
}

impl ProxyError {
    pub const fn status(self) -> StatusCode {
        match self {
            ProxyError::BadRequest | ProxyError::BadPath => StatusCode::BAD_REQUEST,
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::UriTooLong => StatusCode::URI_TOO_LONG,
            ProxyError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::UpstreamUnavailable | ProxyError::UpstreamMalformed => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::NotReady | ProxyError::NoHealthyTarget | ProxyError::Overloaded => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The stable, machine-readable `error` field of the JSON body.
    pub const fn code(self) -> &'static str {
        match self {
            ProxyError::BadRequest => "bad_request",
            ProxyError::BadPath => "invalid_path",
            ProxyError::NoRoute => "no_route",
            ProxyError::BodyTimeout => "request_body_timeout",
            ProxyError::BodyTooLarge => "request_body_too_large",
            ProxyError::UriTooLong => "uri_too_long",
            ProxyError::HeadersTooLarge => "request_headers_too_large",
            ProxyError::UpstreamUnavailable => "upstream_unavailable",
            ProxyError::UpstreamMalformed => "upstream_malformed_response",
            ProxyError::NotReady => "not_ready",
            ProxyError::NoHealthyTarget => "no_healthy_upstream",
            ProxyError::Overloaded => "overloaded",
            ProxyError::UpstreamTimeout => "upstream_timeout",
        }
    }

    /// A human-readable sentence; never contains request data.
    pub const fn message(self) -> &'static str {
        match self {
            ProxyError::BadRequest => "the request is malformed",
            ProxyError::BadPath => "the request path cannot be normalized",
            ProxyError::NoRoute => "no route matches this request",
            ProxyError::BodyTimeout => {
                "the request body stalled for longer than the body idle timeout"
            }
            ProxyError::BodyTooLarge => "the request body is larger than this route accepts",
            ProxyError::UriTooLong => "the request target is too long",
            ProxyError::HeadersTooLarge => "the request headers are too large or too many",
            ProxyError::UpstreamUnavailable => "the upstream refused or reset the connection",
            ProxyError::UpstreamMalformed => "the upstream sent a malformed response",
            ProxyError::NotReady => "the gateway has no configuration in service yet",
            ProxyError::NoHealthyTarget => "the service has no healthy upstream target",
            ProxyError::Overloaded => "the gateway is at its connection limit",
            ProxyError::UpstreamTimeout => "the upstream did not answer in time",
        }
    }

    /// The JSON body: `{"error":..., "message":..., "request_id":...}`.
    pub fn body(self, request_id: Option<&HeaderValue>) -> String {
        json_error_body(self.code(), self.message(), request_id)
    }

    /// The complete response, with `X-Request-Id` echoed so the client can
    /// quote it.
    pub fn into_response(self, request_id: Option<&HeaderValue>) -> Response<ResponseBody> {
        let mut response =
            json_error_response(self.status(), self.code(), self.message(), request_id);
        let headers = response.headers_mut();
        if matches!(self, ProxyError::NotReady | ProxyError::Overloaded) {
            headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// The JSON body of every answer the gateway gives itself (proxy errors,
/// auth refusals, rate limits): `{"error":..., "message":..., "request_id":...}`.
/// `code` and `message` are fixed strings, never request data, so a body
/// can never echo a credential.
pub fn json_error_body(code: &str, message: &str, request_id: Option<&HeaderValue>) -> String {
    let request_id = request_id
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    serde_json::json!({
        "error": code,
        "message": message,
        "request_id": request_id,
    })
    .to_string()
}

/// A JSON error response with that body, `Content-Type` and the
/// `X-Request-Id` echoed so the client can quote it.
pub fn json_error_response(
    status: StatusCode,
    code: &str,
    message: &str,
    request_id: Option<&HeaderValue>,
) -> Response<ResponseBody> {
    let body = Bytes::from(json_error_body(code, message, request_id));
    let mut response = Response::new(ResponseBody::full(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(id) = request_id {
        headers.insert(X_REQUEST_ID, id.clone());
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_distinct_code_and_a_json_body() {
        let all = [
            ProxyError::BadRequest,
            ProxyError::BadPath,
            ProxyError::NoRoute,
            ProxyError::BodyTimeout,
            ProxyError::BodyTooLarge,
            ProxyError::UriTooLong,
            ProxyError::HeadersTooLarge,
            ProxyError::UpstreamUnavailable,
            ProxyError::UpstreamMalformed,
            ProxyError::NotReady,
            ProxyError::NoHealthyTarget,
            ProxyError::Overloaded,
            ProxyError::UpstreamTimeout,
        ];
        let mut codes = std::collections::HashSet::new();
        for kind in all {
            assert!(codes.insert(kind.code()), "{kind:?}");
            let id = HeaderValue::from_static("abc\"1");
            let body: serde_json::Value =
                serde_json::from_str(&kind.body(Some(&id))).expect("json");
            assert_eq!(body["error"], kind.code());
            assert_eq!(body["request_id"], "abc\"1");
        }
        assert_eq!(ProxyError::UpstreamTimeout.status(), 504);
        assert_eq!(ProxyError::NotReady.status(), 503);
        assert_eq!(ProxyError::UpstreamMalformed.status(), 502);
    }
}
