//! Keep-alive connections to upstream targets, pooled by us on top of our
//! own HTTP/1.1 client connection ([`crate::http1_client`], for requests
//! with no body or a buffered one) or hyper's bare one
//! (`hyper::client::conn::http1`: streaming bodies, upgrades, and every
//! request with `--upstream-http1 hyper`).
//!
//! Why we own the pool instead of using hyper-util's legacy `Client`: under
//! a profiler that client was the largest single cost of a proxied request
//! we could remove (~10% of the instructions, plus much of the `memcpy`):
//! every checkout and return takes one `Mutex<HashMap>` keyed by scheme and
//! authority (SipHash, `Authority` comparisons), every response spawns a task
//! that waits for the connection to become idle again, and its request
//! future is large and moved several times. A gateway needs far less: its
//! targets are known when a snapshot compiles, so each target owns its idle
//! list ([`TargetConnections`]) and requests reach it through a pointer, not
//! a hash lookup. The list is split in shards, one per worker thread (the
//! way nginx keeps one upstream pool per worker), so its lock is taken by
//! one thread in practice and never contended.
//!
//! A connection's life:
//! - opened on demand: TCP connect within the service's connect timeout,
//!   `TCP_NODELAY`, keepalive probes, then (hyper's) an HTTP/1.1 handshake
//!   and its I/O task spawned on the runtime, or (ours) nothing more: the
//!   request's task drives it;
//! - the response body ([`PooledBody`]) carries the connection (or hyper's
//!   sender);
//!   once the body has been read to its end, the sender goes back to the
//!   idle list of the shard of the thread that finished it. A body dropped
//!   early (the client went away), a failed exchange, or a response refused
//!   as malformed simply drops the sender and hyper closes the connection:
//!   nothing unsafe can be reused, so no "poison" flag is needed;
//! - checkout takes the most recently returned connection that is ready;
//!   closed or idle-expired ones are dropped on the way, and one still
//!   finishing its previous exchange (a request body still streaming after
//!   an early answer) is left for later;
//! - [`maintain`] advances the coarse clock idle times are measured with and
//!   closes connections idle for longer than [`IDLE_TIMEOUT`];
//! - a request that could not even be written to a reused connection (the
//!   upstream closed it while idle) is retried once on a new connection;
//!   an idle connection of ours is checked for a close (or unasked bytes)
//!   without waiting before it is reused.

use std::fmt;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::body::UpstreamBody;
use crate::http1_client;
use crate::upstream::ClientCache;
use crate::upstream::{classify, DisplayChain};
use tollgate_plugin_api::RefusalKind;

/// How long an idle upstream connection is kept.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per target and worker thread.
const MAX_IDLE_PER_SHARD: usize = 1024;
/// TCP keepalive probes on upstream connections, to notice dead peers.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// How often [`maintain`] closes expired idle connections.
const SWEEP_EVERY: u32 = 5;

/// Seconds since the process started serving, advanced by [`maintain`].
/// Reading it costs one relaxed load, unlike a clock read per request; if
/// nothing advances it, idle connections simply never expire by age.
static CLOCK: AtomicU32 = AtomicU32::new(0);

static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's shard number, assigned on first use.
    static THREAD_SHARD: usize = NEXT_SHARD.fetch_add(1, Ordering::Relaxed);
}

/// This thread's shard number (any number; take it modulo the shards).
#[inline]
pub(crate) fn thread_shard() -> usize {
    THREAD_SHARD.with(|shard| *shard)
}

/// How many shards each target's idle list has.
pub(crate) fn shard_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

type Sender = SendRequest<UpstreamBody>;

/// An idle connection: hyper's (its sender) or ours.
enum Conn {
    Hyper(Sender),
    Native(http1_client::Connection),
}

impl Conn {
    fn is_closed(&self) -> bool {
        match self {
            Conn::Hyper(sender) => sender.is_closed(),
            Conn::Native(_) => false,
        }
    }
}

/// What [`TargetConnections::take_idle`] does with one idle entry.
enum Verdict {
    Take,
    Keep,
    Drop,
}

struct Idle {
    conn: Conn,
    /// [`CLOCK`] when it was returned.
    since: u32,
}

impl Idle {
    fn expired(&self, now: u32) -> bool {
        now.wrapping_sub(self.since) >= IDLE_TIMEOUT.as_secs() as u32
    }
}

