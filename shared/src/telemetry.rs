//! Logging and distributed-tracing setup shared by the binaries.
//!
//! Logs: `tracing` events to stderr, filtered by `RUST_LOG` (default `info`),
//! as text or JSON lines.
//!
//! Traces: OpenTelemetry through `tracing-opentelemetry`, exported over
//! OTLP/gRPC (tonic) in batches, **only when an endpoint is configured**.
//! Without an endpoint no OpenTelemetry layer is installed at all, and the
//! spans the planes open for tracing (all under [`TRACE_TARGET`]) are disabled
//! callsites for every installed layer: creating one costs an atomic load,
//! which is what keeps tracing free on the data plane's hot path when it is off.
//!
//! Why a dedicated target: operators tune `RUST_LOG` for log volume, and
//! per-request spans must neither flood the log nor be switched on by a
//! verbose log filter; they belong to the exporter alone.
//!
//! Sampling is parent-based with a trace-id ratio for new traces, so a trace
//! started (and sampled) by a client stays whole across the gateway. Context
//! crosses process boundaries as W3C `traceparent` / `tracestate` headers; see
//! [`extract_context`] and [`inject_context`].
//!
//! When the collector cannot be reached, spans are dropped and a warning is
//! logged at most once a minute (see `export_warnings`), so a broken
//! pipeline is visible without flooding the log.

mod export_warnings;

use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, Sampler, TracerProvider};
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// Target of every span meant for the trace exporter (request, auth,
/// rate-limit, upstream, admin-call and snapshot-build spans). Use it as
/// `tracing::info_span!(target: TRACE_TARGET, ...)`.
pub const TRACE_TARGET: &str = "tollgate::trace";

/// How long [`TelemetryGuard::shutdown`] waits for the last batch to export.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Everything [`init`] needs to know.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// `service.name` resource attribute (`tollgate-dp`, `tollgate-cp`).
    pub service_name: String,
    /// `service.instance.id` resource attribute (the node id).
    pub instance_id: String,
    /// Log as JSON lines instead of text.
    pub json_logs: bool,
    /// OTLP/gRPC collector endpoint (`http://127.0.0.1:4317`); `None` disables tracing.
    pub otlp_endpoint: Option<String>,
    /// Fraction of new traces sampled, in `[0, 1]`; traces with a parent follow the parent.
    pub sample_ratio: f64,
}

impl TelemetryConfig {
    /// Logging only, no trace export.
    pub fn logs_only(service_name: &str, json_logs: bool) -> Self {
        Self {
            service_name: service_name.to_owned(),
            instance_id: String::new(),
            json_logs,
            otlp_endpoint: None,
            sample_ratio: 1.0,
        }
    }
}

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The sample ratio is not a number in `[0, 1]`.
    #[error("invalid trace sample ratio {0}: must be between 0 and 1")]
    SampleRatio(f64),
    /// The endpoint is not an `http://` or `https://` URL.
    #[error("invalid OTLP endpoint {0:?}: expected http://host:port or https://host:port")]
    Endpoint(String),
    /// The OTLP exporter could not be built.
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(String),
    /// Trace export needs a Tokio runtime to run its batch task on.
    #[error("trace export must be initialised inside a Tokio runtime")]
    NoRuntime,
    /// A global subscriber was installed before.
    #[error("a global tracing subscriber is already installed")]
    AlreadyInstalled,
}

/// Keeps the trace pipeline alive; call [`TelemetryGuard::shutdown`] before
/// exiting so the last batch of spans is exported.
#[must_use = "dropping the guard without shutdown() loses the last batch of spans"]
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: Option<TracerProvider>,
}

impl TelemetryGuard {
    /// Whether spans are exported (an OTLP endpoint was configured).
    pub fn tracing_enabled(&self) -> bool {
        self.provider.is_some()
    }

    /// Flushes and stops the exporter, waiting at most a few seconds.
    ///
    /// The SDK's shutdown blocks until the batch task (which runs on the Tokio
    /// runtime) has exported; it runs on the blocking pool so that even a
    /// single-worker runtime stays free to drive that export.
    pub async fn shutdown(mut self) {
        if let Some(provider) = self.provider.take() {
            let job = tokio::task::spawn_blocking(move || provider.shutdown());
            match tokio::time::timeout(SHUTDOWN_TIMEOUT, job).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(err))) => eprintln!("trace exporter shutdown: {err}"),
                Ok(Err(err)) => eprintln!("trace exporter shutdown task failed: {err}"),
                Err(_) => eprintln!("trace exporter shutdown timed out"),
            }
        }
    }
}

