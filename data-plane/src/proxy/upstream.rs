//! Upstream pools: where a service's requests go, over which connections.
//!
//! Connections are pooled keep-alive HTTP/1.1 connections held by hyper-util's
//! legacy `Client` (pooled per `host:port`), with `TCP_NODELAY` and the
//! service's connect timeout. Clients are shared by every service with the
//! same connect timeout and survive snapshot swaps ([`ClientCache`]), so a
//! config change does not drop warm connections. Each client is sharded: one
//! pool per shard, a shard per CPU, and a thread always uses the same shard,
//! so the pool's lock is not contended across worker threads (the way nginx
//! keeps one upstream pool per worker). A service's whole
//! [`UpstreamPool`] (targets + round-robin position) is reused by the next
//! snapshot when its targets, weights, balancing and timeouts did not change.
//!
//! Failures map onto the proxy's error table: connect/request timeout -> 504,
//! refused/reset -> 502, malformed response -> 502. A response with both
//! `Content-Length` and `Transfer-Encoding`, or with conflicting
//! `Content-Length`s, is never forwarded and its connection is poisoned so
//! the pool never reuses it (hyper's client does not reject the former).

use std::collections::HashMap;
use std::error::Error as StdError;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::uri::Authority;
use http::{HeaderMap, Request, Response};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::{capture_connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tollgate_shared::model::{LoadBalancing, Protocol, Service};

use crate::error::ProxyError;
use crate::lb::RoundRobin;
use crate::proxy::body::{BodyError, UpstreamBody};

pub type HttpClient = Client<HttpConnector, UpstreamBody>;

/// One pool per shard; see the module doc.
#[derive(Debug, Clone)]
pub struct ShardedClient {
    shards: Arc<[HttpClient]>,
}

static NEXT_SHARD: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

thread_local! {
    /// This thread's shard number, assigned on first use.
    static THREAD_SHARD: usize =
        NEXT_SHARD.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

impl ShardedClient {
    fn new(connect_timeout: Duration) -> ShardedClient {
        let count = std::thread::available_parallelism().map_or(1, |n| n.get());
        ShardedClient {
            shards: (0..count).map(|_| build_client(connect_timeout)).collect(),
        }
    }

    /// The calling thread's client.
    #[inline]
    fn local(&self) -> &HttpClient {
        let shard = THREAD_SHARD.with(|shard| *shard) % self.shards.len().max(1);
        &self.shards[shard]
    }
}

/// How long an idle pooled upstream connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per upstream `host:port`.
const POOL_MAX_IDLE_PER_HOST: usize = 1024;
/// TCP keepalive probes on upstream connections, to notice dead peers.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// Upstream clients by connect timeout; lives as long as the data plane.
#[derive(Debug, Default)]
pub struct ClientCache {
    clients: Mutex<HashMap<u64, ShardedClient>>,
}

impl ClientCache {
    /// The client for this connect timeout, created on first use. Called when
    /// a snapshot compiles, never per request.
    pub fn client(&self, connect_timeout_ms: u64) -> ShardedClient {
        let mut clients = match self.clients.lock() {
            Ok(clients) => clients,
            Err(poisoned) => poisoned.into_inner(),
        };
        clients
            .entry(connect_timeout_ms)
            .or_insert_with(|| ShardedClient::new(Duration::from_millis(connect_timeout_ms)))
            .clone()
    }
}

fn build_client(connect_timeout: Duration) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_keepalive(Some(TCP_KEEPALIVE));
    connector.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(connector)
}

/// One upstream instance, parsed once.
#[derive(Debug)]
pub struct UpstreamTarget {
    pub address: String,
    pub authority: Authority,
    pub weight: u32,
}

/// What decides whether a pool can be carried over to the next snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolKey {
    targets: Vec<(String, u32)>,
    load_balancing: LoadBalancing,
    protocol: Protocol,
    connect_timeout_ms: u64,
}

impl PoolKey {
    pub fn of(service: &Service) -> PoolKey {
        PoolKey {
            targets: service
                .upstream
                .targets
                .iter()
                .map(|t| (t.address.clone(), t.weight))
                .collect(),
            load_balancing: service.upstream.load_balancing,
            protocol: service.protocol,
            connect_timeout_ms: service.timeouts.connect_ms(),
        }
    }
}

/// A service's targets, balancer and connection pool.
#[derive(Debug)]
pub struct UpstreamPool {
    pub key: PoolKey,
    pub targets: Box<[UpstreamTarget]>,
    balancer: RoundRobin,
    client: ShardedClient,
}

impl UpstreamPool {
    /// Builds the pool; refuses what this data plane cannot do faithfully.
    pub fn build(service: &Service, clients: &ClientCache) -> Result<UpstreamPool, String> {
        match service.protocol {
            Protocol::Http => {}
            other => {
                return Err(format!(
                "protocol: {:?} upstreams are not implemented by this data plane (only \"http\")",
                other.as_str()
            ))
            }
        }
        match service.upstream.load_balancing {
            LoadBalancing::RoundRobin => {}
            other => {
                return Err(format!(
                    "upstream.load_balancing: {:?} is not implemented by this data plane (only \"round_robin\")",
                    other.as_str()
                ))
            }
        }
        let mut targets = Vec::with_capacity(service.upstream.targets.len());
        for (i, target) in service.upstream.targets.iter().enumerate() {
            let authority: Authority = target.address.parse().map_err(|_| {
                format!(
                    "upstream.targets[{i}].address: {:?} is not a valid host:port",
                    target.address
                )
            })?;
            targets.push(UpstreamTarget {
                address: target.address.clone(),
                authority,
                weight: target.weight,
            });
        }
        let weights: Vec<u32> = targets.iter().map(|t| t.weight).collect();
        Ok(UpstreamPool {
            key: PoolKey::of(service),
            targets: targets.into_boxed_slice(),
            balancer: RoundRobin::new(&weights),
            client: clients.client(service.timeouts.connect_ms()),
        })
    }