/// One shard of a target's idle list, on its own cache line.
#[repr(align(64))]
#[derive(Default)]
struct Shard {
    idle: Mutex<Vec<Idle>>,
}

impl Shard {
    fn lock(&self) -> MutexGuard<'_, Vec<Idle>> {
        // A panic while holding it cannot leave the Vec inconsistent.
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The connections to one upstream `host:port`, shared by every service
/// (and snapshot) that targets it with the same connect timeout.
pub struct TargetConnections {
    address: String,
    /// Set when the address is a literal `ip:port` (no resolution needed).
    socket_addr: Option<SocketAddr>,
    host: String,
    port: u16,
    connect_timeout: Duration,
    /// TLS over the TCP connection (`protocol: https`): the service's client
    /// and the name verified for this target.
    tls: Option<TargetTls>,
    shards: Box<[Shard]>,
}

/// How one target's connections are wrapped in TLS.
#[derive(Debug, Clone)]
pub struct TargetTls {
    pub client: Arc<crate::tls::upstream::UpstreamTlsClient>,
    pub server_name: rustls_pki_types::ServerName<'static>,
}

impl fmt::Debug for TargetConnections {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TargetConnections")
            .field("address", &self.address)
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

impl TargetConnections {
    /// Connections to `authority` (`host:port`; port 80 when absent).
    pub fn new(authority: &http::uri::Authority, connect_timeout: Duration) -> Self {
        Self::with_tls(authority, connect_timeout, None)
    }

    /// Connections to `authority`, in TLS when `tls` is set.
    pub fn with_tls(
        authority: &http::uri::Authority,
        connect_timeout: Duration,
        tls: Option<TargetTls>,
    ) -> Self {
        let address = authority.as_str().to_owned();
        TargetConnections {
            socket_addr: address.parse().ok(),
            host: authority
                .host()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port: authority.port_u16().unwrap_or(80),
            address,
            connect_timeout,
            tls,
            shards: (0..shard_count()).map(|_| Shard::default()).collect(),
        }
    }

    #[inline]
    fn shard(&self) -> &Shard {
        let index = thread_shard() % self.shards.len();
        &self.shards[index]
    }

    /// Walks this thread's shard from the most recently returned
    /// connection, dropping the entries `judge` condemns, and takes the
    /// first it accepts. `judge` sees the connection and whether it outlived
    /// the idle timeout.
    fn take_idle(&self, judge: impl Fn(&mut Conn, bool) -> Verdict) -> Option<Conn> {
        let now = CLOCK.load(Ordering::Relaxed);
        let mut idle = self.shard().lock();
        let mut i = idle.len();
        while i > 0 {
            i -= 1;
            let expired = idle[i].expired(now);
            match judge(&mut idle[i].conn, expired) {
                Verdict::Take => return Some(idle.swap_remove(i).conn),
                // Entries above `i` were already looked at, so the one
                // swapped into `i` needs no second look.
                Verdict::Drop => drop(idle.swap_remove(i)),
                Verdict::Keep => {}
            }
        }
        None
    }

    /// The most recently returned ready hyper connection of this thread's
    /// shard.
    fn checkout(&self) -> Option<Sender> {
        let conn = self.take_idle(|conn, expired| match conn {
            Conn::Hyper(sender) if sender.is_ready() && !expired => Verdict::Take,
            Conn::Hyper(sender) if sender.is_closed() || expired => Verdict::Drop,
            _ => Verdict::Keep,
        })?;
        match conn {
            Conn::Hyper(sender) => Some(sender),
            Conn::Native(_) => None,
        }
    }

    /// The most recently returned connection of ours of this thread's
    /// shard that the upstream has not closed.
    fn checkout_native(&self) -> Option<http1_client::Connection> {
        let conn = self.take_idle(|conn, expired| match conn {
            Conn::Native(conn) => {
                if !expired && conn.is_reusable() {
                    Verdict::Take
                } else {
                    // Closed by the upstream, unasked bytes, or expired.
                    Verdict::Drop
                }
            }
            Conn::Hyper(_) => Verdict::Keep,
        })?;
        match conn {
            Conn::Native(conn) => Some(conn),
            Conn::Hyper(_) => None,
        }
    }