/// Installs logging only (no trace export). Safe to call once per process;
/// a second call reports on stderr and leaves the first subscriber in place.
pub fn init_logging(json: bool) {
    let config = TelemetryConfig::logs_only("tollgate", json);
    if let Err(err) = init(&config) {
        eprintln!("logging already initialised: {err}");
    }
}

/// Installs the global subscriber: logs always, and an OpenTelemetry layer
/// exporting over OTLP/gRPC when `config.otlp_endpoint` is set (which must
/// then be called inside a Tokio runtime).
pub fn init(config: &TelemetryConfig) -> Result<TelemetryGuard, TelemetryError> {
    if !(0.0..=1.0).contains(&config.sample_ratio) {
        return Err(TelemetryError::SampleRatio(config.sample_ratio));
    }
    let mut layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> = Vec::with_capacity(2);
    layers.push(log_layer(config.json_logs));

    let provider = match &config.otlp_endpoint {
        Some(endpoint) => {
            let provider = tracer_provider(config, endpoint)?;
            let tracer = provider.tracer("tollgate");
            let only_trace_spans = Targets::new().with_target(TRACE_TARGET, LevelFilter::TRACE);
            layers.push(
                tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    .with_tracked_inactivity(false)
                    .with_threads(false)
                    .with_location(false)
                    .with_filter(only_trace_spans)
                    .boxed(),
            );
            opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
            Some(provider)
        }
        None => None,
    };

    tracing_subscriber::registry()
        .with(layers)
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInstalled)?;
    Ok(TelemetryGuard { provider })
}

/// The stderr log layer: `RUST_LOG` (default `info`), with the trace-only
/// spans switched off so no log filter ever turns them on; ANSI colours only
/// when stderr is a terminal.
fn log_layer(json: bool) -> Box<dyn Layer<Registry> + Send + Sync> {
    let mut filter = EnvFilter::builder()
        .with_default_directive(LevelFilter::INFO.into())
        .from_env_lossy();
    if let Ok(directive) = format!("{TRACE_TARGET}=off").parse() {
        filter = filter.add_directive(directive);
    }
    // Colour only on a terminal: a log file or a pipe gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(true);
    if json {
        fmt.json().flatten_event(true).with_filter(filter).boxed()
    } else {
        fmt.with_filter(filter).boxed()
    }
}

fn tracer_provider(
    config: &TelemetryConfig,
    endpoint: &str,
) -> Result<TracerProvider, TelemetryError> {
    if !(0.0..=1.0).contains(&config.sample_ratio) {
        return Err(TelemetryError::SampleRatio(config.sample_ratio));
    }
    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        || endpoint.parse::<http::Uri>().is_err()
    {
        return Err(TelemetryError::Endpoint(endpoint.to_owned()));
    }
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(TelemetryError::NoRuntime);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(Duration::from_secs(5))
        .build()
        .map_err(|err| TelemetryError::Exporter(err.to_string()))?;
    // Failed exports are logged as a rate-limited warning, not dropped silently.
    let exporter = export_warnings::WarnOnFailure::new(exporter);
    let batch = BatchConfigBuilder::default()
        .with_max_queue_size(8192)
        .with_max_export_batch_size(512)
        .with_scheduled_delay(Duration::from_millis(500))
        .build();
    let processor = BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio)
        .with_batch_config(batch)
        .build();
    let mut attributes = vec![KeyValue::new("service.name", config.service_name.clone())];
    if !config.instance_id.is_empty() {
        attributes.push(KeyValue::new(
            "service.instance.id",
            config.instance_id.clone(),
        ));
    }
    attributes.push(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    Ok(TracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            config.sample_ratio,
        ))))
        .with_resource(Resource::new_with_defaults(attributes))
        .build())
}

/// Reads W3C `traceparent` / `tracestate` from `headers` into a context to
/// use as a span's parent (empty context, hence a new trace, when absent or
/// malformed).
pub fn extract_context(headers: &http::HeaderMap) -> opentelemetry::Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// Makes `span` a child of the trace carried by `headers` (no-op when trace
/// export is off: the span is then disabled).
pub fn set_parent_from_headers(span: &tracing::Span, headers: &http::HeaderMap) {
    if span.is_disabled() {
        return;
    }
    span.set_parent(extract_context(headers));
}

