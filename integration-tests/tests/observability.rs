//! End-to-end tests of observability (issue 6, "Must show"): the real
//! `tollgate-cp` and `tollgate-dp` binaries, real upstreams, a real OTLP/gRPC
//! receiver and a real Prometheus text parser, everything on 127.0.0.1.
//!
//! - Known traffic gives exact counters and histogram counts on the data
//!   plane's `/metrics` (parsed with `prometheus-parse`).
//! - A test OTLP receiver (the `opentelemetry-proto` crate's generated
//!   `TraceService` server) gets the request span with its auth, rate-limit and
//!   upstream children, continuing the client's `traceparent`; the upstream
//!   receives a `traceparent` of the same trace whose parent is the upstream
//!   span. The control plane's admin calls and snapshot builds arrive too.
//! - One Apply is one trace (issue 18): admin call, write, validation, store
//!   commit and snapshot build on the control plane, and under the snapshot
//!   build each data plane's receive, compile, swap and ACK.
//! - Access-log lines parse as JSON with every documented field and contain
//!   none of the credentials used.
//! - The control plane's `/metrics` shows the connected data plane and the
//!   config version it applied.
//!
//! Waits are bounded polls; assertions are about counts and structure, never
//! about timing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use serde_json::{json, Value};
use tollgate_integration_tests::cp::config_from_json as config;
use tollgate_integration_tests::cp::{ControlPlane, CpOptions};
use tollgate_integration_tests::dp::{refusing_port, DataPlane, WAIT};
use tollgate_integration_tests::process::{free_port, wait_until};
use tollgate_integration_tests::upstream::Upstream;
use tollgate_shared::proto::admin as admin_pb;

// ------------------------------------------------------------------ helpers

fn service_to(name: &str, upstream: &Upstream) -> Value {
    json!({"name": name, "upstream": {"targets": [{"address": upstream.address()}]}})
}

/// Starts a data plane on `cp` and waits until it serves `revision`.
async fn data_plane(cp: &ControlPlane, node_id: &str, revision: u64, args: &[String]) -> DataPlane {
    let dp = DataPlane::start(cp.stream_port(), node_id, args);
    dp.wait_ready().await;
    dp.wait_version(revision).await;
    dp
}

/// Applies `config` and starts a data plane serving it with the access log
/// off (metrics only); returns it with the config's revision.
async fn metrics_data_plane(cp: &ControlPlane, node_id: &str, config: Value) -> (DataPlane, u64) {
    let revision = cp.apply_revision(&self::config(config)).await;
    let dp = data_plane(cp, node_id, revision, &args(&[("--access-log", "off")])).await;
    (dp, revision)
}

/// A data plane exporting every trace (ratio 1.0) to `endpoint`, access log off.
async fn traced_data_plane(
    cp: &ControlPlane,
    node_id: &str,
    revision: u64,
    endpoint: &str,
) -> DataPlane {
    let flags = [
        ("--otlp-endpoint", endpoint),
        ("--trace-sample-ratio", "1.0"),
        ("--access-log", "off"),
    ];
    data_plane(cp, node_id, revision, &args(&flags)).await
}

fn args(pairs: &[(&str, &str)]) -> Vec<String> {
    pairs
        .iter()
        .flat_map(|(flag, value)| [flag.to_string(), value.to_string()])
        .collect()
}

/// Scrapes a `/metrics` URL and parses it with a real Prometheus text parser.
async fn scrape_metrics(url: &str) -> prometheus_parse::Scrape {
    let response = reqwest::get(url)
        .await
        .unwrap_or_else(|err| panic!("GET {url}: {err}"));
    assert_eq!(response.status().as_u16(), 200, "GET {url}");
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "content type {content_type:?}"
    );
    let text = response.text().await.expect("metrics body");
    prometheus_parse::Scrape::parse(text.lines().map(|line| Ok(line.to_string())))
        .unwrap_or_else(|err| panic!("unparsable exposition ({err}):\n{text}"))
}

/// The value of the sample `name` whose labels include all of `labels`
/// (summed over the other labels); `None` when no sample matches.
fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for sample in scrape.samples.iter().filter(|s| s.metric == name) {
        if labels
            .iter()
            .all(|(key, want)| sample.labels.get(key) == Some(*want))
        {
            let v = match &sample.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => *v,
                prometheus_parse::Value::Histogram(buckets) => buckets
                    .iter()
                    .find(|b| b.less_than.is_infinite())
                    .map_or(0.0, |b| b.count),
                prometheus_parse::Value::Summary(_) => continue,
            };
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

fn requests(scrape: &prometheus_parse::Scrape, labels: &[(&str, &str)]) -> Option<f64> {
    value(scrape, "tollgate_requests_total", labels)
}

/// A W3C trace context header: `00-<trace id>-<parent id>-<flags>`.
fn parse_traceparent(value: &str) -> Option<(String, String)> {
    let parts: Vec<&str> = value.split('-').collect();
    match parts.as_slice() {
        ["00", trace, parent, _flags] if trace.len() == 32 && parent.len() == 16 => {
            Some((trace.to_string(), parent.to_string()))
        }
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ------------------------------------------------------------ OTLP receiver

/// One received span with its resource's `service.name` and
/// `service.instance.id`.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    instance: String,
    span: Span,
}

impl Received {
    fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }
    fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }
    fn parent_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }
}

