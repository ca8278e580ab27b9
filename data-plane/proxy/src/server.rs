//! The proxy listener.
//!
//! One port speaks HTTP/1.1 and HTTP/2 with prior knowledge (h2c), chosen per
//! connection by hyper-util's `auto` builder from the connection preface.
//!
//! Defences at this layer (see `shared/docs/hardening.md`):
//! - HTTP/1 header-read timeout (slowloris). hyper ignores it unless a timer
//!   is installed, so [`TokioTimer`] is installed on both protocols.
//! - header limits: hyper's parser is bounded slightly above the configured
//!   count and bytes so the handler can answer the JSON 431 itself; anything
//!   far beyond gets hyper's own 431. HTTP/2 header lists are bounded too.
//! - HTTP/2: at most 100 concurrent streams, 64 KiB stream / 1 MiB connection
//!   windows, keepalive pings, and caps on reset streams (rapid reset).
//! - slow readers: a write that makes no progress for `--send-timeout-ms`
//!   closes the connection ([`SendTimeout`]).
//! - a connection cap: beyond it a connection gets a one-shot 503 and is
//!   closed, instead of the process running out of memory or descriptors.
//!
//! Runtime shape ([`serve_workers`]): like nginx workers, each proxy worker
//! is one thread with its own single-threaded tokio runtime and its own
//! accept loop, and a connection stays on the thread that accepted it, with
//! its upstream connections (see [`crate::pool`]). Measured against
//! one multi-threaded runtime with one worker, this cut CPU per request by
//! about a tenth: no work-stealing queues, no cross-thread wake-ups. Worker 0
//! is the caller's runtime (which also runs the data plane's background
//! tasks).
//!
//! Listening sockets ([`Listeners`]): with one worker, one ordinary socket.
//! With several, each worker accepts on its own socket, all bound to the same
//! address with `SO_REUSEPORT`, so the kernel spreads new connections across
//! the workers by a hash of the connection's addresses. One shared socket
//! (what this did before) let whichever worker woke first take the
//! connection: epoll wakes the most recently waiting thread, so under load a
//! busy worker kept winning and the spread was lopsided (measured in
//! docs/performance.md). So that a second process cannot join the port by
//! mistake, binding first tries the address with an ordinary socket and fails
//! if anything holds it; the connection cap stays shared. On shutdown every
//! worker closes its socket at the same moment; a connection the kernel had
//! queued on one but not yet handed over is refused, as it was when the one
//! shared socket closed.
//!
//! TLS (`--tls-listen`, [`ServerSettings::tls`]): the same accept loop, then
//! a rustls handshake bounded by the header-read timeout, with the server
//! config of the snapshot in service at accept time (see [`crate::tls`]:
//! no lock, nothing built per handshake). ALPN picks HTTP/2 or HTTP/1.1 and
//! the auto builder serves either. Each handshake's result is counted; what
//! was negotiated travels with the connection's [`Peer`] to the access log
//! and `X-Forwarded-Proto`.
//!
//! Shutdown: the accept loops stop, every connection is told to finish its
//! in-flight requests and close (HTTP/1 after the current response, HTTP/2
//! with GOAWAY), and the caller waits for them up to the drain deadline.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::send_timeout::SendTimeout;
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::forward::Peer;
use crate::handler::ProxyState;
use crate::observe;
use crate::parse_errors::{ErrorAnswers, Recorder};
use crate::tls::TlsInfo;
use tollgate_plugin_api::RefusalKind;
use tollgate_telemetry::metrics;
use tollgate_telemetry::metrics::HandshakeResult;

/// Listener settings from the command line.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub header_read_timeout: Duration,
    pub drain_timeout: Duration,
    /// Terminate TLS on this listener.
    pub tls: bool,
    /// The open-connection slots (`max_connections` of them), shared by
    /// the plaintext and TLS listeners so the cap is one for the process.
    pub connection_slots: Arc<Semaphore>,
}

impl ServerSettings {
    /// Slots for `max_connections` open client connections.
    pub fn connection_slots(max_connections: usize) -> Arc<Semaphore> {
        Arc::new(Semaphore::new(max_connections.max(1)))
    }
}

/// Per-connection state: the shared proxy state and who is on the other end.
struct ConnectionContext {
    state: Arc<ProxyState>,
    peer: Peer,
}

fn builder(state: &ProxyState, settings: &ServerSettings) -> auto::Builder<TokioExecutor> {
    let limits = &state.limits;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .keep_alive(true)
        .writev(false)
        .max_headers(limits.max_headers.saturating_add(1))
        .max_buf_size((limits.max_header_bytes + limits.max_uri_bytes + 4096).max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(100)
        .initial_stream_window_size(64 * 1024)
        .initial_connection_window_size(1024 * 1024)
        .max_header_list_size(
            u32::try_from(limits.max_header_bytes.saturating_add(4096)).unwrap_or(u32::MAX),
        )
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10))
        .max_pending_accept_reset_streams(Some(100))
        .max_local_error_reset_streams(Some(1024));
    builder
}

