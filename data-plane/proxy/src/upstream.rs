//! Upstream pools: where a service's requests go, over which connections.
//!
//! A service's [`UpstreamPool`] holds its targets and its balancer. Each
//! target holds its keep-alive connections ([`TargetConnections`], see
//! [`crate::pool`] for why we pool them ourselves), shared by every
//! service that targets the same `host:port` with the same connect timeout
//! and kept across snapshot swaps through [`ClientCache`], so a config
//! change does not drop warm connections. A service's whole pool (targets +
//! round-robin position) is reused by the next snapshot when its targets,
//! weights, balancing and timeouts did not change.
//!
//! Failures map onto the proxy's error table: connect/request timeout -> 504,
//! refused/reset -> 502, malformed response -> 502. A response with both
//! `Content-Length` and `Transfer-Encoding`, or with conflicting
//! `Content-Length`s, is never forwarded and its connection is closed rather
//! than returned to the pool (hyper's client does not reject the former).

use std::collections::HashMap;
use std::error::Error as StdError;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::uri::Authority;
use http::{HeaderMap, HeaderValue, Request, Response};
use tollgate_shared::model::{HealthChecks, LoadBalancing, Protocol, Service};

use crate::body::{BodyError, UpstreamBody};
use crate::connector::Connector;
use crate::h2::H2Connections;
use crate::health::ServiceHealth;
use crate::pool::{PooledBody, SendFailure, TargetConnections, TargetTls};
use crate::tls::upstream::UpstreamTlsClient;
use tollgate_lb::{Balancer, PickContext};
use tollgate_plugin_api::RefusalKind;

/// Every target's connections by `(address, connect timeout)`, so services
/// and snapshots naming the same target share them; lives as long as the
/// data plane and holds them weakly (a target no snapshot uses any more
/// closes its connections).
/// TLS targets are keyed by their TLS settings too (trust, name, verify),
/// so a plaintext and a TLS service, or two differently verified ones, never
/// share a connection.
#[derive(Debug, Default)]
pub struct ClientCache {
    targets: Mutex<HashMap<TargetKey, Weak<TargetConnections>>>,
    /// HTTP/2 (`h2c`, `h2`) targets' connections, keyed like `targets`.
    h2_targets: Mutex<HashMap<TargetKey, Weak<H2Connections>>>,
}

/// `(address, connect timeout ms, TLS identity and server name)`.
type TargetKey = (String, u64, Option<String>);

impl ClientCache {
    /// The connections of this target, created on first use. Called when a
    /// snapshot compiles, never per request.
    pub fn target(&self, authority: &Authority, connect_timeout_ms: u64) -> Arc<TargetConnections> {
        self.target_with_tls(authority, connect_timeout_ms, None)
    }

    /// Like [`ClientCache::target`], in TLS when `tls` is set.
    pub fn target_with_tls(
        &self,
        authority: &Authority,
        connect_timeout_ms: u64,
        tls: Option<TargetTls>,
    ) -> Arc<TargetConnections> {
        let mut targets = match self.targets.lock() {
            Ok(targets) => targets,
            Err(poisoned) => poisoned.into_inner(),
        };
        targets.retain(|_, weak| weak.strong_count() > 0);
        let key = (
            authority.as_str().to_owned(),
            connect_timeout_ms,
            tls.as_ref()
                .map(|t| format!("{}|{}", t.client.identity, t.server_name.to_str())),
        );
        if let Some(existing) = targets.get(&key).and_then(Weak::upgrade) {
            return existing;
        }
        let created = Arc::new(TargetConnections::with_tls(
            authority,
            Duration::from_millis(connect_timeout_ms),
            tls,
        ));
        targets.insert(key, Arc::downgrade(&created));
        created
    }

