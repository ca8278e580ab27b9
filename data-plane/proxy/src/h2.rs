//! HTTP/2 upstreams: `protocol: h2c` (plaintext, prior knowledge) and `h2`
//! (TLS with ALPN `h2`, the service's `tls` settings): what gRPC services
//! speak.
//!
//! HTTP/2 multiplexes, so a target needs no pool of idle connections: each
//! target keeps one connection per worker thread ([`crate::pool::shard_count`]
//! of them, so "a few" per target), and every request of that worker opens a
//! stream on it. Keeping a worker on its own connection means no cross-thread
//! wake-ups (the connection's I/O task runs on the worker that opened it),
//! the same reasoning as the HTTP/1.1 pool's shards. Requests arriving while
//! a worker's connection is being opened wait for that one connect (a burst
//! opens one connection, not one each). A connection that closed
//! (GOAWAY, reset, idle close by the upstream) is replaced on the next
//! request; a request that was never written because its connection was
//! already going away is sent once more on a new one. Streams beyond the
//! upstream's `SETTINGS_MAX_CONCURRENT_STREAMS` wait for a free one.
//!
//! Requests go out in HTTP/2 form: `:scheme http` (`https` over TLS), `:authority` from the
//! `Host` the handler chose (client's, `host_header`, or the target), and
//! `te: trailers` (the only TE HTTP/2 allows, and what gRPC servers expect).
//! Bodies and trailers are streamed both ways frame by frame, so client,
//! server and bidirectional streaming calls pass through unchanged.
//!
//! Connections are kept across snapshot swaps in [`crate::upstream::ClientCache`],
//! like HTTP/1.1 ones.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt, Shared};
use http::header::{HeaderValue, HOST, TE};
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri, Version};
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::body::UpstreamBody;
use crate::pool::{shard_count, thread_shard, PooledBody, TargetConnections};
use crate::upstream::{classify, DisplayChain};
use tollgate_plugin_api::RefusalKind;

type Sender = SendRequest<UpstreamBody>;

/// HTTP/2 keepalive pings on idle upstream connections, to notice dead peers.
const PING_INTERVAL: Duration = Duration::from_secs(30);
const PING_TIMEOUT: Duration = Duration::from_secs(10);

/// The HTTP/2 connections to one upstream `host:port`.
pub struct H2Connections {
    /// Opens the TCP connections (address, resolution, connect timeout, TLS).
    tcp: Arc<TargetConnections>,
    /// One connection per worker thread, opened on first use.
    slots: Box<[Mutex<Slot>]>,
}

/// A connect in progress, shared by every request that needs it.
type Connecting = Shared<BoxFuture<'static, Result<Sender, RefusalKind>>>;

/// One worker's connection to the target.
#[derive(Default)]
enum Slot {
    #[default]
    Empty,
    /// Being opened: requests arriving meanwhile wait for the same connect
    /// instead of each opening one (a burst at start or after a GOAWAY).
    Connecting(Connecting),
    Ready(Sender),
}

impl fmt::Debug for H2Connections {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("H2Connections")
            .field("address", &self.tcp.address())
            .finish_non_exhaustive()
    }
}

impl H2Connections {
    pub fn new(tcp: Arc<TargetConnections>) -> Self {
        H2Connections {
            tcp,
            slots: (0..shard_count()).map(|_| Mutex::default()).collect(),
        }
    }

    fn slot(&self) -> MutexGuard<'_, Slot> {
        self.slots[thread_shard() % self.slots.len()]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// This worker's open connection, or the one being opened for it, or a
    /// new one.
    async fn connection(&self) -> Result<Sender, RefusalKind> {
        let connecting = {
            let mut slot = self.slot();
            match &*slot {
                Slot::Ready(sender) if !sender.is_closed() => return Ok(sender.clone()),
                Slot::Connecting(connecting) => connecting.clone(),
                Slot::Ready(_) | Slot::Empty => {
                    let connecting = open(Arc::clone(&self.tcp)).boxed().shared();
                    *slot = Slot::Connecting(connecting.clone());
                    connecting
                }
            }
        };
        let result = connecting.clone().await;
        let mut slot = self.slot();
        if matches!(&*slot, Slot::Connecting(current) if current.ptr_eq(&connecting)) {
            *slot = match &result {
                Ok(sender) => Slot::Ready(sender.clone()),
                // The next request tries again.
                Err(_) => Slot::Empty,
            };
        }
        result
    }

