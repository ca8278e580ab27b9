//! The configuration model: what an operator writes in `gateway.yaml`, what the
//! control plane stores, and what a data plane compiles.
//!
//! Every entity has a unique `name` within its kind. Plugin configurations are
//! kept as JSON objects here and parsed into their typed schema
//! ([`crate::plugins::SCHEMAS`]) by validation and by the data plane's
//! compiler, so the model itself stays plugin-agnostic.
//!
//! Secrets: an API key is only ever held as `api_key_hash` once stored; JWT HMAC
//! secrets and certificate private keys are held as given and replaced by their
//! fingerprints in every read ([`GatewayConfig::redacted`]).

use serde::{Deserialize, Serialize};

/// The whole desired state of a gateway; the unit of `Apply`, `Export` and of
/// the snapshots streamed to data planes.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<Service>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consumers: Vec<Consumer>,
    /// Plugins that run on every route.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plugins: Vec<GlobalPlugin>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<Certificate>,
}

/// An upstream service: where matched requests are forwarded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub name: String,
    pub upstream: Upstream,
    #[serde(default, skip_serializing_if = "Timeouts::is_default")]
    pub timeouts: Timeouts,
    #[serde(default, skip_serializing_if = "is_default")]
    pub protocol: Protocol,
    /// Host header sent upstream; `None` passes the client's Host through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_header: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plugins: Vec<PluginInstance>,
    /// TLS to the targets (`protocol: https` or `h2` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
    /// Labels for teams and tools (`tollgatectl apply --select-tag TEAM`
    /// applies and diffs only the entities carrying it); no effect on traffic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

/// How a service with `protocol: https` verifies its targets.
///
/// Without `ca_pem` or `ca_certificate` the platform roots are trusted.
/// The name checked (and sent as SNI) is `sni`, else `host_header`, else the
/// target's host. `verify: false` turns verification off: it must be written
/// out, is warned about at apply, and shows in every read.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// PEM CA certificates to trust instead of the platform roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    /// The name of a `certificates` entry whose `cert_pem` is the CA to trust.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificate: Option<String>,
    /// Server name sent and verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// Verify the target's certificate (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<bool>,
}

impl UpstreamTls {
    pub fn verify(&self) -> bool {
        self.verify.unwrap_or(true)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    pub targets: Vec<Target>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub load_balancing: LoadBalancing,
    /// The key `consistent_hash` hashes: `header:NAME`, `cookie:NAME`, `ip`
    /// (the client IP) or `path`. Required with `consistent_hash`, refused
    /// with the other algorithms. A request without the key (no such header
    /// or cookie) goes to the target the empty key maps to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<String>,
    /// Passive ejection (on by default) and active probes (off by default).
    #[serde(default, skip_serializing_if = "HealthChecks::is_default")]
    pub health_checks: HealthChecks,
}

/// How a data plane decides that a target can take requests.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthChecks {
    #[serde(default, skip_serializing_if = "PassiveHealth::is_default")]
    pub passive: PassiveHealth,
    /// Active HTTP probes, run by each data plane once per target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<ActiveHealth>,
}

impl HealthChecks {
    pub fn is_default(&self) -> bool {
        *self == HealthChecks::default()
    }
}

/// Passive health (outlier ejection): a target whose requests fail
/// `consecutive_failures` times in a row (connect failure, reset, timeout or a
/// 5xx answer) is taken out of rotation for `base_ejection_ms` times the
/// number of times it was ejected (capped at `max_ejection_ms`). At most
/// `max_ejected_percent` of the service's targets are out at once (at least
/// one when the service has two or more, never all).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(deny_unknown_fields)]
pub struct PassiveHealth {
    /// Default 5; 0 turns passive ejection off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_failures: Option<u32>,
    /// Default 30,000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_ms: Option<u64>,
    /// Default 300,000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_ms: Option<u64>,
    /// Default 50.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejected_percent: Option<u32>,
}

