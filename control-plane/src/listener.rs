//! The accept loop and per-connection guards of the gRPC listeners.
//!
//! Why not tonic's `TcpIncoming`: its stream ends at the first accept error
//! it considers fatal (EMFILE when file descriptors run out), after which the
//! server stops and the process exited 0; and nothing ever closed a
//! connection that sent no bytes, so idle sockets could use up every
//! descriptor without a token. Here:
//!
//! - [`Incoming`] never ends on its own: an accept error is logged (at most
//!   once per second) and retried after [`ACCEPT_BACKOFF`].
//! - At most `max_connections` connections are open; a connection beyond
//!   that is accepted and closed at once, which frees its descriptor. The cap
//!   is lowered to fit the process's `RLIMIT_NOFILE` less [`FD_RESERVE`]
//!   descriptors for the store and the process itself.
//! - [`GuardedStream`] closes a connection that has not sent the 24-byte
//!   HTTP/2 preface within `handshake_timeout`, and one that has had no call
//!   in progress for `idle_timeout` (a data plane's open config stream is a
//!   call in progress, so it is never idle).
//! - [`ConnLayer`] counts calls per connection for that idle check, exposes
//!   the peer address to handlers as tonic's `TcpConnectInfo`, and gives
//!   tonic's own request errors the status code that says whose fault they
//!   are (an undecodable message is `INVALID_ARGUMENT`, not `INTERNAL`; an
//!   oversized one `RESOURCE_EXHAUSTED`).
//! - It also runs `Apply` calls on a runtime of their own ([`write_runtime`]):
//!   tonic decodes a request (up to 64 MiB) inside the call, and a worker
//!   busy with that can hold back tasks queued behind it (tokio keeps a
//!   just-woken task in a per-worker slot others cannot steal). Health
//!   checks, reads and config streams never share a worker with that.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::{Body, Frame};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tokio_stream::Stream;
use tonic::body::BoxBody;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Pause after an accept error such as EMFILE before trying again.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Descriptors kept out of the connection cap (store files, listeners, logs).
pub const FD_RESERVE: u64 = 64;
/// The HTTP/2 client connection preface is 24 bytes.
const PREFACE_LEN: usize = 24;
/// TCP keepalive on accepted sockets.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// Connection limits of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// Open connections at once (before the `RLIMIT_NOFILE` adjustment).
    pub max_connections: usize,
    /// Time to send the HTTP/2 preface after connecting.
    pub handshake_timeout: Duration,
    /// Time a connection may stay without a call in progress; `None` = never closed.
    pub idle_timeout: Option<Duration>,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            max_connections: 1_024,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Some(Duration::from_secs(300)),
        }
    }
}

/// The soft `RLIMIT_NOFILE` of this process, from `/proc/self/limits`.
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `configured`, lowered to fit `nofile` less [`FD_RESERVE`] (at least 1).
pub fn effective_max_connections(configured: usize, nofile: Option<u64>) -> usize {
    match nofile {
        Some(limit) => {
            let room = usize::try_from(limit.saturating_sub(FD_RESERVE)).unwrap_or(usize::MAX);
            configured.min(room).max(1)
        }
        None => configured.max(1),
    }
}

/// Calls in progress on one connection, and since when it has had none.
#[derive(Debug)]
pub struct Activity {
    active: AtomicUsize,
    idle_since: Mutex<Instant>,
}

impl Activity {
    fn new() -> Arc<Activity> {
        Arc::new(Activity {
            active: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
        })
    }

    fn begin(self: &Arc<Self>) -> ActiveCall {
        self.active.fetch_add(1, Ordering::SeqCst);
        ActiveCall {
            activity: self.clone(),
        }
    }

    /// How long the connection has had no call; `None` while one runs.
    fn idle_for(&self) -> Option<Duration> {
        if self.active.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let since = *self.idle_since.lock().unwrap_or_else(|e| e.into_inner());
        Some(since.elapsed())
    }
}

