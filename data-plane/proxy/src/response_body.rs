//! Upstream response bodies handed whole to the plugins that asked for them
//! (a cache storing a response, a transformer editing JSON).
//!
//! Why here and not in each plugin: reading a body to its end with a bound
//! and a deadline, falling back to streaming when it is too large, and
//! fixing `Content-Length` afterwards are the same work for every such
//! plugin, and only the core owns the upstream connection the body comes
//! from. Plugins say per response whether they want the body and up to how
//! many bytes (`Plugin::response_body_limit`); when none does, this module
//! is one branch on a flag compiled into the chain, and the body streams as
//! before.
//!
//! A body over the largest cap (declared by `Content-Length`, or found
//! while reading a chunked one) is sent on untouched: what was read so far
//! goes out as one frame, the rest streams. Trailers of a buffered body are
//! dropped (they cannot be kept correct once the body changes).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderValue, CONTENT_LENGTH};
use http::{response, Response};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tollgate_plugin_api::{PluginChain, RefusalKind, RequestCtx};

use crate::body::ResponseBody;

/// Buffers `body` when a plugin of `chain` wants it and it fits, runs the
/// chain's body hooks, and returns the response to send. `timeout` bounds
/// the whole read (a stalled upstream is a 504).
pub async fn run(
    chain: &PluginChain,
    ctx: &mut RequestCtx<'_>,
    mut parts: response::Parts,
    body: ResponseBody,
    timeout: Duration,
) -> Result<Response<ResponseBody>, RefusalKind> {
    let Some(limit) = chain.response_body_limit(ctx, &parts) else {
        return Ok(Response::from_parts(parts, body));
    };
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Ok(Response::from_parts(parts, body));
    }
    let (first, mut rest) = match body {
        ResponseBody::Upstream(rest) => (None, rest),
        ResponseBody::Prefetched(first, rest) => (first.and_then(|f| f.into_data().ok()), rest),
        // Not an upstream body: nothing to buffer.
        other => return Ok(Response::from_parts(parts, other)),
    };
    let mut buffered = BytesMut::new();
    if let Some(data) = first {
        buffered.extend_from_slice(&data);
    }
    let read = async {
        while buffered.len() <= limit {
            match rest.frame().await {
                None => return Ok(true),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        buffered.extend_from_slice(&data);
                    }
                }
                Some(Err(err)) => return Err(crate::upstream::classify(&err)),
            }
        }
        Ok(false)
    };
    let complete = match tokio::time::timeout(timeout, read).await {
        Ok(result) => result?,
        Err(_) => return Err(RefusalKind::UpstreamTimeout),
    };
    if !complete {
        // Over the cap: what was read goes out first, the rest streams.
        let prefix = Frame::data(buffered.freeze());
        return Ok(Response::from_parts(
            parts,
            ResponseBody::Prefetched(Some(prefix), rest),
        ));
    }
    // The body was read to its end, so its connection is already back in
    // the pool; `rest` is spent.
    debug_assert!(rest.is_end_stream());
    let mut body: Bytes = buffered.freeze();
    let original_len = body.len();
    chain.run_response_body(ctx, &mut parts, &mut body);
    let bodiless = parts.status.is_informational()
        || parts.status == http::StatusCode::NO_CONTENT
        || parts.status == http::StatusCode::NOT_MODIFIED;
    if !bodiless && (body.len() != original_len || declared.is_none()) {
        parts
            .headers
            .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    let body = if body.is_empty() {
        ResponseBody::Empty
    } else {
        ResponseBody::full(body)
    };
    Ok(Response::from_parts(parts, body))
}