pub const DEFAULT_CONSECUTIVE_FAILURES: u32 = 5;
pub const DEFAULT_BASE_EJECTION_MS: u64 = 30_000;
pub const DEFAULT_MAX_EJECTION_MS: u64 = 300_000;
pub const DEFAULT_MAX_EJECTED_PERCENT: u32 = 50;

impl PassiveHealth {
    pub fn is_default(&self) -> bool {
        *self == PassiveHealth::default()
    }
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
            .unwrap_or(DEFAULT_CONSECUTIVE_FAILURES)
    }
    pub fn base_ejection_ms(&self) -> u64 {
        self.base_ejection_ms.unwrap_or(DEFAULT_BASE_EJECTION_MS)
    }
    pub fn max_ejection_ms(&self) -> u64 {
        self.max_ejection_ms.unwrap_or(DEFAULT_MAX_EJECTION_MS)
    }
    pub fn max_ejected_percent(&self) -> u32 {
        self.max_ejected_percent
            .unwrap_or(DEFAULT_MAX_EJECTED_PERCENT)
    }
}

/// An HTTP probe: `GET path` on a new connection to each target every
/// `interval_ms`, answered within `timeout_ms` with one of
/// `expected_statuses` (default: any 2xx or 3xx). `unhealthy_threshold`
/// failures in a row take the target out of rotation; `healthy_threshold`
/// successes in a row bring it back (and end a passive ejection).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ActiveHealth {
    pub path: String,
    #[serde(default = "default_probe_interval_ms")]
    pub interval_ms: u64,
    #[serde(default = "default_probe_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_healthy_threshold")]
    pub healthy_threshold: u32,
    #[serde(default = "default_unhealthy_threshold")]
    pub unhealthy_threshold: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expected_statuses: Vec<u16>,
}

fn default_probe_interval_ms() -> u64 {
    5_000
}
fn default_probe_timeout_ms() -> u64 {
    1_000
}
fn default_healthy_threshold() -> u32 {
    2
}
fn default_unhealthy_threshold() -> u32 {
    3
}

impl ActiveHealth {
    /// Whether a probe answer with this status counts as healthy.
    pub fn expects(&self, status: u16) -> bool {
        if self.expected_statuses.is_empty() {
            (200..400).contains(&status)
        } else {
            self.expected_statuses.contains(&status)
        }
    }
}

/// One upstream instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// `host:port`.
    pub address: String,
    /// Relative share of traffic (default 1); 0 takes the target out of rotation.
    #[serde(default = "default_weight", skip_serializing_if = "is_default_weight")]
    pub weight: u32,
}

pub const DEFAULT_WEIGHT: u32 = 1;
pub const MAX_WEIGHT: u32 = 10_000;

fn default_weight() -> u32 {
    DEFAULT_WEIGHT
}
fn is_default_weight(weight: &u32) -> bool {
    *weight == DEFAULT_WEIGHT
}
fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalancing {
    #[default]
    RoundRobin,
    LeastRequest,
    ConsistentHash,
}

impl LoadBalancing {
    pub const ALL: [(&'static str, LoadBalancing); 3] = [
        ("round_robin", LoadBalancing::RoundRobin),
        ("least_request", LoadBalancing::LeastRequest),
        ("consistent_hash", LoadBalancing::ConsistentHash),
    ];
    /// Whether data planes of this version serve it: the control plane
    /// refuses the others at write time. `tollgate-lb`'s tests check that it
    /// builds exactly these.
    pub const fn is_served(self) -> bool {
        matches!(
            self,
            LoadBalancing::RoundRobin | LoadBalancing::LeastRequest | LoadBalancing::ConsistentHash
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LoadBalancing::RoundRobin => "round_robin",
            LoadBalancing::LeastRequest => "least_request",
            LoadBalancing::ConsistentHash => "consistent_hash",
        }
    }
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    #[default]
    Http,
    Https,
    H2c,
    /// HTTP/2 over TLS (ALPN `h2`), with the service's `tls` settings.
    H2,
}

impl Protocol {
    pub const ALL: [(&'static str, Protocol); 4] = [
        ("http", Protocol::Http),
        ("https", Protocol::Https),
        ("h2c", Protocol::H2c),
        ("h2", Protocol::H2),
    ];
    /// Whether data planes of this version serve it (`tollgate-proxy`'s
    /// connector tests check that it connects exactly these).
    pub const fn is_served(self) -> bool {
        matches!(
            self,
            Protocol::Http | Protocol::Https | Protocol::H2c | Protocol::H2
        )
    }

    /// Whether the targets are reached over TLS (the service's `tls` applies).
    pub const fn uses_tls(self) -> bool {
        matches!(self, Protocol::Https | Protocol::H2)
    }

    /// Whether the targets speak HTTP/2 (no HTTP/1.1 upgrades).
    pub const fn is_http2(self) -> bool {
        matches!(self, Protocol::H2c | Protocol::H2)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Https => "https",
            Protocol::H2c => "h2c",
            Protocol::H2 => "h2",
        }
    }
}

/// Upstream timeouts in milliseconds; `None` means the documented default.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_ms: Option<u64>,
}