/// One call in progress; ends (and restarts the idle clock) when dropped.
pub struct ActiveCall {
    activity: Arc<Activity>,
}

impl Drop for ActiveCall {
    fn drop(&mut self) {
        let mut since = self
            .activity
            .idle_since
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *since = Instant::now();
        self.activity.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What a handler can learn about its connection (tonic's connect info).
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub local_addr: Option<SocketAddr>,
    pub remote_addr: Option<SocketAddr>,
    activity: Arc<Activity>,
    /// The node id of the verified data-plane certificate the peer
    /// presented over TLS (`crate::pki::transport`); handed to handlers as
    /// a [`PeerNode`] extension.
    pub peer_node: Option<Arc<str>>,
    /// On a TLS admin listener: the operator the verified client
    /// certificate names, or why it names none (`crate::pki::operators`);
    /// handed to handlers as a [`PeerOperator`] extension.
    pub peer_operator: Option<PeerOperator>,
}

/// The operator a call's connection presented a certificate for, or why
/// that certificate names no operator, in the request's extensions.
#[derive(Debug, Clone)]
pub struct PeerOperator(pub Arc<Result<crate::pki::operators::OperatorId, String>>);

/// The data plane a call's connection authenticated as (its certificate's
/// node id), in the request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerNode(pub Arc<str>);

/// Counters shared by a listener's connections (for logs and tests).
#[derive(Debug, Default)]
pub struct ListenerStats {
    pub accepted: AtomicU64,
    pub refused_over_cap: AtomicU64,
    pub accept_errors: AtomicU64,
    pub closed_no_preface: AtomicU64,
    pub closed_idle: AtomicU64,
}

/// The accepted connections of one listener, as tonic's incoming stream.
/// Never yields an error and never ends.
pub struct Incoming {
    listener: TcpListener,
    limits: ConnLimits,
    permits: Arc<Semaphore>,
    backoff: Option<Pin<Box<Sleep>>>,
    last_warning: Option<Instant>,
    stats: Arc<ListenerStats>,
    name: &'static str,
}

impl Incoming {
    /// `name` labels the log lines ("admin", "stream").
    pub fn new(listener: TcpListener, limits: ConnLimits, name: &'static str) -> Incoming {
        let max = effective_max_connections(limits.max_connections, open_files_limit());
        if max < limits.max_connections {
            tracing::warn!(
                listener = name,
                configured = limits.max_connections,
                max,
                "connection cap lowered to fit the open-files limit (RLIMIT_NOFILE)"
            );
        }
        Incoming {
            listener,
            limits,
            permits: Arc::new(Semaphore::new(max)),
            backoff: None,
            last_warning: None,
            stats: Arc::new(ListenerStats::default()),
            name,
        }
    }

    pub fn stats(&self) -> Arc<ListenerStats> {
        self.stats.clone()
    }

    /// Logs at most one warning per second (an fd storm must not flood logs).
    fn warn(&mut self, message: &str, detail: &dyn std::fmt::Display) {
        let now = Instant::now();
        let due = match self.last_warning {
            None => true,
            Some(last) => now.duration_since(last) >= Duration::from_secs(1),
        };
        if due {
            self.last_warning = Some(now);
            tracing::warn!(listener = self.name, error = %detail, "{message}");
        }
    }
}

/// Errors that concern one connection only; anything else (EMFILE, ENFILE,
/// ENOBUFS, ENOMEM) is a resource shortage worth a pause.
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

impl Stream for Incoming {
    type Item = Result<GuardedStream, io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(backoff) = this.backoff.as_mut() {
                if backoff.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.backoff = None;
            }
            match this.listener.poll_accept(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(error)) => {
                    this.stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                    if !is_connection_error(&error) {
                        this.warn("accept failed; retrying shortly", &error);
                        this.backoff = Some(Box::pin(tokio::time::sleep(ACCEPT_BACKOFF)));
                    }
                }
                Poll::Ready(Ok((stream, remote))) => {
                    let Ok(permit) = this.permits.clone().try_acquire_owned() else {
                        this.stats.refused_over_cap.fetch_add(1, Ordering::Relaxed);
                        drop(stream);
                        this.warn(
                            "connection refused: too many open connections",
                            &format_args!("peer {remote}"),
                        );
                        continue;
                    };
                    this.stats.accepted.fetch_add(1, Ordering::Relaxed);
                    let _ = stream.set_nodelay(true);
                    let keepalive = socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE);
                    let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
                    let local = stream.local_addr().ok();
                    return Poll::Ready(Some(Ok(GuardedStream::new(
                        stream,
                        permit,
                        ConnInfo {
                            local_addr: local,
                            remote_addr: Some(remote),
                            activity: Activity::new(),
                            peer_node: None,
                            peer_operator: None,
                        },
                        this.limits,
                        this.stats.clone(),
                    ))));
                }
            }
        }
    }
}