    /// Forgets this worker's connection (it is going away); streams still
    /// open on it finish.
    fn forget(&self) {
        let mut slot = self.slot();
        if matches!(&*slot, Slot::Ready(_)) {
            *slot = Slot::Empty;
        }
    }

    /// Sends `request` (origin-form URI, `Host` set) as an HTTP/2 stream and
    /// waits for the response head; the caller bounds the wait.
    pub async fn send(
        &self,
        mut request: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, RefusalKind> {
        let scheme = if self.tcp.tls().is_some() {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        };
        to_h2_form(&mut request, self.tcp.address(), scheme)?;
        let mut sender = self.connection().await?;
        let result = match ready(&mut sender).await {
            Ok(()) => sender.try_send_request(request).await,
            // Gone between the check and now: never written, send anew.
            Err(_) => Box::pin(self.send_on_new(request)).await?,
        };
        let result = match result {
            Ok(response) => Ok(response),
            Err(mut failed) => match failed.take_message() {
                Some(request) => {
                    tracing::debug!(upstream = %self.tcp.address(), error = %DisplayChain(failed.error()), "upstream HTTP/2 connection was going away; sending on a new one");
                    Box::pin(self.send_on_new(request))
                        .await?
                        .map_err(|failed| failed.into_error())
                }
                None => Err(failed.into_error()),
            },
        };
        match result {
            Ok(response) => Ok(response.map(PooledBody::unpooled)),
            Err(err) => {
                let kind = classify(&err);
                tracing::debug!(upstream = %self.tcp.address(), error = %DisplayChain(&err), ?kind, "upstream HTTP/2 request failed");
                Err(kind)
            }
        }
    }

    /// Sends a request that was never written on a new connection.
    async fn send_on_new(
        &self,
        request: Request<UpstreamBody>,
    ) -> Result<
        Result<
            Response<hyper::body::Incoming>,
            hyper::client::conn::TrySendError<Request<UpstreamBody>>,
        >,
        RefusalKind,
    > {
        self.forget();
        let mut sender = self.connection().await?;
        if ready(&mut sender).await.is_err() {
            return Err(RefusalKind::UpstreamUnavailable);
        }
        Ok(sender.try_send_request(request).await)
    }
}

/// Opens a connection to the target (TCP, TLS with ALPN `h2` when the
/// service has TLS, the HTTP/2 handshake) and spawns its I/O task on the
/// worker that polls this first.
async fn open(tcp: Arc<TargetConnections>) -> Result<Sender, RefusalKind> {
    let stream = tcp.tcp().await?;
    match tcp.tls() {
        None => handshake(&tcp, stream).await,
        Some(tls) => {
            let stream = tcp.tls_handshake(tls, stream).await?;
            if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
                tracing::warn!(upstream = %tcp.address(), "upstream did not agree to HTTP/2 (ALPN h2) over TLS");
                return Err(RefusalKind::UpstreamUnavailable);
            }
            handshake(&tcp, stream).await
        }
    }
}

/// The HTTP/2 handshake on an open stream (plain or TLS).
async fn handshake<S>(tcp: &TargetConnections, stream: S) -> Result<Sender, RefusalKind>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(PING_INTERVAL)
        .keep_alive_timeout(PING_TIMEOUT)
        .initial_stream_window_size(1024 * 1024)
        .initial_connection_window_size(4 * 1024 * 1024)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|err| {
            tracing::debug!(upstream = %tcp.address(), error = %DisplayChain(&err), "upstream HTTP/2 handshake failed");
            RefusalKind::UpstreamUnavailable
        })?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(error = %DisplayChain(&err), "upstream HTTP/2 connection ended with an error");
        }
    });
    Ok(sender)
}

/// Waits until the connection can open another stream.
async fn ready(sender: &mut Sender) -> hyper::Result<()> {
    futures::future::poll_fn(|cx| sender.poll_ready(cx)).await
}