pub const DEFAULT_CONNECT_MS: u64 = 5_000;
pub const DEFAULT_REQUEST_MS: u64 = 60_000;

impl Timeouts {
    fn is_default(&self) -> bool {
        *self == Timeouts::default()
    }
    pub fn connect_ms(&self) -> u64 {
        self.connect_ms.unwrap_or(DEFAULT_CONNECT_MS)
    }
    pub fn request_ms(&self) -> u64 {
        self.request_ms.unwrap_or(DEFAULT_REQUEST_MS)
    }
}

/// A route: which requests go to which service, through which plugins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub name: String,
    pub service: String,
    /// Exact (`api.example.com`) or leading wildcard (`*.example.com`); empty = any host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// `/prefix` (segment-boundary prefix), `=/exact`, or templates `/users/{id}`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// Upper-case methods; empty = any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
    /// Remove the matched path prefix before forwarding.
    #[serde(default, skip_serializing_if = "is_default")]
    pub strip_path: bool,
    /// Higher wins among routes with equally specific matches.
    #[serde(default, skip_serializing_if = "is_default")]
    pub priority: i32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plugins: Vec<PluginInstance>,
    /// Largest request body accepted, in bytes (413 above it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
    /// What the data plane records about this route beyond the defaults.
    #[serde(default, skip_serializing_if = "RouteMetricsOptions::is_default")]
    pub metrics: RouteMetricsOptions,
    /// Serve only requests that arrived over TLS: others get 426
    /// `https_required`, or a 308 to `https://` with `https_redirect`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub https_only: bool,
    /// With `https_only`: answer plaintext requests with a 308 redirect.
    #[serde(default, skip_serializing_if = "is_default")]
    pub https_redirect: bool,
    /// `%2F` in the path: overrides the data plane's `--encoded-slashes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoded_slashes: Option<EncodedSlashes>,
    /// `;params` in path segments: overrides the data plane's `--path-parameters`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_parameters: Option<PathParameters>,
    /// Further tries after a failed one (default 1, at most 5). A connect
    /// failure is always retried on another target; a 502/503/504 or a reset
    /// only for idempotent methods (or with `retry_non_idempotent`) and a
    /// body that was buffered whole. Bounded per service by a retry budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// Retry POST/PATCH too after a 502/503/504 or a reset.
    #[serde(default, skip_serializing_if = "is_default")]
    pub retry_non_idempotent: bool,
    /// Forward `Upgrade: websocket` requests and join client and upstream
    /// as a tunnel once the upstream answers 101. Off: every upgrade is
    /// stripped (hop-by-hop), as on any route.
    #[serde(default, skip_serializing_if = "is_default")]
    pub websocket: bool,
    /// A WebSocket tunnel with no byte in either direction for this long is
    /// closed (default [`DEFAULT_WEBSOCKET_IDLE_TIMEOUT_MS`]). Only with
    /// `websocket: true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub websocket_idle_timeout_ms: Option<u64>,
    /// Labels for teams and tools (`tollgatectl apply --select-tag TEAM`
    /// applies and diffs only the entities carrying it); no effect on traffic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