    /// The HTTP/2 connections of this `h2c` target, created on first use
    /// and kept across snapshots like [`ClientCache::target`]'s.
    pub fn h2_target(
        &self,
        authority: &Authority,
        connect_timeout_ms: u64,
        tls: Option<TargetTls>,
    ) -> Arc<H2Connections> {
        let mut targets = match self.h2_targets.lock() {
            Ok(targets) => targets,
            Err(poisoned) => poisoned.into_inner(),
        };
        targets.retain(|_, weak| weak.strong_count() > 0);
        let key = (
            authority.as_str().to_owned(),
            connect_timeout_ms,
            tls.as_ref()
                .map(|t| format!("{}|{}", t.client.identity, t.server_name.to_str())),
        );
        if let Some(existing) = targets.get(&key).and_then(Weak::upgrade) {
            return existing;
        }
        let created = Arc::new(H2Connections::new(Arc::new(TargetConnections::with_tls(
            authority,
            Duration::from_millis(connect_timeout_ms),
            tls,
        ))));
        targets.insert(key, Arc::downgrade(&created));
        created
    }

    /// The targets some snapshot still uses (for idle-connection sweeps).
    pub fn live(&self) -> Vec<Arc<TargetConnections>> {
        let targets = match self.targets.lock() {
            Ok(targets) => targets,
            Err(poisoned) => poisoned.into_inner(),
        };
        targets.values().filter_map(Weak::upgrade).collect()
    }
}

/// One upstream instance, parsed once.
#[derive(Debug)]
pub struct UpstreamTarget {
    pub address: String,
    pub authority: Authority,
    /// `authority` as a `Host` value, for requests that came without one.
    pub host: HeaderValue,
    pub weight: u32,
    /// How requests reach this target (the protocol's connector).
    pub connector: Connector,
}

/// What decides whether a pool can be carried over to the next snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolKey {
    targets: Vec<(String, u32)>,
    load_balancing: LoadBalancing,
    protocol: Protocol,
    connect_timeout_ms: u64,
    /// The TLS client's identity (trust, name, verify), for `https`.
    tls: Option<String>,
    hash_on: Option<String>,
    health_checks: HealthChecks,
}

impl PoolKey {
    pub fn of(service: &Service, tls: Option<&UpstreamTlsClient>) -> PoolKey {
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
            tls: tls.map(|t| t.identity.clone()),
            hash_on: service.upstream.hash_on.clone(),
            health_checks: service.upstream.health_checks.clone(),
        }
    }
}

/// A service's targets, balancer, health and connection pool.
#[derive(Debug)]
pub struct UpstreamPool {
    pub key: PoolKey,
    pub targets: Box<[UpstreamTarget]>,
    balancer: Box<dyn Balancer>,
    /// What `consistent_hash` hashes (`None` for the other algorithms).
    pub hash_on: Option<HashOn>,
    /// Passive and active health of the targets, and the retry budget.
    pub health: Arc<ServiceHealth>,
}

/// The request key `consistent_hash` hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    Header(http::HeaderName),
    Cookie(String),
    Ip,
    Path,
}

impl HashOn {
    /// Parses `header:NAME`, `cookie:NAME`, `ip` or `path` (validated by the
    /// control plane; an error here NACKs).
    pub fn parse(key: &str) -> Result<HashOn, String> {
        match key.split_once(':') {
            None if key == "ip" => Ok(HashOn::Ip),
            None if key == "path" => Ok(HashOn::Path),
            Some(("header", name)) => http::HeaderName::from_bytes(name.as_bytes())
                .map(HashOn::Header)
                .map_err(|_| format!("{key:?}: not a header name")),
            Some(("cookie", name)) if !name.is_empty() => Ok(HashOn::Cookie(name.to_owned())),
            _ => Err(format!(
                "{key:?} is not header:NAME, cookie:NAME, ip or path"
            )),
        }
    }

    /// The hash of this request's key (the empty key when it has none).
    pub fn hash(&self, headers: &HeaderMap, client_ip: std::net::IpAddr, path: &str) -> u64 {
        match self {
            HashOn::Header(name) => {
                tollgate_lb::hash_key(headers.get(name).map_or(&b""[..], HeaderValue::as_bytes))
            }
            HashOn::Cookie(name) => {
                tollgate_lb::hash_key(cookie_value(headers, name).map_or(&b""[..], str::as_bytes))
            }
            HashOn::Ip => match client_ip {
                std::net::IpAddr::V4(v4) => tollgate_lb::hash_key(&v4.octets()),
                std::net::IpAddr::V6(v6) => tollgate_lb::hash_key(&v6.octets()),
            },
            HashOn::Path => tollgate_lb::hash_key(path.as_bytes()),
        }
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim_matches('"'))
}

