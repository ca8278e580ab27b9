//! WebSocket upgrades on routes that opt in (`websocket: true`).
//!
//! Everywhere else `Upgrade` is a hop-by-hop header like any other and is
//! dropped ([`crate::forward::remove_hop_by_hop`]), so `Upgrade: h2c` or a
//! WebSocket upgrade on another route never reaches an upstream as one. On an
//! opted-in route, an HTTP/1.1 `GET` carrying `Connection: upgrade` and
//! `Upgrade: websocket` (RFC 6455 §4.1) goes through the route's plugins like
//! any request (auth, ACL and rate limits decide on the upgrade request),
//! then:
//!
//! 1. it is sent upstream on a connection of its own (never a pooled one: an
//!    upgraded connection is a tunnel, never reusable for requests), with
//!    `Connection: upgrade` and `Upgrade: websocket` put back;
//! 2. only a `101 Switching Protocols` answer opens a tunnel: any other answer
//!    is relayed as an ordinary response and the connection closes after it;
//! 3. the 101 is relayed with its `Upgrade`/`Connection` headers, and once
//!    hyper has handed over both connections, [`Tunnel::run`] copies bytes
//!    both ways until either side closes or neither sent anything for the
//!    route's idle timeout (`websocket_idle_timeout_ms`).
//!
//! The tunnel is run by [`crate::observe`], which records it when it ends:
//! the access-log line carries `tunnel_ms` and the tunnel's bytes in
//! `bytes_in`/`bytes_out`; `tollgate_websocket_upgrades_total` counts
//! upgrades and `tollgate_websocket_tunnels` the tunnels open, by route.
//! Tunnels are not waited for by a graceful shutdown (their HTTP exchange is
//! over); they end with the process.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{HeaderValue, CONNECTION, UPGRADE};
use http::{request, Method, Request, Response, StatusCode, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::body::{ResponseBody, UpstreamBody};
use crate::upstream::{UpstreamPool, UpstreamTarget};
use tollgate_plugin_api::RefusalKind;

const UPGRADE_VALUE: HeaderValue = HeaderValue::from_static("upgrade");
const WEBSOCKET: HeaderValue = HeaderValue::from_static("websocket");

/// A client's WebSocket upgrade request, accepted for forwarding.
#[derive(Debug)]
pub struct Upgrade {
    client: OnUpgrade,
    idle_timeout: Duration,
}

impl Upgrade {
    /// The upgrade of `parts`, if it is a WebSocket opening handshake
    /// (HTTP/1.1 `GET`, `Connection: upgrade`, `Upgrade: websocket`); takes
    /// hyper's handle to the client connection out of the request. Called
    /// only on routes with `websocket` on, before hop-by-hop headers go.
    pub fn detect(parts: &mut request::Parts, idle_timeout: Duration) -> Option<Upgrade> {
        if !is_websocket_opening(parts) {
            return None;
        }
        let client = parts.extensions.remove::<OnUpgrade>()?;
        Some(Upgrade {
            client,
            idle_timeout,
        })
    }
}

/// An HTTP/1.1 `GET` with `Connection: upgrade` and `Upgrade: websocket`
/// (tokens compared without case, in comma-separated lists).
fn is_websocket_opening(parts: &request::Parts) -> bool {
    if parts.version != Version::HTTP_11 || parts.method != Method::GET {
        return false;
    }
    let has_token = |name, wanted: &str| {
        parts
            .headers
            .get_all(name)
            .iter()
            .filter_map(|value: &HeaderValue| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case(wanted))
    };
    has_token(CONNECTION, "upgrade") && has_token(UPGRADE, "websocket")
}

/// What the handler hands to [`crate::observe`] once the upstream said 101.
#[derive(Debug)]
pub struct Tunnel {
    client: OnUpgrade,
    upstream: OnUpgrade,
    idle_timeout: Duration,
}

/// How a tunnel went, for the access log.
#[derive(Debug, Clone, Copy, Default)]
pub struct TunnelOutcome {
    pub open_for: Duration,
    /// Bytes from the client (to the upstream).
    pub from_client: u64,
    /// Bytes to the client (from the upstream).
    pub to_client: u64,
    pub idle_timeout: bool,
}

/// Sends the upgrade request (hop-by-hop headers already gone) to `target`
/// on a connection of its own and answers: a 101 with the tunnel to open,
/// or the upstream's other answer as it is.
pub async fn forward(
    pool: &UpstreamPool,
    target: &UpstreamTarget,
    mut request: Request<UpstreamBody>,
    upgrade: Upgrade,
    timeout: Duration,
) -> Result<(Response<ResponseBody>, Option<Tunnel>), RefusalKind> {
    let headers = request.headers_mut();
    headers.insert(CONNECTION, UPGRADE_VALUE);
    headers.insert(UPGRADE, WEBSOCKET);
    let mut response = pool.send_upgrade(target, request, timeout).await?;
    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    let upstream = switching.then(|| hyper::upgrade::on(&mut response));
    let (mut parts, body) = response.into_parts();
    crate::forward::remove_hop_by_hop(&mut parts.headers);
    let Some(upstream) = upstream else {
        return Ok((
            Response::from_parts(
                parts,
                ResponseBody::upstream(body).map_err(|err| crate::upstream::classify(&err))?,
            ),
            None,
        ));
    };
    parts.headers.insert(CONNECTION, UPGRADE_VALUE);
    parts.headers.insert(UPGRADE, WEBSOCKET);
    Ok((
        Response::from_parts(parts, ResponseBody::Empty),
        Some(Tunnel {
            client: upgrade.client,
            upstream,
            idle_timeout: upgrade.idle_timeout,
        }),
    ))
}

impl Tunnel {
    /// Waits for both connections to be handed over, then copies bytes both
    /// ways until one side closes, an error, or the idle timeout.
    pub async fn run(self) -> TunnelOutcome {
        let started = Instant::now();
        let (client, upstream) = match tokio::try_join!(self.client, self.upstream) {
            Ok(both) => both,
            Err(err) => {
                tracing::debug!(error = %err, "websocket upgrade was not completed");
                return TunnelOutcome::default();
            }
        };
        let activity = Arc::new(Activity::new(started));
        let mut client = Counted::new(TokioIo::new(client), Arc::clone(&activity));
        let mut upstream = Counted::new(TokioIo::new(upstream), Arc::clone(&activity));
        let mut idle_timeout = false;
        {
            let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
            tokio::pin!(copy);
            loop {
                let deadline = activity.last() + self.idle_timeout;
                tokio::select! {
                    result = &mut copy => {
                        if let Err(err) = result {
                            tracing::debug!(error = %err, "websocket tunnel ended with an error");
                        }
                        break;
                    }
                    () = tokio::time::sleep_until(deadline) => {
                        if activity.last() + self.idle_timeout <= Instant::now() {
                            idle_timeout = true;
                            break;
                        }
                    }
                }
            }
        }
        TunnelOutcome {
            open_for: started.elapsed(),
            from_client: client.read,
            to_client: upstream.read,
            idle_timeout,
        }
    }
}

/// When either side of a tunnel last sent something, in milliseconds since
/// the tunnel opened (shared by both directions' readers).
#[derive(Debug)]
struct Activity {
    started: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new(started: Instant) -> Self {
        Activity {
            started,
            last_ms: AtomicU64::new(0),
        }
    }

    fn mark(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.started + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// One side of a tunnel: counts what is read from it and marks activity.
struct Counted<T> {
    inner: T,
    read: u64,
    activity: Arc<Activity>,
}

impl<T> Counted<T> {
    fn new(inner: T, activity: Arc<Activity>) -> Self {
        Counted {
            inner,
            read: 0,
            activity,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        let got = buf.filled().len().saturating_sub(before);
        if got > 0 {
            this.read = this.read.saturating_add(got as u64);
            this.activity.mark();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(version: Version, method: Method, headers: &[(&str, &str)]) -> request::Parts {
        let mut builder = Request::builder()
            .version(version)
            .method(method)
            .uri("/ws");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).expect("request").into_parts().0
    }

    #[test]
    fn only_websocket_openings_are_upgrades() {
        let ws = [
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
        ];
        assert!(is_websocket_opening(&parts(
            Version::HTTP_11,
            Method::GET,
            &ws
        )));
        for (version, method, headers) in [
            (Version::HTTP_11, Method::POST, &ws[..]),
            (Version::HTTP_10, Method::GET, &ws[..]),
            (Version::HTTP_2, Method::GET, &ws[..]),
            (
                Version::HTTP_11,
                Method::GET,
                &[("connection", "upgrade"), ("upgrade", "h2c")][..],
            ),
            (
                Version::HTTP_11,
                Method::GET,
                &[("upgrade", "websocket")][..],
            ),
            (
                Version::HTTP_11,
                Method::GET,
                &[("connection", "upgrade")][..],
            ),
        ] {
            assert!(
                !is_websocket_opening(&parts(version, method.clone(), headers)),
                "{version:?} {method} {headers:?}"
            );
        }
        // Without hyper's upgrade handle (a connection served without
        // upgrades) there is nothing to tunnel.
        let mut no_handle = parts(Version::HTTP_11, Method::GET, &ws);
        assert!(Upgrade::detect(&mut no_handle, Duration::from_secs(1)).is_none());
    }
}