    /// The next target by weighted round robin; `None` when every weight is 0.
    #[inline]
    pub fn pick(&self) -> Option<&UpstreamTarget> {
        self.balancer.pick().and_then(|i| self.targets.get(i))
    }

    /// Sends the request and waits for the response head, at most `timeout`.
    pub async fn send(
        &self,
        mut request: Request<UpstreamBody>,
        timeout: Duration,
    ) -> Result<Response<Incoming>, ProxyError> {
        let connection = capture_connection(&mut request);
        let response =
            match tokio::time::timeout(timeout, self.client.local().request(request)).await {
                Err(_elapsed) => return Err(ProxyError::UpstreamTimeout),
                Ok(Err(err)) => {
                    let kind = classify(&err);
                    tracing::debug!(error = %DisplayChain(&err), ?kind, "upstream request failed");
                    return Err(kind);
                }
                Ok(Ok(response)) => response,
            };
        if has_ambiguous_framing(response.headers()) {
            if let Some(connected) = connection.connection_metadata().as_ref() {
                connected.poison();
            }
            tracing::warn!(
                "upstream response with ambiguous framing rejected; connection poisoned"
            );
            return Err(ProxyError::UpstreamMalformed);
        }
        Ok(response)
    }
}

/// Both Content-Length and Transfer-Encoding, or Content-Lengths that
/// disagree or do not parse: a request-smuggling shape, never forwarded.
pub fn has_ambiguous_framing(headers: &HeaderMap) -> bool {
    let mut lengths = headers.get_all(CONTENT_LENGTH).iter();
    let Some(first) = lengths.next() else {
        return false;
    };
    if headers.contains_key(TRANSFER_ENCODING) {
        return true;
    }
    let parse = |value: &http::HeaderValue| -> Option<u64> {
        let text = value.to_str().ok()?;
        let mut result = None;
        for part in text.split(',') {
            let part = part.trim();
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let n: u64 = part.parse().ok()?;
            match result {
                Some(previous) if previous != n => return None,
                _ => result = Some(n),
            }
        }
        result
    };
    let Some(expected) = parse(first) else {
        return true;
    };
    lengths.any(|value| parse(value) != Some(expected))
}

/// Maps a client failure onto the error table by walking its causes.
fn classify(err: &hyper_util::client::legacy::Error) -> ProxyError {
    let mut source: Option<&(dyn StdError + 'static)> = err.source();
    while let Some(cause) = source {
        if let Some(body) = cause.downcast_ref::<BodyError>() {
            return match body {
                BodyError::TooLarge { .. } => ProxyError::BodyTooLarge,
                BodyError::IdleTimeout(_) => ProxyError::BodyTimeout,
                BodyError::Client(_) => ProxyError::BadRequest,
            };
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return ProxyError::UpstreamTimeout;
            }
        }
        if let Some(hyper_err) = cause.downcast_ref::<hyper::Error>() {
            if hyper_err.is_parse() || hyper_err.is_parse_status() {
                return ProxyError::UpstreamMalformed;
            }
            if hyper_err.is_timeout() {
                return ProxyError::UpstreamTimeout;
            }
        }
        source = cause.source();
    }
    ProxyError::UpstreamUnavailable
}

/// Formats an error with its causes, for logs.
pub struct DisplayChain<'a>(pub &'a (dyn StdError + 'static));

impl std::fmt::Display for DisplayChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

/// Shared handle so compiled services can hold a pool cheaply.
pub type SharedPool = Arc<UpstreamPool>;

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, http::HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn ambiguous_framing_is_detected() {
        assert!(!has_ambiguous_framing(&headers(&[("content-length", "5")])));
        assert!(!has_ambiguous_framing(&headers(&[(
            "transfer-encoding",
            "chunked"
        )])));
        assert!(!has_ambiguous_framing(&headers(&[
            ("content-length", "5"),
            ("content-length", "5")
        ])));
        assert!(has_ambiguous_framing(&headers(&[
            ("content-length", "5"),
            ("transfer-encoding", "chunked")
        ])));
        assert!(has_ambiguous_framing(&headers(&[
            ("content-length", "5"),
            ("content-length", "6")
        ])));
        assert!(has_ambiguous_framing(&headers(&[(
            "content-length",
            "5, 6"
        )])));
        assert!(has_ambiguous_framing(&headers(&[("content-length", "-1")])));
    }

    fn service(yaml: &str) -> Service {
        serde_yaml::from_str(yaml).expect("service")
    }

    #[test]
    fn unimplemented_protocols_and_balancers_are_refused() {
        let clients = ClientCache::default();
        let err = UpstreamPool::build(
            &service("{name: s, upstream: {targets: [{address: 'a:1'}]}, protocol: h2c}"),
            &clients,
        )
        .expect_err("must be refused");
        assert!(
            err.contains("\"h2c\" upstreams are not implemented"),
            "{err}"
        );
        let err = UpstreamPool::build(
            &service(
                "{name: s, upstream: {targets: [{address: 'a:1'}], load_balancing: least_request}}",
            ),
            &clients,
        )
        .expect_err("must be refused");
        assert!(
            err.contains("\"least_request\" is not implemented"),
            "{err}"
        );
    }
}