/// The proxy's listening sockets: one per worker (see the module docs).
#[derive(Debug)]
pub struct Listeners {
    /// Worker 0's, registered on the runtime that bound it.
    first: TcpListener,
    /// The other workers' (bound with `SO_REUSEPORT`), registered on their
    /// own runtimes when they start.
    others: Vec<std::net::TcpListener>,
}

impl Listeners {
    /// Binds `workers` sockets (at least one) to `addr`. Port 0 picks a free
    /// port for the first; the others join that one.
    pub async fn bind(
        what: &'static str,
        addr: SocketAddr,
        workers: usize,
    ) -> Result<Listeners, crate::error::DpError> {
        let error = |source| crate::error::DpError::Bind { what, addr, source };
        if workers <= 1 {
            return Ok(Listeners {
                first: bind(what, addr).await?,
                others: Vec::new(),
            });
        }
        if addr.port() != 0 {
            // Anything already on the address (another tollgate-dp with
            // its own SO_REUSEPORT sockets included) makes this fail here.
            drop(std::net::TcpListener::bind(addr).map_err(error)?);
        }
        let first = reuse_port_socket(addr).map_err(error)?;
        let addr = first.local_addr().map_err(error)?;
        let others = (1..workers)
            .map(|_| reuse_port_socket(addr))
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(error)?;
        Ok(Listeners {
            first: TcpListener::from_std(first).map_err(error)?,
            others,
        })
    }

    /// The bound address (the same for every socket).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.first.local_addr()
    }

    /// How many workers these sockets are for.
    pub fn workers(&self) -> usize {
        1 + self.others.len()
    }
}