pub const DEFAULT_RETRIES: u32 = 1;
pub const MAX_RETRIES: u32 = 5;

/// How long a WebSocket tunnel may stay silent both ways (nginx's
/// `proxy_read_timeout` is 60 s; chat-like sockets ping more often than this).
pub const DEFAULT_WEBSOCKET_IDLE_TIMEOUT_MS: u64 = 300_000;

/// What the gateway does with an encoded slash (`%2F`) in a request path,
/// before routing, so that the route matched, the auth applied and the path
/// forwarded agree with an upstream that decodes it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum EncodedSlashes {
    /// 400: the path is ambiguous between gateway and upstream.
    Reject,
    /// `%2F` becomes `/` (then dot segments are resolved again): what nginx
    /// and most upstreams do. The default.
    #[default]
    Decode,
    /// `%2F` is data inside a segment, routed and forwarded as `%2F`. For APIs
    /// that need it; only safe when the upstream does not decode it.
    Keep,
}

impl EncodedSlashes {
    pub const ALL: [(&'static str, EncodedSlashes); 3] = [
        ("reject", EncodedSlashes::Reject),
        ("decode", EncodedSlashes::Decode),
        ("keep", EncodedSlashes::Keep),
    ];

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL
            .iter()
            .find(|(name, _)| *name == text)
            .map(|(_, v)| *v)
    }
}

/// What the gateway does with `;params` in a path segment (`/admin;x/y`),
/// which servlet containers strip before they route.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum PathParameters {
    /// 400 for a path with `;` in a segment. The default: the gateway cannot
    /// know whether the upstream strips them.
    #[default]
    Reject,
    /// Each segment loses its `;...` before routing and forwarding, as a
    /// servlet container would.
    Strip,
    /// `;` is an ordinary character (routed and forwarded as written).
    Keep,
}

impl PathParameters {
    pub const ALL: [(&'static str, PathParameters); 3] = [
        ("reject", PathParameters::Reject),
        ("strip", PathParameters::Strip),
        ("keep", PathParameters::Keep),
    ];

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL
            .iter()
            .find(|(name, _)| *name == text)
            .map(|(_, v)| *v)
    }
}

/// Per-route metric options. Everything is off by default: the default
/// series are labelled by route and service only, values that come from
/// config, so their number never depends on traffic.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(deny_unknown_fields)]
pub struct RouteMetricsOptions {
    /// Also count this route's requests by consumer
    /// (`tollgate_consumer_requests_total{route, service, consumer, code}`).
    /// Consumer names come from config, so the series stay bounded by the
    /// number of consumers; it is opt-in because that number can be large.
    #[serde(default, skip_serializing_if = "is_default")]
    pub consumer_labels: bool,
}

impl RouteMetricsOptions {
    pub fn is_default(&self) -> bool {
        *self == RouteMetricsOptions::default()
    }
}

/// A header condition on a route: `value` exact (case-sensitive), or mere
/// presence when `value` is absent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// A plugin attached to a route or service. `config` is the plugin's typed
/// configuration as a JSON object; see [`crate::plugins`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PluginInstance {
    pub name: String,
    #[serde(default = "empty_object", skip_serializing_if = "is_empty_object")]
    pub config: serde_json::Value,
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub enabled: bool,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}
fn is_empty_object(value: &serde_json::Value) -> bool {
    matches!(value, serde_json::Value::Object(map) if map.is_empty()) || value.is_null()
}
fn default_true() -> bool {
    true
}
fn is_true(value: &bool) -> bool {
    *value
}

impl PluginInstance {
    pub fn new(name: impl Into<String>, config: serde_json::Value) -> Self {
        PluginInstance {
            name: name.into(),
            config,
            enabled: true,
        }
    }
}

/// A plugin that runs on every route. `instance` names it (defaults to the
/// plugin name), so two global rate limits can coexist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GlobalPlugin {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    pub name: String,
    #[serde(default = "empty_object", skip_serializing_if = "is_empty_object")]
    pub config: serde_json::Value,
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub enabled: bool,
    /// Labels for teams and tools (`tollgatectl apply --select-tag TEAM`
    /// applies and diffs only the entities carrying it); no effect on traffic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

