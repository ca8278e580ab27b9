//! End-to-end tests of the data plane (issue 3, "Must show"): the real
//! `tollgate-cp`, `tollgatectl` and `tollgate-dp` binaries, real upstream HTTP
//! servers, everything on 127.0.0.1.
//!
//! Each test starts its own control plane, data planes and upstreams on free
//! ports and temp dirs, so tests run in parallel. Every wait is a bounded poll
//! of several seconds and every load loop is bounded in count and time; the
//! assertions are about behaviour (which upstream got what, which status), never
//! about how fast something happened.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tollgate_integration_tests::cp::config_from_json as config;
use tollgate_integration_tests::cp::ControlPlane;
use tollgate_integration_tests::dp::{
    raw_get, raw_http, refusing_port, response_json, DataPlane, WAIT,
};
use tollgate_integration_tests::process::{bin_path, free_port, wait_until, ChildProcess};
use tollgate_integration_tests::upstream::{filler, RawBehaviour, RawUpstream, Upstream};
use tollgate_shared::model::GatewayConfig;
use tollgate_shared::proto::admin as admin_pb;

// ------------------------------------------------------------------ helpers

/// A service JSON with one target per `(address, weight)`.
fn service(name: &str, targets: &[(String, u32)]) -> Value {
    let targets: Vec<Value> = targets
        .iter()
        .map(|(address, weight)| json!({"address": address, "weight": weight}))
        .collect();
    json!({"name": name, "upstream": {"targets": targets}})
}

/// A service with a single target of weight 1.
fn service_to(name: &str, upstream: &Upstream) -> Value {
    service(name, &[(upstream.address(), 1)])
}

/// Starts one named upstream per name.
async fn upstreams(names: &[&str]) -> HashMap<String, Upstream> {
    let mut map = HashMap::new();
    for name in names {
        map.insert(name.to_string(), Upstream::start(name).await);
    }
    map
}