impl UpstreamPool {
    /// Builds the pool; refuses what this data plane cannot do faithfully.
    pub fn build(
        service: &Service,
        clients: &ClientCache,
        tls: Option<&Arc<UpstreamTlsClient>>,
    ) -> Result<UpstreamPool, String> {
        let mut targets = Vec::with_capacity(service.upstream.targets.len());
        for (i, target) in service.upstream.targets.iter().enumerate() {
            let authority: Authority = target.address.parse().map_err(|_| {
                format!(
                    "upstream.targets[{i}].address: {:?} is not a valid host:port",
                    target.address
                )
            })?;
            let host = HeaderValue::from_str(authority.as_str()).map_err(|_| {
                format!(
                    "upstream.targets[{i}].address: {:?} is not a valid host:port",
                    target.address
                )
            })?;
            targets.push(UpstreamTarget {
                address: target.address.clone(),
                connector: Connector::build(
                    service.protocol,
                    clients,
                    &authority,
                    service.timeouts.connect_ms(),
                    tls,
                )
                .map_err(|m| format!("protocol: {m}"))?,
                authority,
                host,
                weight: target.weight,
            });
        }
        let weights: Vec<u32> = targets.iter().map(|t| t.weight).collect();
        let addresses: Vec<&str> = targets.iter().map(|t| t.address.as_str()).collect();
        let balancer = tollgate_lb::build(
            service.upstream.load_balancing.as_str(),
            &addresses,
            &weights,
        )
        .map_err(|m| format!("upstream.load_balancing: {m}"))?;
        let hash_on = service
            .upstream
            .hash_on
            .as_deref()
            .map(HashOn::parse)
            .transpose()
            .map_err(|m| format!("upstream.hash_on: {m}"))?;
        let health = Arc::new(ServiceHealth::new(
            targets.len(),
            &service.upstream.health_checks.passive,
        ));
        if let Some(active) = &service.upstream.health_checks.active {
            let host = service
                .host_header
                .as_deref()
                .and_then(|h| HeaderValue::from_str(h).ok());
            let probes = targets
                .iter()
                .map(|t| crate::probe::ProbeTarget {
                    address: t.address.clone(),
                    connector: t.connector.clone(),
                    host: host.clone().unwrap_or_else(|| t.host.clone()),
                })
                .collect();
            crate::probe::spawn(
                Arc::from(service.name.as_str()),
                active.clone(),
                probes,
                &health,
            );
        }
        Ok(UpstreamPool {
            key: PoolKey::of(service, tls.map(|t| &**t)),
            targets: targets.into_boxed_slice(),
            balancer,
            hash_on,
            health,
        })
    }

    /// The target for a try of a request: one the balancer picks among the
    /// healthy targets not yet `tried` (a bit per target index below 64).
    /// When health rules out every untried target, the balancer picks among
    /// all untried ones: a service whose every target looks down still
    /// gets its requests tried (Envoy's panic threshold at 100%).
    pub fn pick_for(&self, hash: Option<u64>, tried: u64) -> Option<usize> {
        let untried = |i: usize| i >= 64 || tried & (1 << i) == 0;
        let healthy = |i: usize| untried(i) && self.health.usable(i);
        self.balancer
            .pick(&PickContext::new(hash, &healthy))
            .or_else(|| self.balancer.pick(&PickContext::new(hash, &untried)))
    }