/// A test OTLP/gRPC collector: keeps every span it is sent.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Received>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().expect("receiver lock");
        for resource_spans in request.into_inner().resource_spans {
            let attribute = |key: &str| {
                resource_spans
                    .resource
                    .as_ref()
                    .and_then(|r| r.attributes.iter().find(|kv| kv.key == key))
                    .and_then(|kv| kv.value.as_ref())
                    .and_then(|v| match &v.value {
                        Some(any_value::Value::StringValue(s)) => Some(s.clone()),
                        _ => None,
                    })
                    .unwrap_or_default()
            };
            let service = attribute("service.name");
            let instance = attribute("service.instance.id");
            for scope in &resource_spans.scope_spans {
                for span in &scope.spans {
                    spans.push(Received {
                        service: service.clone(),
                        instance: instance.clone(),
                        span: span.clone(),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Receiver {
    /// Serves on a free 127.0.0.1 port; returns the endpoint URL.
    async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind OTLP receiver");
        let addr: SocketAddr = listener.local_addr().expect("receiver address");
        let service = TraceServiceServer::new(self.clone());
        tokio::spawn(async move {
            let incoming = tokio_stream_from(listener);
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
        });
        format!("http://{addr}")
    }

    fn spans(&self) -> Vec<Received> {
        self.spans.lock().expect("receiver lock").clone()
    }

    /// Waits until a span named `name` of `trace_id` arrived; returns it.
    async fn wait_span(&self, trace_id: &str, name: &str) -> Received {
        wait_until(
            &format!("span {name:?} of trace {trace_id}"),
            WAIT,
            || async {
                self.spans()
                    .into_iter()
                    .find(|r| r.trace_id() == trace_id && r.span.name == name)
            },
        )
        .await
    }

    /// Waits until a span named `name` from `service` arrived; returns it.
    async fn wait_service_span(&self, service: &str, name: &str) -> Received {
        wait_until(&format!("span {name:?} from {service}"), WAIT, || async {
            self.spans()
                .into_iter()
                .find(|r| r.service == service && r.span.name == name)
        })
        .await
    }
}

/// A `TcpListener` as the stream of connections tonic serves.
fn tokio_stream_from(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(stream, _)| stream);
        Some((accepted, listener))
    })
}

// ------------------------------------------------------------------ metrics

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_traffic_gives_exact_counters_and_histograms() {
    let up_a = Upstream::start("a").await;
    let up_b = Upstream::start("b").await;
    let cp = ControlPlane::start().await;
    let (dp, revision) = metrics_data_plane(
        &cp,
        "dp-metrics",
        json!({
            "services": [service_to("svc-a", &up_a), service_to("svc-b", &up_b)],
            "routes": [
                {"name": "route-a", "service": "svc-a", "paths": ["/a"]},
                {"name": "route-b", "service": "svc-b", "paths": ["/b"]},
            ],
        }),
    )
    .await;

    // 37 to route A, 5 of them answered 404 by the upstream.
    for i in 0..37 {
        let path = if i < 5 { "/a/status/404" } else { "/a/items" };
        let response = dp.get("a.test", path).send().await.expect("request A");
        let expected = if i < 5 { 404 } else { 200 };
        assert_eq!(response.status().as_u16(), expected, "{path}");
        let _ = response.bytes().await;
    }
    // 12 to route B: 10 GETs and 2 POSTs of 1000 body bytes each.
    for i in 0..12 {
        let response = if i < 2 {
            dp.request(reqwest::Method::POST, "b.test", "/b/items")
                .body(vec![b'x'; 1000])
                .send()
                .await
        } else {
            dp.get("b.test", "/b/items").send().await
        }
        .expect("request B");
        assert_eq!(response.status().as_u16(), 200);
        let _ = response.bytes().await;
    }
    // 3 that match no route.
    for _ in 0..3 {
        let response = dp
            .get("c.test", "/nowhere")
            .send()
            .await
            .expect("request C");
        assert_eq!(response.status().as_u16(), 404);
        let _ = response.bytes().await;
    }

    let url = dp.status_url("/metrics");
    // Counters are recorded when a response ends; poll until all 52 are in.
    let scrape = wait_until("all 52 requests counted", WAIT, || async {
        let scrape = scrape_metrics(&url).await;
        (requests(&scrape, &[]) == Some(52.0)).then_some(scrape)
    })
    .await;

    let a = [
        ("route", "route-a"),
        ("service", "svc-a"),
        ("method", "GET"),
    ];
    assert_eq!(
        requests(&scrape, &[a[0], a[1], a[2], ("code", "200")]),
        Some(32.0)
    );
    assert_eq!(
        requests(&scrape, &[a[0], a[1], a[2], ("code", "404")]),
        Some(5.0)
    );
    assert_eq!(requests(&scrape, &[("route", "route-a")]), Some(37.0));
    let b = [("route", "route-b"), ("service", "svc-b"), ("code", "200")];
    assert_eq!(
        requests(&scrape, &[b[0], b[1], b[2], ("method", "GET")]),
        Some(10.0)
    );
    assert_eq!(
        requests(&scrape, &[b[0], b[1], b[2], ("method", "POST")]),
        Some(2.0)
    );
    assert_eq!(requests(&scrape, &[("route", "route-b")]), Some(12.0));
    assert_eq!(
        requests(
            &scrape,
            &[
                ("route", "none"),
                ("service", "none"),
                ("method", "GET"),
                ("code", "404")
            ]
        ),
        Some(3.0)
    );

    for (route, count) in [("route-a", 37.0), ("route-b", 12.0), ("none", 3.0)] {
        let labels = [("route", route)];
        assert_eq!(
            value(&scrape, "tollgate_request_duration_seconds", &labels),
            Some(count),
            "request histogram +Inf bucket, {route}"
        );
        assert_eq!(
            value(&scrape, "tollgate_request_duration_seconds_count", &labels),
            Some(count),
            "request histogram count, {route}"
        );
    }
    for (route, count) in [("route-a", 37.0), ("route-b", 12.0)] {
        let labels = [("route", route)];
        assert_eq!(
            value(&scrape, "tollgate_upstream_duration_seconds_count", &labels),
            Some(count),
            "upstream histogram count, {route}"
        );
    }
    assert_eq!(
        value(
            &scrape,
            "tollgate_upstream_duration_seconds_count",
            &[("route", "none")]
        ),
        None,
        "no upstream call without a route"
    );
    assert_eq!(
        value(
            &scrape,
            "tollgate_request_bytes_total",
            &[("route", "route-b")]
        ),
        Some(2000.0)
    );
    assert!(
        value(
            &scrape,
            "tollgate_response_bytes_total",
            &[("route", "route-a")]
        )
        .is_some_and(|v| v > 0.0),
        "response bytes counted"
    );
    assert_eq!(
        value(&scrape, "tollgate_control_plane_connected", &[]),
        Some(1.0)
    );
    let store_version = scrape
        .samples
        .iter()
        .find(|s| s.metric == "tollgate_config_version")
        .expect("config version sample");
    assert!(
        matches!(store_version.value, prometheus_parse::Value::Gauge(v) if v == revision as f64)
    );
    assert!(
        value(&scrape, "tollgate_config_age_seconds", &[])
            .is_some_and(|v| (0.0..3600.0).contains(&v)),
        "seconds since the last config"
    );
    assert!(value(&scrape, "tollgate_open_connections", &[]).is_some_and(|v| v >= 0.0));
    assert_eq!(
        value(&scrape, "tollgate_access_log_dropped_total", &[]),
        Some(0.0)
    );
}

/// Consumer labels are opt-in per route: the route with
/// `metrics.consumer_labels` gets exact per-consumer counts (`anonymous` for
/// refused credentials), the route without it no consumer series at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_series_only_on_routes_that_turn_them_on() {
    const ALICE_KEY: &str = "alice-metrics-key-0123456789";
    const BOB_KEY: &str = "bob-metrics-key-0123456789";
    let upstream = Upstream::start("consumers").await;
    let cp = ControlPlane::start().await;
    let key_auth = json!([{"name": "key-auth"}]);
    let (dp, _) = metrics_data_plane(
        &cp,
        "dp-consumers",
        json!({
            "services": [service_to("svc", &upstream)],
            "routes": [
                {"name": "labelled", "service": "svc", "paths": ["/labelled"],
                 "plugins": key_auth, "metrics": {"consumer_labels": true}},
                {"name": "plain", "service": "svc", "paths": ["/plain"], "plugins": key_auth},
            ],
            "consumers": [
                {"name": "alice", "credentials": [{"api_key": ALICE_KEY}]},
                {"name": "bob", "credentials": [{"api_key": BOB_KEY}]},
            ],
        }),
    )
    .await;

    // (path, API key, times, expected status)
    let traffic: [(&str, Option<&str>, usize, u16); 9] = [
        ("/labelled/items", Some(ALICE_KEY), 7, 200),
        ("/labelled/status/404", Some(ALICE_KEY), 2, 404),
        ("/labelled/items", Some(BOB_KEY), 4, 200),
        ("/labelled/items", None, 3, 401),
        ("/labelled/items", Some("not-a-known-key"), 2, 401),
        ("/plain/items", Some(ALICE_KEY), 5, 200),
        ("/plain/items", Some(BOB_KEY), 3, 200),
        ("/plain/items", None, 1, 401),
        ("/plain/status/500", Some(BOB_KEY), 1, 500),
    ];
    let mut total = 0;
    for (path, key, times, expected) in traffic {
        for _ in 0..times {
            let mut request = dp.get("consumers.test", path);
            if let Some(key) = key {
                request = request.header("apikey", key);
            }
            let response = request.send().await.expect("request");
            assert_eq!(response.status().as_u16(), expected, "{path} {key:?}");
            let _ = response.bytes().await;
            total += 1;
        }
    }

    let url = dp.status_url("/metrics");
    let scrape = wait_until("every request counted", WAIT, || async {
        let scrape = scrape_metrics(&url).await;
        (requests(&scrape, &[]) == Some(f64::from(total))).then_some(scrape)
    })
    .await;

    let consumer = |route: &str, consumer: &str, code: &str| {
        value(
            &scrape,
            "tollgate_consumer_requests_total",
            &[
                ("route", route),
                ("service", "svc"),
                ("consumer", consumer),
                ("code", code),
            ],
        )
    };
    assert_eq!(consumer("labelled", "alice", "200"), Some(7.0));
    assert_eq!(consumer("labelled", "alice", "404"), Some(2.0));
    assert_eq!(consumer("labelled", "bob", "200"), Some(4.0));
    assert_eq!(consumer("labelled", "anonymous", "401"), Some(5.0));
    assert_eq!(
        value(&scrape, "tollgate_consumer_requests_total", &[]),
        Some(18.0),
        "no other consumer series"
    );
    assert_eq!(
        value(
            &scrape,
            "tollgate_consumer_requests_total",
            &[("route", "plain")]
        ),
        None,
        "a route without the switch has no consumer series"
    );
    assert_eq!(requests(&scrape, &[("route", "plain")]), Some(10.0));
    assert_eq!(requests(&scrape, &[("route", "labelled")]), Some(18.0));
    let exposition = reqwest::get(&url)
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");
    for secret in [ALICE_KEY, BOB_KEY, "not-a-known-key"] {
        assert!(!exposition.contains(secret), "a credential in /metrics");
    }
}