    /// Returns a connection whose last exchange completed.
    fn put(&self, conn: Conn) {
        if conn.is_closed() {
            return;
        }
        let since = CLOCK.load(Ordering::Relaxed);
        let mut idle = self.shard().lock();
        if idle.len() < MAX_IDLE_PER_SHARD {
            idle.push(Idle { conn, since });
        }
    }

    /// Drops closed and expired idle connections (every shard).
    fn sweep(&self, now: u32) {
        for shard in self.shards.iter() {
            let expired: Vec<Idle> = {
                let mut idle = shard.lock();
                if idle.is_empty() {
                    continue;
                }
                let (keep, expired) = std::mem::take(&mut *idle)
                    .into_iter()
                    .partition(|entry| !entry.expired(now) && !entry.conn.is_closed());
                *idle = keep;
                expired
            };
            // Closed outside the lock.
            drop(expired);
        }
    }

    /// Idle connections held (for tests and diagnostics).
    pub fn idle_count(&self) -> usize {
        self.shards.iter().map(|shard| shard.lock().len()).sum()
    }

    /// Opens a new connection and spawns its I/O task.
    async fn connect(&self) -> Result<Sender, RefusalKind> {
        self.connect_with(false).await
    }

    /// Opens a new connection; with `upgrades`, its I/O task hands the
    /// connection over after a `101` (see [`crate::websocket`]).
    async fn connect_with(&self, upgrades: bool) -> Result<Sender, RefusalKind> {
        let stream = self.tcp().await?;
        match &self.tls {
            None => self.http1(stream, upgrades).await,
            Some(tls) => {
                let stream = self.tls_handshake(tls, stream).await?;
                self.http1(stream, upgrades).await
            }
        }
    }

    /// The TLS handshake on a new connection, within the connect timeout
    /// (also used by [`crate::h2`] for `protocol: h2`).
    pub(crate) async fn tls_handshake(
        &self,
        tls: &TargetTls,
        stream: TcpStream,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, RefusalKind> {
        let handshake = tls
            .client
            .connector
            .connect(tls.server_name.clone(), stream);
        match tokio::time::timeout(self.connect_timeout, handshake).await {
            Err(_elapsed) => {
                tracing::warn!(upstream = %self.address, "upstream TLS handshake timed out");
                Err(RefusalKind::UpstreamTimeout)
            }
            Ok(Err(err)) => {
                // The reason goes to the log, never to the client.
                tracing::warn!(upstream = %self.address, error = %err, "upstream TLS handshake failed");
                Err(RefusalKind::UpstreamTlsError)
            }
            Ok(Ok(stream)) => Ok(stream),
        }
    }

    /// How this target's connections are wrapped in TLS, if they are.
    pub(crate) fn tls(&self) -> Option<&TargetTls> {
        self.tls.as_ref()
    }

    /// A new TCP connection to the target within the connect timeout, with
    /// `TCP_NODELAY` and keepalive probes (what every upstream protocol
    /// starts from; [`crate::h2`] opens its connections here too).
    pub(crate) async fn tcp(&self) -> Result<TcpStream, RefusalKind> {
        let stream = match tokio::time::timeout(self.connect_timeout, self.open()).await {
            Err(_elapsed) => {
                tracing::debug!(upstream = %self.address, "upstream connect timed out");
                return Err(RefusalKind::UpstreamTimeout);
            }
            Ok(Err(err)) => {
                tracing::debug!(upstream = %self.address, error = %err, "upstream connect failed");
                return Err(if err.kind() == std::io::ErrorKind::TimedOut {
                    RefusalKind::UpstreamTimeout
                } else {
                    RefusalKind::UpstreamUnavailable
                });
            }
            Ok(Ok(stream)) => stream,
        };
        let _ = stream.set_nodelay(true);
        let keepalive = socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE);
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
        Ok(stream)
    }

    /// The target's `host:port`, for logs.
    pub(crate) fn address(&self) -> &str {
        &self.address
    }

