//! The control plane's Prometheus metrics, the `--metrics-listen` endpoint
//! that serves them, and the wrapper that traces and counts admin calls.
//!
//! Why here and shaped this way: operators watch the control plane with the
//! same Prometheus they point at data planes, so it speaks the same text
//! format (`GET /metrics`). Data-plane state (who is connected, what each has
//! applied) already lives in the stream registry; rather than keep a second
//! copy in sync, it is read from there at scrape time through a
//! [`DataPlaneSource`]. Counters for admin calls, snapshot builds, pushes,
//! ACKs and NACKs are bumped where those happen; none is on a hot path, so
//! `prometheus-client`'s families are used as they come.
//!
//! Admin calls are observed by [`ObservedService`], a transparent wrapper
//! around the generated gRPC server: one server span per call (continuing a
//! caller's W3C `traceparent`) and one count per method and result, the
//! result read from the `grpc-status` the call ends with. Method labels are
//! bounded: names outside the admin API's own are counted as `other`.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::{Body, Frame};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::{
    EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder, MetricEncoder,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tollgate_shared::telemetry::{self, TRACE_TARGET};
use tonic::body::BoxBody;
use tonic::server::NamedService;
use tracing::Instrument;

use crate::dashboard::Dashboard;

/// The admin API's methods (`proto/tollgate_admin.proto`), the only values
/// the `method` label takes besides `other`.
pub const ADMIN_METHODS: [&str; 23] = [
    "Create",
    "Update",
    "Get",
    "List",
    "Delete",
    "Apply",
    "Export",
    "ListDataPlanes",
    "CreateToken",
    "ListTokens",
    "RevokeToken",
    "ListAudit",
    "WaitForVersion",
    "History",
    "Rollback",
    "PurgeCache",
    "CreateJoinToken",
    "ListJoinTokens",
    "RevokeDataPlane",
    "CreateOperatorCert",
    "ListOperatorCerts",
    "RevokeOperatorCert",
    "GetStats",
];

/// How long a scraper may take to send its request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// One data plane as the metrics see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataPlaneView {
    pub node_id: String,
    pub connected: bool,
    /// Revision of the config it last ACKed, if any.
    pub applied_revision: Option<u64>,
}

/// Reads the data planes known to the stream registry, at scrape time.
pub type DataPlaneSource = Arc<dyn Fn() -> Vec<DataPlaneView> + Send + Sync>;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    method: &'static str,
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreLabels {
    store_id: Escaped,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    node_id: Escaped,
}

/// A label value from outside the binary, escaped on output.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct Escaped(String);

impl EncodeLabelValue for Escaped {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), fmt::Error> {
        telemetry::write_label_value(encoder, &self.0)
    }
}

/// All control-plane metrics.
pub struct CpMetrics {
    registry: Registry,
    admin_calls: Family<CallLabels, Counter>,
    admin_call_duration: Family<MethodLabels, Histogram, fn() -> Histogram>,
    admin_refusals: Family<RefusalLabels, Counter>,
    config_version: Family<StoreLabels, Gauge>,
    snapshot_builds: Counter,
    snapshot_build_duration: Histogram,
    pushes: Counter,
    acks: Counter,
    nacks: Counter,
    stream_refusals: Family<RefusalLabels, Counter>,
    /// The config path's own metrics (full vs delta bytes, commit to ACK).
    pub distribution: crate::stream::distribution_metrics::DistributionMetrics,
}

impl fmt::Debug for CpMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CpMetrics").finish_non_exhaustive()
    }
}