// ------------------------------------------------------------------- traces

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_nest_and_the_upstream_gets_the_same_trace() {
    let receiver = Receiver::default();
    let endpoint = receiver.start().await;
    let upstream = Upstream::start("traced").await;
    let cp = ControlPlane::start_with(CpOptions {
        env: vec![("TOLLGATE_OTLP_ENDPOINT".into(), endpoint.clone())],
        ..CpOptions::default()
    })
    .await;
    let revision = cp.apply_revision(&config(json!({
            "services": [service_to("svc", &upstream)],
            "routes": [{
                "name": "traced-route",
                "service": "svc",
                "paths": ["/t"],
                "plugins": [
                    {"name": "key-auth"},
                    {"name": "rate-limit", "config": {"limit": 1000, "window": "1m", "scope": "consumer"}},
                ],
            }],
            "consumers": [{"name": "alice", "credentials": [{"api_key": "alice-trace-key-0001"}]}],
        })),
    )
    .await;
    let dp = traced_data_plane(&cp, "dp-traces", revision, &endpoint).await;

    // 1. A client that is part of a trace: the gateway continues it.
    let client_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_parent = "00f067aa0ba902b7";
    let response = dp
        .get("t.test", "/t/x")
        .header(
            "traceparent",
            format!("00-{client_trace}-{client_parent}-01"),
        )
        .header("tracestate", "vendor=test")
        .header("apikey", "alice-trace-key-0001")
        .send()
        .await
        .expect("traced request");
    assert_eq!(response.status().as_u16(), 200);
    let echo: Value = response.json().await.expect("echo body");
    let upstream_traceparent = echo["headers"]["traceparent"]
        .as_str()
        .expect("the upstream got a traceparent")
        .to_string();
    let (upstream_trace, upstream_parent) =
        parse_traceparent(&upstream_traceparent).expect("well-formed traceparent");
    assert_eq!(upstream_trace, client_trace, "same trace upstream");
    assert_ne!(
        upstream_parent, client_parent,
        "the gateway's span is the parent"
    );
    assert_eq!(
        echo["headers"]["tracestate"], "vendor=test",
        "tracestate passed on"
    );

    let server = receiver.wait_span(client_trace, "request").await;
    assert_eq!(server.span.kind, SpanKind::Server as i32);
    assert_eq!(
        server.parent_id(),
        client_parent,
        "server span continues the client's"
    );
    assert_eq!(server.service, "tollgate-dp");
    assert_eq!(server.instance, "dp-traces");
    for child in ["auth", "rate_limit", "upstream"] {
        let span = receiver.wait_span(client_trace, child).await;
        assert_eq!(
            span.parent_id(),
            server.span_id(),
            "{child} is a child of the request span"
        );
    }
    let upstream_span = receiver.wait_span(client_trace, "upstream").await;
    assert_eq!(upstream_span.span.kind, SpanKind::Client as i32);
    assert_eq!(
        upstream_span.span_id(),
        upstream_parent,
        "the upstream's traceparent names the upstream span"
    );

    // 2. A client without trace context: a new trace, propagated upstream.
    let response = dp
        .get("t.test", "/t/y")
        .header("apikey", "alice-trace-key-0001")
        .send()
        .await
        .expect("untraced request");
    assert_eq!(response.status().as_u16(), 200);
    let echo: Value = response.json().await.expect("echo body");
    let (new_trace, new_parent) = parse_traceparent(
        echo["headers"]["traceparent"]
            .as_str()
            .expect("a traceparent even when the client sent none"),
    )
    .expect("well-formed traceparent");
    assert_ne!(new_trace, client_trace);
    assert_ne!(new_trace, "0".repeat(32));
    let root = receiver.wait_span(&new_trace, "request").await;
    assert!(
        root.span.parent_span_id.is_empty(),
        "a new trace has a root span"
    );
    let upstream_span = receiver.wait_span(&new_trace, "upstream").await;
    assert_eq!(upstream_span.span_id(), new_parent);

    // 3. A rejected credential still yields the request and auth spans.
    let rejected_trace = "0af7651916cd43dd8448eb211c80319c";
    let response = dp
        .get("t.test", "/t/z")
        .header(
            "traceparent",
            format!("00-{rejected_trace}-b7ad6b7169203331-01"),
        )
        .header("apikey", "not-a-valid-key")
        .send()
        .await
        .expect("rejected request");
    assert_eq!(response.status().as_u16(), 401);
    let auth = receiver.wait_span(rejected_trace, "auth").await;
    let request = receiver.wait_span(rejected_trace, "request").await;
    assert_eq!(auth.parent_id(), request.span_id());
    assert!(
        !receiver
            .spans()
            .iter()
            .any(|r| r.trace_id() == rejected_trace && r.span.name == "upstream"),
        "no upstream call for a rejected request"
    );

    // The control plane traced the Apply (with its config write) and the
    // snapshot it built for the data plane.
    let admin_call = receiver
        .wait_service_span("tollgate-cp", "tollgate.admin.v1.Admin/Apply")
        .await;
    assert_eq!(admin_call.span.kind, SpanKind::Server as i32);
    let write = receiver
        .wait_span(&admin_call.trace_id(), "config_write")
        .await;
    assert_eq!(write.parent_id(), admin_call.span_id());
    receiver
        .wait_service_span("tollgate-cp", "snapshot_build")
        .await;
    assert!(
        receiver
            .spans()
            .iter()
            .filter(|r| r.service == "tollgate-cp")
            .all(|r| !r.instance.is_empty()),
        "control-plane spans carry service.instance.id"
    );
}

