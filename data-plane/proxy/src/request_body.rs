//! Client request bodies handed whole to the plugins that asked for them
//! (`request-transformer` editing JSON fields), the request-side twin of
//! [`crate::response_body`].
//!
//! Only a body with a declared `Content-Length` within the largest cap the
//! plugins name (and within the route's `max_body_bytes`) is read; a
//! chunked or larger body streams upstream untouched, as without such
//! plugins. Reading is bounded by the body-idle timeout per frame (408) and
//! by the declared length (a client sending more is refused, 400).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::CONTENT_LENGTH;
use http::request;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tollgate_plugin_api::{PluginChain, RefusalKind, RequestCtx};

/// A request body after the request-body hooks.
pub enum RequestBody {
    /// Not read: stream it.
    Streamed(Incoming),
    /// Read whole (and maybe edited).
    Buffered(Bytes),
}

/// Reads `body` when a plugin of `chain` wants it and it fits, and runs the
/// chain's request-body hooks.
pub async fn run(
    chain: &PluginChain,
    ctx: &mut RequestCtx<'_>,
    parts: &mut request::Parts,
    mut body: Incoming,
    max_body_bytes: Option<u64>,
    idle_timeout: Duration,
) -> Result<RequestBody, RefusalKind> {
    let Some(limit) = chain.request_body_limit(ctx, parts) else {
        return Ok(RequestBody::Streamed(body));
    };
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    let Some(declared) = declared else {
        return Ok(RequestBody::Streamed(body));
    };
    let cap = max_body_bytes.map_or(limit as u64, |max| max.min(limit as u64));
    if declared > cap {
        return Ok(RequestBody::Streamed(body));
    }
    let mut buffered = BytesMut::with_capacity(declared as usize);
    loop {
        let frame = match tokio::time::timeout(idle_timeout, body.frame()).await {
            Err(_) => return Err(RefusalKind::BodyTimeout),
            Ok(None) => break,
            Ok(Some(Err(_))) => return Err(RefusalKind::BadRequest),
            Ok(Some(Ok(frame))) => frame,
        };
        if let Ok(data) = frame.into_data() {
            if buffered.len() + data.len() > declared as usize {
                return Err(RefusalKind::BadRequest);
            }
            buffered.extend_from_slice(&data);
        }
    }
    let mut bytes = buffered.freeze();
    chain.run_request_body(ctx, parts, &mut bytes);
    Ok(RequestBody::Buffered(bytes))
}
