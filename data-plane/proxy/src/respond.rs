//! The one place a refusal becomes a response: the JSON body
//! `{"error":..., "message":..., "request_id":...}` (plus `retry_after` for
//! rate limits), `Content-Type`, `Retry-After`, the refusal's own headers
//! (`WWW-Authenticate`) and `X-Request-Id`, so the client can quote it.
//! Status, code and message come from the table in
//! `tollgate_plugin_api::refusal`; they are static text, so a body never
//! echoes request data.
//!
//! A gRPC call (`content-type: application/grpc*`) gets the same refusal as a
//! gRPC error instead ([`answer`]): HTTP 200, `content-type:
//! application/grpc`, and `grpc-status`/`grpc-message` in a trailers-only
//! response, which is what gRPC clients read (an HTTP 401 would reach the
//! application as an opaque `UNKNOWN`/`UNAVAILABLE`). The status comes from
//! the refusal's HTTP status by one table, [`grpc_status`].

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::{Response, StatusCode};
use tollgate_plugin_api::{Refusal, Reply, X_REQUEST_ID};

use crate::body::ResponseBody;

/// The JSON body of a refusal.
pub fn refusal_body(refusal: &Refusal, request_id: Option<&HeaderValue>) -> String {
    let request_id = request_id
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    let mut body = serde_json::json!({
        "error": refusal.code(),
        "message": refusal.message(),
        "request_id": request_id,
    });
    if refusal.kind.retry_after_in_body() {
        body["retry_after"] = refusal.retry_after_s.unwrap_or(1).into();
    }
    body.to_string()
}

