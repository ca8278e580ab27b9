//! The two body types the proxy moves, both streamed frame by frame and never
//! buffered whole.
//!
//! - [`ResponseBody`]: what the client receives: the upstream's body as it
//!   arrives, or a small body the gateway wrote itself (an error, a plugin's
//!   answer). An enum rather than a boxed trait object, so the hot path does
//!   not allocate for it.
//! - [`UpstreamBody`]: the client's request body on its way upstream, counted
//!   against the route's `max_body_bytes` and guarded by the body-idle timeout
//!   (hyper has no body-read timeout of its own). Its errors ([`BodyError`])
//!   surface through the upstream client and are mapped to 413 / 408.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::pool::PooledBody;

/// A response body as sent to the client.
#[derive(Debug)]
pub enum ResponseBody {
    Empty,
    Full(Option<Bytes>),
    /// The upstream's body; returns its connection to the pool when read
    /// to its end.
    Upstream(PooledBody),
    /// The upstream's body whose first frame was already read (see
    /// [`ResponseBody::upstream`]).
    Prefetched(Option<Frame<Bytes>>, PooledBody),
}

impl ResponseBody {
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        ResponseBody::Full(Some(bytes.into()))
    }

    /// The upstream's body, its first frame read if it is already here: an
    /// error there means the body is broken before the head was sent, and
    /// the caller can still answer 502 (what haproxy does) rather than send
    /// a head and then cut the connection. Never waits: a frame that has not
    /// arrived is left to the normal streaming.
    pub fn upstream(mut body: PooledBody) -> Result<ResponseBody, hyper::Error> {
        // A body of known length cannot have broken framing in its first
        // frame (a short one is cut later, and logged then): only chunked
        // bodies are worth the look.
        if body.is_end_stream() || body.size_hint().exact().is_some() {
            return Ok(ResponseBody::Upstream(body));
        }
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        match Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Ready(Some(Err(err))) => Err(err),
            Poll::Ready(Some(Ok(frame))) => Ok(ResponseBody::Prefetched(Some(frame), body)),
            Poll::Ready(None) => Ok(ResponseBody::Prefetched(None, body)),
            Poll::Pending => Ok(ResponseBody::Upstream(body)),
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ResponseBody::Empty => Poll::Ready(None),
            ResponseBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ResponseBody::Upstream(body) => Pin::new(body).poll_frame(cx),
            ResponseBody::Prefetched(first, body) => match first.take() {
                Some(frame) => Poll::Ready(Some(Ok(frame))),
                None => Pin::new(body).poll_frame(cx),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Empty => true,
            ResponseBody::Full(bytes) => bytes.is_none(),
            ResponseBody::Upstream(body) => body.is_end_stream(),
            ResponseBody::Prefetched(first, body) => first.is_none() && body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Empty => SizeHint::with_exact(0),
            ResponseBody::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            ResponseBody::Upstream(body) => body.size_hint(),
            ResponseBody::Prefetched(first, body) => {
                let pending = first
                    .as_ref()
                    .and_then(Frame::data_ref)
                    .map_or(0, |data| data.len() as u64);
                let rest = body.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower().saturating_add(pending));
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper.saturating_add(pending));
                }
                hint
            }
        }
    }
}

/// Why a request body could not be relayed.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body exceeds the route's limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("request body idle for longer than {0:?}")]
    IdleTimeout(Duration),
    #[error("reading the request body failed: {0}")]
    Client(#[source] hyper::Error),
}

/// A request body on its way upstream.
#[derive(Debug)]
pub enum UpstreamBody {
    /// No body (GET, or a body already known to be empty): no timer, no
    /// allocation.
    Empty,
    Streaming(GuardedBody),
    /// A body read whole and edited by a plugin (`request_body.rs`).
    Full(Option<Bytes>),
}

/// The client's body with a size limit and an idle timeout.
#[derive(Debug)]
pub struct GuardedBody {
    inner: Incoming,
    limit: Option<u64>,
    received: u64,
    idle_timeout: Duration,
    /// Created on the first poll that has to wait, then reset on each frame.
    idle: Option<Pin<Box<Sleep>>>,
    /// Bytes relayed, shared with the request's metrics and access log.
    counter: Option<Arc<AtomicU64>>,
}

impl UpstreamBody {
    pub fn new(inner: Incoming, limit: Option<u64>, idle_timeout: Duration) -> Self {
        if inner.is_end_stream() {
            return UpstreamBody::Empty;
        }
        UpstreamBody::Streaming(GuardedBody {
            inner,
            limit,
            received: 0,
            idle_timeout,
            idle: None,
            counter: None,
        })
    }

    /// Whether a body is streamed at all (and worth counting).
    pub fn has_body(&self) -> bool {
        matches!(self, UpstreamBody::Streaming(_))
    }

    /// Adds each relayed data frame's length to `counter`.
    pub fn count_into(&mut self, counter: Arc<AtomicU64>) {
        if let UpstreamBody::Streaming(body) = self {
            body.counter = Some(counter);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            UpstreamBody::Empty => Poll::Ready(None),
            UpstreamBody::Streaming(body) => body.poll_guarded(cx),
            UpstreamBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Empty => true,
            UpstreamBody::Streaming(body) => body.inner.is_end_stream(),
            UpstreamBody::Full(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Empty => SizeHint::with_exact(0),
            UpstreamBody::Streaming(body) => body.inner.size_hint(),
            UpstreamBody::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}

impl GuardedBody {
    fn poll_guarded(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.received = self.received.saturating_add(data.len() as u64);
                    if let Some(counter) = &self.counter {
                        counter.fetch_add(data.len() as u64, Ordering::Relaxed);
                    }
                    if let Some(limit) = self.limit {
                        if self.received > limit {
                            return Poll::Ready(Some(Err(BodyError::TooLarge { limit })));
                        }
                    }
                }
                if let Some(idle) = self.idle.as_mut() {
                    idle.as_mut().reset(Instant::now() + self.idle_timeout);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => Poll::Ready(Some(Err(BodyError::Client(err)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let timeout = self.idle_timeout;
                let idle = self
                    .idle
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match idle.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(BodyError::IdleTimeout(timeout)))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}