/// With the collector down, both planes say so in their log: one warning
/// (rate-limited to one a minute), not silence and not one line per batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_collector_is_a_rate_limited_warning() {
    const WARNING: &str = "cannot export traces to the OTLP endpoint";
    let (_reserved, port) = refusing_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let upstream = Upstream::start("lost").await;
    let cp = ControlPlane::start_with(CpOptions {
        env: vec![("TOLLGATE_OTLP_ENDPOINT".into(), endpoint.clone())],
        ..CpOptions::default()
    })
    .await;
    let revision = cp
        .apply_revision(&config(json!({
            "services": [service_to("svc", &upstream)],
            "routes": [{"name": "lost-route", "service": "svc", "paths": ["/l"]}],
        })))
        .await;
    let dp = traced_data_plane(&cp, "dp-lost-spans", revision, &endpoint).await;

    let send = || async {
        let response = dp.get("l.test", "/l/x").send().await.expect("request");
        assert_eq!(
            response.status().as_u16(),
            200,
            "traffic flows without a collector"
        );
    };
    send().await;
    wait_until("the data plane warns", WAIT, || async {
        dp.logs().contains(WARNING).then_some(())
    })
    .await;
    wait_until("the control plane warns", WAIT, || async {
        cp.logs().contains(WARNING).then_some(())
    })
    .await;
    // More failed batches (one every 500 ms) within the minute: no new line.
    for _ in 0..3 {
        send().await;
        tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    }
    assert_eq!(dp.logs().matches(WARNING).count(), 1, "{}", dp.logs());
    let line = dp
        .logs()
        .lines()
        .find(|line| line.contains(WARNING))
        .map(str::to_owned)
        .unwrap_or_default();
    assert!(line.contains("WARN"), "{line}");
}