/// An accepted connection, closed when it sends no preface in time or stays
/// without a call for the idle timeout. Holds its slot under the cap.
pub struct GuardedStream {
    inner: TcpStream,
    _permit: OwnedSemaphorePermit,
    info: ConnInfo,
    preface_left: usize,
    handshake_deadline: Pin<Box<Sleep>>,
    idle_timeout: Option<Duration>,
    idle_check: Pin<Box<Sleep>>,
    stats: Arc<ListenerStats>,
}

impl GuardedStream {
    fn new(
        inner: TcpStream,
        permit: OwnedSemaphorePermit,
        info: ConnInfo,
        limits: ConnLimits,
        stats: Arc<ListenerStats>,
    ) -> GuardedStream {
        let idle = limits.idle_timeout.unwrap_or(Duration::from_secs(3_600));
        GuardedStream {
            inner,
            _permit: permit,
            info,
            preface_left: PREFACE_LEN,
            handshake_deadline: Box::pin(tokio::time::sleep(limits.handshake_timeout)),
            idle_timeout: limits.idle_timeout,
            idle_check: Box::pin(tokio::time::sleep(idle)),
            stats,
        }
    }

    /// `Err` once the connection must be closed; registers the timers.
    fn check_deadlines(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.preface_left > 0 {
            if self.handshake_deadline.as_mut().poll(cx).is_ready() {
                self.stats.closed_no_preface.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(peer = ?self.info.remote_addr, "closing: no HTTP/2 preface in time");
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no HTTP/2 preface within the handshake timeout",
                ));
            }
            return Ok(());
        }
        let Some(idle) = self.idle_timeout else {
            return Ok(());
        };
        while self.idle_check.as_mut().poll(cx).is_ready() {
            let next = match self.info.activity.idle_for() {
                Some(elapsed) if elapsed >= idle => {
                    self.stats.closed_idle.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(peer = ?self.info.remote_addr, "closing: idle");
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "connection idle for the idle timeout",
                    ));
                }
                Some(elapsed) => idle - elapsed,
                None => idle,
            };
            self.idle_check
                .as_mut()
                .reset(tokio::time::Instant::now() + next);
        }
        Ok(())
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Err(error) = this.check_deadlines(cx) {
            return Poll::Ready(Err(error));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &polled {
            let read = buf.filled().len() - before;
            if this.preface_left > 0 && read > 0 {
                this.preface_left = this.preface_left.saturating_sub(read);
                if this.preface_left == 0 {
                    // The idle clock starts with the handshake done.
                    if let Some(idle) = this.idle_timeout {
                        *this
                            .info
                            .activity
                            .idle_since
                            .lock()
                            .unwrap_or_else(|e| e.into_inner()) = Instant::now();
                        this.idle_check
                            .as_mut()
                            .reset(tokio::time::Instant::now() + idle);
                    }
                }
            }
        }
        polled
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl Connected for GuardedStream {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

// ---------------------------------------------------------------- per-call layer

/// The runtime `Apply` calls run on (two workers, created once). `None`
/// if it cannot be created; calls then run where they arrive.
pub fn write_runtime() -> Option<tokio::runtime::Handle> {
    static RUNTIME: std::sync::OnceLock<Option<tokio::runtime::Runtime>> =
        std::sync::OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("tollgate-cp-write")
                .thread_stack_size(8 * 1024 * 1024)
                .enable_all()
                .build()
                .map_err(|e| tracing::warn!(error = %e, "no separate runtime for writes"))
                .ok()
        })
        .as_ref()
        .map(|runtime| runtime.handle().clone())
}