/// A non-blocking listening socket on `addr` with `SO_REUSEADDR` (as tokio
/// sets it) and `SO_REUSEPORT`, with tokio's backlog.
fn reuse_port_socket(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Serves on one worker per socket of `listeners` (worker 0 on the caller's
/// runtime, the others on a thread and runtime each) until `shutdown` turns
/// true, then drains connections for at most `settings.drain_timeout` and
/// returns when every worker has.
pub async fn serve_workers(
    listeners: Listeners,
    state: Arc<ProxyState>,
    settings: ServerSettings,
    shutdown: watch::Receiver<bool>,
) {
    let connection_slots = Arc::clone(&settings.connection_slots);
    let mut finished = Vec::new();
    let Listeners { first, others } = listeners;
    for (index, listener) in (1..).zip(others) {
        match spawn_worker(
            index,
            listener,
            &state,
            &settings,
            &connection_slots,
            &shutdown,
        ) {
            Ok(done) => finished.push(done),
            Err(err) => {
                // The sockets left are closed here, so the kernel stops
                // sending connections their way.
                tracing::warn!(error = %err, worker = index, "cannot start a proxy worker; serving with fewer");
                break;
            }
        }
    }
    serve(0, first, state, settings, connection_slots, shutdown).await;
    for done in finished {
        let _ = done.await;
    }
}

/// Starts proxy worker `index` on its own thread and runtime, accepting on
/// `listener`; the receiver resolves when it has drained.
fn spawn_worker(
    index: usize,
    listener: std::net::TcpListener,
    state: &Arc<ProxyState>,
    settings: &ServerSettings,
    connection_slots: &Arc<Semaphore>,
    shutdown: &watch::Receiver<bool>,
) -> std::io::Result<tokio::sync::oneshot::Receiver<()>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (done, finished) = tokio::sync::oneshot::channel();
    let (state, settings, slots, shutdown) = (
        Arc::clone(state),
        settings.clone(),
        Arc::clone(connection_slots),
        shutdown.clone(),
    );
    std::thread::Builder::new()
        .name(format!("tollgate-dp-{index}"))
        .spawn(move || {
            runtime.block_on(async move {
                match TcpListener::from_std(listener) {
                    Ok(listener) => serve(index, listener, state, settings, slots, shutdown).await,
                    Err(err) => {
                        tracing::warn!(error = %err, worker = index, "cannot register the proxy listener");
                    }
                }
            });
            // Leftover tasks (idle upstream connections) end with the runtime.
            drop(runtime);
            let _ = done.send(());
        })?;
    Ok(finished)
}

/// One worker's accept loop: serves until `shutdown` turns true, then drains
/// its connections for at most `settings.drain_timeout`.
async fn serve(
    worker: usize,
    listener: TcpListener,
    state: Arc<ProxyState>,
    settings: ServerSettings,
    connection_slots: Arc<Semaphore>,
    mut shutdown: watch::Receiver<bool>,
) {
    let builder = Arc::new(builder(&state, &settings));
    let graceful = GracefulShutdown::new();
    let accepts = metrics::global().worker_accepts(worker);

    loop {
        if *shutdown.borrow() {
            break;
        }
        let (stream, remote) = tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        accepts.inc();
        let Ok(slot) = connection_slots.clone().try_acquire_owned() else {
            // A plaintext 503 means nothing to a TLS client: that one is
            // simply closed (a handshake costs more than the answer is worth).
            if !settings.tls {
                tokio::spawn(reject_overloaded(stream));
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let peer = Peer::new(remote.ip(), &state.trusted_proxies);
        let open = metrics::global().connection_opened();
        if !settings.tls {
            let connection = connection(&builder, &state, peer, stream, graceful.watcher());
            tokio::spawn(async move {
                if let Err(err) = connection.await {
                    tracing::debug!(peer = %remote, error = %err, "client connection ended with an error");
                }
                drop(open);
                drop(slot);
            });
            continue;
        }
        // The server config of the snapshot in service now: one pointer
        // load and an Arc clone.
        let tls_config = state.store.load().and_then(|snapshot| snapshot.tls.clone());
        let (builder, state, watcher) = (builder.clone(), state.clone(), graceful.watcher());
        let deadline = settings.header_read_timeout;
        tokio::spawn(async move {
            let Some(tls_config) = tls_config else {
                // No certificates in service: nothing to present.
                metrics::global().tls_handshake(HandshakeResult::NoCertificate);
                return;
            };
            let accept = tokio_rustls::TlsAcceptor::from(tls_config).accept(stream);
            let stream = match tokio::time::timeout(deadline, accept).await {
                Err(_elapsed) => {
                    metrics::global().tls_handshake(HandshakeResult::Timeout);
                    return;
                }
                Ok(Err(err)) => {
                    let result = crate::tls::classify_handshake_error(&err);
                    metrics::global().tls_handshake(result);
                    tracing::debug!(peer = %remote, error = %err, result = result.as_str(), "TLS handshake failed");
                    return;
                }
                Ok(Ok(stream)) => stream,
            };
            metrics::global().tls_handshake(HandshakeResult::Ok);
            let session = stream.get_ref().1;
            let peer = peer
                .with_tls(TlsInfo::of(session))
                .with_client_certificate(session.peer_certificates());
            let connection = connection(&builder, &state, peer, stream, watcher);
            if let Err(err) = connection.await {
                tracing::debug!(peer = %remote, error = %err, "client connection ended with an error");
            }
            drop(open);
            drop(slot);
        });
    }
    drop(listener);

    let open = graceful.count();
    tracing::info!(open_connections = open, deadline = ?settings.drain_timeout, "proxy stopped accepting; draining");
    match tokio::time::timeout(settings.drain_timeout, graceful.shutdown()).await {
        Ok(()) => tracing::info!("all client connections drained"),
        Err(_) => tracing::warn!("drain deadline reached; closing the remaining connections"),
    }
}

/// One client connection (plain, or the plaintext side of a TLS stream)
/// served by the proxy handler, with hyper's own error answers replaced
/// ([`ErrorAnswers`]), and watched for graceful shutdown; the future ends
/// with the connection.
fn connection<S>(
    builder: &auto::Builder<TokioExecutor>,
    state: &Arc<ProxyState>,
    peer: Peer,
    stream: S,
    watcher: Watcher,
) -> impl std::future::Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>>
       + Send
       + 'static
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(ErrorAnswers::new(
        SendTimeout::new(stream, state.limits.send_timeout),
        Recorder {
            access_log: state.access_log.clone(),
            request_metrics: state.request_metrics,
            client_ip: peer.ip,
        },
    ));
    let context = Arc::new(ConnectionContext {
        peer,
        state: state.clone(),
    });
    let service = service_fn(move |req| {
        let context = context.clone();
        async move { Ok::<_, Infallible>(observe::serve(&context.state, &context.peer, req).await) }
    });
    // With upgrades: a `101` from a WebSocket route hands the connection
    // over to its tunnel (see `crate::websocket`); nothing else changes.
    watcher.watch(
        builder
            .serve_connection_with_upgrades(io, service)
            .into_owned(),
    )
}

/// A minimal HTTP/1.1 503 for connections beyond the cap.
///
/// The request is never read, so after the answer the socket lingers: it
/// reads and discards what the client sent until the client closes (or a
/// second passes). Closing with unread bytes would make the kernel send a
/// reset, which can destroy the 503 before the client reads it.
async fn reject_overloaded(mut stream: TcpStream) {
    let body = crate::respond::refusal_body(&RefusalKind::Overloaded.into(), None);
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let answer_and_linger = async {
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
        let mut discard = [0u8; 1024];
        while let Ok(read) = stream.read(&mut discard).await {
            if read == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), answer_and_linger).await;
}

/// Binds a listener, naming what failed.
pub async fn bind(
    what: &'static str,
    addr: SocketAddr,
) -> Result<TcpListener, crate::error::DpError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| crate::error::DpError::Bind { what, addr, source })
}