    /// Each target's health, for `/status` and metrics.
    pub fn health_report(&self) -> serde_json::Value {
        let targets: Vec<serde_json::Value> = self
            .targets
            .iter()
            .enumerate()
            .filter_map(|(index, target)| {
                let health = self.health.target(index)?;
                let state = health.state();
                let mut entry = serde_json::json!({
                    "address": target.address,
                    "weight": target.weight,
                    "state": state.as_str(),
                    "ejections": health.ejections(),
                });
                if let crate::health::TargetState::Ejected(ms) = state {
                    entry["ejected_for_ms"] = ms.into();
                }
                Some(entry)
            })
            .collect();
        serde_json::json!({
            "load_balancing": self.key.load_balancing.as_str(),
            "active_checks": self.key.health_checks.active.is_some(),
            "targets": targets,
        })
    }

    /// `(target address, state)` of every target.
    pub fn target_states(&self) -> impl Iterator<Item = (&str, &'static str)> {
        self.targets.iter().enumerate().map(|(index, target)| {
            let state = self
                .health
                .target(index)
                .map_or("healthy", |h| h.state().as_str());
            (target.address.as_str(), state)
        })
    }

    /// Target `index` (from [`UpstreamPool::pick_for`]).
    #[inline]
    pub fn target(&self, index: usize) -> Option<&UpstreamTarget> {
        self.targets.get(index)
    }

    /// Sends one try (origin-form URI, `Host` set) to target `index` and
    /// waits for the response head, at most `timeout` (connecting
    /// included), counted in flight for the balancer meanwhile; a request
    /// never written comes back in the error.
    pub async fn send_try(
        &self,
        index: usize,
        request: Request<UpstreamBody>,
        timeout: Duration,
    ) -> Result<Response<PooledBody>, SendFailure> {
        let Some(target) = self.targets.get(index) else {
            return Err(SendFailure {
                kind: RefusalKind::NoHealthyTarget,
                unsent: Some(request),
            });
        };
        self.balancer.started(index);
        let _in_flight = InFlight {
            balancer: &*self.balancer,
            index,
        };
        let mut response =
            match tokio::time::timeout(timeout, target.connector.send_or_return(request)).await {
                Err(_elapsed) => {
                    return Err(SendFailure {
                        kind: RefusalKind::UpstreamTimeout,
                        unsent: None,
                    })
                }
                Ok(result) => result?,
            };
        if has_ambiguous_framing(response.headers()) {
            response.body_mut().discard_connection();
            tracing::warn!(
                upstream = %target.address,
                "upstream response with ambiguous framing rejected; connection closed"
            );
            return Err(SendFailure {
                kind: RefusalKind::UpstreamMalformed,
                unsent: None,
            });
        }
        Ok(response)
    }
}

/// Ends a try's in-flight count however its future ends (also when the
/// client goes away and the request is dropped mid-wait).
struct InFlight<'a> {
    balancer: &'a dyn Balancer,
    index: usize,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.balancer.finished(self.index);
    }
}

impl UpstreamPool {
    /// Like [`UpstreamPool::send`], for a WebSocket upgrade: on a connection
    /// of its own that hyper hands over after a `101`.
    pub async fn send_upgrade(
        &self,
        target: &UpstreamTarget,
        request: Request<UpstreamBody>,
        timeout: Duration,
    ) -> Result<Response<PooledBody>, RefusalKind> {
        let response =
            match tokio::time::timeout(timeout, target.connector.send_upgrade(request)).await {
                Err(_elapsed) => return Err(RefusalKind::UpstreamTimeout),
                Ok(result) => result?,
            };
        if has_ambiguous_framing(response.headers()) {
            tracing::warn!(
                upstream = %target.address,
                "upstream response with ambiguous framing rejected; connection closed"
            );
            return Err(RefusalKind::UpstreamMalformed);
        }
        Ok(response)
    }
}

/// Both Content-Length and Transfer-Encoding, or Content-Lengths that
/// disagree or do not parse: a request-smuggling shape, never forwarded.
/// One pass over the fields (a response has a handful), no hashing.
pub fn has_ambiguous_framing(headers: &HeaderMap) -> bool {
    let mut length: Option<u64> = None;
    let mut transfer_encoding = false;
    for (name, value) in headers.iter() {
        if name == CONTENT_LENGTH {
            match (parse_content_length(value), length) {
                (None, _) => return true,
                (Some(n), Some(previous)) if n != previous => return true,
                (Some(n), _) => length = Some(n),
            }
        } else if name == TRANSFER_ENCODING {
            transfer_encoding = true;
        }
    }
    length.is_some() && transfer_encoding
}