    /// The HTTP/1.1 handshake on an open stream (plain or TLS); spawns the
    /// connection's I/O task.
    async fn http1<S>(&self, stream: S, upgrades: bool) -> Result<Sender, RefusalKind>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, connection) = http1::Builder::new()
            .writev(false)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|err| {
                tracing::debug!(upstream = %self.address, error = %DisplayChain(&err), "upstream handshake failed");
                RefusalKind::UpstreamUnavailable
            })?;
        tokio::spawn(async move {
            let ended = if upgrades {
                connection.with_upgrades().await
            } else {
                connection.await
            };
            if let Err(err) = ended {
                tracing::debug!(error = %DisplayChain(&err), "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// A TCP connection to the first of the target's addresses that accepts.
    async fn open(&self) -> std::io::Result<TcpStream> {
        if let Some(addr) = self.socket_addr {
            return TcpStream::connect(addr).await;
        }
        let mut last = None;
        for addr in tokio::net::lookup_host((self.host.as_str(), self.port)).await? {
            match TcpStream::connect(addr).await {
                Ok(stream) => return Ok(stream),
                Err(err) => last = Some(err),
            }
        }
        Err(last.unwrap_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the upstream host resolved to no address",
            )
        }))
    }

    /// Sends `request` on a pooled connection (or a new one) and returns the
    /// response head; its body hands the connection back when read to its
    /// end. No overall deadline here: the caller bounds it.
    pub async fn send(
        self: &Arc<Self>,
        request: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, RefusalKind> {
        self.send_or_return(request)
            .await
            .map_err(|failure| failure.kind)
    }

    /// Like [`TargetConnections::send`], but a request that was never
    /// written (no connection could be opened) comes back in the error, so
    /// the caller can try another target with it, body and all.
    pub async fn send_or_return(
        self: &Arc<Self>,
        request: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, SendFailure> {
        if http1_client::takes(&request) {
            return self.send_native(request).await;
        }
        // The connect paths are boxed: they are rare, and keeping them out
        // of this future keeps it small to create and move per request.
        let (sender, result) = match self.checkout() {
            Some(mut sender) => match sender.try_send_request(request).await {
                Ok(response) => (sender, Ok(response)),
                Err(failed) => match Self::unsent(failed, &self.address) {
                    // Never written: the idle connection was closed under us.
                    Ok(request) => Box::pin(self.send_on_new(request)).await?,
                    Err(err) => (sender, Err(err)),
                },
            },
            None => Box::pin(self.send_on_new(request)).await?,
        };
        match result {
            Ok(response) => Ok(response.map(|body| PooledBody {
                inner: Inner::Hyper(body, Some(sender)),
                target: Some(Arc::clone(self)),
            })),
            Err(err) => {
                let kind = classify(&err);
                tracing::debug!(upstream = %self.address, error = %DisplayChain(&err), ?kind, "upstream request failed");
                Err(SendFailure { kind, unsent: None })
            }
        }
    }
}

impl TargetConnections {
    /// Sends `request` on one of our connections: a pooled one the upstream
    /// has not closed, or a new one. A request not written on a reused
    /// connection is retried once on a new one, as with hyper's.
    async fn send_native(
        self: &Arc<Self>,
        request: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, SendFailure> {
        let request = match self.checkout_native() {
            Some(conn) => match conn.send(request).await {
                Ok(response) => return Ok(self.pooled_native(response)),
                Err(http1_client::SendError {
                    error,
                    unsent: Some(request),
                }) => {
                    tracing::debug!(upstream = %self.address, error = %DisplayChain(&error), "pooled upstream connection was closed; retrying on a new one");
                    request
                }
                Err(http1_client::SendError {
                    error,
                    unsent: None,
                }) => return Err(self.native_failure(&error)),
            },
            None => request,
        };
        // Rare, and kept out of this future so it stays small.
        let conn = match Box::pin(self.connect_native()).await {
            Ok(conn) => conn,
            Err(kind) => {
                return Err(SendFailure {
                    kind,
                    unsent: Some(request),
                })
            }
        };
        match conn.send(request).await {
            Ok(response) => Ok(self.pooled_native(response)),
            Err(failed) => Err(self.native_failure(&failed.error)),
        }
    }

    fn pooled_native(
        self: &Arc<Self>,
        response: Response<http1_client::ResponseBody>,
    ) -> Response<PooledBody> {
        response.map(|body| PooledBody {
            inner: Inner::Native(body),
            target: Some(Arc::clone(self)),
        })
    }

    fn native_failure(&self, error: &http1_client::Error) -> SendFailure {
        let kind = error.refusal();
        tracing::debug!(upstream = %self.address, error = %DisplayChain(error), ?kind, "upstream request failed");
        SendFailure { kind, unsent: None }
    }

    /// A new connection of ours (TCP, TLS when the target has it).
    async fn connect_native(&self) -> Result<http1_client::Connection, RefusalKind> {
        let stream = self.tcp().await?;
        Ok(match &self.tls {
            None => http1_client::Connection::new(stream),
            Some(tls) => http1_client::Connection::new(self.tls_handshake(tls, stream).await?),
        })
    }
}

/// Why a request got no response head, and the request itself when it was
/// never written (the connection could not be opened).
#[derive(Debug)]
pub struct SendFailure {
    pub kind: RefusalKind,
    pub unsent: Option<Request<UpstreamBody>>,
}

impl TargetConnections {
    /// Sends an upgrade request on a new connection of its own, never pooled
    /// (after a `101` it is a tunnel; after anything else it closes once the
    /// body is read). The `101`'s connection is taken with
    /// `hyper::upgrade::on(&mut response)`.
    pub async fn send_upgrade(
        &self,
        request: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, RefusalKind> {
        let mut sender = self.connect_with(true).await?;
        match sender.send_request(request).await {
            Ok(response) => Ok(response.map(PooledBody::unpooled)),
            Err(err) => {
                let kind = classify(&err);
                tracing::debug!(upstream = %self.address, error = %DisplayChain(&err), ?kind, "upstream upgrade request failed");
                Err(kind)
            }
        }
    }

    /// The request back when it was never written (worth one retry on a new
    /// connection), else the error.
    fn unsent(
        mut failed: hyper::client::conn::TrySendError<Request<UpstreamBody>>,
        address: &str,
    ) -> Result<Request<UpstreamBody>, hyper::Error> {
        match failed.take_message() {
            Some(request) => {
                tracing::debug!(upstream = %address, error = %DisplayChain(failed.error()), "pooled upstream connection was closed; retrying on a new one");
                Ok(request)
            }
            None => Err(failed.into_error()),
        }
    }

    /// Sends `request` on a new connection.
    async fn send_on_new(
        &self,
        request: Request<UpstreamBody>,
    ) -> Result<(Sender, hyper::Result<Response<Incoming>>), SendFailure> {
        let mut sender = match self.connect().await {
            Ok(sender) => sender,
            Err(kind) => {
                return Err(SendFailure {
                    kind,
                    unsent: Some(request),
                })
            }
        };
        let result = sender
            .try_send_request(request)
            .await
            .map_err(|failed| failed.into_error());
        Ok((sender, result))
    }
}

/// An upstream response body that returns its connection to the pool once
/// it has been read to its end (see the module doc).
pub struct PooledBody {
    inner: Inner,
    /// Where the connection goes back to; `None` when it must not.
    target: Option<Arc<TargetConnections>>,
}

/// The body as hyper's connection or ours reads it.
enum Inner {
    /// hyper's body, and its connection's sender while pooled.
    Hyper(Incoming, Option<Sender>),
    /// Ours: the body owns its connection.
    Native(http1_client::ResponseBody),
}

impl fmt::Debug for PooledBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("PooledBody");
        match &self.inner {
            Inner::Hyper(body, _) => debug.field("inner", body),
            Inner::Native(body) => debug.field("inner", body),
        };
        debug.field("pooled", &self.target.is_some()).finish()
    }
}

impl PooledBody {
    /// A body whose connection is not pooled (HTTP/2 streams, upgrades).
    pub fn unpooled(inner: Incoming) -> Self {
        PooledBody {
            inner: Inner::Hyper(inner, None),
            target: None,
        }
    }

    /// Keeps the connection out of the pool: it closes when the body drops.
    pub fn discard_connection(&mut self) {
        self.target = None;
    }

    fn release(&mut self) {
        let Some(target) = self.target.take() else {
            return;
        };
        let conn = match &mut self.inner {
            Inner::Hyper(_, sender) => sender.take().map(Conn::Hyper),
            Inner::Native(body) => body.take_connection().map(Conn::Native),
        };
        if let Some(conn) = conn {
            target.put(conn);
        }
    }
}

/// Why an upstream response body could not be read: hyper's error or ours
/// (both are causes for [`crate::upstream::classify`]).
#[derive(Debug)]
pub enum BodyReadError {
    Hyper(hyper::Error),
    Native(http1_client::Error),
}

impl fmt::Display for BodyReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("reading the upstream response body failed")
    }
}

impl std::error::Error for BodyReadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BodyReadError::Hyper(err) => Some(err),
            BodyReadError::Native(err) => Some(err),
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = BodyReadError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyReadError>>> {
        let this = self.get_mut();
        let polled = match &mut this.inner {
            Inner::Hyper(body, _) => Pin::new(body)
                .poll_frame(cx)
                .map(|frame| frame.map(|frame| frame.map_err(BodyReadError::Hyper))),
            Inner::Native(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|frame| frame.map(|frame| frame.map_err(BodyReadError::Native))),
        };
        match &polled {
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Err(_))) => this.discard_connection(),
            Poll::Ready(Some(Ok(_))) | Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Hyper(body, _) => body.is_end_stream(),
            Inner::Native(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Hyper(body, _) => body.size_hint(),
            Inner::Native(body) => body.size_hint(),
        }
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // hyper stops polling a body once it reports its end (and never
        // polls an empty one): that is a complete exchange too.
        if self.is_end_stream() {
            self.release();
        }
    }
}