// --------------------------------------------------------------- access log

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_lines_are_json_and_carry_no_credentials() {
    let upstream = Upstream::start("logged").await;
    let cp = ControlPlane::start().await;
    let header_key = "alice-header-key-4242";
    let query_key = "alice-query-key-9797";
    let wrong_key = "mallory-wrong-key-1313";
    let bearer = "bearer-token-secret-5656";
    let revision = cp
        .apply_revision(&config(json!({
            "services": [service_to("svc", &upstream)],
            "routes": [
                {
                    "name": "logged-route",
                    "service": "svc",
                    "paths": ["/logged"],
                    "plugins": [{"name": "key-auth", "config": {"query_param": "apikey"}}],
                },
                {"name": "open-route", "service": "svc", "paths": ["/open"]},
            ],
            "consumers": [{
                "name": "alice",
                "credentials": [{"api_key": header_key}, {"api_key": query_key}],
            }],
        })))
        .await;
    let log_dir = tempfile::tempdir().expect("log dir");
    let log_path = log_dir.path().join("access.log");
    let dp = data_plane(
        &cp,
        "dp-access-log",
        revision,
        &args(&[("--access-log", log_path.to_str().expect("utf-8 path"))]),
    )
    .await;

    let mut request_ids = Vec::new();
    let mut send = |builder: reqwest::RequestBuilder, expected: u16| {
        let builder = builder.header("x-request-id", format!("req-{}", request_ids.len()));
        request_ids.push(format!("req-{}", request_ids.len()));
        async move {
            let response = builder.send().await.expect("request");
            assert_eq!(response.status().as_u16(), expected);
            let _ = response.bytes().await;
        }
    };
    send(
        dp.get("log.test", "/logged/a").header("apikey", header_key),
        200,
    )
    .await;
    send(
        dp.get("log.test", &format!("/logged/b?apikey={query_key}&x=1")),
        200,
    )
    .await;
    send(
        dp.get("log.test", "/logged/c").header("apikey", wrong_key),
        401,
    )
    .await;
    send(
        dp.request(reqwest::Method::POST, "log.test", "/open/d?token=abc")
            .header("authorization", format!("Bearer {bearer}"))
            .body("0123456789"),
        200,
    )
    .await;
    send(dp.get("log.test", "/missing"), 404).await;

    let text = wait_until("5 access-log lines", WAIT, || async {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        (text.lines().count() >= 5).then_some(text)
    })
    .await;
    let lines: Vec<Value> = text
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|err| panic!("not JSON ({err}): {line}"))
        })
        .collect();
    assert_eq!(lines.len(), 5, "{text}");

    let fields = [
        "time",
        "request_id",
        "trace_id",
        "client_ip",
        "method",
        "host",
        "path",
        "route",
        "service",
        "consumer",
        "status",
        "error",
        "upstream_addr",
        "upstream_latency_ms",
        "total_latency_ms",
        "bytes_in",
        "bytes_out",
    ];
    let by_id: HashMap<String, &Value> = lines
        .iter()
        .map(|line| {
            (
                line["request_id"].as_str().unwrap_or_default().to_string(),
                line,
            )
        })
        .collect();
    for line in &lines {
        for field in fields {
            assert!(line.get(field).is_some(), "field {field} missing in {line}");
        }
        assert_eq!(line["client_ip"], "127.0.0.1");
        assert_eq!(line["host"], "log.test");
        assert!(line["time"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z') && t.len() == 24));
        assert!(line["total_latency_ms"].as_f64().is_some_and(|v| v >= 0.0));
        assert!(
            !line["path"].as_str().unwrap_or("?").contains('?'),
            "{line}"
        );
    }
    let line = |id: &str| {
        *by_id
            .get(id)
            .unwrap_or_else(|| panic!("no line for {id}: {text}"))
    };

    let header = line("req-0");
    assert_eq!(header["method"], "GET");
    assert_eq!(header["path"], "/logged/a");
    assert_eq!(header["route"], "logged-route");
    assert_eq!(header["service"], "svc");
    assert_eq!(header["consumer"], "alice");
    assert_eq!(header["status"], 200);
    assert!(header["error"].is_null(), "the upstream answered");
    assert_eq!(header["upstream_addr"], upstream.address());
    assert!(header["upstream_latency_ms"].as_f64().is_some());
    assert!(header["bytes_out"].as_u64().is_some_and(|b| b > 0));

    let query = line("req-1");
    assert_eq!(query["path"], "/logged/b");
    assert_eq!(query["consumer"], "alice");

    let rejected = line("req-2");
    assert_eq!(rejected["status"], 401);
    assert_eq!(
        rejected["error"], "invalid_api_key",
        "the refusal's kind: {rejected}"
    );
    assert_eq!(rejected["route"], "logged-route");
    assert!(rejected["consumer"].is_null());
    assert!(rejected["upstream_addr"].is_null());

    let posted = line("req-3");
    assert_eq!(posted["method"], "POST");
    assert_eq!(posted["path"], "/open/d");
    assert_eq!(posted["bytes_in"], 10);
    assert_eq!(posted["route"], "open-route");

    let unmatched = line("req-4");
    assert_eq!(unmatched["status"], 404);
    assert!(unmatched["route"].is_null());

    for secret in [
        header_key,
        query_key,
        wrong_key,
        bearer,
        "token=abc",
        "apikey=",
    ] {
        assert!(
            !text.contains(secret),
            "access log leaks {secret:?}:\n{text}"
        );
        assert!(
            !dp.logs().contains(secret),
            "data-plane log leaks {secret:?}"
        );
    }
}

/// `--request-metrics false`: requests are served but not counted per route;
/// the other metrics stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_metrics_can_be_switched_off() {
    let upstream = Upstream::start("u").await;
    let cp = ControlPlane::start().await;
    let revision = cp
        .apply_revision(&config(json!({
            "services": [service_to("svc", &upstream)],
            "routes": [{"name": "r", "service": "svc", "paths": ["/r"]}],
        })))
        .await;
    let dp = data_plane(
        &cp,
        "dp-uncounted",
        revision,
        &args(&[("--access-log", "off"), ("--request-metrics", "false")]),
    )
    .await;
    for _ in 0..5 {
        let response = dp.get("r.test", "/r/x").send().await.expect("request");
        assert_eq!(response.status().as_u16(), 200);
        let _ = response.bytes().await;
    }
    let scrape = scrape_metrics(&dp.status_url("/metrics")).await;
    assert_eq!(requests(&scrape, &[]), None);
    assert_eq!(
        value(&scrape, "tollgate_request_duration_seconds", &[]),
        None
    );
    assert_eq!(
        value(&scrape, "tollgate_config_version", &[]),
        Some(revision as f64)
    );
    assert!(value(&scrape, "tollgate_open_connections", &[]).is_some());
}

