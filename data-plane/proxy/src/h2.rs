//! HTTP/2 upstreams: `protocol: h2c` (plaintext, prior knowledge) and `h2`
//! (TLS with ALPN `h2`, the service's `tls` settings): what gRPC services
//! speak.
//!
//! HTTP/2 multiplexes, so a target needs no pool of idle connections: each
//! target keeps one connection per worker thread ([`crate::pool::shard_count`]
//! of them, so "a few" per target), and every request of that worker opens a
//! stream on it. Keeping a worker on its own connection means no cross-thread
//! wake-ups (the connection's I/O task runs on the worker that opened it),
//! the same reasoning as the HTTP/1.1 pool's shards. A connection that closed
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
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    /// Opens the TCP connections (address, resolution, connect timeout).
    tcp: Arc<TargetConnections>,
    /// One connection per worker thread, opened on first use.
    slots: Box<[Mutex<Option<Sender>>]>,
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
            slots: (0..shard_count()).map(|_| Mutex::new(None)).collect(),
        }
    }

    fn slot(&self) -> &Mutex<Option<Sender>> {
        &self.slots[thread_shard() % self.slots.len()]
    }

    /// This worker's connection, if it is open.
    fn current(&self) -> Option<Sender> {
        let slot = self.slot().lock().unwrap_or_else(|p| p.into_inner());
        slot.as_ref().filter(|s| !s.is_closed()).cloned()
    }

    /// A new connection for this worker (kept unless another request of the
    /// worker got one in the meantime, which is then used instead).
    async fn reconnect(&self) -> Result<Sender, RefusalKind> {
        let stream = self.tcp.tcp().await?;
        let sender = match self.tcp.tls() {
            None => self.handshake(stream).await?,
            Some(tls) => {
                let stream = self.tcp.tls_handshake(tls, stream).await?;
                if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
                    tracing::warn!(upstream = %self.tcp.address(), "upstream did not agree to HTTP/2 (ALPN h2) over TLS");
                    return Err(RefusalKind::UpstreamUnavailable);
                }
                self.handshake(stream).await?
            }
        };
        let mut slot = self.slot().lock().unwrap_or_else(|p| p.into_inner());
        match slot.as_ref().filter(|s| !s.is_closed()) {
            Some(existing) => Ok(existing.clone()),
            None => {
                *slot = Some(sender.clone());
                Ok(sender)
            }
        }
    }

    /// The HTTP/2 handshake on an open stream (plain or TLS); spawns the
    /// connection's I/O task on this worker.
    async fn handshake<S>(&self, stream: S) -> Result<Sender, RefusalKind>
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
                tracing::debug!(upstream = %self.tcp.address(), error = %DisplayChain(&err), "upstream HTTP/2 handshake failed");
                RefusalKind::UpstreamUnavailable
            })?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %DisplayChain(&err), "upstream HTTP/2 connection ended with an error");
            }
        });
        Ok(sender)
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
        let mut sender = match self.current() {
            Some(sender) => sender,
            None => self.reconnect().await?,
        };
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
        let mut sender = self.reconnect().await?;
        if ready(&mut sender).await.is_err() {
            return Err(RefusalKind::UpstreamUnavailable);
        }
        Ok(sender.try_send_request(request).await)
    }
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
}