/// Applies `config` with `tollgatectl apply -f`; returns the committed revision.
async fn apply_with_ctl(cp: &ControlPlane, dir: &std::path::Path, config: &GatewayConfig) -> u64 {
    let path = dir.join(format!("gateway-{}.yaml", rand::random::<u32>()));
    std::fs::write(&path, config.to_yaml()).expect("write gateway.yaml");
    let output = cp.ctl(&["apply", "-f", path.to_str().expect("utf-8 temp path")]);
    assert!(
        output.status.success(),
        "tollgatectl apply failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    current_revision(cp).await
}

/// The control plane's current revision (from Export).
async fn current_revision(cp: &ControlPlane) -> u64 {
    let mut admin = cp.admin().await;
    let response = admin
        .export(admin_pb::ExportRequest::default())
        .await
        .unwrap_or_else(|status| panic!("Export failed: {status}"))
        .into_inner();
    response.version.map(|v| v.revision).unwrap_or(0)
}

/// This data plane as the control plane tracks it, if it does.
async fn tracked(cp: &ControlPlane, node_id: &str) -> Option<admin_pb::DataPlane> {
    let mut admin = cp.admin().await;
    let response = admin
        .list_data_planes(admin_pb::ListDataPlanesRequest {})
        .await
        .ok()?
        .into_inner();
    response
        .data_planes
        .into_iter()
        .find(|dp| dp.node_id == node_id)
}

/// Waits (bounded) until the control plane records that `dp` ACKed `revision`
/// (or later) and the data plane's `/status` reports it.
async fn wait_acked(cp: &ControlPlane, dp: &DataPlane, revision: u64) {
    wait_until(
        &format!(
            "control plane to record {} ACKing revision {revision}",
            dp.node_id()
        ),
        WAIT,
        || async {
            let plane = tracked(cp, dp.node_id()).await?;
            let applied = plane.applied_version?.revision;
            (applied >= revision).then_some(())
        },
    )
    .await;
    dp.wait_version(revision).await;
}

/// A control plane with `config` applied and a data plane serving it.
async fn gateway(node_id: &str, value: Value, dp_args: &[String]) -> (ControlPlane, DataPlane) {
    let cp = ControlPlane::start().await;
    let revision = cp.apply_revision(&config(value)).await;
    let dp = DataPlane::start(cp.port(), node_id, dp_args);
    dp.wait_ready().await;
    wait_acked(&cp, &dp, revision).await;
    (cp, dp)
}

/// The upstream name an echo body names.
fn served_by(body: &Value) -> &str {
    body["name"].as_str().unwrap_or("<not an echo>")
}

/// An error body reduced to what identifies the error (ids removed).
fn error_identity(body: &Value) -> Value {
    let mut body = body.clone();
    if let Value::Object(map) = &mut body {
        map.retain(|key, _| {
            let key = key.to_ascii_lowercase();
            !(key.contains("request") || key == "id" || key.contains("trace"))
        });
    }
    body
}

/// Asserts a gateway error: the status, and a JSON body
/// `{"error": <code>, "message": ..., "request_id": ...}` with the documented
/// code (`None`: any non-empty code).
fn assert_json_error(what: &str, status: u16, body: &Value, expected: u16, code: Option<&str>) {
    assert_eq!(status, expected, "{what}: status (body {body})");
    let got = body["error"].as_str().unwrap_or("");
    assert!(
        !got.is_empty() && body["message"].is_string(),
        "{what}: expected a JSON error body, got {body}"
    );
    if let Some(code) = code {
        assert_eq!(got, code, "{what}: error code (body {body})");
    }
}

// ------------------------------------------------------------------ routing

/// (method, host, path, extra headers, expected upstream; `None` = 404).
type Case = (
    &'static str,
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
    Option<&'static str>,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_path_method_and_header_with_fall_through() {
    let ups = upstreams(&[
        "exact-host",
        "wild-host",
        "any-host",
        "prefix",
        "exact-path",
        "template",
        "post",
        "v2",
        "items",
        "deep-delete",
        "flag",
    ])
    .await;
    let svc = |name: &str| service_to(name, &ups[name]);
    let value = json!({
        "services": ups.keys().map(|name| svc(name)).collect::<Vec<_>>(),
        "routes": [
            // Host kinds.
            {"name": "r-exact-host", "service": "exact-host", "hosts": ["api.example.com"], "paths": ["/h"]},
            {"name": "r-wild-host", "service": "wild-host", "hosts": ["*.example.com"], "paths": ["/h", "/h/deeper"]},
            {"name": "r-any-host", "service": "any-host", "paths": ["/h"]},
            // Path kinds.
            {"name": "r-prefix", "service": "prefix", "hosts": ["paths.test"], "paths": ["/v1/orders"]},
            {"name": "r-exact-path", "service": "exact-path", "hosts": ["paths.test"], "paths": ["=/v1/orders/special"]},
            {"name": "r-template", "service": "template", "hosts": ["paths.test"], "paths": ["/users/{id}/profile"]},
            // Method, header, priority and fall-through.
            {"name": "r-post", "service": "post", "hosts": ["mh.test"], "paths": ["/items"], "methods": ["POST"], "priority": 10},
            {"name": "r-v2", "service": "v2", "hosts": ["mh.test"], "paths": ["/items"],
             "headers": [{"name": "x-version", "value": "2"}], "priority": 5},
            {"name": "r-items", "service": "items", "hosts": ["mh.test"], "paths": ["/items"]},
            {"name": "r-deep-delete", "service": "deep-delete", "hosts": ["mh.test"], "paths": ["/items/special"], "methods": ["DELETE"]},
            {"name": "r-flag", "service": "flag", "hosts": ["mh.test"], "paths": ["/flag"], "headers": [{"name": "x-flag"}]},
        ]
    });
    let (_cp, dp) = gateway("dp-routing", value, &[]).await;

    let cases: &[Case] = &[
        ("GET", "api.example.com", "/h", &[], Some("exact-host")),
        ("GET", "api.example.com:8000", "/h", &[], Some("exact-host")),
        ("GET", "API.Example.COM", "/h", &[], Some("exact-host")),
        // Exact host wins over a wildcard route with a longer path.
        (
            "GET",
            "api.example.com",
            "/h/deeper",
            &[],
            Some("exact-host"),
        ),
        ("GET", "shop.example.com", "/h", &[], Some("wild-host")),
        (
            "GET",
            "shop.example.com",
            "/h/deeper/x",
            &[],
            Some("wild-host"),
        ),
        ("GET", "a.b.example.com", "/h", &[], Some("wild-host")),
        ("GET", "example.com", "/h", &[], Some("any-host")),
        ("GET", "other.org", "/h", &[], Some("any-host")),
        ("GET", "other.org", "/h/x", &[], Some("any-host")),
        ("GET", "other.org", "/hx", &[], None),
        // Prefix on a segment boundary, exact, template.
        ("GET", "paths.test", "/v1/orders", &[], Some("prefix")),
        ("GET", "paths.test", "/v1/orders/", &[], Some("prefix")),
        ("GET", "paths.test", "/v1/orders/42", &[], Some("prefix")),
        ("GET", "paths.test", "/v1/orders?x=1", &[], Some("prefix")),
        ("GET", "paths.test", "/v1/ordersx", &[], None),
        ("GET", "paths.test", "/v1", &[], None),
        (
            "GET",
            "paths.test",
            "/v1/orders/special",
            &[],
            Some("exact-path"),
        ),
        (
            "GET",
            "paths.test",
            "/v1/orders/special?q=1",
            &[],
            Some("exact-path"),
        ),
        (
            "GET",
            "paths.test",
            "/v1/orders/special/x",
            &[],
            Some("prefix"),
        ),
        (
            "GET",
            "paths.test",
            "/users/7/profile",
            &[],
            Some("template"),
        ),
        (
            "GET",
            "paths.test",
            "/users/abc-9/profile",
            &[],
            Some("template"),
        ),
        ("GET", "paths.test", "/users/7", &[], None),
        ("GET", "paths.test", "/users//profile", &[], None),
        // Method and header conditions, by priority, with fall-through.
        ("POST", "mh.test", "/items", &[], Some("post")),
        (
            "POST",
            "mh.test",
            "/items",
            &[("x-version", "2")],
            Some("post"),
        ),
        (
            "GET",
            "mh.test",
            "/items",
            &[("x-version", "2")],
            Some("v2"),
        ),
        (
            "GET",
            "mh.test",
            "/items",
            &[("x-version", "3")],
            Some("items"),
        ),
        ("GET", "mh.test", "/items", &[], Some("items")),
        ("PUT", "mh.test", "/items/1", &[], Some("items")),
        // The longest path match fails its method check: the next candidate serves.
        (
            "DELETE",
            "mh.test",
            "/items/special",
            &[],
            Some("deep-delete"),
        ),
        ("GET", "mh.test", "/items/special", &[], Some("items")),
        (
            "GET",
            "mh.test",
            "/items/special",
            &[("x-version", "2")],
            Some("v2"),
        ),
        // Header presence.
        (
            "GET",
            "mh.test",
            "/flag",
            &[("x-flag", "anything")],
            Some("flag"),
        ),
        ("GET", "mh.test", "/flag", &[], None),
    ];
    for (method, host, path, headers, expected) in cases {
        let mut request = dp.request(method.parse().expect("method"), host, path);
        for (name, value) in *headers {
            request = request.header(*name, *value);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|err| panic!("{method} {host}{path}: {err}"));
        let (status, body) = response_json(response).await;
        let what = format!("{method} {host}{path} {headers:?}");
        match expected {
            Some(upstream) => {
                assert_eq!(status, 200, "{what}: body {body}");
                assert_eq!(served_by(&body), *upstream, "{what}: body {body}");
                assert_eq!(body["method"], *method, "{what}");
            }
            None => assert_json_error(&what, status, &body, 404, Some("no_route")),
        }
    }
    // Nothing reached an upstream for the 404s: every request is accounted for.
    let served: u64 = ups.values().map(Upstream::requests).sum();
    let expected_served = cases.iter().filter(|c| c.4.is_some()).count() as u64;
    assert_eq!(served, expected_served, "upstream request count");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_round_robin_is_exact_over_600_requests() {
    let one = Upstream::start("weight-1").await;
    let two = Upstream::start("weight-2").await;
    let drained = Upstream::start("weight-0").await;
    let value = json!({
        "services": [service("wrr", &[(one.address(), 1), (two.address(), 2), (drained.address(), 0)])],
        "routes": [{"name": "wrr", "service": "wrr", "paths": ["/"]}],
    });
    let (_cp, dp) = gateway("dp-wrr", value, &[]).await;
    for i in 0..600 {
        let (status, body) = dp.get_json("wrr.test", &format!("/r/{i}")).await;
        assert_eq!(status, 200, "request {i}: {body}");
    }
    assert_eq!(one.requests(), 200, "weight 1 target");
    assert_eq!(two.requests(), 400, "weight 2 target");
    assert_eq!(drained.requests(), 0, "weight 0 target");
    // Keep-alive pooling: 600 sequential requests need only a few connections.
    for up in [&one, &two] {
        assert!(
            up.connections() <= 4,
            "{}: {} upstream connections for {} sequential requests",
            up.name(),
            up.connections(),
            up.requests()
        );
    }
}

// ------------------------------------------------------------------ paths

/// The documented rule (data-plane `router::normalize`, README): escapes of
/// unreserved characters (`%2e`, `%61`, ...) are decoded, then dot-segments
/// are removed (`..` above the root is 400), duplicate slashes are merged;
/// `%2F` stays encoded as data (hex upper-cased), never a separator, and is
/// refused (400) next to an empty or dot piece; a backslash, raw or `%5C`, is
/// 400. Routing and the upstream both see the result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_tricks_route_and_forward_by_the_documented_rule() {
    let ups = upstreams(&["v1", "admin"]).await;
    let value = json!({
        "services": [service_to("v1", &ups["v1"]), service_to("admin", &ups["admin"])],
        "routes": [
            {"name": "v1", "service": "v1", "hosts": ["tricks.test"], "paths": ["/v1"]},
            {"name": "admin", "service": "admin", "hosts": ["tricks.test"], "paths": ["/admin"]},
        ]
    });
    // The normalization rule itself, with encoded slashes and `;params` kept
    // as data (the defaults decode / reject them: `path_policy.rs` tests).
    let keep = ["--encoded-slashes", "keep", "--path-parameters", "keep"].map(String::from);
    let (_cp, dp) = gateway("dp-paths", value, &keep).await;

    // (request-target, expected upstream and forwarded target, or expected status)
    let routed: &[(&str, &str, &str)] = &[
        ("/v1/../admin", "admin", "/admin"),
        ("/v1/../admin?x=1", "admin", "/admin?x=1"),
        ("/v1/%2e%2e/admin", "admin", "/admin"),
        ("/v1/%2E%2E/admin", "admin", "/admin"),
        ("/v1/.%2e/admin/x", "admin", "/admin/x"),
        ("/%61dmin", "admin", "/admin"),
        ("/v1/./x", "v1", "/v1/x"),
        ("/v1/%2e/x", "v1", "/v1/x"),
        ("/v1//x", "v1", "/v1/x"),
        ("//v1///x//", "v1", "/v1/x/"),
        ("//admin", "admin", "/admin"),
        ("/v1/a/b/../c", "v1", "/v1/a/c"),
        ("/v1/a%2Fb", "v1", "/v1/a%2Fb"),
        ("/v1/a%2fb", "v1", "/v1/a%2Fb"),
        ("/v1/%7euser/%3f", "v1", "/v1/~user/%3F"),
        ("/v1/x?next=/../admin", "v1", "/v1/x?next=/../admin"),
        ("/v1/q?a=%2F%2e&b=c%20d&e", "v1", "/v1/q?a=%2F%2e&b=c%20d&e"),
    ];
    for (target, upstream, forwarded) in routed {
        let response = raw_get(dp.addr(), "tricks.test", target)
            .await
            .unwrap_or_else(|| panic!("GET {target}: no response"));
        let body = response.json();
        assert_eq!(response.status, 200, "GET {target}: {body}");
        assert_eq!(served_by(&body), *upstream, "GET {target}: routed to");
        assert_eq!(
            body["path"], *forwarded,
            "GET {target}: the path the upstream received"
        );
    }

    // An encoded slash is never a separator: these name no route.
    for target in ["/admin%2Fx", "/v1%2Fx", "/%61dmin%2Fx"] {
        let response = raw_get(dp.addr(), "tricks.test", target)
            .await
            .unwrap_or_else(|| panic!("GET {target}: no response"));
        assert_json_error(
            &format!("GET {target}"),
            response.status,
            &response.json(),
            404,
            Some("no_route"),
        );
    }

    // Climbing above the root, backslashes, and encoded slashes that some
    // upstream could turn into a traversal are rejected.
    for target in [
        "/v1%2F..%2Fadmin",
        "/%2Fadmin",
        "/v1/..%2Fadmin",
        "/v1/%5C..%5Cadmin",
        "/v1/..;/admin",
        "/..",
        "/../admin",
        "/v1/../../admin",
        "/%2e%2e/admin",
        "/v1\\..\\admin",
        "/admin\\x",
    ] {
        let response = raw_get(dp.addr(), "tricks.test", target)
            .await
            .unwrap_or_else(|| panic!("GET {target}: no response"));
        assert_json_error(
            &format!("GET {target}"),
            response.status,
            &response.json(),
            400,
            Some("invalid_path"),
        );
    }
    assert_eq!(
        ups["admin"].requests() + ups["v1"].requests(),
        routed.len() as u64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strip_path_removes_the_matched_prefix() {
    let up = Upstream::start("stripped").await;
    let kept = Upstream::start("kept").await;
    let value = json!({
        "services": [service_to("stripped", &up), service_to("kept", &kept)],
        "routes": [
            {"name": "strip", "service": "stripped", "paths": ["/api/v1"], "strip_path": true},
            {"name": "keep", "service": "kept", "paths": ["/keep"]},
        ]
    });
    let (_cp, dp) = gateway("dp-strip", value, &[]).await;
    for (path, forwarded, upstream) in [
        ("/api/v1/orders/42?x=1", "/orders/42?x=1", "stripped"),
        ("/api/v1", "/", "stripped"),
        ("/api/v1/", "/", "stripped"),
        ("/api/v1?q=2", "/?q=2", "stripped"),
        ("/keep/a", "/keep/a", "kept"),
    ] {
        let (status, body) = dp.get_json("strip.test", path).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        assert_eq!(served_by(&body), upstream, "GET {path}");
        assert_eq!(body["path"], forwarded, "GET {path}: forwarded path");
    }
}

// ------------------------------------------------------------------ headers

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_transformer_edits_headers_and_query_seen_by_the_upstream() {
    let up = Upstream::start("transformed").await;
    let value = json!({
        "services": [service_to("transformed", &up)],
        "routes": [{
            "name": "rt", "service": "transformed", "paths": ["/rt"],
            "plugins": [{"name": "request-transformer", "config": {
                "remove": {"headers": ["x-remove-me"], "querystring": ["secret"]},
                "rename": {"headers": {"x-old": "x-new"}, "querystring": {"old": "new"}},
                "add": {"headers": {"x-added": "yes", "x-replaced": "by-gateway"}, "querystring": {"added": "1"}},
            }}]
        }]
    });
    let (_cp, dp) = gateway("dp-transform", value, &[]).await;
    let response = dp
        .get("rt.test", "/rt/x?secret=s3&old=v&keep=k")
        .header("x-remove-me", "1")
        .header("x-old", "o")
        .header("x-replaced", "by-client")
        .header("x-untouched", "u")
        .send()
        .await
        .expect("request");
    let (status, body) = response_json(response).await;
    assert_eq!(status, 200, "{body}");
    let headers = &body["headers"];
    assert_eq!(headers["x-added"], "yes", "added header: {body}");
    assert_eq!(
        headers["x-replaced"], "by-gateway",
        "added header replaces: {body}"
    );
    assert_eq!(headers["x-new"], "o", "renamed header: {body}");
    assert!(
        headers.get("x-old").is_none(),
        "renamed header's old name: {body}"
    );
    assert!(
        headers.get("x-remove-me").is_none(),
        "removed header: {body}"
    );
    assert_eq!(headers["x-untouched"], "u", "{body}");

    let path = body["path"].as_str().expect("path");
    let (route_path, query) = path.split_once('?').expect("query forwarded");
    assert_eq!(route_path, "/rt/x");
    let mut params: Vec<&str> = query.split('&').collect();
    params.sort_unstable();
    assert_eq!(
        params,
        ["added=1", "keep=k", "new=v"],
        "query seen upstream: {path}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_set_and_hop_by_hop_removed() {
    let up = Upstream::start("fwd").await;
    let rewritten = Upstream::start("rewritten").await;
    let value = json!({
        "services": [
            service_to("fwd", &up),
            {"name": "rewritten", "upstream": {"targets": [{"address": rewritten.address()}]},
             "host_header": "internal.svc"},
        ],
        "routes": [
            {"name": "fwd", "service": "fwd", "paths": ["/"]},
            {"name": "rewritten", "service": "rewritten", "paths": ["/rewritten"]},
        ],
    });
    let (cp, dp) = gateway("dp-forwarded", value, &[]).await;

    // Raw, so the hop-by-hop headers are sent exactly as written.
    let request = "GET /f?x=1 HTTP/1.1\r\n\
        Host: shop.example.com:8443\r\n\
        Connection: close, X-Hop-Custom\r\n\
        X-Hop-Custom: must-go\r\n\
        Keep-Alive: timeout=5\r\n\
        Proxy-Connection: keep-alive\r\n\
        Upgrade: h2c\r\n\
        TE: gzip\r\n\
        X-Forwarded-For: 6.6.6.6\r\n\
        X-Forwarded-Proto: https\r\n\
        X-Forwarded-Host: evil.test\r\n\
        X-End-To-End: kept\r\n\r\n";
    let response = raw_http(dp.addr(), request.as_bytes())
        .await
        .expect("response");
    let body = response.json();
    assert_eq!(response.status, 200, "{body}");
    let headers = body["headers"].as_object().expect("headers").clone();
    for hop in [
        "x-hop-custom",
        "keep-alive",
        "proxy-connection",
        "upgrade",
        "te",
    ] {
        assert!(
            !headers.contains_key(hop),
            "hop-by-hop {hop} reached the upstream: {body}"
        );
    }
    if let Some(connection) = headers.get("connection") {
        let connection = connection.as_str().unwrap_or("").to_ascii_lowercase();
        assert!(
            !connection.contains("x-hop-custom") && !connection.contains("close"),
            "{body}"
        );
    }
    assert_eq!(headers["x-end-to-end"], "kept");
    // The client is not a trusted proxy: its X-Forwarded-For is replaced.
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1", "{body}");
    assert_eq!(headers["x-forwarded-proto"], "http", "{body}");
    let forwarded_host = headers["x-forwarded-host"].as_str().unwrap_or("");
    assert!(
        forwarded_host.starts_with("shop.example.com"),
        "x-forwarded-host: {body}"
    );
    assert!(
        headers["host"]
            .as_str()
            .unwrap_or("")
            .starts_with("shop.example.com"),
        "Host passed through: {body}"
    );
    let generated = headers["x-request-id"].as_str().unwrap_or("");
    assert!(generated.len() >= 8, "x-request-id generated: {body}");

    // A client's X-Request-Id is kept; a second request gets a fresh id.
    let (_, body) = response_json(
        dp.get("shop.example.com", "/f")
            .header("x-request-id", "req-abc-123")
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(body["headers"]["x-request-id"], "req-abc-123", "{body}");
    let response = dp
        .get("shop.example.com", "/f")
        .send()
        .await
        .expect("request");
    let returned = response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let (_, body) = response_json(response).await;
    let other = body["headers"]["x-request-id"].as_str().unwrap_or("");
    assert!(
        !other.is_empty() && other != generated,
        "request ids differ: {generated} {other}"
    );
    assert_eq!(
        returned, other,
        "the response carries the id the upstream saw"
    );
    // An insane id (too long, or not visible ASCII) is replaced.
    let long_id = "x".repeat(300);
    let (_, body) = response_json(
        dp.get("shop.example.com", "/f")
            .header("x-request-id", &long_id)
            .send()
            .await
            .expect("request"),
    )
    .await;
    let replaced = body["headers"]["x-request-id"].as_str().unwrap_or("");
    assert!(!replaced.is_empty() && replaced != long_id, "{body}");
    // Gateway errors carry the id too, in the header and the body.
    let response = dp
        .get("nowhere.test", "/%2Fadmin")
        .header("x-request-id", "err-id-1")
        .send()
        .await
        .expect("request");
    assert_eq!(
        response
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("err-id-1")
    );
    let (_, body) = response_json(response).await;
    assert_eq!(body["request_id"], "err-id-1", "{body}");

    // A service's host_header replaces the client's Host upstream.
    let (status, body) = dp.get_json("shop.example.com", "/rewritten").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(served_by(&body), "rewritten");
    assert_eq!(body["headers"]["host"], "internal.svc", "{body}");
    assert!(
        body["headers"]["x-forwarded-host"]
            .as_str()
            .is_some_and(|h| h.starts_with("shop.example.com")),
        "{body}"
    );

    // Behind a trusted proxy (127.0.0.1), the chain is appended to.
    let trusted = DataPlane::start(
        cp.port(),
        "dp-forwarded-trusted",
        &["--trusted-proxies".to_string(), "127.0.0.1/32".to_string()],
    );
    trusted.wait_ready().await;
    let (_, body) = response_json(
        trusted
            .get("shop.example.com", "/f")
            .header("x-forwarded-for", "6.6.6.6")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "front.example.com")
            .send()
            .await
            .expect("request"),
    )
    .await;
    let headers = &body["headers"];
    assert_eq!(headers["x-forwarded-for"], "6.6.6.6, 127.0.0.1", "{body}");
    // A trusted proxy's view of the scheme and host is kept.
    assert_eq!(headers["x-forwarded-proto"], "https", "{body}");
    assert_eq!(headers["x-forwarded-host"], "front.example.com", "{body}");
}

// ------------------------------------------------------------------ config changes

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_config_changes_under_continuous_load_fail_no_request() {
    const CHANGES: usize = 20;
    let mut ups = Vec::new();
    for i in 0..=CHANGES {
        ups.push(Upstream::start(&format!("gen-{i}")).await);
    }
    let version = |i: usize| {
        config(json!({
            "services": [service_to("live", &ups[i])],
            "routes": [{"name": "live", "service": "live", "paths": ["/live"]}],
        }))
    };
    let cp = ControlPlane::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let first = cp.apply_revision(&version(0)).await;
    let dp = Arc::new(DataPlane::start(cp.port(), "dp-changes", &[]));
    dp.wait_ready().await;
    wait_acked(&cp, &dp, first).await;

    // Clients, each sending requests one after another until told to stop
    // (bounded in count and time); each must only ever see newer versions.
    const CLIENTS: usize = 4;
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let load: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (dp, stop, sent) = (dp.clone(), stop.clone(), sent.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let mut failures = Vec::new();
                let mut highest = 0usize;
                while !stop.load(Ordering::SeqCst)
                    && sent.load(Ordering::SeqCst) < 200_000
                    && started.elapsed() < Duration::from_secs(240)
                {
                    let n = sent.fetch_add(1, Ordering::SeqCst);
                    let what = format!("client {client} request {n}");
                    match dp.get("live.test", &format!("/live/{n}")).send().await {
                        Ok(response) => {
                            let (status, body) = response_json(response).await;
                            let generation = served_by(&body)
                                .strip_prefix("gen-")
                                .and_then(|g| g.parse::<usize>().ok());
                            match (status, generation) {
                                (200, Some(generation)) => {
                                    if generation < highest {
                                        failures.push(format!(
                                            "{what}: served by gen-{generation} after gen-{highest}"
                                        ));
                                    }
                                    highest = highest.max(generation);
                                }
                                _ => failures.push(format!("{what}: {status} {body}")),
                            }
                        }
                        Err(err) => failures.push(format!("{what}: {err}")),
                    }
                }
                failures
            })
        })
        .collect();

    for i in 1..=CHANGES {
        // Both ways an operator changes config: tollgatectl and the admin API.
        let revision = if i % 2 == 0 {
            apply_with_ctl(&cp, dir.path(), &version(i)).await
        } else {
            cp.apply_revision(&version(i)).await
        };
        wait_acked(&cp, &dp, revision).await;
        // Once ACKed, the change is what serves.
        let (status, body) = dp.get_json("live.test", "/live/check").await;
        assert_eq!(status, 200, "after change {i}: {body}");
        assert_eq!(
            served_by(&body),
            format!("gen-{i}"),
            "after change {i} was ACKed"
        );
        // Let the client run a few requests on each version.
        let before = sent.load(Ordering::SeqCst);
        wait_until("the load client to make progress", WAIT, || async {
            (sent.load(Ordering::SeqCst) >= before + 5).then_some(())
        })
        .await;
    }
    stop.store(true, Ordering::SeqCst);
    let mut failures = Vec::new();
    for client in load {
        failures.extend(client.await.expect("load task"));
    }
    let total = sent.load(Ordering::SeqCst);
    eprintln!(
        "{total} requests during {CHANGES} config changes, {} failed",
        failures.len()
    );
    assert!(total >= 100, "the client sent only {total} requests");
    assert!(
        failures.is_empty(),
        "{} of {total} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(ups[CHANGES].requests() > 0);
}

// ------------------------------------------------------------------ control-plane outages

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_killed_data_plane_serves_on_and_reconnects() {
    let before = Upstream::start("before").await;
    let after = Upstream::start("after").await;
    let to = |up: &Upstream| {
        config(json!({
            "services": [service_to("svc", up)],
            "routes": [{"name": "r", "service": "svc", "paths": ["/"]}],
        }))
    };
    let mut cp = ControlPlane::start().await;
    let first = cp.apply_revision(&to(&before)).await;
    let dp = DataPlane::start(cp.port(), "dp-outage", &[]);
    dp.wait_ready().await;
    wait_acked(&cp, &dp, first).await;

    cp.kill_9();
    // Serves on, unchanged, for a while (bounded count).
    for i in 0..50 {
        let (status, body) = dp.get_json("outage.test", &format!("/x/{i}")).await;
        assert_eq!(
            status, 200,
            "request {i} with the control plane down: {body}"
        );
        assert_eq!(served_by(&body), "before");
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    assert_eq!(
        dp.status_code("/readyz").await,
        Some(200),
        "still ready without a control plane"
    );
    assert_eq!(dp.revision().await, Some(first));
    wait_until("/status to report the control plane gone", WAIT, || async {
        dp.control_plane_state()
            .await
            .filter(|state| state != "connected")
    })
    .await;

    // Back on the same data dir and port; a change made meanwhile is picked up.
    cp.restart().await;
    let second = cp.apply_revision(&to(&after)).await;
    assert!(second > first);
    wait_acked(&cp, &dp, second).await;
    let (status, body) = dp.get_json("outage.test", "/y").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(served_by(&body), "after");
    assert_eq!(dp.control_plane_state().await.as_deref(), Some("connected"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_plane_follows_a_control_plane_whose_store_was_wiped() {
    let old = Upstream::start("old-store").await;
    let new = Upstream::start("new-store").await;
    let to = |up: &Upstream, path: &str| {
        config(json!({
            "services": [service_to("svc", up)],
            "routes": [{"name": "r", "service": "svc", "paths": [path]}],
        }))
    };
    let mut cp = ControlPlane::start().await;
    cp.apply_revision(&to(&old, "/a")).await;
    cp.apply_revision(&to(&old, "/b")).await;
    let old_revision = cp.apply_revision(&to(&old, "/")).await;
    let dp = DataPlane::start(cp.port(), "dp-wiped-store", &[]);
    dp.wait_ready().await;
    wait_acked(&cp, &dp, old_revision).await;
    let (old_store, _) = dp.config_version().await.expect("config version");

    // A new store (wiped data dir) whose revisions start again from the bottom.
    cp.kill_9();
    std::fs::remove_dir_all(cp.data_dir()).expect("wipe the control plane's data dir");
    cp.restart().await;
    cp.apply_revision(&to(&new, "/")).await;
    let mut admin = cp.admin().await;
    let exported = admin
        .export(admin_pb::ExportRequest::default())
        .await
        .expect("export")
        .into_inner()
        .version
        .expect("version");
    assert_ne!(
        exported.store_id, old_store,
        "a wiped data dir is a new store"
    );
    assert!(
        exported.revision < old_revision,
        "the new store's revision is lower"
    );
    let expected = (exported.store_id.clone(), exported.revision);
    wait_until(
        "the data plane to take the new store's snapshot",
        WAIT,
        || async {
            dp.config_version()
                .await
                .filter(|v| *v == expected)
                .map(|_| ())
        },
    )
    .await;
    let (status, body) = dp.get_json("wiped.test", "/x").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(served_by(&body), "new-store");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_cache_serves_when_started_during_an_outage() {
    let up = Upstream::start("cached").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let cache = dir.path().join("dp-cache.pb");
    let value = json!({
        "services": [service_to("svc", &up)],
        "routes": [{"name": "r", "service": "svc", "hosts": ["cache.test"], "paths": ["/c"]}],
    });
    let cache_arg =
        |path: &std::path::Path| vec!["--config-cache".to_string(), path.display().to_string()];
    let (mut cp, first_dp) = gateway("dp-cache-writer", value, &cache_arg(&cache)).await;
    let revision = first_dp.revision().await.expect("revision");
    wait_until("the config cache file to be written", WAIT, || async {
        std::fs::metadata(&cache)
            .ok()
            .filter(|m| m.len() > 0)
            .map(|_| ())
    })
    .await;
    cp.kill_9();

    // A second data plane, started with the control plane down, serves the cache.
    let copy = dir.path().join("copy.pb");
    std::fs::copy(&cache, &copy).expect("copy cache");
    let second = DataPlane::start(cp.port(), "dp-cache-reader", &cache_arg(&copy));
    second.wait_ready().await;
    assert_eq!(
        second.revision().await,
        Some(revision),
        "{:?}",
        second.status_json().await
    );
    let (status, body) = second.get_json("cache.test", "/c/1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(served_by(&body), "cached");
    let (status, body) = second.get_json("cache.test", "/nope").await;
    assert_json_error(
        "no route from the cached config",
        status,
        &body,
        404,
        Some("no_route"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_cache_or_control_plane_the_data_plane_is_not_ready() {
    // Nothing listens on this port: the control plane is down from the start.
    let (_reserved, cp_port) = refusing_port();
    let dp = DataPlane::start(cp_port, "dp-no-config", &[]);
    dp.wait_alive().await;
    for i in 0..5 {
        let (status, body) = dp.get_json("any.test", &format!("/anything/{i}")).await;
        assert_json_error(
            "proxied request without a config",
            status,
            &body,
            503,
            Some("not_ready"),
        );
        assert_eq!(
            dp.status_code("/readyz").await,
            Some(503),
            "/readyz without a config"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(dp.status_code("/healthz").await, Some(200));
}

// ------------------------------------------------------------------ NACK

/// A snapshot this data plane cannot apply: a route guarded by a plugin the
/// node does not load (it runs with `--plugins key-auth`, as a node of an
/// older version lacks a newer plugin). The control plane accepts it (its
/// fleet may have nodes that load `rate-limit`); this node must reject it
/// whole: the route is never served without its checks.
fn unapplicable_snapshot(upstream: &Upstream) -> GatewayConfig {
    config(json!({
        "services": [
            service_to("svc", upstream),
            {"name": "guarded-svc", "upstream": {"targets": [{"address": upstream.address()}]}},
        ],
        "routes": [
            {"name": "open", "service": "svc", "paths": ["/open"], "strip_path": true},
            {"name": "guarded", "service": "guarded-svc", "paths": ["/guarded"],
             "plugins": [{"name": "key-auth"}, {"name": "rate-limit", "config": {"limit": 5, "window": "1m"}}]},
        ],
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unapplicable_snapshot_is_nacked_and_old_config_keeps_serving() {
    let up = Upstream::start("old").await;
    let good = json!({
        "services": [service_to("svc", &up)],
        "routes": [{"name": "open", "service": "svc", "paths": ["/open"]}],
    });
    let (cp, dp) = gateway("dp-nack", good, &["--plugins".into(), "key-auth".into()]).await;
    let good_revision = dp.revision().await.expect("revision");

    let bad = unapplicable_snapshot(&up);
    let bad_revision = cp.apply_revision(&bad).await;
    assert!(bad_revision > good_revision);
    let plane = wait_until("the control plane to record the NACK", WAIT, || async {
        let plane = tracked(&cp, dp.node_id()).await?;
        (plane.rejected_version.as_ref()?.revision == bad_revision).then_some(plane)
    })
    .await;
    assert!(!plane.last_rejection.is_empty(), "{plane:?}");
    assert_eq!(
        plane.applied_version.map(|v| v.revision),
        Some(good_revision)
    );

    let output = cp.ctl(&["dataplanes"]);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "tollgatectl dataplanes: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains(dp.node_id()), "{stdout}");
    let reason = &plane.last_rejection;
    eprintln!("NACK reason: {reason}");
    assert!(
        ["rate-limit"]
            .iter()
            .any(|unimplemented| reason.contains(unimplemented)),
        "the rejection names what cannot be applied: {reason}"
    );
    let reason_start: String = reason.chars().take(24).collect();
    assert!(
        stdout.contains(&reason_start),
        "the rejection shows in tollgatectl dataplanes: {stdout}"
    );

    // The old config serves, whole: no strip_path, and no unguarded route.
    assert_eq!(dp.revision().await, Some(good_revision));
    for _ in 0..10 {
        let (status, body) = dp.get_json("nack.test", "/open/1").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["path"], "/open/1", "old config's route still in force");
        let (status, body) = dp.get_json("nack.test", "/guarded").await;
        assert_json_error(
            "route of the rejected snapshot",
            status,
            &body,
            404,
            Some("no_route"),
        );
    }
    assert_eq!(dp.status_code("/readyz").await, Some(200));
}

// ------------------------------------------------------------------ lifecycle

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_in_flight_request_finish_then_exits_zero() {
    let up = Upstream::start("slow").await;
    let value = json!({
        "services": [service_to("svc", &up)],
        "routes": [{"name": "r", "service": "svc", "paths": ["/"]}],
    });
    let (_cp, mut dp) = gateway("dp-sigterm", value, &[]).await;
    let in_flight = {
        let request = dp.get("term.test", "/slow?ms=2500");
        tokio::spawn(async move { request.send().await })
    };
    wait_until("the slow request to reach the upstream", WAIT, || async {
        (up.requests() >= 1).then_some(())
    })
    .await;
    dp.sigterm();
    // Draining: not ready any more, and no new request is served.
    wait_until("/readyz to answer 503 while draining", WAIT, || async {
        (dp.status_code("/readyz").await == Some(503)).then_some(())
    })
    .await;
    let late = raw_get(dp.addr(), "term.test", "/late").await;
    assert!(
        !matches!(&late, Some(r) if r.status != 503),
        "a new request after SIGTERM was served: {late:?}"
    );
    let response = in_flight
        .await
        .expect("task")
        .expect("in-flight request completes");
    let (status, body) = response_json(response).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(served_by(&body), "slow");
    let exit = tokio::task::block_in_place(|| dp.wait_exit(Duration::from_secs(20)));
    let exit = exit.expect("data plane exits after SIGTERM");
    assert_eq!(exit.code(), Some(0), "exit status {exit:?}");
}

// ------------------------------------------------------------------ streaming

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_megabytes_stream_each_way_with_flat_memory() {
    const SIZE: u64 = 50 * 1024 * 1024;
    const CHUNK: u64 = 64 * 1024;
    const MAX_GROWTH_KIB: u64 = 30 * 1024;
    let up = Upstream::start("bulk").await;
    let value = json!({
        "services": [service_to("svc", &up)],
        "routes": [{"name": "r", "service": "svc", "paths": ["/"]}],
    });
    let (_cp, dp) = gateway("dp-stream", value, &[]).await;
    let dp = &dp;

    let upload = |size: u64| {
        let chunks = futures::stream::iter((0..size.div_ceil(CHUNK)).map(move |i| {
            let n = (size - i * CHUNK).min(CHUNK) as usize;
            Ok::<_, std::io::Error>(filler(n))
        }));
        dp.request(reqwest::Method::POST, "bulk.test", "/sink")
            .body(reqwest::Body::wrap_stream(chunks))
            .send()
    };
    let download = |size: u64| async move {
        let response = dp
            .get("bulk.test", &format!("/bytes?n={size}"))
            .send()
            .await
            .expect("download");
        assert_eq!(response.status(), 200);
        let mut stream = response.bytes_stream();
        let mut received = 0u64;
        while let Some(chunk) = futures::StreamExt::next(&mut stream).await {
            received += chunk.expect("download chunk").len() as u64;
        }
        received
    };

    // Warm up (pools, buffers), then take the baseline.
    let (status, body) = response_json(upload(1024 * 1024).await.expect("warm-up upload")).await;
    assert_eq!(
        (status, body["received"].as_u64()),
        (200, Some(1024 * 1024)),
        "{body}"
    );
    assert_eq!(download(1024 * 1024).await, 1024 * 1024);
    let baseline = dp.rss_kib().expect("VmRSS of the data plane");

    let peak = Arc::new(AtomicU64::new(baseline));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop, pid) = (peak.clone(), stop.clone(), dp.pid());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                if let Some(rss) = tollgate_integration_tests::dp::rss_kib(pid) {
                    peak.fetch_max(rss, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    let (status, body) = response_json(upload(SIZE).await.expect("50 MB upload")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["received"].as_u64(),
        Some(SIZE),
        "upstream received every byte: {body}"
    );
    assert_eq!(download(SIZE).await, SIZE, "client received every byte");

    stop.store(true, Ordering::SeqCst);
    sampler.await.expect("sampler");
    let growth = peak.load(Ordering::SeqCst).saturating_sub(baseline);
    eprintln!("data plane RSS: baseline {baseline} KiB, growth {growth} KiB while streaming");
    assert!(
        growth < MAX_GROWTH_KIB,
        "data plane RSS grew by {growth} KiB (baseline {baseline} KiB) while streaming 50 MB each way"
    );
}

// ------------------------------------------------------------------ errors

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_distinct_json_with_the_right_status() {
    let ok = Upstream::start("ok").await;
    let slow = Upstream::start("slow").await;
    let malformed = RawUpstream::start(RawBehaviour::ConflictingLength).await;
    let closing = RawUpstream::start(RawBehaviour::CloseImmediately).await;
    let (_reserved, refused_port) = refusing_port();
    let refused = format!("127.0.0.1:{refused_port}");
    let value = json!({
        "services": [
            service_to("ok", &ok),
            {"name": "slow", "upstream": {"targets": [{"address": slow.address()}]},
             "timeouts": {"connect_ms": 1000, "request_ms": 400}},
            service("refused", &[(refused, 1)]),
            service("malformed", &[(malformed.address(), 1)]),
            service("closing", &[(closing.address(), 1)]),
            service("drained", &[(ok.address(), 0)]),
        ],
        "routes": [
            {"name": "ok", "service": "ok", "paths": ["/ok"]},
            {"name": "slow", "service": "slow", "paths": ["/timeout"]},
            {"name": "refused", "service": "refused", "paths": ["/refused"]},
            // No retry: one connection per request, to count reuse.
            {"name": "malformed", "service": "malformed", "paths": ["/malformed"], "retries": 0},
            {"name": "closing", "service": "closing", "paths": ["/closing"]},
            {"name": "drained", "service": "drained", "paths": ["/drained"]},
            {"name": "small", "service": "ok", "paths": ["/small"], "max_body_bytes": 1000},
        ]
    });
    let (_cp, dp) = gateway("dp-errors", value, &[]).await;
    let host = "errors.test";

    let (status, not_found) = dp.get_json(host, "/nowhere").await;
    assert_json_error("no route", status, &not_found, 404, Some("no_route"));
    let (status, timeout) = dp.get_json(host, "/timeout/slow?ms=5000").await;
    assert_json_error(
        "upstream timeout",
        status,
        &timeout,
        504,
        Some("upstream_timeout"),
    );
    let (status, refused) = dp.get_json(host, "/refused").await;
    assert_json_error(
        "upstream refused",
        status,
        &refused,
        502,
        Some("upstream_unavailable"),
    );
    let (status, drained) = dp.get_json(host, "/drained").await;
    assert_json_error(
        "no healthy target",
        status,
        &drained,
        503,
        Some("no_healthy_upstream"),
    );
    assert_eq!(ok.requests(), 0, "a weight-0 target got traffic");
    let (status, closed) = dp.get_json(host, "/closing").await;
    assert_json_error("upstream closed the connection", status, &closed, 502, None);

    // A response with both Content-Length and Transfer-Encoding is never
    // forwarded, and its connection is never reused.
    for i in 0..3 {
        let response = dp.get(host, "/malformed").send().await.expect("request");
        let (status, body) = response_json(response).await;
        assert_json_error(
            &format!("malformed upstream response #{i}"),
            status,
            &body,
            502,
            Some("upstream_malformed_response"),
        );
        assert!(!body.to_string().contains("hello world"), "{body}");
    }
    assert_eq!(
        malformed.connections(),
        3,
        "a connection that carried a malformed response was reused"
    );

    let identities = [
        ("404 no route", error_identity(&not_found)),
        ("504 timeout", error_identity(&timeout)),
        ("502 refused", error_identity(&refused)),
        ("503 no healthy target", error_identity(&drained)),
    ];
    for (i, (a, body_a)) in identities.iter().enumerate() {
        for (b, body_b) in &identities[i + 1..] {
            assert_ne!(body_a, body_b, "{a} and {b} have the same error body");
        }
    }

    // A body above the route's max_body_bytes: 413, declared or streamed.
    let response = dp
        .request(reqwest::Method::POST, host, "/small/sink")
        .body(vec![b'z'; 5000])
        .send()
        .await
        .expect("request");
    let (status, body) = response_json(response).await;
    assert_json_error(
        "declared body too large",
        status,
        &body,
        413,
        Some("request_body_too_large"),
    );
    let chunks = futures::stream::iter((0..10).map(|_| Ok::<_, std::io::Error>(filler(1000))));
    let streamed = dp
        .request(reqwest::Method::POST, host, "/small/sink")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await;
    if let Ok(response) = streamed {
        let (status, body) = response_json(response).await;
        assert_json_error(
            "streamed body too large",
            status,
            &body,
            413,
            Some("request_body_too_large"),
        );
    }
    assert!(
        ok.sink_bytes() <= 1000,
        "the upstream got more than max_body_bytes"
    );
    let (status, body) = response_json(
        dp.request(reqwest::Method::POST, host, "/small/sink")
            .body(vec![b'z'; 1000])
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(
        (status, body["received"].as_u64()),
        (200, Some(1000)),
        "{body}"
    );

    // A request target above the limit (8 KiB by default): 414.
    let long_target = format!("/ok/{}", "a".repeat(9 * 1024));
    let response = raw_get(dp.addr(), host, &long_target)
        .await
        .expect("a response to a long URI");
    assert_eq!(response.status, 414, "long request target");

    // Bad requests from clients get a 4xx, never a crash.
    let big = format!(
        "GET /ok HTTP/1.1\r\nHost: {host}\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let response = raw_http(dp.addr(), big.as_bytes())
        .await
        .expect("a response to oversized headers");
    assert_json_error(
        "oversized header block",
        response.status,
        &response.json(),
        431,
        Some("request_headers_too_large"),
    );
    for malformed_request in [
        "BLAH\r\n\r\n".to_string(),
        format!("GET /ok HTTP/1.1\r\nHost: {host}\r\nContent-Length: 1\r\nContent-Length: 2\r\nConnection: close\r\n\r\n"),
        format!("GET /ok HTTP/1.1\r\nHost: {host}\r\nContent-Length: abc\r\nConnection: close\r\n\r\n"),
        format!("GET /ok HTTP/1.1\r\nHost: {host}\r\nBad Header: x\r\nConnection: close\r\n\r\n"),
    ] {
        let response = raw_http(dp.addr(), malformed_request.as_bytes()).await;
        let status = response.as_ref().map(|r| r.status);
        assert!(
            status.is_some_and(|s| s == 400),
            "malformed request {malformed_request:?}: got {status:?}"
        );
    }
    // A request head hyper cannot parse is answered by hyper itself (400, no
    // body); a malformed body the gateway reads gets its JSON 400.
    let bad_chunk = format!(
        "POST /ok/sink HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\n"
    );
    let response = raw_http(dp.addr(), bad_chunk.as_bytes()).await;
    let response = response.expect("a response to a malformed chunked body");
    assert_json_error(
        "malformed chunked body",
        response.status,
        &response.json(),
        400,
        Some("bad_request"),
    );
    // Still alive and serving.
    assert_eq!(dp.status_code("/healthz").await, Some(200));
    let (status, body) = dp.get_json(host, "/ok").await;
    assert_eq!(status, 200, "{body}");
}

// ------------------------------------------------------------------ more proxying

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge_clients_are_proxied() {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let up = Upstream::start("h2-served").await;
    let value = json!({
        "services": [service_to("svc", &up)],
        "routes": [{"name": "h2", "service": "svc", "hosts": ["h2.test"], "paths": ["/h2"]}],
    });
    let (_cp, dp) = gateway("dp-h2c", value, &[]).await;
    let stream = tokio::net::TcpStream::connect(dp.addr())
        .await
        .expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2c prior-knowledge handshake");
    tokio::spawn(connection);
    for i in 0..5 {
        let request = hyper::Request::get(format!("http://h2.test/h2/{i}?v=2"))
            .header("x-client", "h2")
            .body(Empty::<bytes::Bytes>::new())
            .expect("request");
        let response = sender.send_request(request).await.expect("h2 request");
        assert_eq!(response.status(), 200);
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let body: Value = serde_json::from_slice(&bytes).expect("JSON echo");
        assert_eq!(served_by(&body), "h2-served", "{body}");
        assert_eq!(body["path"], format!("/h2/{i}?v=2"));
        assert_eq!(body["headers"]["x-client"], "h2");
        assert!(
            body["headers"]["host"]
                .as_str()
                .is_some_and(|h| h.starts_with("h2.test")),
            "{body}"
        );
    }
    // Streams on one connection, routed by :authority.
    let request = hyper::Request::get("http://other.test/h2/x")
        .body(Empty::<bytes::Bytes>::new())
        .expect("request");
    let response = sender.send_request(request).await.expect("h2 request");
    assert_eq!(response.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_request_finishes_on_the_config_it_started_with() {
    let old = Upstream::start("old").await;
    let new = Upstream::start("new").await;
    let to = |up: &Upstream| {
        config(json!({
            "services": [service_to("svc", up)],
            "routes": [{"name": "r", "service": "svc", "paths": ["/"]}],
        }))
    };
    let cp = ControlPlane::start().await;
    let first = cp.apply_revision(&to(&old)).await;
    let dp = DataPlane::start(cp.port(), "dp-in-flight", &[]);
    dp.wait_ready().await;
    wait_acked(&cp, &dp, first).await;

    let in_flight = {
        let request = dp.get("flight.test", "/slow?ms=2000");
        tokio::spawn(async move { request.send().await })
    };
    wait_until(
        "the slow request to reach the old upstream",
        WAIT,
        || async { (old.requests() >= 1).then_some(()) },
    )
    .await;
    let second = cp.apply_revision(&to(&new)).await;
    wait_acked(&cp, &dp, second).await;
    let (status, body) = dp.get_json("flight.test", "/now").await;
    assert_eq!((status, served_by(&body)), (200, "new"), "{body}");

    let response = in_flight.await.expect("task").expect("in-flight request");
    let (status, body) = response_json(response).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(served_by(&body), "old", "finished where it started");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_by_header_and_body_timeouts() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let up = Upstream::start("patient").await;
    let value = json!({
        "services": [service_to("svc", &up)],
        "routes": [{"name": "r", "service": "svc", "paths": ["/"]}],
    });
    let args: Vec<String> = [
        "--header-read-timeout-ms",
        "1000",
        "--body-idle-timeout-ms",
        "1000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (_cp, dp) = gateway("dp-slow-clients", value, &args).await;

    // Slowloris: half a request head, then nothing. The connection is closed
    // (408 or a plain close) well within the bounded wait.
    let mut stream = tokio::net::TcpStream::connect(dp.addr())
        .await
        .expect("connect");
    stream
        .write_all(b"GET /x HTTP/1.1\r\nHost: slow.test\r\nX-Partial: ")
        .await
        .expect("write partial head");
    let mut answer = Vec::new();
    let closed =
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    assert!(
        closed.is_ok(),
        "a connection with an unfinished request head stayed open 10 s"
    );
    let answer = String::from_utf8_lossy(&answer);
    eprintln!("unfinished head answered: {:?}", answer.lines().next());
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    assert_eq!(up.requests(), 0);

    // A body that stalls: 408 with a JSON error (or the connection closed).
    let mut stream = tokio::net::TcpStream::connect(dp.addr())
        .await
        .expect("connect");
    stream
        .write_all(
            b"POST /sink HTTP/1.1\r\nHost: slow.test\r\nContent-Length: 100\r\n\r\n0123456789",
        )
        .await
        .expect("write partial body");
    let mut answer = Vec::new();
    let finished = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    answer.extend_from_slice(&buf[..n]);
                    if answer.windows(4).any(|w| w == b"\r\n\r\n") && answer.ends_with(b"}") {
                        break;
                    }
                }
            }
        }
    })
    .await;
    assert!(
        finished.is_ok(),
        "a stalled request body was waited on for 10 s"
    );
    let answer = String::from_utf8_lossy(&answer);
    eprintln!("stalled body answered: {:?}", answer.lines().next());
    assert!(
        answer.is_empty()
            || answer.starts_with("HTTP/1.1 408") && answer.contains("request_body_timeout"),
        "stalled body: {answer}"
    );
    // Still serving.
    let (status, body) = dp.get_json("slow.test", "/fine").await;
    assert_eq!(status, 200, "{body}");
}

/// `GET /ok` with `Host` and `Connection: close` plus `extra` headers named
/// `X-H<i>`, each with a value of `value_len` bytes.
fn request_with_headers(host: &str, extra: usize, value_len: usize) -> String {
    let value = "v".repeat(value_len);
    let headers: String = (0..extra).map(|i| format!("X-H{i}: {value}\r\n")).collect();
    format!("GET /ok HTTP/1.1\r\nHost: {host}\r\n{headers}Connection: close\r\n\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_limits_answer_431_json_and_are_configurable() {
    let up = Upstream::start("limits").await;
    let value = json!({
        "services": [service_to("svc", &up)],
        "routes": [{"name": "r", "service": "svc", "paths": ["/"]}],
    });
    let (cp, dp) = gateway("dp-header-limits", value, &[]).await;
    let host = "limits.test";
    let send = |dp: &DataPlane, request: String| {
        let addr = dp.addr();
        async move {
            raw_http(addr, request.as_bytes())
                .await
                .expect("a response")
        }
    };

    // Defaults: 100 headers and 60 KiB.
    let response = send(&dp, request_with_headers(host, 98, 10)).await;
    assert_eq!(
        response.status,
        200,
        "100 headers are within the default limit: {:?}",
        String::from_utf8_lossy(&response.body)
    );
    let response = send(&dp, request_with_headers(host, 99, 10)).await;
    assert_json_error(
        "101 headers",
        response.status,
        &response.json(),
        431,
        Some("request_headers_too_large"),
    );
    // Far beyond the limit, hyper's own parser limit (the configured limit
    // + 1) answers first: still 431, but without the gateway's JSON body.
    let response = send(&dp, request_with_headers(host, 150, 10)).await;
    assert_eq!(response.status, 431, "152 headers");
    let response = send(&dp, request_with_headers(host, 4, 8 * 1024)).await;
    assert_eq!(
        response.status, 200,
        "32 KiB of headers are within the default limit"
    );

    // Configured: more headers allowed, fewer bytes.
    let custom = DataPlane::start(
        cp.port(),
        "dp-header-limits-custom",
        &[
            "--max-headers".to_string(),
            "200".to_string(),
            "--max-header-bytes".to_string(),
            "4096".to_string(),
        ],
    );
    custom.wait_ready().await;
    let response = send(&custom, request_with_headers(host, 150, 1)).await;
    assert_eq!(
        response.status,
        200,
        "152 headers with --max-headers 200: {:?}",
        String::from_utf8_lossy(&response.body)
    );
    let response = send(&custom, request_with_headers(host, 1, 5 * 1024)).await;
    assert_json_error(
        "5 KiB header with --max-header-bytes 4096",
        response.status,
        &response.json(),
        431,
        Some("request_headers_too_large"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_attempts_never_reach_the_upstream_as_requests() {
    let up = Upstream::start("smuggle").await;
    let value = json!({
        "services": [service_to("svc", &up)],
        "routes": [{"name": "r", "service": "svc", "paths": ["/"]}],
    });
    let (_cp, dp) = gateway("dp-smuggling", value, &[]).await;
    let attempts = [
        // CL.TE: Transfer-Encoding wins; what follows the chunked body is not a request.
        "POST /s1 HTTP/1.1\r\nHost: s.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n\
         5\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: s.test\r\n\r\n",
        // TE.CL: a Content-Length that covers a hidden request.
        "POST /s2 HTTP/1.1\r\nHost: s.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n\
         0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: s.test\r\n\r\n",
        // A Transfer-Encoding the gateway cannot frame by.
        "POST /s3 HTTP/1.1\r\nHost: s.test\r\nTransfer-Encoding: gzip\r\nContent-Length: 5\r\n\r\nhello\
         GET /smuggled HTTP/1.1\r\nHost: s.test\r\n\r\n",
        // Obsolete line folding.
        "GET /s4 HTTP/1.1\r\nHost: s.test\r\nX-Folded: a\r\n b\r\n\r\n\
         GET /smuggled HTTP/1.1\r\nHost: s.test\r\n\r\n",
    ];
    for attempt in attempts {
        let response = raw_http(dp.addr(), attempt.as_bytes()).await;
        let status = response.as_ref().map(|r| r.status);
        assert!(
            matches!(status, None | Some(200) | Some(400) | Some(501)),
            "{attempt:?}: {status:?}"
        );
    }
    // Let any request that slipped through arrive, then check none did.
    let (status, _) = dp.get_json("s.test", "/after").await;
    assert_eq!(status, 200);
    let targets = up.targets();
    assert!(
        !targets.iter().any(|t| t.contains("smuggled")),
        "a smuggled request reached the upstream: {targets:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_get_503_overloaded() {
    let up = Upstream::start("capped").await;
    let value = json!({
        "services": [service_to("svc", &up)],
        "routes": [{"name": "r", "service": "svc", "paths": ["/"]}],
    });
    let args = ["--max-connections".to_string(), "2".to_string()];
    let (_cp, dp) = gateway("dp-connection-cap", value, &args).await;

    // Two idle connections take both slots.
    let first = tokio::net::TcpStream::connect(dp.addr())
        .await
        .expect("connect");
    let second = tokio::net::TcpStream::connect(dp.addr())
        .await
        .expect("connect");
    let response = wait_until(
        "a connection beyond the cap to be refused",
        WAIT,
        || async {
            raw_get(dp.addr(), "cap.test", "/x")
                .await
                .filter(|r| r.status == 503)
        },
    )
    .await;
    assert_json_error(
        "connection beyond the cap",
        response.status,
        &response.json(),
        503,
        Some("overloaded"),
    );
    assert_eq!(up.requests(), 0);

    // A slot freed is a slot served.
    drop(first);
    drop(second);
    let response = wait_until("a connection to be served again", WAIT, || async {
        raw_get(dp.addr(), "cap.test", "/x")
            .await
            .filter(|r| r.status == 200)
    })
    .await;
    assert_eq!(served_by(&response.json()), "capped");
}

/// The proxy-worker count of `tollgate_connections_accepted_total`, by worker.
async fn accepted_by_worker(dp: &DataPlane) -> HashMap<String, f64> {
    let url = dp.status_url("/metrics");
    let text = reqwest::get(&url)
        .await
        .unwrap_or_else(|err| panic!("GET {url}: {err}"))
        .text()
        .await
        .expect("metrics body");
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("metrics parse");
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == "tollgate_connections_accepted_total")
        .filter_map(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => {
                Some((s.labels.get("worker")?.to_string(), v))
            }
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_each_accept_on_their_own_socket_and_restart_on_the_port() {
    let up = Upstream::start("spread").await;
    let value = json!({
        "services": [service_to("svc", &up)],
        "routes": [{"name": "r", "service": "svc", "paths": ["/"]}],
    });
    let workers = ["--worker-threads".to_string(), "2".to_string()];
    let (cp, mut dp) = gateway("dp-two-workers", value, &workers).await;

    // 64 connections, one request each: the kernel spreads them over both
    // workers' sockets (a hash of the addresses: all on one worker would be a
    // 1 in 2^63 chance).
    const CONNECTIONS: usize = 64;
    for i in 0..CONNECTIONS {
        let response = raw_get(dp.addr(), "spread.test", &format!("/c{i}"))
            .await
            .expect("a response");
        assert_eq!(response.status, 200, "connection {i}");
    }
    let accepted = accepted_by_worker(&dp).await;
    let (first, second) = (
        accepted.get("0").copied().unwrap_or(0.0),
        accepted.get("1").copied().unwrap_or(0.0),
    );
    assert!(
        first + second >= CONNECTIONS as f64,
        "accepted by worker: {accepted:?}"
    );
    assert!(
        first >= 4.0 && second >= 4.0,
        "both workers accept connections: {accepted:?}"
    );

    // A second data plane on the same port is refused (SO_REUSEPORT does not
    // let it join by mistake) and the first keeps every connection.
    let mut intruder = ChildProcess::spawn(
        "tollgate-dp[intruder]",
        &bin_path("tollgate-dp"),
        &[
            "--control-plane".to_string(),
            format!("http://127.0.0.1:{}", cp.port()),
            "--listen".to_string(),
            dp.addr().to_string(),
            "--status-listen".to_string(),
            format!("127.0.0.1:{}", free_port()),
            "--worker-threads".to_string(),
            "2".to_string(),
        ],
        &[],
    );
    let exit = tokio::task::block_in_place(|| intruder.wait_exit(Duration::from_secs(20)))
        .expect("a second data plane on the same port exits");
    assert!(!exit.success(), "exit status {exit:?}");
    for i in 0..16 {
        let response = raw_get(dp.addr(), "spread.test", &format!("/after{i}")).await;
        assert_eq!(response.map(|r| r.status), Some(200), "request {i}");
    }

    // Drain and exit, then a new process binds the same port again at once
    // (a restart) and serves on both workers.
    let addr = dp.addr();
    dp.sigterm();
    let exit = tokio::task::block_in_place(|| dp.wait_exit(Duration::from_secs(20)))
        .expect("data plane exits after SIGTERM");
    assert_eq!(exit.code(), Some(0), "exit status {exit:?}");
    let _restarted = ChildProcess::spawn(
        "tollgate-dp[restarted]",
        &bin_path("tollgate-dp"),
        &[
            "--control-plane".to_string(),
            format!("http://127.0.0.1:{}", cp.port()),
            "--listen".to_string(),
            addr.to_string(),
            "--status-listen".to_string(),
            format!("127.0.0.1:{}", free_port()),
            "--worker-threads".to_string(),
            "2".to_string(),
        ],
        &[],
    );
    let response = wait_until("the restarted data plane to serve", WAIT, || async {
        raw_get(addr, "spread.test", "/again")
            .await
            .filter(|r| r.status == 200)
    })
    .await;
    assert_eq!(served_by(&response.json()), "spread");
}