// ----------------------------------------------------- control-plane metrics

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_metrics_show_the_data_plane_and_its_version() {
    let metrics_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let cp = ControlPlane::start_with(CpOptions {
        env: vec![("TOLLGATE_METRICS_LISTEN".into(), metrics_addr.to_string())],
        ..CpOptions::default()
    })
    .await;
    let upstream = Upstream::start("u").await;
    let revision = cp
        .apply_revision(&config(json!({
            "services": [service_to("svc", &upstream)],
            "routes": [{"name": "r", "service": "svc", "paths": ["/r"]}],
        })))
        .await;
    let mut dp = data_plane(
        &cp,
        "dp-watched",
        revision,
        &args(&[("--access-log", "off")]),
    )
    .await;

    let url = format!("http://{metrics_addr}/metrics");
    let node = [("node_id", "dp-watched")];
    let scrape = wait_until("the control plane to record the ACK", WAIT, || async {
        let scrape = scrape_metrics(&url).await;
        (value(&scrape, "tollgate_cp_data_plane_applied_revision", &node) == Some(revision as f64))
            .then_some(scrape)
    })
    .await;
    assert_eq!(
        value(&scrape, "tollgate_cp_connected_data_planes", &[]),
        Some(1.0)
    );
    assert_eq!(
        value(&scrape, "tollgate_cp_data_plane_connected", &node),
        Some(1.0)
    );
    let version = scrape
        .samples
        .iter()
        .find(|s| s.metric == "tollgate_cp_config_version")
        .expect("config version sample");
    assert!(matches!(version.value, prometheus_parse::Value::Gauge(v) if v == revision as f64));
    assert_eq!(
        value(
            &scrape,
            "tollgate_cp_admin_calls_total",
            &[("method", "Apply"), ("result", "ok")]
        ),
        Some(1.0)
    );
    assert!(value(&scrape, "tollgate_cp_snapshot_pushes_total", &[]).is_some_and(|v| v >= 1.0));
    assert!(value(&scrape, "tollgate_cp_acks_total", &[]).is_some_and(|v| v >= 1.0));
    assert_eq!(value(&scrape, "tollgate_cp_nacks_total", &[]), Some(0.0));

    // A rejected admin call is counted by its result.
    let mut admin = cp.admin().await;
    let status = admin
        .get(admin_pb::EntityRef {
            kind: admin_pb::Kind::Route as i32,
            name: "does-not-exist".into(),
        })
        .await
        .expect_err("no such route");
    assert_eq!(status.code(), tonic::Code::NotFound);
    let scrape = scrape_metrics(&url).await;
    assert_eq!(
        value(
            &scrape,
            "tollgate_cp_admin_calls_total",
            &[("method", "Get"), ("result", "not_found")]
        ),
        Some(1.0)
    );

    // The data plane goes away: the control plane shows it disconnected.
    dp.kill_9();
    wait_until("the data plane to show disconnected", WAIT, || async {
        let scrape = scrape_metrics(&url).await;
        (value(&scrape, "tollgate_cp_connected_data_planes", &[]) == Some(0.0)
            && value(&scrape, "tollgate_cp_data_plane_connected", &node) == Some(0.0))
        .then_some(())
    })
    .await;
}