/// Whether a call is one whose request can be large enough to keep a worker
/// busy while it is decoded.
fn is_bulk_write(path: &str) -> bool {
    path == "/tollgate.admin.v1.Admin/Apply"
}

/// Wraps every service of a server: see [`ConnService`].
#[derive(Debug, Clone, Default)]
pub struct ConnLayer {
    writes: Option<tokio::runtime::Handle>,
}

impl ConnLayer {
    /// `writes`: where `Apply` calls run (see [`write_runtime`]).
    pub fn new(writes: Option<tokio::runtime::Handle>) -> ConnLayer {
        ConnLayer { writes }
    }
}

impl<S> tower_layer::Layer<S> for ConnLayer {
    type Service = ConnService<S>;

    fn layer(&self, inner: S) -> ConnService<S> {
        ConnService {
            inner,
            writes: self.writes.clone(),
        }
    }
}

/// Marks a call in progress on its connection for as long as its response
/// body lives, hands the peer address to handlers as `TcpConnectInfo`, and
/// fixes the status of tonic's own request errors ([`fix_status`]).
#[derive(Debug, Clone)]
pub struct ConnService<S> {
    inner: S,
    writes: Option<tokio::runtime::Handle>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, B> tonic::codegen::Service<http::Request<BoxBody>> for ConnService<S>
where
    S: tonic::codegen::Service<http::Request<BoxBody>, Response = http::Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Body<Data = tonic::codegen::Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<BoxBody>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<BoxBody>) -> Self::Future {
        let call = match request.extensions().get::<ConnInfo>().cloned() {
            Some(info) => {
                request.extensions_mut().insert(TcpConnectInfo {
                    local_addr: info.local_addr,
                    remote_addr: info.remote_addr,
                });
                if let Some(node) = &info.peer_node {
                    request.extensions_mut().insert(PeerNode(node.clone()));
                }
                if let Some(operator) = &info.peer_operator {
                    request.extensions_mut().insert(operator.clone());
                }
                Some(info.activity.begin())
            }
            None => None,
        };
        let writes = self
            .writes
            .clone()
            .filter(|_| is_bulk_write(request.uri().path()));
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let pending = inner.call(request);
            let response = match writes {
                None => pending.await?,
                Some(runtime) => match runtime.spawn(pending).await {
                    Ok(response) => response?,
                    Err(error) => {
                        let request_id = uuid::Uuid::new_v4().simple().to_string();
                        tracing::error!(%error, %request_id, "write call failed");
                        let status = tonic::Status::internal(format!(
                            "internal error (request id {request_id}); see the control plane log"
                        ));
                        return Ok(status.into_http());
                    }
                },
            };
            let (mut parts, body) = response.into_parts();
            fix_status(&mut parts.headers);
            let body = CallBody {
                inner: tonic::body::boxed(body),
                _call: call,
            };
            Ok(http::Response::from_parts(parts, tonic::body::boxed(body)))
        })
    }
}

/// The response body, holding its call's [`ActiveCall`] and fixing the
/// status in trailers.
struct CallBody {
    inner: BoxBody,
    _call: Option<ActiveCall>,
}

