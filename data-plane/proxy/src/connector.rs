//! How a request reaches one target: the upstream connector seam.
//!
//! A service's `protocol` picks a [`Connector`] for each of its targets when
//! a snapshot compiles; the handler only ever calls [`Connector::send`].
//! `http` is the HTTP/1.1 keep-alive pool ([`crate::pool`]); `https` is the
//! same pool with each connection wrapped in TLS ([`crate::tls::upstream`]),
//! so TLS connections are pooled and reused exactly like plaintext ones and
//! the handshake is paid once per connection. `h2c` multiplexes requests
//! over one HTTP/2 connection per target and worker ([`crate::h2`]), with
//! no change to the handler. An enum rather than a
//! boxed trait object so the pool's fast path stays a direct, inlinable call
//! with no boxed future per request.
//!
//! [`PROTOCOLS`] is the one list of what this data plane serves; the control
//! plane validates `protocol` against it.

use std::sync::Arc;

use http::uri::Authority;
use http::{Request, Response};
use tollgate_plugin_api::RefusalKind;
use tollgate_shared::model::Protocol;

use crate::body::UpstreamBody;
use crate::h2::H2Connections;
use crate::pool::{PooledBody, SendFailure, TargetConnections, TargetTls};
use crate::tls::upstream::UpstreamTlsClient;
use crate::upstream::ClientCache;

/// The upstream protocols this data plane implements, by config name.
pub const PROTOCOLS: [&str; 4] = ["http", "https", "h2c", "h2"];

/// How requests reach one target.
#[derive(Debug, Clone)]
pub enum Connector {
    /// Plain HTTP/1.1 over pooled keep-alive connections.
    Http1(Arc<TargetConnections>),
    /// HTTP/1.1 over pooled keep-alive TLS connections.
    Https1(Arc<TargetConnections>),
    /// HTTP/2, multiplexed ([`crate::h2`]): with prior knowledge over
    /// plaintext (`h2c`), or over TLS with ALPN `h2` (`h2`).
    Http2(Arc<H2Connections>),
}

impl Connector {
    /// The connector for `protocol`; a protocol this data plane does not
    /// implement is an error (the snapshot is NACKed, never served wrong).
    pub fn build(
        protocol: Protocol,
        clients: &ClientCache,
        authority: &Authority,
        connect_timeout_ms: u64,
        tls: Option<&Arc<UpstreamTlsClient>>,
    ) -> Result<Connector, String> {
        match protocol {
            Protocol::Http => Ok(Connector::Http1(
                clients.target(authority, connect_timeout_ms),
            )),
            Protocol::Https => Ok(Connector::Https1(clients.target_with_tls(
                authority,
                connect_timeout_ms,
                Some(target_tls(protocol, authority, tls)?),
            ))),
            Protocol::H2c => Ok(Connector::Http2(clients.h2_target(
                authority,
                connect_timeout_ms,
                None,
            ))),
            Protocol::H2 => Ok(Connector::Http2(clients.h2_target(
                authority,
                connect_timeout_ms,
                Some(target_tls(protocol, authority, tls)?),
            ))),
        }
    }

    /// Sends a request (origin-form URI, `Host` set) and waits for the
    /// response head.
    #[inline]
    pub async fn send(
        &self,
        request: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, RefusalKind> {
        match self {
            Connector::Http1(connections) | Connector::Https1(connections) => {
                connections.send(request).await
            }
            Connector::Http2(connections) => Box::pin(connections.send(request)).await,
        }
    }
}

/// The TLS settings of one target of a TLS protocol: the service's client
/// and the name verified for this target.
fn target_tls(
    protocol: Protocol,
    authority: &Authority,
    tls: Option<&Arc<UpstreamTlsClient>>,
) -> Result<TargetTls, String> {
    let name = protocol.as_str();
    let client = tls.ok_or_else(|| format!("{name}: no TLS client was built for this service"))?;
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let server_name = client
        .name_for(host)
        .map_err(|m| format!("{name}: {m} (set tls.sni)"))?;
    Ok(TargetTls {
        client: Arc::clone(client),
        server_name,
    })
}

impl Connector {
    /// Sends an upgrade request on a connection of its own (see
    /// [`crate::websocket`]); HTTP/2 upstreams carry no HTTP/1.1 upgrade
    /// (the control plane refuses `websocket` on such a service).
    pub async fn send_upgrade(
        &self,
        request: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, RefusalKind> {
        match self {
            Connector::Http1(connections) | Connector::Https1(connections) => {
                connections.send_upgrade(request).await
            }
            Connector::Http2(_) => Err(RefusalKind::UpstreamUnavailable),
        }
    }

    /// Like [`Connector::send`], but a request that was never written (no
    /// connection could be opened) comes back in the error, for a retry on
    /// another target.
    #[inline]
    pub async fn send_or_return(
        &self,
        request: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, SendFailure> {
        match self {
            Connector::Http1(connections) | Connector::Https1(connections) => {
                connections.send_or_return(request).await
            }
            // HTTP/2 re-sends a never-written request once on a new
            // connection itself; what still fails is not handed back.
            Connector::Http2(connections) => Box::pin(connections.send(request))
                .await
                .map_err(|kind| SendFailure { kind, unsent: None }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The control plane refuses what `Protocol::is_served` says no data
    /// plane serves: this keeps the two lists one.
    #[test]
    fn the_control_planes_list_is_exactly_what_connects() {
        let clients = ClientCache::default();
        let authority: Authority = "127.0.0.1:1".parse().expect("authority");
        for (name, protocol) in Protocol::ALL {
            let service = tollgate_shared::model::Service {
                tags: Vec::new(),
                name: "s".into(),
                upstream: tollgate_shared::model::Upstream {
                    targets: Vec::new(),
                    load_balancing: Default::default(),
                    hash_on: None,
                    health_checks: Default::default(),
                },
                timeouts: Default::default(),
                protocol,
                host_header: None,
                plugins: Vec::new(),
                tls: None,
            };
            let tls = crate::tls::upstream::client_for(&service, &Default::default())
                .expect("tls client");
            let built = Connector::build(protocol, &clients, &authority, 1_000, tls.as_ref());
            assert_eq!(built.is_ok(), protocol.is_served(), "{name}");
            assert_eq!(PROTOCOLS.contains(&name), protocol.is_served(), "{name}");
        }
    }
}