// ------------------------------------------------------- config-path trace

/// An integer attribute of a received span (sent as an int, or as its
/// decimal text, as `tracing`'s u64 fields may be).
fn int_attribute(received: &Received, key: &str) -> Option<i64> {
    received
        .span
        .attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| match &v.value {
            Some(any_value::Value::IntValue(i)) => Some(*i),
            Some(any_value::Value::StringValue(s)) => s.parse().ok(),
            _ => None,
        })
}

/// One Apply is one trace: the admin call, the write with its validation
/// and store commit, the snapshot build, and on each data plane the
/// receive (a child of the snapshot build, its context carried in the
/// stream message) with its compile, swap and ACK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_apply_is_one_trace_from_the_admin_call_to_every_data_planes_ack() {
    let receiver = Receiver::default();
    let endpoint = receiver.start().await;
    let upstream = Upstream::start("config-trace").await;
    let cp = ControlPlane::start_with(CpOptions {
        env: vec![("TOLLGATE_OTLP_ENDPOINT".into(), endpoint.clone())],
        ..CpOptions::default()
    })
    .await;
    let first = cp
        .apply_revision(&config(json!({
            "services": [service_to("svc", &upstream)],
            "routes": [{"name": "a", "service": "svc", "paths": ["/a"]}],
        })))
        .await;
    let nodes = ["dp-trace-1", "dp-trace-2"];
    let mut planes = Vec::new();
    for node in nodes {
        planes.push(traced_data_plane(&cp, node, first, &endpoint).await);
    }
    let second = cp
        .apply_revision(&config(json!({
            "services": [service_to("svc", &upstream)],
            "routes": [
                {"name": "a", "service": "svc", "paths": ["/a"]},
                {"name": "b", "service": "svc", "paths": ["/b"]},
            ],
        })))
        .await;
    for dp in &planes {
        dp.wait_version(second).await;
    }

    // The control plane's part, found by the revision its commit wrote.
    let commit = wait_until("the store_commit span of the Apply", WAIT, || async {
        receiver.spans().into_iter().find(|r| {
            r.span.name == "store_commit" && int_attribute(r, "revision") == Some(second as i64)
        })
    })
    .await;
    let trace = commit.trace_id();
    let admin_call = receiver
        .wait_span(&trace, "tollgate.admin.v1.Admin/Apply")
        .await;
    assert_eq!(admin_call.service, "tollgate-cp");
    let write = receiver.wait_span(&trace, "config_write").await;
    assert_eq!(
        write.parent_id(),
        admin_call.span_id(),
        "write under the call"
    );
    let validate = receiver.wait_span(&trace, "config_validate").await;
    assert_eq!(
        validate.parent_id(),
        write.span_id(),
        "validation under the write"
    );
    assert_eq!(
        commit.parent_id(),
        write.span_id(),
        "commit under the write"
    );
    let build = receiver.wait_span(&trace, "snapshot_build").await;
    assert_eq!(build.service, "tollgate-cp");
    assert_eq!(build.parent_id(), write.span_id(), "build under the write");
    assert_eq!(int_attribute(&build, "revision"), Some(second as i64));

    // Each data plane's part, in the same trace, under the snapshot build.
    for node in nodes {
        let of_node = |name: &'static str| {
            let receiver = receiver.clone();
            let trace = trace.clone();
            async move {
                wait_until(&format!("{name} of {node}"), WAIT, || async {
                    receiver.spans().into_iter().find(|r| {
                        r.trace_id() == trace && r.instance == node && r.span.name == name
                    })
                })
                .await
            }
        };
        let receive = of_node("config_receive").await;
        assert_eq!(receive.service, "tollgate-dp");
        assert_eq!(
            receive.parent_id(),
            build.span_id(),
            "{node}: receive is a child of the control plane's snapshot build"
        );
        for child in ["config_compile", "config_swap", "config_ack"] {
            let span = of_node(child).await;
            assert_eq!(
                span.parent_id(),
                receive.span_id(),
                "{node}: {child} is a child of config_receive"
            );
        }
    }
}