impl Body for CallBody {
    type Data = tonic::codegen::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let mut polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &mut polled {
            if let Some(trailers) = frame.trailers_mut() {
                fix_status(trailers);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Rewrites the two statuses tonic gives for a client's own mistakes:
/// `INTERNAL` "failed to decode Protobuf message" becomes `INVALID_ARGUMENT`,
/// and `OUT_OF_RANGE` "decoded message length too large" becomes
/// `RESOURCE_EXHAUSTED`, naming the limit.
pub fn fix_status(headers: &mut http::HeaderMap) {
    let Some(code) = headers.get("grpc-status").map(|v| v.as_bytes().to_vec()) else {
        return;
    };
    let message = headers
        .get("grpc-message")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let replacement = match code.as_slice() {
        b"13"
            if message.starts_with("failed%20to%20decode")
                || message.starts_with("failed to decode") =>
        {
            Some((
                "3",
                "request: not a valid protobuf message of the method's request type".to_string(),
            ))
        }
        b"11"
            if message.contains("message%20length%20too%20large")
                || message.contains("message length too large") =>
        {
            Some((
                "8",
                format!(
                    "request: larger than the {} byte message limit",
                    tollgate_shared::limits::MAX_MESSAGE_BYTES
                ),
            ))
        }
        _ => None,
    };
    if let Some((code, message)) = replacement {
        headers.insert("grpc-status", http::HeaderValue::from_static(code));
        if let Ok(value) = http::HeaderValue::from_str(&message) {
            headers.insert("grpc-message", value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_fits_the_open_files_limit() {
        assert_eq!(effective_max_connections(1_024, Some(256)), 192);
        assert_eq!(effective_max_connections(1_024, Some(100_000)), 1_024);
        assert_eq!(effective_max_connections(1_024, Some(10)), 1);
        assert_eq!(effective_max_connections(50, None), 50);
        assert!(open_files_limit().is_some());
    }

    #[test]
    fn decode_errors_become_invalid_argument() {
        let mut headers = http::HeaderMap::new();
        headers.insert("grpc-status", http::HeaderValue::from_static("13"));
        headers.insert(
            "grpc-message",
            http::HeaderValue::from_static("failed%20to%20decode%20Protobuf%20message"),
        );
        fix_status(&mut headers);
        assert_eq!(headers["grpc-status"], "3");

        let mut headers = http::HeaderMap::new();
        headers.insert("grpc-status", http::HeaderValue::from_static("13"));
        headers.insert(
            "grpc-message",
            http::HeaderValue::from_static("internal%20error"),
        );
        fix_status(&mut headers);
        assert_eq!(headers["grpc-status"], "13");
    }

    #[tokio::test]
    async fn connections_without_preface_are_closed() {
        use tokio::io::AsyncReadExt;
        use tokio_stream::StreamExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let limits = ConnLimits {
            max_connections: 1,
            handshake_timeout: Duration::from_millis(100),
            idle_timeout: Some(Duration::from_millis(200)),
        };
        let mut incoming = Incoming::new(listener, limits, "test");
        let stats = incoming.stats();
        let _client = TcpStream::connect(addr).await.expect("connect");
        let mut accepted = incoming.next().await.expect("never ends").expect("ok");
        // Over the cap: accepted and closed at once.
        let mut second = TcpStream::connect(addr).await.expect("connect");
        let polled = tokio::time::timeout(Duration::from_millis(200), incoming.next()).await;
        assert!(polled.is_err(), "nothing yielded over the cap");
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(2), second.read(&mut byte)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
        assert_eq!(stats.refused_over_cap.load(Ordering::Relaxed), 1);
        // The silent one fails its read after the handshake timeout.
        let started = Instant::now();
        let mut buf = [0u8; 16];
        let result = accepted.read(&mut buf).await;
        assert_eq!(result.expect_err("closed").kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
