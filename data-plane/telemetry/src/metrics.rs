//! The data plane's Prometheus metrics and their `/metrics` exposition.
//!
//! Why it is shaped this way: every request records several metrics, so the
//! request path must not take a lock that all requests share (a
//! `prometheus-client` `Family` is a `RwLock<HashMap>`). Each compiled route
//! therefore owns a [`RouteMetrics`] built once per snapshot compile, holding
//! its route and service label values and lazily created handles to its
//! series. A handle is created on a series' first use (one family lock, once
//! per series for the life of the process) and cached in a `OnceLock`; every
//! later recording is an atomic load plus relaxed `fetch_add`s. Creating
//! series lazily keeps the exposition to what carried traffic, even with
//! thousands of configured routes.
//!
//! Handles for the same label values share counters, so a new snapshot's
//! `RouteMetrics` continue the old one's counts. Series of routes removed from
//! the config stay in the exposition until restart; their number is bounded by
//! config churn, never by traffic.
//!
//! Label values are bounded: `route` and `service` come from the config (or
//! `none` when nothing matched), `method` is one of the standard methods or
//! `OTHER`, `code` is an HTTP status, `result` and `reason` are small enums.
//!
//! Consumer labels are opt-in per route (`metrics.consumer_labels`) and live
//! in a family of their own, `tollgate_consumer_requests_total`, so routes
//! without the switch never create a consumer series. The consumer value is
//! a consumer name from the config, or `anonymous`; the names are indexed
//! once per snapshot ([`ConsumerNames`]) and each opted-in route keeps one
//! lazily filled slot per consumer, so recording is a hash lookup of the
//! name and atomic operations, with no lock shared by other requests.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use prometheus_client::encoding::{
    EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder, MetricEncoder,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use super::access_log::RouteFields;
use super::histogram::LatencyHistogram;
use super::usage::{self, UsageIndex};
use tollgate_plugin_api::{AuthFailureReason, Phase, PhaseObserver, Refusal, RefusalKind};

/// `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = tollgate_shared::telemetry::PROMETHEUS_CONTENT_TYPE;

/// The `route` and `service` label value of requests no route matched.
pub const UNMATCHED: &str = "none";

/// The `consumer` label value of requests no consumer was authenticated for.
pub const ANONYMOUS_CONSUMER: &str = "anonymous";

/// Distinct status codes cached per (route, consumer); further codes go
/// through the family (one lock per request), which takes an upstream that
/// answers one consumer with more than this many different statuses.
const CONSUMER_CODE_SLOTS: usize = 16;

/// Methods with their own `method` label value; anything else is `OTHER`.
const METHODS: [http::Method; 9] = [
    http::Method::GET,
    http::Method::HEAD,
    http::Method::POST,
    http::Method::PUT,
    http::Method::DELETE,
    http::Method::CONNECT,
    http::Method::OPTIONS,
    http::Method::TRACE,
    http::Method::PATCH,
];
const METHOD_SLOTS: usize = METHODS.len() + 1;
const OTHER_METHOD: &str = "OTHER";

/// Statuses `100..=599` get a cached handle each; others (hyper allows up to
/// 999) go through the family, which never happens with sane upstreams.
const FIRST_CODE: u16 = 100;
const CODE_SLOTS: usize = 500;

/// Outcome of a rate-limit check, the `result` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimitResult {
    /// Under the limit; the request proceeds.
    Allowed,
    /// Over the limit; answered 429.
    Limited,
    /// The limiter could not decide (e.g. its shared store failed) and its
    /// failure policy applied.
    Error,
}

impl RateLimitResult {
    const ALL: [RateLimitResult; 3] = [Self::Allowed, Self::Limited, Self::Error];

    /// The refusal kind of usage reports (`None`: not a refusal).
    fn refusal_kind(self) -> Option<&'static str> {
        match self {
            Self::Allowed => None,
            Self::Limited => Some("rate_limited"),
            Self::Error => Some("rate_limit_error"),
        }
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Limited => "limited",
            Self::Error => "error",
        }
    }
}

/// Why authentication or authorization refused a request, the `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No credential was presented.
    Missing,
    /// A credential was presented but matches no consumer or fails verification.
    Invalid,
    /// A token that was valid once has expired (or is not valid yet).
    Expired,
    /// The consumer is known but not allowed on this route (ACL).
    Forbidden,
}

impl AuthFailure {
    const ALL: [AuthFailure; 4] = [Self::Missing, Self::Invalid, Self::Expired, Self::Forbidden];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing_credential",
            Self::Invalid => "invalid_credential",
            Self::Expired => "expired_credential",
            Self::Forbidden => "forbidden",
        }
    }
}

/// A shared, escaped label value (`Arc<str>` has no `EncodeLabelValue`, and
/// `prometheus-client` does not escape).
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct Label(Arc<str>);