/// The request in HTTP/2 form: absolute URI from the `Host` chosen for it
/// (which `:authority` replaces), `te: trailers`.
fn to_h2_form(
    request: &mut Request<UpstreamBody>,
    target: &str,
    scheme: Scheme,
) -> Result<(), RefusalKind> {
    let authority = match request.headers_mut().remove(HOST) {
        Some(host) => Authority::try_from(host.as_bytes()).ok(),
        None => None,
    };
    let authority = match authority {
        Some(authority) => authority,
        None => Authority::try_from(target).map_err(|_| RefusalKind::BadRequest)?,
    };
    let mut parts = std::mem::take(request.uri_mut()).into_parts();
    parts.scheme = Some(scheme);
    parts.authority = Some(authority);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    *request.uri_mut() = Uri::from_parts(parts).map_err(|_| RefusalKind::BadRequest)?;
    *request.version_mut() = Version::HTTP_2;
    request
        .headers_mut()
        .insert(TE, HeaderValue::from_static("trailers"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_take_http2_form() {
        let mut request = Request::builder()
            .uri("/pkg.Service/Method?x=1")
            .header(HOST, "api.example.com:8080")
            .body(UpstreamBody::Empty)
            .expect("request");
        to_h2_form(&mut request, "10.0.0.1:50051", Scheme::HTTP).expect("h2 form");
        assert_eq!(
            request.uri().to_string(),
            "http://api.example.com:8080/pkg.Service/Method?x=1"
        );
        assert_eq!(request.version(), Version::HTTP_2);
        assert!(request.headers().get(HOST).is_none());
        assert_eq!(request.headers()[TE], "trailers");

        let mut no_host = Request::builder()
            .uri("/m")
            .body(UpstreamBody::Empty)
            .expect("request");
        to_h2_form(&mut no_host, "10.0.0.1:50051", Scheme::HTTPS).expect("h2 form");
        assert_eq!(no_host.uri().to_string(), "https://10.0.0.1:50051/m");
    }

    /// An h2c upstream that answers after 50 ms with a body and a trailer;
    /// counts its connections.
    async fn upstream() -> (Authority, Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
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
                    let service = hyper::service::service_fn(
                        |request: Request<hyper::body::Incoming>| async move {
                            let te = request.headers().get(TE).cloned();
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            let mut trailers = http::HeaderMap::new();
                            trailers.insert("grpc-status", HeaderValue::from_static("0"));
                            let frames = vec![
                                Ok::<_, std::convert::Infallible>(http_body::Frame::data(
                                    bytes::Bytes::from(request.uri().path().to_string()),
                                )),
                                Ok(http_body::Frame::trailers(trailers)),
                            ];
                            let body =
                                http_body_util::StreamBody::new(futures::stream::iter(frames));
                            let mut response = Response::new(body);
                            if let Some(te) = te {
                                response.headers_mut().insert("x-te", te);
                            }
                            Ok::<_, std::convert::Infallible>(response)
                        },
                    );
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
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

    #[tokio::test]
    async fn concurrent_requests_share_one_connection_and_trailers_come_back() {
        use http_body_util::BodyExt;
        use std::sync::atomic::Ordering;
        let (authority, accepted) = upstream().await;
        let target = Arc::new(H2Connections::new(Arc::new(TargetConnections::new(
            &authority,
            Duration::from_secs(1),
        ))));
        let calls = (0..20).map(|i| {
            let target = Arc::clone(&target);
            async move {
                let request = Request::builder()
                    .uri(format!("/call/{i}"))
                    .body(UpstreamBody::Empty)
                    .unwrap_or_else(|err| panic!("request: {err}"));
                let response = target
                    .send(request)
                    .await
                    .unwrap_or_else(|err| panic!("send: {err:?}"));
                assert_eq!(response.headers()["x-te"], "trailers");
                let collected = response
                    .into_body()
                    .collect()
                    .await
                    .unwrap_or_else(|err| panic!("body: {err}"));
                let trailers = collected.trailers().cloned();
                assert_eq!(
                    trailers.as_ref().map(|t| t["grpc-status"].clone()),
                    Some(HeaderValue::from_static("0"))
                );
                assert_eq!(collected.to_bytes(), format!("/call/{i}"));
            }
        });
        let started = std::time::Instant::now();
        futures::future::join_all(calls).await;
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "multiplexed on one connection"
        );
        // 20 calls of 50 ms each, concurrent rather than in turn.
        assert!(
            started.elapsed() < Duration::from_millis(900),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_refused_connection_is_unavailable() {
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|err| panic!("bind: {err}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|err| panic!("addr: {err}"));
        drop(listener);
        let authority: Authority = addr
            .to_string()
            .parse()
            .unwrap_or_else(|err| panic!("authority: {err}"));
        let target = H2Connections::new(Arc::new(TargetConnections::new(
            &authority,
            Duration::from_secs(1),
        )));
        let request = Request::new(UpstreamBody::Empty);
        assert_eq!(
            target.send(request).await.err(),
            Some(RefusalKind::UpstreamUnavailable)
        );
    }
}