fn latency_histogram() -> Histogram {
    // 1 ms .. ~16 s
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

impl CpMetrics {
    /// Builds and registers every metric; `data_planes` is read on each scrape.
    pub fn new(data_planes: DataPlaneSource) -> Arc<Self> {
        let admin_calls = Family::<CallLabels, Counter>::default();
        let admin_call_duration =
            Family::<MethodLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        let config_version = Family::<StoreLabels, Gauge>::default();
        let admin_refusals = Family::<RefusalLabels, Counter>::default();
        let snapshot_builds = Counter::default();
        let snapshot_build_duration = latency_histogram();
        let pushes = Counter::default();
        let acks = Counter::default();
        let nacks = Counter::default();
        let stream_refusals = Family::<RefusalLabels, Counter>::default();

        let mut registry = Registry::with_prefix("tollgate_cp");
        registry.register(
            "admin_calls",
            "Admin API calls, by method and gRPC result",
            admin_calls.clone(),
        );
        registry.register(
            "admin_call_duration_seconds",
            "Admin API call duration, by method",
            admin_call_duration.clone(),
        );
        registry.register(
            "admin_refusals",
            "Admin API calls refused before any handler ran: reason is unauthenticated \
             (no or wrong token) or permission_denied (role too low)",
            admin_refusals.clone(),
        );
        registry.register(
            "config_version",
            "Revision of the committed config, labelled with the store id",
            config_version.clone(),
        );
        registry.register(
            "snapshot_builds",
            "Config snapshots compiled for the data planes",
            snapshot_builds.clone(),
        );
        registry.register(
            "snapshot_build_duration_seconds",
            "Time to compile a config snapshot",
            snapshot_build_duration.clone(),
        );
        registry.register(
            "snapshot_pushes",
            "Snapshots sent to data planes",
            pushes.clone(),
        );
        registry.register(
            "acks",
            "Snapshots data planes put in service (ACK)",
            acks.clone(),
        );
        registry.register(
            "nacks",
            "Snapshots data planes rejected (NACK)",
            nacks.clone(),
        );
        registry.register(
            "stream_refusals",
            "Config streams refused, by reason (unauthenticated: wrong or missing cluster \
             token; bad_hello); the peer's address is in the log",
            stream_refusals.clone(),
        );
        registry.register(
            "connected_data_planes",
            "Data planes with an open config stream",
            DataPlaneMetric {
                source: Arc::clone(&data_planes),
                kind: DataPlaneMetricKind::ConnectedCount,
            },
        );
        registry.register(
            "data_plane_connected",
            "1 while the data plane's config stream is open, 0 once it closed",
            DataPlaneMetric {
                source: Arc::clone(&data_planes),
                kind: DataPlaneMetricKind::Connected,
            },
        );
        registry.register(
            "data_plane_applied_revision",
            "Config revision the data plane last put in service (ACKed)",
            DataPlaneMetric {
                source: data_planes,
                kind: DataPlaneMetricKind::AppliedRevision,
            },
        );
        let distribution =
            crate::stream::distribution_metrics::DistributionMetrics::register(&mut registry);
        Arc::new(Self {
            distribution,
            registry,
            admin_calls,
            admin_call_duration,
            admin_refusals,
            config_version,
            snapshot_builds,
            snapshot_build_duration,
            pushes,
            acks,
            nacks,
            stream_refusals,
        })
    }

    /// Counts a refused config stream.
    pub fn stream_refused(&self, reason: &'static str) {
        self.stream_refusals
            .get_or_create(&RefusalLabels { reason })
            .inc();
    }

    /// Counts one finished admin call.
    /// An admin call refused by the access gate (`unauthenticated` or
    /// `permission_denied`).
    pub fn admin_refused(&self, reason: &'static str) {
        self.admin_refusals
            .get_or_create(&RefusalLabels { reason })
            .inc();
    }

    pub fn admin_call(&self, method: &'static str, code: tonic::Code, elapsed: Duration) {
        self.admin_calls
            .get_or_create(&CallLabels {
                method,
                result: code_label(code),
            })
            .inc();
        self.admin_call_duration
            .get_or_create(&MethodLabels { method })
            .observe(elapsed.as_secs_f64());
    }

    /// Records the committed config version.
    pub fn config_version(&self, store_id: &str, revision: u64) {
        self.config_version.clear();
        self.config_version
            .get_or_create(&StoreLabels {
                store_id: Escaped(store_id.to_owned()),
            })
            .set(i64::try_from(revision).unwrap_or(i64::MAX));
    }

    /// Counts a snapshot compile and how long it took.
    pub fn snapshot_built(&self, elapsed: Duration) {
        self.snapshot_builds.inc();
        self.snapshot_build_duration.observe(elapsed.as_secs_f64());
    }

    /// Counts a snapshot sent to a data plane.
    pub fn snapshot_pushed(&self) {
        self.pushes.inc();
    }

    /// Counts an ACK.
    pub fn acked(&self) {
        self.acks.inc();
    }

    /// Counts a NACK.
    pub fn nacked(&self) {
        self.nacks.inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut text = String::with_capacity(8 * 1024);
        if let Err(err) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!(error = %err, "cannot encode metrics");
        }
        telemetry::prometheus_text_from_openmetrics(&text)
    }
}