/// Writes `span`'s context as W3C `traceparent` / `tracestate` into
/// `headers`, replacing any values there. Returns whether it wrote anything
/// (nothing for a disabled span).
pub fn inject_context(span: &tracing::Span, headers: &mut http::HeaderMap) -> bool {
    if span.is_disabled() {
        return false;
    }
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return false;
    }
    TraceContextPropagator::new().inject_context(&context, &mut HeaderInjector(headers));
    true
}

/// `span`'s context as W3C `traceparent` / `tracestate` entries, for a
/// message that carries it across a stream (the config stream carries the
/// write's context to every data plane). Empty for a disabled span.
pub fn context_fields(span: &tracing::Span) -> std::collections::HashMap<String, String> {
    let mut fields = std::collections::HashMap::new();
    if span.is_disabled() {
        return fields;
    }
    let context = span.context();
    if context.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&context, &mut fields);
    }
    fields
}

/// Makes `span` a child of the context in `fields` (see [`context_fields`]);
/// no-op when export is off or `fields` holds no valid context.
pub fn set_parent_from_fields(
    span: &tracing::Span,
    fields: &std::collections::HashMap<String, String>,
) {
    if span.is_disabled() || fields.is_empty() {
        return;
    }
    span.set_parent(TraceContextPropagator::new().extract(fields));
}

/// The trace id of an (enabled) span, as a number; format with `{:032x}`.
pub fn span_trace_id(span: &tracing::Span) -> Option<u128> {
    if span.is_disabled() {
        return None;
    }
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| u128::from_be_bytes(span_context.trace_id().to_bytes()))
}

/// The trace id of a well-formed W3C `traceparent` header, without any
/// tracing machinery: what the access log records when export is off.
pub fn traceparent_trace_id(headers: &http::HeaderMap) -> Option<u128> {
    // A scan of the names, not `get`: hashing a non-standard name costs more
    // than comparing it with each of a request's usual dozen names (a
    // standard name differs from it at the enum tag), and most requests
    // have none; the lookup runs only when it is there.
    const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
    if !headers.keys().any(|name| *name == TRACEPARENT) {
        return None;
    }
    let value = headers.get(TRACEPARENT)?.as_bytes();
    // version "-" trace-id(32) "-" parent-id(16) "-" flags(2)
    if value.len() < 55 || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    if &value[..2] == b"ff" {
        return None;
    }
    let hex = std::str::from_utf8(&value[3..35]).ok()?;
    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let id = u128::from_str_radix(hex, 16).ok()?;
    (id != 0).then_some(id)
}