/// The complete response to a refusal.
pub fn refusal(
    refusal: impl Into<Refusal>,
    request_id: Option<&HeaderValue>,
) -> Response<ResponseBody> {
    let refusal = refusal.into();
    let body = Bytes::from(refusal_body(&refusal, request_id));
    let mut response = Response::new(ResponseBody::full(body));
    *response.status_mut() = refusal.status();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(seconds) = refusal.retry_after_s {
        headers.insert(RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    }
    for (name, value) in refusal.headers {
        headers.append(name, value);
    }
    if let Some(id) = request_id {
        headers.insert(X_REQUEST_ID, id.clone());
    }
    response
}

/// The answer to a refusal: a gRPC error for a gRPC call, else
/// [`refusal`]'s JSON.
pub fn answer(
    refusal: impl Into<Refusal>,
    request_id: Option<&HeaderValue>,
    grpc: bool,
) -> Response<ResponseBody> {
    if grpc {
        grpc_refusal(refusal, request_id)
    } else {
        self::refusal(refusal, request_id)
    }
}

/// gRPC status codes (grpc/doc/statuscodes.md) the gateway answers with.
pub mod grpc_code {
    pub const INTERNAL: u8 = 13;
    pub const UNAVAILABLE: u8 = 14;
    pub const UNIMPLEMENTED: u8 = 12;
    pub const DEADLINE_EXCEEDED: u8 = 4;
    pub const PERMISSION_DENIED: u8 = 7;
    pub const RESOURCE_EXHAUSTED: u8 = 8;
    pub const UNAUTHENTICATED: u8 = 16;
}

/// The gRPC status for a gateway answer of HTTP `status`: the mapping of
/// gRPC's "HTTP to gRPC status code mapping", with the gateway's meanings
/// where it knows more (a rate limit is `RESOURCE_EXHAUSTED`, an upstream
/// timeout `DEADLINE_EXCEEDED`).
pub fn grpc_status(status: StatusCode) -> u8 {
    use grpc_code::*;
    match status.as_u16() {
        401 => UNAUTHENTICATED,
        403 => PERMISSION_DENIED,
        404 => UNIMPLEMENTED,
        408 | 504 => DEADLINE_EXCEEDED,
        413 | 429 => RESOURCE_EXHAUSTED,
        502 | 503 => UNAVAILABLE,
        _ => INTERNAL,
    }
}

/// A refusal as a gRPC trailers-only response (see the module doc). The
/// message is the refusal's static text, percent-encoded as gRPC requires.
pub fn grpc_refusal(
    refusal: impl Into<Refusal>,
    request_id: Option<&HeaderValue>,
) -> Response<ResponseBody> {
    let refusal = refusal.into();
    let mut response = Response::new(ResponseBody::Empty);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(
        GRPC_STATUS,
        HeaderValue::from(u16::from(grpc_status(refusal.status()))),
    );
    let message = format!("{}: {}", refusal.code(), refusal.message());
    let encoded = percent_encoding::utf8_percent_encode(&message, GRPC_MESSAGE_ESCAPES).to_string();
    if let Ok(value) = HeaderValue::from_str(&encoded) {
        headers.insert(GRPC_MESSAGE, value);
    }
    if let Some(seconds) = refusal.retry_after_s {
        headers.insert(RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    }
    for (name, value) in refusal.headers {
        headers.append(name, value);
    }
    if let Some(id) = request_id {
        headers.insert(X_REQUEST_ID, id.clone());
    }
    response
}

const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
/// gRPC percent-encodes all but printable ASCII other than `%`.
const GRPC_MESSAGE_ESCAPES: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%');

/// Whether a request is a gRPC call: HTTP/2 (gRPC needs it) and a
/// `content-type` of `application/grpc` or `application/grpc+proto`, ...
/// One header lookup, and none at all for HTTP/1.1 requests.
#[inline]
pub fn is_grpc(parts: &http::request::Parts) -> bool {
    parts.version == http::Version::HTTP_2
        && parts
            .headers
            .get(CONTENT_TYPE)
            .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"))
}

/// A plugin's own reply (a CORS preflight), with `X-Request-Id`.
pub fn reply(reply: Reply, request_id: Option<&HeaderValue>) -> Response<ResponseBody> {
    let mut response = Response::new(if reply.body.is_empty() {
        ResponseBody::Empty
    } else {
        ResponseBody::full(reply.body)
    });
    *response.status_mut() = reply.status;
    *response.headers_mut() = reply.headers;
    if let Some(id) = request_id {
        response.headers_mut().insert(X_REQUEST_ID, id.clone());
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::WWW_AUTHENTICATE;
    use http_body::Body as _;
    use tollgate_plugin_api::RefusalKind;

    #[test]
    fn every_kind_answers_json_with_its_code_and_the_request_id() {
        let id = HeaderValue::from_static("abc\"1");
        for kind in RefusalKind::ALL {
            let response = refusal(kind, Some(&id));
            assert_eq!(response.status(), kind.status());
            assert_eq!(response.headers()[X_REQUEST_ID], id);
            let body: serde_json::Value =
                serde_json::from_str(&refusal_body(&Refusal::new(kind), Some(&id))).expect("json");
            assert_eq!(body["error"], kind.code());
            assert_eq!(body["request_id"], "abc\"1");
            assert_eq!(
                body.get("retry_after").is_some(),
                kind.retry_after_in_body(),
                "{kind:?}"
            );
        }
        let not_ready = refusal(RefusalKind::NotReady, None);
        assert_eq!(not_ready.headers()[RETRY_AFTER], "1");
    }

    #[test]
    fn grpc_calls_get_grpc_errors() {
        let id = HeaderValue::from_static("r1");
        for (kind, code) in [
            (RefusalKind::MissingCredential, grpc_code::UNAUTHENTICATED),
            (RefusalKind::RateLimited, grpc_code::RESOURCE_EXHAUSTED),
            (RefusalKind::UpstreamUnavailable, grpc_code::UNAVAILABLE),
            (RefusalKind::UpstreamTimeout, grpc_code::DEADLINE_EXCEEDED),
            (RefusalKind::NoRoute, grpc_code::UNIMPLEMENTED),
        ] {
            let response = answer(kind, Some(&id), true);
            assert_eq!(response.status(), 200, "{kind:?}");
            let headers = response.headers();
            assert_eq!(headers["content-type"], "application/grpc");
            assert_eq!(
                headers["grpc-status"],
                code.to_string().as_str(),
                "{kind:?}"
            );
            assert!(headers["grpc-message"]
                .to_str()
                .is_ok_and(|m| m.starts_with(kind.code())));
            assert_eq!(headers[X_REQUEST_ID], id);
            assert!(response.body().is_end_stream(), "trailers-only");
        }
        for kind in RefusalKind::ALL {
            let status = kind.status();
            let expected = match status.as_u16() {
                401 => 16,
                403 => 7,
                429 => 8,
                502 | 503 => 14,
                504 => 4,
                _ => continue,
            };
            assert_eq!(grpc_status(status), expected, "{kind:?}");
        }
        assert_eq!(answer(RefusalKind::NoRoute, None, false).status(), 404);
    }

    #[test]
    fn refusal_headers_and_retry_after_are_sent() {
        let limited = Refusal::new(RefusalKind::RateLimited).with_retry_after(7);
        let body: serde_json::Value =
            serde_json::from_str(&refusal_body(&limited, None)).expect("json");
        assert_eq!(body["retry_after"], 7);
        let response = refusal(limited, None);
        assert_eq!(response.status(), 429);
        assert_eq!(response.headers()[RETRY_AFTER], "7");
        let challenged = Refusal::new(RefusalKind::MissingCredential)
            .with_header(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Key realm=\"t\""),
            )
            .with_header(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"t\""),
            );
        let response = refusal(challenged, None);
        let all: Vec<_> = response
            .headers()
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .collect();
        assert_eq!(all, ["Key realm=\"t\"", "Bearer realm=\"t\""]);
    }
}