impl GlobalPlugin {
    /// The unique name of this global instance.
    pub fn instance_name(&self) -> &str {
        self.instance.as_deref().unwrap_or(&self.name)
    }
    pub fn as_instance(&self) -> PluginInstance {
        PluginInstance {
            name: self.name.clone(),
            config: self.config.clone(),
            enabled: self.enabled,
        }
    }
}

/// Someone who calls the gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Consumer {
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credentials: Vec<Credential>,
    /// Labels for teams and tools (`tollgatectl apply --select-tag TEAM`
    /// applies and diffs only the entities carrying it); no effect on traffic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

/// One credential; exactly one of the fields is set.
///
/// `api_key` is accepted on write only: the control plane replaces it with
/// `api_key_hash` (`sha256:<hex>`) before anything is stored.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtCredential>,
    /// A client certificate, for `mtls-auth`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<MtlsCredential>,
}

/// Which verified client certificate belongs to a consumer (`mtls-auth`):
/// exactly one field is set. A certificate is matched by its fingerprint
/// first, then a URI SAN, a DNS SAN, and last its subject CN. Nothing here
/// is secret: the certificate proves possession of its key in the handshake.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MtlsCredential {
    /// The subject's common name (exact, case-sensitive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_cn: Option<String>,
    /// A DNS name of the subjectAltName (compared lower-case).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub san_dns: Option<String>,
    /// A URI of the subjectAltName (exact; SPIFFE ids).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub san_uri: Option<String>,
    /// SHA-256 of the leaf's DER, 64 hex digits (colons and a `sha256:`
    /// prefix allowed, case ignored): pins one certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint_sha256: Option<String>,
}

impl MtlsCredential {
    /// `(kind, value)` as the consumer index keys it (values normalized:
    /// DNS names lower-case, fingerprints as bare lower-case hex); `None`
    /// unless exactly one field is set.
    pub fn key(&self) -> Option<(&'static str, String)> {
        let set: Vec<(&'static str, String)> = [
            ("subject_cn", self.subject_cn.clone()),
            (
                "san_dns",
                self.san_dns.as_ref().map(|d| d.to_ascii_lowercase()),
            ),
            ("san_uri", self.san_uri.clone()),
            (
                "fingerprint_sha256",
                self.fingerprint_sha256
                    .as_deref()
                    .map(normalize_fingerprint),
            ),
        ]
        .into_iter()
        .filter_map(|(kind, value)| value.map(|v| (kind, v)))
        .collect();
        match <[(&'static str, String); 1]>::try_from(set) {
            Ok([one]) => Some(one),
            Err(_) => None,
        }
    }
}

/// A SHA-256 fingerprint as bare lower-case hex (`sha256:` prefix and
/// colons removed).
pub fn normalize_fingerprint(text: &str) -> String {
    let text = text.trim();
    let text = text.strip_prefix("sha256:").unwrap_or(text);
    text.chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

impl Credential {
    /// A short, non-secret label for errors: `api_key`, `jwt "issuer"`.
    pub fn kind_label(&self) -> String {
        if self.mtls.is_some() {
            return "mtls".to_string();
        }
        match (&self.api_key, &self.api_key_hash, &self.jwt) {
            (_, _, Some(jwt)) => format!("jwt {:?}", jwt.key),
            (Some(_), _, _) | (_, Some(_), _) => "api_key".to_string(),
            _ => "empty credential".to_string(),
        }
    }
}

/// A JWT verification key for one issuer (or key id).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JwtCredential {
    /// Matched against the token's `iss` claim, or its `kid` header with `key_claim: kid`.
    pub key: String,
    #[serde(default, skip_serializing_if = "is_default")]
    pub key_claim: JwtKeyClaim,
    /// `HS256|HS384|HS512|RS256|RS384|RS512|ES256|ES384|EdDSA`.
    pub algorithm: String,
    /// HMAC secret (HS* only); never returned by reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// `sha256:<hex>` of `secret`; shown by reads, and accepted on write as
    /// "keep the stored secret with this fingerprint".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_fingerprint: Option<String>,
    /// PEM public key for RS*/ES*/EdDSA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum JwtKeyClaim {
    #[default]
    Iss,
    Kid,
}

/// JWT algorithms Tollgate verifies.
pub const JWT_ALGORITHMS: [&str; 9] = [
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "EdDSA",
];

/// A TLS certificate chain and key, served to clients whose SNI is one of
/// `snis` (exact, or `*.example.com`), or to any client without a match
/// when `default` is set. See [`crate::certs`] for what is checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Certificate {
    pub name: String,
    /// PEM chain, leaf first.
    pub cert_pem: String,
    /// Private key PEM (PKCS#8, PKCS#1 or SEC1); never returned by reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_pem: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_fingerprint: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snis: Vec<String>,
    /// Served when no SNI matches (or the client sent none); at most one.
    #[serde(default, skip_serializing_if = "is_default")]
    pub default: bool,
    /// For a CA named by `mtls-auth`'s `ca_certificates`: its certificate
    /// revocation list (PEM, signed by this CA). It travels with the
    /// snapshot, so a new CRL takes effect when the data plane ACKs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crl_pem: Option<String>,
    /// Read-only facts about the leaf, filled in by reads; ignored on write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<CertificateInfo>,
    /// Labels for teams and tools (`tollgatectl apply --select-tag TEAM`
    /// applies and diffs only the entities carrying it); no effect on traffic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

/// What reads show about a certificate's leaf (never anything secret).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CertificateInfo {
    pub subject: String,
    pub issuer: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sans: Vec<String>,
    /// RFC 3339.
    pub not_before: String,
    /// RFC 3339.
    pub not_after: String,
    /// `not_after` in seconds since the Unix epoch.
    pub not_after_unix: i64,
    /// `sha256:<hex>` of the leaf's DER.
    pub fingerprint: String,
}