#[derive(Debug, Clone, Copy)]
enum DataPlaneMetricKind {
    ConnectedCount,
    Connected,
    AppliedRevision,
}

/// Gauges computed from the stream registry at scrape time.
struct DataPlaneMetric {
    source: DataPlaneSource,
    kind: DataPlaneMetricKind,
}

impl fmt::Debug for DataPlaneMetric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataPlaneMetric")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl TypedMetric for DataPlaneMetric {
    const TYPE: MetricType = MetricType::Gauge;
}

impl EncodeMetric for DataPlaneMetric {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        let planes = (self.source)();
        match self.kind {
            DataPlaneMetricKind::ConnectedCount => {
                let connected = planes.iter().filter(|p| p.connected).count();
                encoder.encode_gauge(&i64::try_from(connected).unwrap_or(i64::MAX))
            }
            DataPlaneMetricKind::Connected => {
                for plane in &planes {
                    let labels = NodeLabels {
                        node_id: Escaped(plane.node_id.clone()),
                    };
                    encoder
                        .encode_family(&labels)?
                        .encode_gauge(&i64::from(plane.connected))?;
                }
                Ok(())
            }
            DataPlaneMetricKind::AppliedRevision => {
                for plane in &planes {
                    if let Some(revision) = plane.applied_revision {
                        let labels = NodeLabels {
                            node_id: Escaped(plane.node_id.clone()),
                        };
                        encoder
                            .encode_family(&labels)?
                            .encode_gauge(&i64::try_from(revision).unwrap_or(i64::MAX))?;
                    }
                }
                Ok(())
            }
        }
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// The `result` label of a gRPC status code.
pub fn code_label(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

/// The bounded `method` label of a gRPC request path
/// (`/tollgate.admin.v1.Admin/Apply` -> `Apply`).
pub fn admin_method(path: &str) -> &'static str {
    let name = path.rsplit('/').next().unwrap_or_default();
    ADMIN_METHODS
        .iter()
        .find(|known| **known == name)
        .copied()
        .unwrap_or("other")
}

/// Serves `GET /metrics` on `listener` until `shutdown` resolves, and the
/// dashboard and its API when given (`crate::dashboard`).
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<CpMetrics>,
    dashboard: Option<Arc<Dashboard>>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "metrics listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let metrics = Arc::clone(&metrics);
        let dashboard = dashboard.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                let metrics = Arc::clone(&metrics);
                let dashboard = dashboard.clone();
                async move {
                    Ok::<_, Infallible>(match dashboard {
                        Some(dashboard) if Dashboard::serves(request.uri().path()) => {
                            dashboard_response(&request, dashboard).await
                        }
                        _ => metrics_response(&request, &metrics),
                    })
                }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "metrics connection ended with an error");
            }
        });
    }
}

/// A dashboard answer, computed on a blocking thread (stats merge
/// histograms over the window).
async fn dashboard_response<B>(
    request: &http::Request<B>,
    dashboard: Arc<Dashboard>,
) -> http::Response<String> {
    let (status, content_type, body) = if request.method() == http::Method::GET {
        let path = request.uri().path().to_string();
        let query = request.uri().query().map(str::to_string);
        let headers = request.headers().clone();
        tokio::task::spawn_blocking(move || dashboard.answer(&path, query.as_deref(), &headers))
            .await
            .unwrap_or_else(|_| {
                (
                    http::StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain; charset=utf-8",
                    "internal error\n".to_owned(),
                )
            })
    } else {
        (
            http::StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "method not allowed: the dashboard is read-only\n".to_owned(),
        )
    };
    let mut response = http::Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    for (name, value) in [
        ("content-type", content_type),
        ("cache-control", "no-store"),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        (
            "content-security-policy",
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             frame-ancestors 'none'",
        ),
    ] {
        headers.insert(
            http::header::HeaderName::from_static(name),
            http::HeaderValue::from_static(value),
        );
    }
    response
}