impl EncodeLabelValue for Label {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        tollgate_shared::telemetry::write_label_value(encoder, &self.0)
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: Label,
    service: Label,
    method: &'static str,
    code: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConsumerRequestLabels {
    route: Label,
    service: Label,
    consumer: Label,
    code: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: Label,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RateLimitLabels {
    route: Label,
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RateLimitInstanceLabels {
    instance: Label,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RateLimitSyncLabels {
    instance: Label,
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuthFailureLabels {
    route: Label,
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CompileLabels {
    mode: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreLabels {
    store_id: Label,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandshakeLabels {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabels {
    worker: u32,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertificateLabels {
    certificate: Label,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    service: Label,
    target: Label,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetStateLabels {
    service: Label,
    target: Label,
    state: &'static str,
}

/// How a client TLS handshake ended, the `result` label of
/// `tollgate_tls_handshakes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeResult {
    Ok,
    /// No certificate for the client's SNI and no default (or no
    /// certificates at all): refused with an alert.
    NoCertificate,
    /// The client spoke something we refuse (TLS 1.0/1.1, no common cipher
    /// suite, a malformed message) or the connection failed mid-handshake.
    Protocol,
    /// The client aborted with an alert (e.g. it did not trust our certificate).
    Alert,
    /// The handshake did not finish within the header-read timeout.
    Timeout,
}

impl HandshakeResult {
    const ALL: [HandshakeResult; 5] = [
        Self::Ok,
        Self::NoCertificate,
        Self::Protocol,
        Self::Alert,
        Self::Timeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::NoCertificate => "no_certificate",
            Self::Protocol => "protocol",
            Self::Alert => "alert",
            Self::Timeout => "timeout",
        }
    }
}

/// The per-route metric families; [`RouteMetrics`] resolve their series here.
#[derive(Debug, Default)]
struct Families {
    requests: Family<RequestLabels, Counter>,
    consumer_requests: Family<ConsumerRequestLabels, Counter>,
    request_duration: Family<RouteLabels, LatencyHistogram>,
    upstream_duration: Family<RouteLabels, LatencyHistogram>,
    bytes_in: Family<RouteLabels, Counter>,
    bytes_out: Family<RouteLabels, Counter>,
    upstream_body_errors: Family<RouteLabels, Counter>,
    rate_limit: Family<RateLimitLabels, Counter>,
    auth_failures: Family<AuthFailureLabels, Counter>,
    websocket_upgrades: Family<RouteLabels, Counter>,
    websocket_tunnels: Family<RouteLabels, Gauge>,
    /// The series usage reports read (registered as handles are created).
    usage: UsageIndex,
}

/// Handle creation: the family's series, registered for usage reports. Only
/// on a series' first use by a route's metrics (and on the rare uncached
/// paths), never per request on the cached ones.
impl Families {
    fn requests(&self, labels: &RequestLabels) -> Counter {
        let counter = self.requests.get_or_create(labels).clone();
        self.usage.request(
            &labels.route.0,
            &labels.service.0,
            labels.method,
            labels.code,
            &counter,
        );
        counter
    }

    fn consumer_requests(&self, labels: &ConsumerRequestLabels) -> Counter {
        let counter = self.consumer_requests.get_or_create(labels).clone();
        self.usage.consumer_request(
            &labels.route.0,
            &labels.service.0,
            &labels.consumer.0,
            labels.code,
            &counter,
        );
        counter
    }
}

/// All data-plane metrics, registered once at startup.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    families: Arc<Families>,
    open_connections: Gauge,
    /// `tollgate_connections_accepted_total{worker}`: one series per proxy
    /// worker, resolved once when the worker starts ([`Metrics::worker_accepts`]).
    connections_accepted: Family<WorkerLabels, Counter>,
    config_version: Family<StoreLabels, Gauge>,
    config_age: ConfigAge,
    config_compiles: Family<CompileLabels, Counter>,
    control_plane_connected: Gauge,
    access_log_dropped: Counter,
    unmatched: Arc<RouteMetrics>,
    /// One handle per [`HandshakeResult`], resolved at startup.
    tls_handshakes: [Counter; HandshakeResult::ALL.len()],
    certificate_expiry: Family<CertificateLabels, Gauge>,
    target_state: Family<TargetStateLabels, Gauge>,
    target_ejections: Family<TargetLabels, Counter>,
    retries: Family<ServiceLabels, Counter>,
    rate_limit_overshoot: Family<RateLimitInstanceLabels, Gauge>,
    rate_limit_overshoot_max: Family<RateLimitInstanceLabels, Gauge>,
    rate_limit_syncs: Family<RateLimitSyncLabels, Counter>,
}

/// The handles of one `sync: batched` rate limit (see
/// [`Metrics::rate_limit_sync`]).
#[derive(Debug, Clone)]
pub struct RateLimitSyncMetrics {
    /// Requests over the limit the fleet's counters showed at the last sync
    /// (largest over the counters synced then).
    pub overshoot: Gauge,
    /// The largest such overshoot since the data plane started.
    pub overshoot_max: Gauge,
    pub syncs_ok: Counter,
    pub syncs_failed: Counter,
}

impl RateLimitSyncMetrics {
    /// Records the overshoot seen at one sync.
    pub fn observe_overshoot(&self, requests: u64) {
        let requests = i64::try_from(requests).unwrap_or(i64::MAX);
        self.overshoot.set(requests);
        // Gauges have no fetch_max; a sync loop is the only writer per instance.
        if requests > self.overshoot_max.get() {
            self.overshoot_max.set(requests);
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: Label,
}

/// The process's metrics, created on first use. One registry per process is
/// what one `/metrics` endpoint exposes; a global spares threading a handle
/// through snapshot compilation, the proxy and the status server.
pub fn global() -> &'static Arc<Metrics> {
    static GLOBAL: OnceLock<Arc<Metrics>> = OnceLock::new();
    GLOBAL.get_or_init(Metrics::new)
}

impl Metrics {
    /// Builds and registers every metric family.
    pub fn new() -> Arc<Self> {
        let families = Arc::new(Families::default());
        let open_connections = Gauge::default();
        let connections_accepted = Family::<WorkerLabels, Counter>::default();
        let config_version = Family::<StoreLabels, Gauge>::default();
        let config_age = ConfigAge::new();
        let config_compiles = Family::<CompileLabels, Counter>::default();
        let control_plane_connected = Gauge::default();
        let access_log_dropped = Counter::default();

        let mut registry = Registry::with_prefix("tollgate");
        registry.register(
            "requests",
            "Requests answered, by route, service, method and status code",
            families.requests.clone(),
        );
        registry.register(
            "consumer_requests",
            "Requests answered on routes with metrics.consumer_labels on, by route, service, \
             consumer (anonymous when none was authenticated) and status code",
            families.consumer_requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request received to response fully sent, by route",
            families.request_duration.clone(),
        );
        registry.register(
            "upstream_duration_seconds",
            "Time from upstream request sent to upstream response head received, by route",
            families.upstream_duration.clone(),
        );
        registry.register(
            "request_bytes",
            "Request body bytes received from clients, by route",
            families.bytes_in.clone(),
        );
        registry.register(
            "response_bytes",
            "Response body bytes sent to clients, by route",
            families.bytes_out.clone(),
        );
        registry.register(
            "upstream_body_errors",
            "Responses whose upstream body broke off after the head was sent (the client got a cut response), by route",
            families.upstream_body_errors.clone(),
        );
        registry.register(
            "websocket_upgrades",
            "WebSocket upgrades relayed (the upstream answered 101 and a tunnel was opened), by route",
            families.websocket_upgrades.clone(),
        );
        registry.register(
            "websocket_tunnels",
            "WebSocket tunnels currently open, by route",
            families.websocket_tunnels.clone(),
        );
        registry.register(
            "open_connections",
            "Client connections currently open",
            open_connections.clone(),
        );
        registry.register(
            "connections_accepted",
            "Client connections accepted, by proxy worker (--worker-threads): \
             how evenly the listening sockets spread connections",
            connections_accepted.clone(),
        );
        registry.register(
            "rate_limit_decisions",
            "Rate-limit decisions, by route and result",
            families.rate_limit.clone(),
        );
        registry.register(
            "auth_failures",
            "Requests refused by authentication or authorization, by route and reason",
            families.auth_failures.clone(),
        );
        registry.register(
            "config_version",
            "Revision of the config in service, labelled with the control plane store it came from",
            config_version.clone(),
        );
        registry.register(
            "config_age_seconds",
            "Seconds since the config in service was applied (NaN before the first)",
            config_age.clone(),
        );
        registry.register(
            "config_compiles",
            "Config deltas compiled, by mode: incremental (only what the delta touched) or whole",
            config_compiles.clone(),
        );
        registry.register(
            "control_plane_connected",
            "1 while the config stream to the control plane is up, else 0",
            control_plane_connected.clone(),
        );
        registry.register(
            "access_log_dropped",
            "Access-log lines dropped because the writer fell behind",
            access_log_dropped.clone(),
        );

        let handshakes = Family::<HandshakeLabels, Counter>::default();
        registry.register(
            "tls_handshakes",
            "Client TLS handshakes on --tls-listen, by result \
             (ok, no_certificate, protocol, alert, timeout)",
            handshakes.clone(),
        );
        let tls_handshakes = HandshakeResult::ALL.map(|result| {
            handshakes
                .get_or_create(&HandshakeLabels {
                    result: result.as_str(),
                })
                .clone()
        });
        let certificate_expiry = Family::<CertificateLabels, Gauge>::default();
        registry.register(
            "certificate_expiry_seconds",
            "When each certificate of the config in service expires (its leaf's notAfter), \
             in seconds since the Unix epoch",
            certificate_expiry.clone(),
        );

        let target_state = Family::<TargetStateLabels, Gauge>::default();
        registry.register(
            "upstream_target_state",
            "1 for each upstream target's current health state (healthy, ejected: passively \
             ejected, unhealthy: failing its active probes), by service and target",
            target_state.clone(),
        );
        let target_ejections = Family::<TargetLabels, Counter>::default();
        registry.register(
            "upstream_ejections",
            "Passive ejections of upstream targets after consecutive failures, by service and target",
            target_ejections.clone(),
        );
        let retries = Family::<ServiceLabels, Counter>::default();
        registry.register(
            "upstream_retries",
            "Upstream tries beyond the first, by service",
            retries.clone(),
        );
        let rate_limit_overshoot = Family::<RateLimitInstanceLabels, Gauge>::default();
        registry.register(
            "rate_limit_sync_overshoot",
            "sync: batched rate limits: requests over the limit the fleet's counters showed at the \
             last sync (largest over the counters synced), by rate-limit instance",
            rate_limit_overshoot.clone(),
        );
        let rate_limit_overshoot_max = Family::<RateLimitInstanceLabels, Gauge>::default();
        registry.register(
            "rate_limit_sync_overshoot_max",
            "sync: batched rate limits: the largest overshoot seen at any sync since start, \
             by rate-limit instance",
            rate_limit_overshoot_max.clone(),
        );
        let rate_limit_syncs = Family::<RateLimitSyncLabels, Counter>::default();
        registry.register(
            "rate_limit_syncs",
            "sync: batched rate limits: pipelined Redis syncs, by rate-limit instance and result (ok, error)",
            rate_limit_syncs.clone(),
        );

        let unmatched = Arc::new(RouteMetrics::new(
            Arc::clone(&families),
            Arc::from(UNMATCHED),
            Arc::from(UNMATCHED),
        ));
        Arc::new(Self {
            registry,
            families,
            open_connections,
            connections_accepted,
            config_version,
            config_age,
            config_compiles,
            control_plane_connected,
            access_log_dropped,
            unmatched,
            tls_handshakes,
            certificate_expiry,
            target_state,
            target_ejections,
            retries,
            rate_limit_overshoot,
            rate_limit_overshoot_max,
            rate_limit_syncs,
        })
    }

    /// Counts a passive ejection (rare: once per failure streak).
    pub fn target_ejected(&self, service: &str, target: &str) {
        self.target_ejections
            .get_or_create(&TargetLabels {
                service: Label(Arc::from(service)),
                target: Label(Arc::from(target)),
            })
            .inc();
    }

    /// Counts a retry (only on the failure path).
    pub fn retried(&self, service: &str) {
        self.retries
            .get_or_create(&ServiceLabels {
                service: Label(Arc::from(service)),
            })
            .inc();
    }

    /// Replaces the target-state series with the current states
    /// `(service, target, state)`; called when `/metrics` is scraped, so
    /// an ejection that ran out shows as healthy without any event.
    pub fn set_target_states<'a>(
        &self,
        states: impl IntoIterator<Item = (&'a str, &'a str, &'static str)>,
    ) {
        self.target_state.clear();
        for (service, target, state) in states {
            self.target_state
                .get_or_create(&TargetStateLabels {
                    service: Label(Arc::from(service)),
                    target: Label(Arc::from(target)),
                    state,
                })
                .set(1);
        }
    }

    /// The handles of one `sync: batched` rate-limit instance; call when the
    /// limit is built, not per sync.
    pub fn rate_limit_sync(&self, instance: &str) -> RateLimitSyncMetrics {
        let labels = RateLimitInstanceLabels {
            instance: Label(Arc::from(instance)),
        };
        let result = |result| RateLimitSyncLabels {
            instance: labels.instance.clone(),
            result,
        };
        // One statement each: `get_or_create` hands back a read guard on
        // the family, which a second call in the same statement would wait on.
        let overshoot = self.rate_limit_overshoot.get_or_create(&labels).clone();
        let overshoot_max = self.rate_limit_overshoot_max.get_or_create(&labels).clone();
        let syncs_ok = self.rate_limit_syncs.get_or_create(&result("ok")).clone();
        let syncs_failed = self
            .rate_limit_syncs
            .get_or_create(&result("error"))
            .clone();
        RateLimitSyncMetrics {
            overshoot,
            overshoot_max,
            syncs_ok,
            syncs_failed,
        }
    }

    /// Counts one client TLS handshake (a relaxed add, no lock).
    pub fn tls_handshake(&self, result: HandshakeResult) {
        self.tls_handshakes[result as usize].inc();
    }

    /// Replaces the certificate expiry series with those of the config now
    /// in service: `(certificate name, notAfter as Unix seconds)`.
    pub fn set_certificate_expiry<'a>(
        &self,
        certificates: impl IntoIterator<Item = (&'a str, i64)>,
    ) {
        self.certificate_expiry.clear();
        for (name, not_after) in certificates {
            self.certificate_expiry
                .get_or_create(&CertificateLabels {
                    certificate: Label(Arc::from(name)),
                })
                .set(not_after);
        }
    }

    /// The handles of one route; call when a snapshot compiles, not per request.
    pub fn route(&self, route: &str, service: &str) -> Arc<RouteMetrics> {
        Arc::new(RouteMetrics::new(
            Arc::clone(&self.families),
            Arc::from(route),
            Arc::from(service),
        ))
    }

    /// The handles of a route with `metrics.consumer_labels` on: as
    /// [`Metrics::route`], and its requests are also counted by consumer.
    /// `consumers` is the snapshot's index of consumer names.
    pub fn route_with_consumers(
        &self,
        route: &str,
        service: &str,
        consumers: &Arc<ConsumerNames>,
    ) -> Arc<RouteMetrics> {
        let mut metrics = RouteMetrics::new(
            Arc::clone(&self.families),
            Arc::from(route),
            Arc::from(service),
        );
        metrics.consumers = Some(Box::new(ConsumerSeries::new(consumers)));
        Arc::new(metrics)
    }

    /// The handles for requests no route matched (or refused before routing).
    pub fn unmatched(&self) -> &Arc<RouteMetrics> {
        &self.unmatched
    }

    /// Counts a client connection as open until the guard drops.
    pub fn connection_opened(&self) -> ConnectionGuard {
        self.open_connections.inc();
        ConnectionGuard {
            gauge: self.open_connections.clone(),
        }
    }

    /// The accepted-connections counter of proxy worker `worker` (0 is the
    /// first), created once per worker; each accept is then one atomic add.
    pub fn worker_accepts(&self, worker: usize) -> Counter {
        self.connections_accepted
            .get_or_create(&WorkerLabels {
                worker: u32::try_from(worker).unwrap_or(u32::MAX),
            })
            .clone()
    }

    /// Records that a config went into service.
    pub fn config_applied(&self, store_id: &str, revision: u64) {
        self.config_version.clear();
        self.config_version
            .get_or_create(&StoreLabels {
                store_id: Label(Arc::from(store_id)),
            })
            .set(i64::try_from(revision).unwrap_or(i64::MAX));
        self.config_age.mark_now();
    }

    /// Counts a config delta compiled `mode` (`incremental` or `whole`).
    pub fn config_compiled(&self, mode: &'static str) {
        self.config_compiles
            .get_or_create(&CompileLabels { mode })
            .inc();
    }

    /// Records the config stream's state.
    pub fn set_control_plane_connected(&self, connected: bool) {
        self.control_plane_connected.set(i64::from(connected));
    }

    /// The counter the access-log writer bumps for each dropped line.
    pub fn access_log_dropped(&self) -> Counter {
        self.access_log_dropped.clone()
    }

    /// A usage report for the control plane: every route's and consumer's
    /// counts so far (cumulative), read from the counters above.
    pub fn usage_report(
        &self,
        instance_id: &str,
        sequence: u64,
    ) -> tollgate_shared::proto::stream::UsageReport {
        self.families.usage.report(instance_id, sequence)
    }

    /// The exposition for `GET /metrics`, in the Prometheus text format
    /// (see [`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut text = String::with_capacity(16 * 1024);
        if let Err(err) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            // Only a label value's `Display` could fail; ours are plain strings.
            tracing::error!(error = %err, "cannot encode metrics");
        }
        tollgate_shared::telemetry::prometheus_text_from_openmetrics(&text)
    }
}

/// Keeps the open-connections gauge up while a client connection lives.
#[derive(Debug)]
pub struct ConnectionGuard {
    gauge: Gauge,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Keeps a route's open-tunnels gauge up while a WebSocket tunnel lives.
#[derive(Debug)]
pub struct TunnelGuard {
    gauge: Gauge,
}

impl Drop for TunnelGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// One route's series, resolved lazily and cached (see the module docs).
#[derive(Debug)]
pub struct RouteMetrics {
    families: Arc<Families>,
    route: Label,
    service: Label,
    /// Per method slot, a table of per-status counters allocated on first use.
    requests: [OnceLock<Box<[OnceLock<Counter>]>>; METHOD_SLOTS],
    request_duration: OnceLock<LatencyHistogram>,
    upstream_duration: OnceLock<LatencyHistogram>,
    bytes_in: OnceLock<Counter>,
    bytes_out: OnceLock<Counter>,
    upstream_body_errors: OnceLock<Counter>,
    rate_limit: [OnceLock<Counter>; RateLimitResult::ALL.len()],
    auth_failures: [OnceLock<Counter>; AuthFailure::ALL.len()],
    /// Per-consumer counters; `Some` only with `metrics.consumer_labels` on.
    consumers: Option<Box<ConsumerSeries>>,
    /// The route's fields of an access-log line, rendered with its labels.
    log_fields: RouteFields,
}

impl RouteMetrics {
    fn new(families: Arc<Families>, route: Arc<str>, service: Arc<str>) -> Self {
        Self {
            log_fields: RouteFields::new(&route, &service),
            families,
            route: Label(route),
            service: Label(service),
            requests: Default::default(),
            request_duration: OnceLock::new(),
            upstream_duration: OnceLock::new(),
            bytes_in: OnceLock::new(),
            bytes_out: OnceLock::new(),
            upstream_body_errors: OnceLock::new(),
            rate_limit: Default::default(),
            auth_failures: Default::default(),
            consumers: None,
        }
    }

    /// Whether this route counts requests by consumer (the exchange then
    /// keeps the consumer's name for [`RouteMetrics::record_consumer_request`]).
    #[inline]
    pub fn counts_consumers(&self) -> bool {
        self.consumers.is_some()
    }

    /// Counts an answered request by consumer (`None`: no consumer was
    /// authenticated, counted as `anonymous`). A no-op unless the route has
    /// `metrics.consumer_labels` on.
    #[inline]
    pub fn record_consumer_request(&self, consumer: Option<&str>, status: u16) {
        let Some(series) = &self.consumers else {
            return;
        };
        let labels = |consumer: Label| ConsumerRequestLabels {
            route: self.route.clone(),
            service: self.service.clone(),
            consumer,
            code: status,
        };
        match series.slot(consumer) {
            Some((label, codes)) => {
                let codes = codes.get_or_init(Box::default);
                // Slots fill in first-use order; a slot taken by another code
                // is skipped. Each is set once, so this is atomic loads only.
                for cell in codes.iter() {
                    let (code, counter) = cell.get_or_init(|| {
                        let counter = self.families.consumer_requests(&labels(label.clone()));
                        (status, counter)
                    });
                    if *code == status {
                        counter.inc();
                        return;
                    }
                }
                self.families
                    .consumer_requests(&labels(label.clone()))
                    .inc();
            }
            // A name missing from the snapshot's index cannot come from its
            // consumer index; still counted, through the family.
            None => {
                if let Some(name) = consumer {
                    self.families
                        .consumer_requests(&labels(Label(Arc::from(name))))
                        .inc();
                }
            }
        }
    }

    /// The `route` label value.
    pub fn route(&self) -> &Arc<str> {
        &self.route.0
    }

    /// The `service` label value.
    pub fn service(&self) -> &Arc<str> {
        &self.service.0
    }

    /// The route's `route` and `service` fields of an access-log line.
    pub fn log_fields(&self) -> &RouteFields {
        &self.log_fields
    }

    /// Records an answered request: its count by method and status, and its
    /// total duration.
    #[inline]
    pub fn record_request(&self, method: &http::Method, status: u16, elapsed: Duration) {
        self.count_request(method, status);
        self.request_duration
            .get_or_init(|| {
                let histogram = self
                    .families
                    .request_duration
                    .get_or_create(&self.route_labels())
                    .clone();
                self.families.usage.latency(
                    &self.route.0,
                    &self.service.0,
                    usage::Latency::Total,
                    &histogram,
                );
                histogram
            })
            .observe(elapsed);
    }

    /// Records how long the upstream took to answer with a response head.
    #[inline]
    pub fn record_upstream(&self, elapsed: Duration) {
        self.upstream_duration
            .get_or_init(|| {
                let histogram = self
                    .families
                    .upstream_duration
                    .get_or_create(&self.route_labels())
                    .clone();
                self.families.usage.latency(
                    &self.route.0,
                    &self.service.0,
                    usage::Latency::Upstream,
                    &histogram,
                );
                histogram
            })
            .observe(elapsed);
    }

    /// Adds request body bytes received from the client.
    #[inline]
    pub fn add_bytes_in(&self, bytes: u64) {
        self.bytes_in
            .get_or_init(|| {
                let counter = self
                    .families
                    .bytes_in
                    .get_or_create(&self.route_labels())
                    .clone();
                self.families.usage.bytes(
                    &self.route.0,
                    &self.service.0,
                    usage::Bytes::In,
                    &counter,
                );
                counter
            })
            .inc_by(bytes);
    }

    /// Adds response body bytes sent to the client.
    #[inline]
    pub fn add_bytes_out(&self, bytes: u64) {
        self.bytes_out
            .get_or_init(|| {
                let counter = self
                    .families
                    .bytes_out
                    .get_or_create(&self.route_labels())
                    .clone();
                self.families.usage.bytes(
                    &self.route.0,
                    &self.service.0,
                    usage::Bytes::Out,
                    &counter,
                );
                counter
            })
            .inc_by(bytes);
    }

    /// Counts a response whose upstream body broke off mid-stream.
    pub fn record_upstream_body_error(&self) {
        self.upstream_body_errors
            .get_or_init(|| {
                self.families
                    .upstream_body_errors
                    .get_or_create(&self.route_labels())
                    .clone()
            })
            .inc();
    }

    /// Counts a WebSocket upgrade and keeps the route's open-tunnels gauge
    /// up until the guard drops (when the tunnel closes). Tunnels are rare
    /// next to requests, so the series are looked up here, not cached.
    pub fn tunnel_opened(&self) -> TunnelGuard {
        let labels = self.route_labels();
        self.families
            .websocket_upgrades
            .get_or_create(&labels)
            .inc();
        let gauge = self
            .families
            .websocket_tunnels
            .get_or_create(&labels)
            .clone();
        gauge.inc();
        TunnelGuard { gauge }
    }

    /// Records a rate-limit decision.
    #[inline]
    pub fn record_rate_limit(&self, result: RateLimitResult) {
        let index = result as usize;
        if let Some(cell) = self.rate_limit.get(index) {
            cell.get_or_init(|| {
                let counter = self
                    .families
                    .rate_limit
                    .get_or_create(&RateLimitLabels {
                        route: self.route.clone(),
                        result: result.as_str(),
                    })
                    .clone();
                if let Some(kind) = result.refusal_kind() {
                    self.families
                        .usage
                        .refusal(&self.route.0, &self.service.0, kind, &counter);
                }
                counter
            })
            .inc();
        }
    }

    /// Records a request refused by authentication or authorization.
    #[inline]
    pub fn record_auth_failure(&self, reason: AuthFailure) {
        let index = reason as usize;
        if let Some(cell) = self.auth_failures.get(index) {
            cell.get_or_init(|| {
                let counter = self
                    .families
                    .auth_failures
                    .get_or_create(&AuthFailureLabels {
                        route: self.route.clone(),
                        reason: reason.as_str(),
                    })
                    .clone();
                self.families.usage.refusal(
                    &self.route.0,
                    &self.service.0,
                    reason.as_str(),
                    &counter,
                );
                counter
            })
            .inc();
        }
    }

    fn route_labels(&self) -> RouteLabels {
        RouteLabels {
            route: self.route.clone(),
        }
    }

    /// Increments the (method, status) counter through its cached handle.
    #[inline]
    fn count_request(&self, method: &http::Method, status: u16) {
        let slot = METHODS
            .iter()
            .position(|m| m == method)
            .unwrap_or(METHODS.len());
        let labels = || RequestLabels {
            route: self.route.clone(),
            service: self.service.clone(),
            method: METHODS.get(slot).map_or(OTHER_METHOD, method_label),
            code: status,
        };
        let code_slot = usize::from(status.wrapping_sub(FIRST_CODE));
        let cell = match self.requests.get(slot) {
            Some(table) if code_slot < CODE_SLOTS => table
                .get_or_init(|| (0..CODE_SLOTS).map(|_| OnceLock::new()).collect())
                .get(code_slot),
            _ => None,
        };
        match cell {
            Some(cell) => {
                cell.get_or_init(|| self.families.requests(&labels())).inc();
            }
            None => {
                self.families.requests(&labels()).inc();
            }
        }
    }
}

/// The consumer names of one snapshot, indexed once when it compiles and
/// shared by every route that counts requests by consumer.
#[derive(Debug)]
pub struct ConsumerNames {
    index: HashMap<Arc<str>, usize>,
    /// By index; the last one is [`ANONYMOUS_CONSUMER`].
    labels: Box<[Label]>,
}

impl ConsumerNames {
    /// Indexes `names` (the config's consumer names; duplicates collapse).
    pub fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> Arc<Self> {
        let mut index = HashMap::new();
        let mut labels = Vec::new();
        for name in names {
            if !index.contains_key(name) {
                let name: Arc<str> = Arc::from(name);
                index.insert(Arc::clone(&name), labels.len());
                labels.push(Label(name));
            }
        }
        labels.push(Label(Arc::from(ANONYMOUS_CONSUMER)));
        Arc::new(Self {
            index,
            labels: labels.into_boxed_slice(),
        })
    }
}

/// One status-code counter per slot, first come first served.
type CodeCounters = [OnceLock<(u16, Counter)>; CONSUMER_CODE_SLOTS];

/// A route's per-consumer counters: one slot per consumer of the snapshot
/// (plus `anonymous`), each allocated on the consumer's first request.
#[derive(Debug)]
struct ConsumerSeries {
    names: Arc<ConsumerNames>,
    slots: Box<[OnceLock<Box<CodeCounters>>]>,
}

impl ConsumerSeries {
    fn new(names: &Arc<ConsumerNames>) -> Self {
        Self {
            names: Arc::clone(names),
            slots: (0..names.labels.len()).map(|_| OnceLock::new()).collect(),
        }
    }

    /// The label and counters of `consumer` (`None`: anonymous); `None` for
    /// a name the snapshot does not know.
    #[inline]
    fn slot(&self, consumer: Option<&str>) -> Option<(&Label, &OnceLock<Box<CodeCounters>>)> {
        let index = match consumer {
            Some(name) => *self.names.index.get(name)?,
            None => self.names.labels.len().checked_sub(1)?,
        };
        Some((self.names.labels.get(index)?, self.slots.get(index)?))
    }
}

/// `&'static` label value of a standard method.
fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::HEAD => "HEAD",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::CONNECT => "CONNECT",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::TRACE => "TRACE",
        http::Method::PATCH => "PATCH",
        _ => OTHER_METHOD,
    }
}

/// A gauge computed at scrape time: seconds since the last config was applied.
#[derive(Debug, Clone)]
struct ConfigAge {
    base: Instant,
    /// Milliseconds after `base` of the last apply, plus one (0 = never).
    applied_at: Arc<AtomicU64>,
}

impl ConfigAge {
    fn new() -> Self {
        Self {
            base: Instant::now(),
            applied_at: Arc::new(AtomicU64::new(0)),
        }
    }

    fn mark_now(&self) {
        let millis = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.applied_at.store(millis + 1, Ordering::Relaxed);
    }

    fn seconds(&self) -> f64 {
        match self.applied_at.load(Ordering::Relaxed) {
            0 => f64::NAN,
            at => {
                let now = self.base.elapsed().as_millis() as f64;
                ((now - (at - 1) as f64) / 1000.0).max(0.0)
            }
        }
    }
}

impl TypedMetric for ConfigAge {
    const TYPE: MetricType = MetricType::Gauge;
}

impl EncodeMetric for ConfigAge {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_gauge(&self.seconds())
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// What the plugin chain tells a route's metrics: rate-limit decisions and
/// auth refusals, classified by the refusal's kind (never by its body).
impl PhaseObserver for RouteMetrics {
    fn observe(&self, phase: Phase, refusal: Option<&Refusal>) {
        match (phase, refusal) {
            (Phase::RateLimit, None) => self.record_rate_limit(RateLimitResult::Allowed),
            (Phase::RateLimit, Some(refusal)) => self.record_rate_limit(
                if matches!(
                    refusal.kind,
                    RefusalKind::RateLimited
                        | RefusalKind::ConcurrencyLimited
                        | RefusalKind::ConcurrencyBusy
                ) {
                    RateLimitResult::Limited
                } else {
                    RateLimitResult::Error
                },
            ),
            (Phase::Authenticate | Phase::Authorize, Some(refusal)) => {
                if let Some(reason) = refusal.kind.auth_failure() {
                    self.record_auth_failure(AuthFailure::from(reason));
                }
            }
            _ => {}
        }
    }
}

impl From<AuthFailureReason> for AuthFailure {
    fn from(reason: AuthFailureReason) -> Self {
        match reason {
            AuthFailureReason::Missing => AuthFailure::Missing,
            AuthFailureReason::Invalid => AuthFailure::Invalid,
            AuthFailureReason::Expired => AuthFailure::Expired,
            AuthFailureReason::Forbidden => AuthFailure::Forbidden,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Parses the exposition into `name{sorted labels}` -> value.
    fn samples(text: &str) -> HashMap<String, f64> {
        let mut map = HashMap::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (key, value) = line.rsplit_once(' ').unwrap_or((line, "NaN"));
            map.insert(key.to_owned(), value.parse().unwrap_or(f64::NAN));
        }
        map
    }

    #[test]
    fn route_requests_are_counted_by_method_and_code() {
        let metrics = Metrics::new();
        let orders = metrics.route("orders", "orders-svc");
        for _ in 0..3 {
            orders.record_request(&http::Method::GET, 200, Duration::from_millis(2));
        }
        orders.record_request(&http::Method::POST, 404, Duration::from_millis(1));
        orders.record_request(
            &http::Method::from_bytes(b"PURGE").unwrap_or_default(),
            200,
            Duration::ZERO,
        );
        metrics
            .unmatched()
            .record_request(&http::Method::GET, 404, Duration::ZERO);
        let text = metrics.render();
        let s = samples(&text);
        assert_eq!(
            s.get(r#"tollgate_requests_total{route="orders",service="orders-svc",method="GET",code="200"}"#),
            Some(&3.0),
            "{text}"
        );
        assert_eq!(
            s.get(r#"tollgate_requests_total{route="orders",service="orders-svc",method="POST",code="404"}"#),
            Some(&1.0)
        );
        assert_eq!(
            s.get(r#"tollgate_requests_total{route="orders",service="orders-svc",method="OTHER",code="200"}"#),
            Some(&1.0)
        );
        assert_eq!(
            s.get(
                r#"tollgate_requests_total{route="none",service="none",method="GET",code="404"}"#
            ),
            Some(&1.0)
        );
        assert_eq!(
            s.get(r#"tollgate_request_duration_seconds_count{route="orders"}"#),
            Some(&5.0)
        );
        assert_eq!(
            s.get(r#"tollgate_request_duration_seconds_bucket{le="0.001",route="orders"}"#),
            Some(&2.0)
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let metrics = Metrics::new();
        metrics.route("we\"ird\nroute", "s").record_request(
            &http::Method::GET,
            200,
            Duration::ZERO,
        );
        let text = metrics.render();
        assert!(
            text.contains(r#"tollgate_requests_total{route="we\"ird\nroute",service="s",method="GET",code="200"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn a_recompiled_route_continues_the_same_series() {
        let metrics = Metrics::new();
        metrics
            .route("a", "s")
            .record_request(&http::Method::GET, 200, Duration::ZERO);
        metrics
            .route("a", "s")
            .record_request(&http::Method::GET, 200, Duration::ZERO);
        let s = samples(&metrics.render());
        assert_eq!(
            s.get(r#"tollgate_requests_total{route="a",service="s",method="GET",code="200"}"#),
            Some(&2.0)
        );
    }

    #[test]
    fn unusual_status_codes_are_still_counted() {
        let metrics = Metrics::new();
        let route = metrics.route("a", "s");
        route.record_request(&http::Method::GET, 799, Duration::ZERO);
        route.record_request(&http::Method::GET, 799, Duration::ZERO);
        let s = samples(&metrics.render());
        assert_eq!(
            s.get(r#"tollgate_requests_total{route="a",service="s",method="GET",code="799"}"#),
            Some(&2.0)
        );
    }

    #[test]
    fn series_appear_only_once_used() {
        let metrics = Metrics::new();
        let _route = metrics.route("idle", "s");
        let text = metrics.render();
        assert!(!text.contains("idle"), "{text}");
    }

    #[test]
    fn upstream_bytes_rate_limit_and_auth_are_recorded() {
        let metrics = Metrics::new();
        let route = metrics.route("r", "s");
        route.record_upstream(Duration::from_millis(30));
        route.add_bytes_in(100);
        route.add_bytes_in(23);
        route.add_bytes_out(7);
        route.record_rate_limit(RateLimitResult::Allowed);
        route.record_rate_limit(RateLimitResult::Limited);
        route.record_rate_limit(RateLimitResult::Limited);
        route.record_auth_failure(AuthFailure::Missing);
        route.record_auth_failure(AuthFailure::Forbidden);
        let text = metrics.render();
        let s = samples(&text);
        let get = |k: &str| s.get(k).copied();
        assert_eq!(
            get(r#"tollgate_upstream_duration_seconds_count{route="r"}"#),
            Some(1.0)
        );
        assert_eq!(
            get(r#"tollgate_upstream_duration_seconds_bucket{le="0.025",route="r"}"#),
            Some(0.0)
        );
        assert_eq!(
            get(r#"tollgate_upstream_duration_seconds_bucket{le="0.05",route="r"}"#),
            Some(1.0)
        );
        assert_eq!(
            get(r#"tollgate_request_bytes_total{route="r"}"#),
            Some(123.0)
        );
        assert_eq!(
            get(r#"tollgate_response_bytes_total{route="r"}"#),
            Some(7.0)
        );
        assert_eq!(
            get(r#"tollgate_rate_limit_decisions_total{route="r",result="allowed"}"#),
            Some(1.0)
        );
        assert_eq!(
            get(r#"tollgate_rate_limit_decisions_total{route="r",result="limited"}"#),
            Some(2.0)
        );
        assert_eq!(
            get(r#"tollgate_auth_failures_total{route="r",reason="missing_credential"}"#),
            Some(1.0)
        );
        assert_eq!(
            get(r#"tollgate_auth_failures_total{route="r",reason="forbidden"}"#),
            Some(1.0)
        );
    }

    #[test]
    fn node_state_gauges() {
        let metrics = Metrics::new();
        let s = samples(&metrics.render());
        assert!(s
            .get("tollgate_config_age_seconds")
            .is_some_and(|v| v.is_nan()));
        assert_eq!(s.get("tollgate_control_plane_connected"), Some(&0.0));

        let first = metrics.connection_opened();
        let second = metrics.connection_opened();
        drop(first);
        metrics.set_control_plane_connected(true);
        metrics.config_applied("store-a", 7);
        metrics.config_applied("store-b", 9);
        metrics.access_log_dropped().inc_by(4);
        let accepts = metrics.worker_accepts(1);
        accepts.inc();
        metrics.worker_accepts(1).inc();
        let s = samples(&metrics.render());
        assert_eq!(
            s.get(r#"tollgate_connections_accepted_total{worker="1"}"#),
            Some(&2.0)
        );
        assert_eq!(s.get("tollgate_open_connections"), Some(&1.0));
        assert_eq!(s.get("tollgate_control_plane_connected"), Some(&1.0));
        assert_eq!(
            s.get(r#"tollgate_config_version{store_id="store-b"}"#),
            Some(&9.0)
        );
        assert!(!s.contains_key(r#"tollgate_config_version{store_id="store-a"}"#));
        assert!(s
            .get("tollgate_config_age_seconds")
            .is_some_and(|v| (0.0..5.0).contains(v)));
        assert_eq!(s.get("tollgate_access_log_dropped_total"), Some(&4.0));
        drop(second);
        let s = samples(&metrics.render());
        assert_eq!(s.get("tollgate_open_connections"), Some(&0.0));
    }

    #[test]
    fn consumer_requests_are_counted_only_where_opted_in() {
        let metrics = Metrics::new();
        let names = ConsumerNames::new(["alice", "bob"]);
        let labelled = metrics.route_with_consumers("labelled", "s", &names);
        let plain = metrics.route("plain", "s");
        assert!(labelled.counts_consumers());
        assert!(!plain.counts_consumers());
        for _ in 0..3 {
            labelled.record_consumer_request(Some("alice"), 200);
        }
        labelled.record_consumer_request(Some("alice"), 404);
        labelled.record_consumer_request(Some("bob"), 200);
        labelled.record_consumer_request(None, 401);
        labelled.record_consumer_request(Some("not-indexed"), 200);
        plain.record_consumer_request(Some("alice"), 200);
        plain.record_request(&http::Method::GET, 200, Duration::ZERO);
        let text = metrics.render();
        let s = samples(&text);
        let get = |consumer: &str, code: u16| {
            s.get(&format!(
                r#"tollgate_consumer_requests_total{{route="labelled",service="s",consumer="{consumer}",code="{code}"}}"#
            ))
            .copied()
        };
        assert_eq!(get("alice", 200), Some(3.0), "{text}");
        assert_eq!(get("alice", 404), Some(1.0));
        assert_eq!(get("bob", 200), Some(1.0));
        assert_eq!(get("anonymous", 401), Some(1.0));
        assert_eq!(get("not-indexed", 200), Some(1.0));
        assert!(
            !text.contains(r#"tollgate_consumer_requests_total{route="plain""#),
            "{text}"
        );
    }

    #[test]
    fn a_consumer_with_many_codes_loses_no_count() {
        let metrics = Metrics::new();
        let route = metrics.route_with_consumers("r", "s", &ConsumerNames::new(["c"]));
        let codes: Vec<u16> = (0..40).map(|i| 200 + i).collect();
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for code in &codes {
                        route.record_consumer_request(Some("c"), *code);
                    }
                });
            }
        });
        let s = samples(&metrics.render());
        for code in codes {
            assert_eq!(
                s.get(&format!(
                    r#"tollgate_consumer_requests_total{{route="r",service="s",consumer="c",code="{code}"}}"#
                )),
                Some(&4.0),
                "code {code}"
            );
        }
    }

    #[test]
    fn concurrent_recording_loses_nothing() {
        let metrics = Metrics::new();
        let route = metrics.route("hot", "s");
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for i in 0..10_000u32 {
                        let code = if i % 10 == 0 { 500 } else { 200 };
                        route.record_request(
                            &http::Method::GET,
                            code,
                            Duration::from_micros(u64::from(i)),
                        );
                    }
                });
            }
        });
        let s = samples(&metrics.render());
        assert_eq!(
            s.get(r#"tollgate_requests_total{route="hot",service="s",method="GET",code="200"}"#),
            Some(&36_000.0)
        );
        assert_eq!(
            s.get(r#"tollgate_requests_total{route="hot",service="s",method="GET",code="500"}"#),
            Some(&4_000.0)
        );
        assert_eq!(
            s.get(r#"tollgate_request_duration_seconds_count{route="hot"}"#),
            Some(&40_000.0)
        );
    }

    #[test]
    fn plugin_outcomes_are_counted_by_refusal_kind() {
        let metrics = Metrics::new();
        let route = metrics.route("r", "s");
        route.observe(Phase::RateLimit, None);
        route.observe(
            Phase::RateLimit,
            Some(&Refusal::new(RefusalKind::RateLimited)),
        );
        route.observe(
            Phase::RateLimit,
            Some(&Refusal::new(RefusalKind::RateLimitUnavailable)),
        );
        route.observe(
            Phase::Authenticate,
            Some(&Refusal::new(RefusalKind::MissingCredential)),
        );
        route.observe(
            Phase::Authenticate,
            Some(&Refusal::new(RefusalKind::ExpiredToken)),
        );
        route.observe(
            Phase::Authorize,
            Some(&Refusal::new(RefusalKind::Forbidden)),
        );
        route.observe(Phase::Authenticate, None);
        let text = metrics.render();
        for line in [
            r#"tollgate_rate_limit_decisions_total{route="r",result="allowed"} 1"#,
            r#"tollgate_rate_limit_decisions_total{route="r",result="limited"} 1"#,
            r#"tollgate_rate_limit_decisions_total{route="r",result="error"} 1"#,
            r#"tollgate_auth_failures_total{route="r",reason="missing_credential"} 1"#,
            r#"tollgate_auth_failures_total{route="r",reason="expired_credential"} 1"#,
            r#"tollgate_auth_failures_total{route="r",reason="forbidden"} 1"#,
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }
}
