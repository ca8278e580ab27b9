//! TLS on the config-stream listener and on the admin listener.
//!
//! [`TlsIncoming`] takes the guarded TCP connections of
//! [`crate::listener::Incoming`] (connection cap, idle timeout) and runs each
//! TLS handshake as its own future, all of them concurrently, each bounded by
//! the listener's handshake timeout: a slow or silent client holds up no one.
//! A finished handshake yields a [`TlsConn`] whose [`ConnInfo`] carries the
//! node id of the data-plane certificate the peer presented, if any (the
//! verifier already checked it chains to the cluster CA, is in its validity
//! period and is meant for client auth; a certificate that fails any of those
//! fails the handshake); on the admin listener, also the operator that
//! certificate names (`crate::pki::operators`), which the admin gate checks.
//! Handshake failures are counted as
//! `tollgate_cp_stream_refusals_total{reason="tls_handshake"}` (or
//! `tollgate_cp_admin_refusals_total` on the admin listener) and logged at
//! most once a second.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt as _};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::Stream;
use tonic::transport::server::Connected;

use crate::listener::{ConnInfo, GuardedStream, Incoming, PeerOperator};
use crate::metrics::CpMetrics;

type Handshake = Pin<Box<dyn Future<Output = Option<TlsConn>> + Send>>;

/// The TLS connections of one listener, as tonic's incoming stream.
pub struct TlsIncoming {
    inner: Incoming,
    acceptor: TlsAcceptor,
    timeout: Duration,
    handshakes: FuturesUnordered<Handshake>,
    metrics: Arc<CpMetrics>,
    last_warning: Arc<AtomicI64>,
    admin: bool,
}

impl TlsIncoming {
    pub fn new(
        inner: Incoming,
        config: Arc<rustls::ServerConfig>,
        timeout: Duration,
        metrics: Arc<CpMetrics>,
    ) -> TlsIncoming {
        TlsIncoming {
            inner,
            acceptor: TlsAcceptor::from(config),
            timeout,
            handshakes: FuturesUnordered::new(),
            metrics,
            last_warning: Arc::default(),
            admin: false,
        }
    }

    /// The same on the admin listener: refusals counted as admin refusals,
    /// and the operator a client certificate names read at the handshake.
    pub fn admin(mut self) -> TlsIncoming {
        self.admin = true;
        self
    }

    fn handshake(&self, stream: GuardedStream) -> Handshake {
        let acceptor = self.acceptor.clone();
        let timeout = self.timeout;
        let metrics = self.metrics.clone();
        let last_warning = self.last_warning.clone();
        let admin = self.admin;
        Box::pin(async move {
            let mut info = stream.connect_info();
            let failed = |reason: String| {
                let listener = if admin {
                    metrics.admin_refused("tls_handshake");
                    "admin API"
                } else {
                    metrics.stream_refused("tls_handshake");
                    "config stream"
                };
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0));
                if last_warning.swap(now, Ordering::Relaxed) != now {
                    tracing::warn!(peer = ?info.remote_addr, %reason, "{listener} TLS handshake failed");
                }
            };
            let tls = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => {
                    failed(error.to_string());
                    return None;
                }
                Err(_) => {
                    failed(format!("no handshake within {timeout:?}"));
                    return None;
                }
            };
            let leaf = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first());
            info.peer_node = leaf
                .and_then(|leaf| tollgate_shared::cluster_pki::node_id_of(leaf.as_ref()))
                .map(Arc::from);
            if admin {
                info.peer_operator = leaf
                    .map(|leaf| PeerOperator(Arc::new(super::operators::identify(leaf.as_ref()))));
            }
            Some(TlsConn { inner: tls, info })
        })
    }
}

impl Stream for TlsIncoming {
    type Item = Result<TlsConn, io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        while let Poll::Ready(Some(accepted)) = Pin::new(&mut this.inner).poll_next(cx) {
            // `Incoming` never yields an error and never ends.
            if let Ok(stream) = accepted {
                let handshake = this.handshake(stream);
                this.handshakes.push(handshake);
            }
        }
        while let Poll::Ready(Some(done)) = this.handshakes.poll_next_unpin(cx) {
            if let Some(conn) = done {
                return Poll::Ready(Some(Ok(conn)));
            }
        }
        Poll::Pending
    }
}

/// One TLS connection with what its handshake proved.
pub struct TlsConn {
    inner: TlsStream<GuardedStream>,
    info: ConnInfo,
}

impl Connected for TlsConn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
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
