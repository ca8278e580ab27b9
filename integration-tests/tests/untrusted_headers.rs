//! Identity headers from untrusted clients (issue 21): headers upstreams
//! commonly trust never reach them as a client outside `--trusted-proxies`
//! sent them; from a trusted proxy they pass as documented.

use serde_json::{json, Value};
use tollgate_integration_tests::cp::config_from_json as config;
use tollgate_integration_tests::cp::ControlPlane;
use tollgate_integration_tests::dp::DataPlane;
use tollgate_integration_tests::upstream::Upstream;

const SENT: [(&str, &str); 13] = [
    ("forwarded", "for=10.9.9.9;by=attacker"),
    ("x-real-ip", "10.9.9.9"),
    ("x-original-url", "/admin"),
    ("x-rewrite-url", "/admin"),
    ("x-original-uri", "/admin"),
    ("x-authenticated-user", "root"),
    ("x-authenticated-userid", "1"),
    ("x-credential-identifier", "root-key"),
    ("x-consumer-id", "1"),
    ("x-consumer-username", "root"),
    ("x-client-ip", "10.9.9.9"),
    ("x-forwarded-server", "internal"),
    ("x-tenant-admin", "yes"),
];

async fn upstream_saw(dp_args: &[&str]) -> Value {
    let cp = ControlPlane::start().await;
    let upstream = Upstream::start("app").await;
    let revision = cp
        .apply_revision(&config(json!({
            "services": [{"name": "app", "upstream": {"targets": [{"address": upstream.address()}]}}],
            "routes": [{"name": "all", "service": "app"}],
        })))
        .await;
    let args: Vec<String> = dp_args.iter().map(|a| a.to_string()).collect();
    let dp = DataPlane::start(cp.port(), "hdr-dp", &args);
    dp.wait_version(revision).await;
    let mut request = dp.get("h.test", "/x");
    for (name, value) in SENT {
        request = request.header(name, value);
    }
    let response = request.send().await.expect("request");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("echo");
    body["headers"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_clients_cannot_set_identity_headers() {
    let seen = upstream_saw(&["--untrusted-headers", "X-Tenant-Admin"]).await;
    for (name, value) in SENT {
        assert_ne!(
            seen[name].as_str(),
            Some(value),
            "{name} reached the upstream as sent: {seen}"
        );
    }
    // Rewritten from the real client address, as X-Forwarded-For is.
    assert_eq!(seen["x-real-ip"], "127.0.0.1", "{seen}");
    assert_eq!(seen["forwarded"], "for=127.0.0.1;proto=http", "{seen}");
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1", "{seen}");
    for dropped in [
        "x-original-url",
        "x-authenticated-user",
        "x-consumer-id",
        "x-tenant-admin",
    ] {
        assert!(seen.get(dropped).is_none(), "{dropped}: {seen}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxy_passes_them_as_sent() {
    let seen = upstream_saw(&["--trusted-proxies", "127.0.0.1/32"]).await;
    for (name, value) in SENT {
        assert_eq!(seen[name].as_str(), Some(value), "{name}: {seen}");
    }
}