impl GatewayConfig {
    /// Parses a YAML (or JSON) document.
    pub fn from_yaml(text: &str) -> Result<GatewayConfig, serde_yaml::Error> {
        serde_yaml::from_str(text)
    }

    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).unwrap_or_default()
    }

    /// Sorts every list of entities by name, so exports and diffs are deterministic.
    pub fn sort(&mut self) {
        self.services.sort_by(|a, b| a.name.cmp(&b.name));
        self.routes.sort_by(|a, b| a.name.cmp(&b.name));
        self.consumers.sort_by(|a, b| a.name.cmp(&b.name));
        self.plugins
            .sort_by(|a, b| a.instance_name().cmp(b.instance_name()));
        self.certificates.sort_by(|a, b| a.name.cmp(&b.name));
    }

    /// The config as reads and exports show it: secrets replaced by their
    /// fingerprints, API keys by their hashes. The result re-applies as is.
    pub fn redacted(&self) -> GatewayConfig {
        let mut out = self.clone();
        for consumer in &mut out.consumers {
            consumer.redact();
        }
        for certificate in &mut out.certificates {
            certificate.redact();
        }
        out
    }
}

impl Consumer {
    pub fn redact(&mut self) {
        for credential in &mut self.credentials {
            if let Some(key) = credential.api_key.take() {
                credential.api_key_hash = Some(crate::secrets::hash_api_key(&key));
            }
            if let Some(jwt) = &mut credential.jwt {
                if let Some(secret) = jwt.secret.take() {
                    jwt.secret_fingerprint = Some(crate::secrets::fingerprint(&secret));
                }
            }
        }
    }
}

impl Certificate {
    /// Replaces the key by its fingerprint and fills in [`Certificate::info`].
    pub fn redact(&mut self) {
        if let Some(key) = self.key_pem.take() {
            self.key_fingerprint = Some(crate::secrets::fingerprint(&key));
        }
        self.info = crate::certs::info(&self.cert_pem).ok();
    }
}
