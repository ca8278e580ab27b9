//! The one place a refusal becomes a response: the JSON body
//! `{"error":..., "message":..., "request_id":...}` (plus `retry_after` for
//! rate limits), `Content-Type`, `Retry-After`, the refusal's own headers
//! (`WWW-Authenticate`) and `X-Request-Id`, so the client can quote it.
//! Status, code and message come from the table in
//! `tollgate_plugin_api::refusal`; they are static text, so a body never
//! echoes request data.

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::Response;
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
