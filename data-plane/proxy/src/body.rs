//! The two body types the proxy moves, both streamed frame by frame and never
//! buffered whole.
//!
//! - [`ResponseBody`]: what the client receives: the upstream's body as it
//!   arrives, or a small body the gateway wrote itself (an error, a plugin's
//!   answer). An enum rather than a boxed trait object, so the hot path does
//!   not allocate for it.
//! - [`UpstreamBody`]: the client's request body on its way upstream, counted
//!   against the route's `max_body_bytes` and guarded by the body-idle timeout
//!   and the body deadline ([`BodyLimits`]: a total time, extended by a
//!   minimum rate like Apache's `mod_reqtimeout`; hyper has no body-read
//!   timeout of its own). Its errors ([`BodyError`]) surface through the
//!   upstream client and are mapped to 413 / 408.
//!
//! Small bodies (up to `BodyLimits::buffer_bytes`) are read whole before an
//! upstream connection is taken ([`UpstreamBody::buffer`]): a slow sender
//! then holds no upstream connection, and the request can be retried on
//! another target. Larger ones stream, their first `buffer_bytes` replayed
//! ahead of the rest.

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

use crate::pool::{BodyReadError, PooledBody};

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
    pub fn upstream(mut body: PooledBody) -> Result<ResponseBody, BodyReadError> {
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
    type Error = BodyReadError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyReadError>>> {
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
    #[error("request body not received within its deadline ({received} bytes after {elapsed:?})")]
    TooSlow { received: u64, elapsed: Duration },
    #[error("reading the request body failed: {0}")]
    Client(#[source] hyper::Error),
}

/// How long a request body may take to arrive, and how much of it is read
/// before an upstream connection is taken (from the command line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimits {
    /// Longest pause between two frames.
    pub idle_timeout: Duration,
    /// The most a whole body may take, however fast it trickles.
    pub total_timeout: Duration,
    /// After `grace`, at least this many bytes per second on average
    /// (0: no minimum rate).
    pub min_rate: u64,
    /// Time allowed before the minimum rate applies.
    pub grace: Duration,
    /// Bodies up to this size are read whole before connecting upstream.
    pub buffer_bytes: usize,
}

impl Default for BodyLimits {
    /// nginx's `client_body_timeout` (60 s between reads, here 30 s) and
    /// Apache's `RequestReadTimeout body=20,MinRate=500` (10 s of grace,
    /// then 500 B/s), a 60 s total like haproxy's `timeout http-request`
    /// in common configs, and 64 KiB read ahead (nginx's
    /// `client_body_buffer_size` is 8-16 KiB; bigger covers most API calls).
    fn default() -> Self {
        BodyLimits {
            idle_timeout: Duration::from_secs(30),
            total_timeout: Duration::from_secs(60),
            min_rate: 500,
            grace: Duration::from_secs(10),
            buffer_bytes: 64 * 1024,
        }
    }
}

impl BodyLimits {
    /// When a body that started at `started` and has `received` bytes so
    /// far is too late: `started + grace + received / min_rate`, never
    /// after `started + total_timeout`.
    fn deadline(&self, started: Instant, received: u64) -> Instant {
        let total = started + self.total_timeout;
        if self.min_rate == 0 {
            return total;
        }
        let earned = Duration::from_millis(received.saturating_mul(1_000) / self.min_rate);
        (started + self.grace + earned).min(total)
    }
}

/// A request body on its way upstream.
#[derive(Debug)]
pub enum UpstreamBody {
    /// No body (GET, or a body already known to be empty): no timer, no
    /// allocation.
    Empty,
    /// A body read whole before connecting (cheap to clone for a retry),
    /// or read whole and edited by a plugin (`request_body.rs`).
    Buffered(Option<Bytes>),
    Streaming(GuardedBody),
}

/// The client's body with a size limit, an idle timeout and a deadline.
#[derive(Debug)]
pub struct GuardedBody {
    inner: Incoming,
    /// Read ahead by [`UpstreamBody::buffer`], sent first.
    prefix: Option<Bytes>,
    limit: Option<u64>,
    received: u64,
    limits: BodyLimits,
    started: Instant,
    /// Created on the first poll that has to wait, then reset on each frame.
    idle: Option<Pin<Box<Sleep>>>,
    /// Bytes relayed, shared with the request's metrics and access log.
    counter: Option<Arc<AtomicU64>>,
}

/// What [`UpstreamBody::buffer`] ended with.
#[derive(Debug)]
pub enum Buffered {
    /// The whole body (it may be empty).
    Whole(Bytes),
    /// More than `buffer_bytes`: streamed, the first part replayed.
    Streaming(UpstreamBody),
}

impl UpstreamBody {
    pub fn new(inner: Incoming, limit: Option<u64>, limits: BodyLimits) -> Self {
        if inner.is_end_stream() {
            return UpstreamBody::Empty;
        }
        UpstreamBody::Streaming(GuardedBody {
            inner,
            prefix: None,
            limit,
            received: 0,
            limits,
            started: Instant::now(),
            idle: None,
            counter: None,
        })
    }

    /// Whether a body is sent at all (and worth counting).
    pub fn has_body(&self) -> bool {
        !matches!(self, UpstreamBody::Empty | UpstreamBody::Buffered(None))
    }

    /// A copy for another try: only a buffered (or no) body can be sent twice.
    pub fn replay(&self) -> Option<UpstreamBody> {
        match self {
            UpstreamBody::Empty => Some(UpstreamBody::Empty),
            UpstreamBody::Buffered(bytes) => Some(UpstreamBody::Buffered(bytes.clone())),
            UpstreamBody::Streaming(_) => None,
        }
    }

    /// Adds each relayed data frame's length to `counter`.
    pub fn count_into(&mut self, counter: Arc<AtomicU64>) {
        if let UpstreamBody::Streaming(body) = self {
            body.counter = Some(counter);
        }
    }

    /// Reads a streaming body into memory, up to `buffer_bytes` (all of
    /// it when it is no larger), under the same limits as streaming. A body
    /// whose declared length is larger is not read at all.
    pub async fn buffer(self) -> Result<Buffered, BodyError> {
        let UpstreamBody::Streaming(mut body) = self else {
            return Ok(Buffered::Streaming(self));
        };
        let capacity = body.limits.buffer_bytes;
        if body
            .inner
            .size_hint()
            .exact()
            .is_some_and(|length| length > capacity as u64)
        {
            return Ok(Buffered::Streaming(UpstreamBody::Streaming(body)));
        }
        let mut collected = bytes::BytesMut::new();
        loop {
            let frame = std::future::poll_fn(|cx| body.poll_guarded(cx)).await;
            match frame {
                None => return Ok(Buffered::Whole(collected.freeze())),
                Some(Err(err)) => return Err(err),
                Some(Ok(frame)) => {
                    // Trailers of a small request body are dropped, as
                    // HTTP/1.1 upstreams never see them either.
                    if let Ok(data) = frame.into_data() {
                        collected.extend_from_slice(&data);
                    }
                    if collected.len() > capacity {
                        body.prefix = Some(collected.freeze());
                        return Ok(Buffered::Streaming(UpstreamBody::Streaming(body)));
                    }
                }
            }
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
            UpstreamBody::Buffered(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            UpstreamBody::Streaming(body) => match body.prefix.take() {
                Some(prefix) => Poll::Ready(Some(Ok(Frame::data(prefix)))),
                None => body.poll_guarded(cx),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Empty => true,
            UpstreamBody::Buffered(bytes) => bytes.is_none(),
            UpstreamBody::Streaming(body) => body.prefix.is_none() && body.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Empty => SizeHint::with_exact(0),
            UpstreamBody::Buffered(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            UpstreamBody::Streaming(body) => {
                // The declared length covers the prefix too: unchanged.
                body.inner.size_hint()
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
                let wake_at = self.wake_at(Instant::now());
                if let Some(idle) = self.idle.as_mut() {
                    idle.as_mut().reset(wake_at);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => Poll::Ready(Some(Err(BodyError::Client(err)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let now = Instant::now();
                if now >= self.limits.deadline(self.started, self.received) {
                    return Poll::Ready(Some(Err(self.too_slow(now))));
                }
                let wake_at = self.wake_at(now);
                let idle = self
                    .idle
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(wake_at)));
                match idle.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        let now = Instant::now();
                        if now >= self.limits.deadline(self.started, self.received) {
                            Poll::Ready(Some(Err(self.too_slow(now))))
                        } else {
                            Poll::Ready(Some(Err(BodyError::IdleTimeout(self.limits.idle_timeout))))
                        }
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    /// The next moment to give up waiting: the idle timeout from `now` or
    /// the body's deadline, whichever comes first.
    fn wake_at(&self, now: Instant) -> Instant {
        (now + self.limits.idle_timeout).min(self.limits.deadline(self.started, self.received))
    }

    fn too_slow(&self, now: Instant) -> BodyError {
        BodyError::TooSlow {
            received: self.received,
            elapsed: now.saturating_duration_since(self.started),
        }
    }
}