/// `Content-Type` of the Prometheus text exposition format (0.0.4).
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Rewrites `prometheus-client`'s OpenMetrics text into the Prometheus text
/// exposition format (0.0.4), which every scraper and parser reads: counter
/// families are named with their `_total` suffix in `# HELP` / `# TYPE`, and
/// the OpenMetrics-only `# UNIT` and `# EOF` lines are dropped. Samples are
/// unchanged.
pub fn prometheus_text_from_openmetrics(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let lines: Vec<&str> = openmetrics.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if *line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let counter_name = |l: &str| -> Option<String> {
            let rest = l.strip_prefix("# TYPE ")?;
            let name = rest.strip_suffix(" counter")?;
            Some(name.to_owned())
        };
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or_default();
            let next_is_counter = lines
                .get(i + 1)
                .and_then(|next| counter_name(next))
                .is_some_and(|counter| counter == name);
            if next_is_counter && !name.ends_with("_total") {
                out.push_str("# HELP ");
                out.push_str(name);
                out.push_str("_total");
                out.push_str(&rest[name.len()..]);
                out.push('\n');
                continue;
            }
        }
        if let Some(name) = counter_name(line) {
            if !name.ends_with("_total") {
                out.push_str("# TYPE ");
                out.push_str(&name);
                out.push_str("_total counter\n");
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Writes a Prometheus label value with `\\`, `"` and newlines escaped, as
/// the text format requires (`prometheus-client` writes values verbatim, so
/// any value that is not a fixed identifier goes through this).
pub fn write_label_value(out: &mut dyn std::fmt::Write, value: &str) -> std::fmt::Result {
    let mut rest = value;
    while let Some(at) = rest.find(['\\', '"', '\n']) {
        out.write_str(&rest[..at])?;
        out.write_str(match rest.as_bytes()[at] {
            b'\\' => "\\\\",
            b'"' => "\\\"",
            _ => "\\n",
        })?;
        rest = &rest[at + 1..];
    }
    out.write_str(rest)
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, http::HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn openmetrics_becomes_prometheus_text() {
        let openmetrics = "# HELP app_requests Requests.\n# TYPE app_requests counter\n\
app_requests_total{route=\"a\"} 3\n# HELP app_up Up.\n# TYPE app_up gauge\n# UNIT app_up seconds\n\
app_up 1\n# EOF\n";
        assert_eq!(
            prometheus_text_from_openmetrics(openmetrics),
            "# HELP app_requests_total Requests.\n# TYPE app_requests_total counter\n\
app_requests_total{route=\"a\"} 3\n# HELP app_up Up.\n# TYPE app_up gauge\napp_up 1\n"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        assert!(write_label_value(&mut out, "a\\b\"c\nd").is_ok());
        assert_eq!(out, "a\\\\b\\\"c\\nd");
        out.clear();
        assert!(write_label_value(&mut out, "plain-name").is_ok());
        assert_eq!(out, "plain-name");
    }

    #[test]
    fn traceparent_trace_id_parses_valid_header() {
        let map = headers(&[(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )]);
        assert_eq!(
            traceparent_trace_id(&map),
            Some(0x4bf92f3577b34da6a3ce929d0e0e4736)
        );
    }

    #[test]
    fn traceparent_trace_id_rejects_malformed_headers() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473z-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00+4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            let mut map = http::HeaderMap::new();
            map.insert("traceparent", http::HeaderValue::from_static(bad));
            assert_eq!(traceparent_trace_id(&map), None, "{bad:?}");
        }
        assert_eq!(traceparent_trace_id(&http::HeaderMap::new()), None);
    }

    #[test]
    fn extract_reads_w3c_context() {
        let map = headers(&[
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("tracestate", "vendor=abc"),
        ]);
        let context = extract_context(&map);
        let span = context.span();
        let span_context = span.span_context();
        assert!(span_context.is_valid());
        assert!(span_context.is_remote());
        assert!(span_context.is_sampled());
        assert_eq!(
            format!("{:032x}", span_context.trace_id()),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(span_context.trace_state().header(), "vendor=abc");
    }

    #[test]
    fn extract_without_headers_is_empty() {
        let context = extract_context(&http::HeaderMap::new());
        assert!(!context.span().span_context().is_valid());
    }

    #[test]
    fn disabled_spans_inject_nothing() {
        let span = tracing::Span::none();
        let mut map = http::HeaderMap::new();
        assert!(!inject_context(&span, &mut map));
        assert!(map.is_empty());
        assert_eq!(span_trace_id(&span), None);
    }

    #[test]
    fn bad_settings_are_rejected() {
        let mut config = TelemetryConfig::logs_only("t", false);
        config.otlp_endpoint = Some("http://127.0.0.1:4317".into());
        config.sample_ratio = 1.5;
        assert!(matches!(
            tracer_provider(&config, "http://127.0.0.1:4317"),
            Err(TelemetryError::SampleRatio(_))
        ));
        config.sample_ratio = 0.5;
        assert!(matches!(
            tracer_provider(&config, "127.0.0.1:4317"),
            Err(TelemetryError::Endpoint(_))
        ));
        assert!(matches!(
            tracer_provider(&config, "http://127.0.0.1:4317"),
            Err(TelemetryError::NoRuntime)
        ));
    }

    /// With a real provider (no collector needed: spans are only queued), a
    /// child span of an extracted context keeps the trace id and injects a
    /// `traceparent` of that trace.
    #[tokio::test]
    async fn spans_continue_the_incoming_trace() {
        let mut config = TelemetryConfig::logs_only("test", false);
        config.sample_ratio = 1.0;
        let provider = match tracer_provider(&config, "http://127.0.0.1:9") {
            Ok(provider) => provider,
            Err(err) => panic!("provider: {err}"),
        };
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("test"));
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let incoming = headers(&[(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )]);
            let server = tracing::info_span!(target: TRACE_TARGET, "request");
            set_parent_from_headers(&server, &incoming);
            let upstream = tracing::info_span!(target: TRACE_TARGET, parent: &server, "upstream");
            let mut outgoing = http::HeaderMap::new();
            assert!(inject_context(&upstream, &mut outgoing));
            let traceparent = outgoing
                .get("traceparent")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            assert!(
                traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
                "{traceparent}"
            );
            assert!(!traceparent.contains("00f067aa0ba902b7"), "new span id");
            assert_eq!(
                span_trace_id(&upstream),
                Some(0x4bf92f3577b34da6a3ce929d0e0e4736)
            );
            assert_eq!(traceparent_trace_id(&outgoing), span_trace_id(&server));
        });
        let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
    }
}