fn metrics_response<B>(request: &http::Request<B>, metrics: &CpMetrics) -> http::Response<String> {
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&http::Method::GET, "/metrics") => (
            http::StatusCode::OK,
            telemetry::PROMETHEUS_CONTENT_TYPE,
            metrics.render(),
        ),
        (_, "/metrics") => (
            http::StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "method not allowed\n".to_owned(),
        ),
        _ => (
            http::StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found; try /metrics\n".to_owned(),
        ),
    };
    let mut response = http::Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    response
}

/// Wraps a generated gRPC server so each call gets a server span and a count
/// by method and result. Transparent otherwise.
#[derive(Debug, Clone)]
pub struct ObservedService<S> {
    inner: S,
    metrics: Arc<CpMetrics>,
}

impl<S> ObservedService<S> {
    pub fn new(inner: S, metrics: Arc<CpMetrics>) -> Self {
        Self { inner, metrics }
    }
}

impl<S: NamedService> NamedService for ObservedService<S> {
    const NAME: &'static str = S::NAME;
}

type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<BoxBody>, Infallible>> + Send + 'static>>;

impl<S> tonic::codegen::Service<http::Request<BoxBody>> for ObservedService<S>
where
    S: tonic::codegen::Service<
            http::Request<BoxBody>,
            Response = http::Response<BoxBody>,
            Error = Infallible,
        > + NamedService
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<BoxBody>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<BoxBody>) -> Self::Future {
        let method = admin_method(request.uri().path());
        let span = tracing::info_span!(
            target: TRACE_TARGET,
            "admin_call",
            otel.name = %format_args!("{}/{}", S::NAME, method),
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = S::NAME,
            rpc.method = method,
            rpc.grpc.status_code = tracing::field::Empty,
        );
        telemetry::set_parent_from_headers(&span, request.headers());
        // The clone that was made ready serves this call (tower's contract).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let metrics = Arc::clone(&self.metrics);
        let started = Instant::now();
        let future = inner.call(request).instrument(span.clone());
        Box::pin(async move {
            let response = future.await?;
            let recorder = CallRecorder {
                metrics,
                method,
                started,
                span,
                done: false,
            };
            // Errors usually end in a trailers-only response: the status is a header.
            if let Some(code) = grpc_status(response.headers()) {
                recorder.finish(code);
                return Ok(response);
            }
            let (parts, body) = response.into_parts();
            let body = ObservedBody {
                inner: body,
                recorder,
            };
            Ok(http::Response::from_parts(parts, tonic::body::boxed(body)))
        })
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<tonic::Code> {
    headers
        .get("grpc-status")
        .map(|value| tonic::Code::from_bytes(value.as_bytes()))
}

/// Records a call once, when its status is known (or when it is abandoned).
struct CallRecorder {
    metrics: Arc<CpMetrics>,
    method: &'static str,
    started: Instant,
    span: tracing::Span,
    done: bool,
}

impl CallRecorder {
    fn finish(mut self, code: tonic::Code) {
        self.record(code);
    }

    fn record(&mut self, code: tonic::Code) {
        if self.done {
            return;
        }
        self.done = true;
        self.span.record("rpc.grpc.status_code", code as i32);
        self.metrics
            .admin_call(self.method, code, self.started.elapsed());
    }
}

impl Drop for CallRecorder {
    fn drop(&mut self) {
        // The response body went away before its trailers: the caller left.
        self.record(tonic::Code::Cancelled);
    }
}

/// The response body, watched for the `grpc-status` trailer.
struct ObservedBody {
    inner: BoxBody,
    recorder: CallRecorder,
}

impl Body for ObservedBody {
    type Data = tonic::codegen::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_status) {
                    this.recorder.record(code);
                }
            }
            Poll::Ready(Some(Err(status))) => this.recorder.record(status.code()),
            Poll::Ready(None) => this.recorder.record(tonic::Code::Unknown),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;

    fn samples(text: &str) -> HashMap<String, f64> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| l.rsplit_once(' '))
            .map(|(k, v)| (k.to_owned(), v.parse().unwrap_or(f64::NAN)))
            .collect()
    }

    fn fixed_planes(planes: Vec<DataPlaneView>) -> DataPlaneSource {
        Arc::new(move || planes.clone())
    }

    #[test]
    fn counts_and_data_planes_render() {
        let metrics = CpMetrics::new(fixed_planes(vec![
            DataPlaneView {
                node_id: "dp-1".into(),
                connected: true,
                applied_revision: Some(7),
            },
            DataPlaneView {
                node_id: "dp-\"2\"".into(),
                connected: false,
                applied_revision: None,
            },
        ]));
        metrics.admin_call("Apply", tonic::Code::Ok, Duration::from_millis(3));
        metrics.admin_call(
            "Apply",
            tonic::Code::InvalidArgument,
            Duration::from_millis(1),
        );
        metrics.admin_call(
            "Apply",
            tonic::Code::InvalidArgument,
            Duration::from_millis(1),
        );
        metrics.config_version("store-x", 7);
        metrics.snapshot_built(Duration::from_millis(2));
        metrics.snapshot_pushed();
        metrics.snapshot_pushed();
        metrics.acked();
        metrics.nacked();
        let text = metrics.render();
        let s = samples(&text);
        let get = |k: &str| s.get(k).copied();
        assert_eq!(
            get(r#"tollgate_cp_admin_calls_total{method="Apply",result="ok"}"#),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            get(r#"tollgate_cp_admin_calls_total{method="Apply",result="invalid_argument"}"#),
            Some(2.0)
        );
        assert_eq!(
            get(r#"tollgate_cp_admin_call_duration_seconds_count{method="Apply"}"#),
            Some(3.0)
        );
        assert_eq!(
            get(r#"tollgate_cp_config_version{store_id="store-x"}"#),
            Some(7.0)
        );
        assert_eq!(get("tollgate_cp_connected_data_planes"), Some(1.0));
        assert_eq!(
            get(r#"tollgate_cp_data_plane_connected{node_id="dp-1"}"#),
            Some(1.0)
        );
        assert_eq!(
            get(r#"tollgate_cp_data_plane_connected{node_id="dp-\"2\""}"#),
            Some(0.0)
        );
        assert_eq!(
            get(r#"tollgate_cp_data_plane_applied_revision{node_id="dp-1"}"#),
            Some(7.0)
        );
        assert_eq!(get("tollgate_cp_snapshot_builds_total"), Some(1.0));
        assert_eq!(get("tollgate_cp_snapshot_pushes_total"), Some(2.0));
        assert_eq!(get("tollgate_cp_acks_total"), Some(1.0));
        assert_eq!(get("tollgate_cp_nacks_total"), Some(1.0));
        assert!(text.contains("# TYPE tollgate_cp_admin_calls_total counter"));
    }

    #[test]
    fn method_labels_are_bounded() {
        assert_eq!(admin_method("/tollgate.admin.v1.Admin/Apply"), "Apply");
        assert_eq!(
            admin_method("/tollgate.admin.v1.Admin/ListDataPlanes"),
            "ListDataPlanes"
        );
        assert_eq!(admin_method("/tollgate.admin.v1.Admin/Whatever"), "other");
        assert_eq!(admin_method(""), "other");
    }

    /// A fake generated server answering per path: OK in trailers, or an
    /// error as a trailers-only response.
    #[derive(Clone)]
    struct Fake;

    impl NamedService for Fake {
        const NAME: &'static str = "tollgate.admin.v1.Admin";
    }

    impl tonic::codegen::Service<http::Request<BoxBody>> for Fake {
        type Response = http::Response<BoxBody>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Self::Response, Infallible>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: http::Request<BoxBody>) -> Self::Future {
            if request.uri().path().ends_with("/Get") {
                let status = tonic::Status::not_found("route \"x\" does not exist");
                return std::future::ready(Ok(status.into_http()));
            }
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
            let body = Frames(vec![
                Frame::trailers(trailers),
                Frame::data(tonic::codegen::Bytes::from_static(b"\0\0\0\0\0")),
            ]);
            std::future::ready(Ok(http::Response::new(tonic::body::boxed(body))))
        }
    }

    /// A body yielding frames popped from the end of a vector.
    struct Frames(Vec<Frame<tonic::codegen::Bytes>>);

    impl Body for Frames {
        type Data = tonic::codegen::Bytes;
        type Error = tonic::Status;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
            Poll::Ready(self.0.pop().map(Ok))
        }
    }

    /// Reads a body to its end; returns whether trailers came.
    async fn drain(mut body: BoxBody) -> bool {
        let mut trailers = false;
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        {
            trailers |= frame.is_ok_and(|f| f.is_trailers());
        }
        trailers
    }

    #[tokio::test]
    async fn observed_calls_are_counted_by_result() {
        use tonic::codegen::Service;

        let metrics = CpMetrics::new(fixed_planes(Vec::new()));
        let mut service = ObservedService::new(Fake, Arc::clone(&metrics));
        let request = |path: &str| {
            http::Request::builder()
                .uri(path)
                .body(tonic::body::empty_body())
                .unwrap_or_default()
        };
        let response = match service.call(request("/tollgate.admin.v1.Admin/Get")).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        assert_eq!(
            response.headers().get("grpc-status").map(|v| v.as_bytes()),
            Some(&b"5"[..])
        );
        let response = match service
            .call(request("/tollgate.admin.v1.Admin/Apply"))
            .await
        {
            Ok(response) => response,
            Err(never) => match never {},
        };
        assert!(drain(response.into_body()).await);
        // A call whose body is dropped unread counts as cancelled.
        let abandoned = service
            .call(request("/tollgate.admin.v1.Admin/Export"))
            .await;
        drop(abandoned);

        let s = samples(&metrics.render());
        let calls = Mutex::new(Vec::new());
        for (key, value) in &s {
            if key.starts_with("tollgate_cp_admin_calls_total") {
                calls
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((key.clone(), *value));
            }
        }
        assert_eq!(
            s.get(r#"tollgate_cp_admin_calls_total{method="Get",result="not_found"}"#),
            Some(&1.0),
            "{calls:?}"
        );
        assert_eq!(
            s.get(r#"tollgate_cp_admin_calls_total{method="Apply",result="ok"}"#),
            Some(&1.0)
        );
        assert_eq!(
            s.get(r#"tollgate_cp_admin_calls_total{method="Export",result="cancelled"}"#),
            Some(&1.0)
        );
    }

    #[tokio::test]
    async fn metrics_endpoint_serves_text() {
        let metrics = CpMetrics::new(fixed_planes(Vec::new()));
        metrics.config_version("s", 3);
        let listener = match TcpListener::bind("127.0.0.1:0").await {
            Ok(listener) => listener,
            Err(err) => panic!("bind: {err}"),
        };
        let addr = listener.local_addr().ok();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, metrics, None, async {
            let _ = stop_rx.await;
        }));
        let Some(addr) = addr else {
            panic!("no local address");
        };
        let text = http_get(addr, "/metrics").await;
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.contains("text/plain; version=0.0.4"), "{text}");
        assert!(
            text.contains("tollgate_cp_config_version{store_id=\"s\"} 3"),
            "{text}"
        );
        let text = http_get(addr, "/nope").await;
        assert!(text.starts_with("HTTP/1.1 404"), "{text}");
        let _ = stop_tx.send(());
        assert!(tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .is_ok());
    }

    async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = match tokio::net::TcpStream::connect(addr).await {
            Ok(stream) => stream,
            Err(err) => panic!("connect: {err}"),
        };
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let _ = stream.write_all(request.as_bytes()).await;
        let mut out = Vec::new();
        let _ = stream.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    }
}