/// A Content-Length value: digits, or a list of equal digit strings.
fn parse_content_length(value: &HeaderValue) -> Option<u64> {
    let bytes = value.as_bytes();
    if !bytes.is_empty() && bytes.len() <= 18 && bytes.iter().all(u8::is_ascii_digit) {
        return Some(bytes.iter().fold(0u64, |n, b| n * 10 + u64::from(b - b'0')));
    }
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
}

/// Maps an upstream failure onto the error table by walking the error and
/// its causes.
pub fn classify(err: &(dyn StdError + 'static)) -> RefusalKind {
    let mut source: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(cause) = source {
        if let Some(native) = cause.downcast_ref::<crate::http1_client::Error>() {
            return native.refusal();
        }
        if let Some(body) = cause.downcast_ref::<BodyError>() {
            return match body {
                BodyError::TooLarge { .. } => RefusalKind::BodyTooLarge,
                BodyError::IdleTimeout(_) => RefusalKind::BodyTimeout,
                BodyError::TooSlow { .. } => RefusalKind::BodyTooSlow,
                BodyError::Client(_) => RefusalKind::BadRequest,
            };
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::TimedOut => return RefusalKind::UpstreamTimeout,
                // hyper's body decoder reports bad chunked framing this way.
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput => {
                    return RefusalKind::UpstreamMalformed
                }
                _ => {}
            }
        }
        if let Some(hyper_err) = cause.downcast_ref::<hyper::Error>() {
            if hyper_err.is_parse() || hyper_err.is_parse_status() {
                return RefusalKind::UpstreamMalformed;
            }
            if hyper_err.is_timeout() {
                return RefusalKind::UpstreamTimeout;
            }
        }
        source = cause.source();
    }
    RefusalKind::UpstreamUnavailable
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
        assert!(has_ambiguous_framing(&headers(&[
            ("transfer-encoding", "chunked"),
            ("content-length", "5")
        ])));
        assert!(!has_ambiguous_framing(&headers(&[
            ("content-length", "5, 5"),
            ("content-length", "005")
        ])));
        assert!(has_ambiguous_framing(&headers(&[(
            "content-length",
            "99999999999999999999999"
        )])));
    }

    fn service(yaml: &str) -> Service {
        serde_yaml::from_str(yaml).expect("service")
    }

    #[test]
    fn unimplemented_balancers_are_refused() {
        let clients = ClientCache::default();
        let err = UpstreamPool::build(
            &service(
                "{name: s, upstream: {targets: [{address: 'a:1'}], load_balancing: consistent_hash, hash_on: 'query:x'}}",
            ),
            &clients,
            None,
        )
        .expect_err("must be refused");
        assert!(err.starts_with("upstream.hash_on: "), "{err}");
    }

    #[test]
    fn hash_keys_come_from_headers_cookies_ip_or_path() {
        let ip: std::net::IpAddr = "10.0.0.1".parse().expect("ip");
        let map = headers(&[("x-user", "u1"), ("cookie", "a=1; session=\"s9\"; b=2")]);
        let header = HashOn::parse("header:x-user").expect("parses");
        assert_eq!(header.hash(&map, ip, "/p"), tollgate_lb::hash_key(b"u1"));
        let cookie = HashOn::parse("cookie:session").expect("parses");
        assert_eq!(cookie.hash(&map, ip, "/p"), tollgate_lb::hash_key(b"s9"));
        let missing = HashOn::parse("cookie:none").expect("parses");
        assert_eq!(missing.hash(&map, ip, "/p"), tollgate_lb::hash_key(b""));
        assert_eq!(
            HashOn::parse("ip").expect("parses").hash(&map, ip, "/p"),
            tollgate_lb::hash_key(&[10, 0, 0, 1])
        );
        assert_eq!(
            HashOn::parse("path").expect("parses").hash(&map, ip, "/p"),
            tollgate_lb::hash_key(b"/p")
        );
    }
}
