//! End-to-end tests of the plugins added as the proof of the plugin API
//! (issue 14): `ip-restriction` and `cors`, through the real `tollgate-cp`,
//! `tollgatectl`, `tollgate-dp` and a real upstream on 127.0.0.1; and the
//! control plane refusing a value no data plane of this version serves.

use serde_json::json;
use tollgate_integration_tests::cp::config_from_json as config;
use tollgate_integration_tests::cp::ControlPlane;
use tollgate_integration_tests::dp::DataPlane;
use tollgate_integration_tests::upstream::Upstream;

async fn gateway(
    routes: serde_json::Value,
    consumers: serde_json::Value,
) -> (ControlPlane, DataPlane, Upstream) {
    let cp = ControlPlane::start().await;
    let upstream = Upstream::start("edge").await;
    let revision = cp
        .apply_revision(&config(json!({
            "services": [{"name": "edge", "upstream": {"targets": [{"address": upstream.address()}]}}],
            "routes": routes,
            "consumers": consumers,
        })))
        .await;
    let dp = DataPlane::start(cp.port(), "edge-dp", &[]);
    dp.wait_version(revision).await;
    (cp, dp, upstream)
}

#[tokio::test]
async fn ip_restriction_allows_and_denies_by_client_ip() {
    let (_cp, dp, upstream) = gateway(
        json!([
            {"name": "lan", "service": "edge", "paths": ["/lan"],
             "plugins": [{"name": "ip-restriction", "config": {"allow": ["127.0.0.0/8", "2001:db8::/32"]}}]},
            {"name": "blocked", "service": "edge", "paths": ["/blocked"],
             "plugins": [{"name": "ip-restriction", "config": {"deny": ["10.0.0.0/8", "127.0.0.1"]}}]},
            {"name": "v6only", "service": "edge", "paths": ["/v6only"],
             "plugins": [{"name": "ip-restriction", "config": {"allow": ["::1/128"]}}]},
        ]),
        json!([]),
    )
    .await;
    let (status, _) = dp.get_json("any.test", "/lan").await;
    assert_eq!(status, 200);
    let before = upstream.requests();
    for path in ["/blocked", "/v6only"] {
        let (status, body) = dp.get_json("any.test", path).await;
        assert_eq!(status, 403, "{path}: {body}");
        assert_eq!(body["error"], "ip_forbidden", "{path}");
        assert!(body["request_id"].as_str().is_some_and(|id| !id.is_empty()));
    }
    assert_eq!(
        upstream.requests(),
        before,
        "refused requests never reach the upstream"
    );
}

#[tokio::test]
async fn cors_answers_preflights_before_auth_and_marks_allowed_origins_only() {
    let (_cp, dp, upstream) = gateway(
        json!([
            {"name": "api", "service": "edge", "paths": ["/api"],
             "plugins": [
                {"name": "key-auth"},
                {"name": "cors", "config": {
                    "origins": ["https://app.example.com", "https://*.partners.test"],
                    "methods": ["GET", "POST"],
                    "headers": ["apikey", "content-type"],
                    "exposed_headers": ["x-total"],
                    "credentials": true,
                    "max_age": 600}}]},
        ]),
        json!([{"name": "web", "credentials": [{"api_key": "web-key-0123456789"}]}]),
    )
    .await;
    let before = upstream.requests();

    // A preflight: answered by the gateway, without a key, upstream untouched.
    let preflight = dp
        .request(reqwest::Method::OPTIONS, "api.test", "/api")
        .header("origin", "https://a.partners.test")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "apikey, content-type")
        .send()
        .await
        .expect("preflight");
    assert_eq!(preflight.status(), 204);
    let headers = preflight.headers();
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://a.partners.test"
    );
    assert_eq!(headers["access-control-allow-methods"], "GET, POST");
    assert_eq!(
        headers["access-control-allow-headers"],
        "apikey, content-type"
    );
    assert_eq!(headers["access-control-allow-credentials"], "true");
    assert_eq!(headers["access-control-max-age"], "600");
    assert!(headers.get("x-request-id").is_some());

    // A preflight from a disallowed origin or for a disallowed method: no
    // CORS headers (the browser blocks it), and never a 5xx.
    for (origin, method) in [
        ("https://evil.test", "GET"),
        ("https://app.example.com", "DELETE"),
    ] {
        let refused = dp
            .request(reqwest::Method::OPTIONS, "api.test", "/api")
            .header("origin", origin)
            .header("access-control-request-method", method)
            .send()
            .await
            .expect("preflight");
        assert_eq!(refused.status(), 204, "{origin} {method}");
        assert!(refused
            .headers()
            .get("access-control-allow-origin")
            .is_none());
    }
    assert_eq!(
        upstream.requests(),
        before,
        "preflights never reach the upstream"
    );

    // An actual call: auth still applies, CORS headers on the response.
    let ok = dp
        .get("api.test", "/api")
        .header("origin", "https://app.example.com")
        .header("apikey", "web-key-0123456789")
        .send()
        .await
        .expect("call");
    assert_eq!(ok.status(), 200);
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_eq!(ok.headers()["access-control-expose-headers"], "x-total");
    assert_eq!(ok.headers()["vary"], "Origin");
    let no_key = dp
        .get("api.test", "/api")
        .header("origin", "https://app.example.com")
        .send()
        .await
        .expect("call");
    assert_eq!(no_key.status(), 401);
    assert_eq!(
        no_key.headers()["access-control-allow-origin"],
        "https://app.example.com",
        "the browser can read the 401"
    );
    let evil = dp
        .get("api.test", "/api")
        .header("origin", "https://evil.test")
        .header("apikey", "web-key-0123456789")
        .send()
        .await
        .expect("call");
    assert_eq!(evil.status(), 200);
    assert!(evil.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn unsupported_values_are_refused_by_the_control_plane_naming_the_field() {
    let cp = ControlPlane::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    for (field, yaml, expected) in [
        (
            "hash_on",
            "services:\n  - name: orders\n    upstream:\n      targets: [{address: \"127.0.0.1:9\"}]\n      load_balancing: consistent_hash\n",
            "service \"orders\": upstream.hash_on: required with consistent_hash",
        ),
        (
            "websocket",
            "services:\n  - name: orders\n    upstream:\n      targets: [{address: \"127.0.0.1:9\"}]\n    protocol: h2c\nroutes:\n  - name: live\n    service: orders\n    websocket: true\n",
            "route \"live\": websocket: service \"orders\" speaks h2c",
        ),
        (
            "ip-restriction",
            "plugins:\n  - name: ip-restriction\n    config: {allow: [\"10.0.0.0/33\"]}\n",
            "config.allow[0]: \"10.0.0.0/33\" is not an IP address or CIDR",
        ),
    ] {
        let path = dir.path().join(format!("{field}.yaml"));
        std::fs::write(&path, yaml).expect("write");
        let output = cp.ctl(&["apply", "-f", path.to_str().expect("utf-8 path")]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{field}: {stderr}");
        assert!(stderr.contains(expected), "{field}: {stderr}");
    }
    // Nothing was stored.
    let export = cp.ctl(&["export"]);
    assert!(export.status.success());
    let text = String::from_utf8_lossy(&export.stdout);
    assert!(
        !text.contains("orders") && !text.contains("ip-restriction"),
        "{text}"
    );
}