/// Advances the idle clock every second and closes expired idle connections
/// of the targets in use every few seconds, until `stop` turns true.
/// Connections of targets no snapshot uses any more close with their pool.
pub async fn maintain(clients: Arc<ClientCache>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let now = CLOCK.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        if !now.is_multiple_of(SWEEP_EVERY) {
            continue;
        }
        for target in clients.live() {
            target.sweep(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use hyper::service::service_fn;

    /// An upstream answering `hello` to everything; counts its connections.
    async fn upstream() -> (http::uri::Authority, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|err| panic!("bind: {err}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|err| panic!("addr: {err}"));
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let service = service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(
                            Bytes::from_static(b"hello"),
                        )))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        let authority = addr
            .to_string()
            .parse()
            .unwrap_or_else(|err| panic!("authority: {err}"));
        (authority, accepted)
    }

    fn request(authority: &http::uri::Authority) -> Request<UpstreamBody> {
        let mut request = Request::new(UpstreamBody::Empty);
        request.headers_mut().insert(
            http::header::HOST,
            http::HeaderValue::from_str(authority.as_str())
                .unwrap_or_else(|err| panic!("host: {err}")),
        );
        request
    }

    /// Lets the connection tasks catch up with what the test just did.
    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    #[tokio::test]
    async fn read_bodies_reuse_the_connection_and_abandoned_ones_do_not() {
        let (authority, accepted) = upstream().await;
        let target = Arc::new(TargetConnections::new(&authority, Duration::from_secs(1)));
        for _ in 0..3 {
            let response = target
                .send(request(&authority))
                .await
                .unwrap_or_else(|err| panic!("send: {err:?}"));
            let body = response
                .into_body()
                .collect()
                .await
                .unwrap_or_else(|err| panic!("body: {err}"));
            assert_eq!(body.to_bytes(), Bytes::from_static(b"hello"));
            settle().await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection reused");
        assert_eq!(target.idle_count(), 1);

        // A body dropped unread (the client went away) closes its connection.
        let response = target
            .send(request(&authority))
            .await
            .unwrap_or_else(|err| panic!("send: {err:?}"));
        drop(response);
        settle().await;
        assert_eq!(target.idle_count(), 0);
        let response = target
            .send(request(&authority))
            .await
            .unwrap_or_else(|err| panic!("send: {err:?}"));
        let _ = response.into_body().collect().await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "a new connection");

        // Expired idle connections are closed by the sweep.
        settle().await;
        assert_eq!(target.idle_count(), 1);
        let later = CLOCK
            .load(Ordering::Relaxed)
            .wrapping_add(IDLE_TIMEOUT.as_secs() as u32);
        target.sweep(later);
        assert_eq!(target.idle_count(), 0);
    }

    #[tokio::test]
    async fn refused_connections_are_unavailable() {
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|err| panic!("bind: {err}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|err| panic!("addr: {err}"));
        drop(listener);
        let authority: http::uri::Authority = addr
            .to_string()
            .parse()
            .unwrap_or_else(|err| panic!("authority: {err}"));
        let target = Arc::new(TargetConnections::new(&authority, Duration::from_secs(1)));
        let result = target.send(request(&authority)).await;
        assert_eq!(result.err(), Some(RefusalKind::UpstreamUnavailable));
    }
}
