//! Encoded slashes and `;params` (issue 21): a route `/admin` behind
//! `key-auth` and a catch-all without auth, through the real binaries. Under
//! the default settings no spelling of `/admin/...` reaches the upstream
//! without the key, and the upstream receives exactly the path the gateway
//! routed on; each setting and a per-route override do what they say.

use serde_json::{json, Value};
use tollgate_integration_tests::cp::config_from_json as config;
use tollgate_integration_tests::cp::ControlPlane;
use tollgate_integration_tests::dp::{raw_get, DataPlane};
use tollgate_integration_tests::upstream::Upstream;

const KEY: &str = "admin-key-0123456789";

/// The forms that upstreams may read as `/admin/secret`.
const BYPASS_FORMS: [&str; 9] = [
    "/admin%2fsecret",
    "/admin%2Fsecret",
    "/admin;x/secret",
    "/admin;/secret",
    "/admin;jsessionid=1/secret",
    "/;x/admin/secret",
    "/admin/secret;x",
    "/admin;x%2Fsecret",
    "/%61dmin%2Fsecret",
];

async fn gateway(dp_args: &[&str], files_override: Value) -> (ControlPlane, DataPlane, Upstream) {
    let cp = ControlPlane::start().await;
    let upstream = Upstream::start("app").await;
    let mut files =
        json!({"name": "files", "service": "app", "hosts": ["p.test"], "paths": ["/files"]});
    if let (Some(files), Some(extra)) = (files.as_object_mut(), files_override.as_object()) {
        files.extend(extra.clone());
    }
    let revision = cp
        .apply_revision(&config(json!({
            "services": [{"name": "app", "upstream": {"targets": [{"address": upstream.address()}]}}],
            "routes": [
                {"name": "admin", "service": "app", "hosts": ["p.test"], "paths": ["/admin"],
                 "plugins": [{"name": "key-auth"}]},
                {"name": "catch-all", "service": "app", "hosts": ["p.test"]},
                files,
            ],
            "consumers": [{"name": "ops", "credentials": [{"api_key": KEY}]}],
        })))
        .await;
    let args: Vec<String> = dp_args.iter().map(|a| a.to_string()).collect();
    let dp = DataPlane::start(cp.port(), "path-dp", &args);
    dp.wait_version(revision).await;
    (cp, dp, upstream)
}

/// Status and, when the upstream answered, the path it received.
async fn get(dp: &DataPlane, target: &str, key: bool) -> (u16, Option<String>, Value) {
    let response = if key {
        let response = dp
            .get("p.test", target)
            .header("apikey", KEY)
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        return (status, body["path"].as_str().map(String::from), body);
    } else {
        raw_get(dp.addr(), "p.test", target)
            .await
            .expect("response")
    };
    let body = response.json();
    (
        response.status,
        body["path"].as_str().map(String::from),
        body,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defaults_never_let_a_spelling_of_a_protected_path_past_its_auth() {
    let (_cp, dp, upstream) = gateway(&[], json!({})).await;
    let before = upstream.requests();
    for form in BYPASS_FORMS {
        let (status, path, body) = get(&dp, form, false).await;
        assert!(
            status == 401 || status == 400,
            "{form}: answered {status} without a key: {body}"
        );
        assert_eq!(path, None, "{form}: reached the upstream");
    }
    assert_eq!(upstream.requests(), before, "no form reached the upstream");

    // With the key: a decoded slash is routed and forwarded as `/`; `;params`
    // are refused (400 invalid_path) by default.
    let (status, path, _) = get(&dp, "/admin%2Fsecret", true).await;
    assert_eq!((status, path.as_deref()), (200, Some("/admin/secret")));
    let (status, _, body) = get(&dp, "/admin;x/secret", true).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_path"))
    );
    // Nothing else changes: the catch-all still gets ordinary paths.
    let (status, path, _) = get(&dp, "/other/a", false).await;
    assert_eq!((status, path.as_deref()), (200, Some("/other/a")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_setting_does_what_it_says() {
    // reject + strip: encoded slashes are 400, `;params` are stripped.
    let (_cp, dp, _up) = gateway(
        &["--encoded-slashes", "reject", "--path-parameters", "strip"],
        json!({}),
    )
    .await;
    let (status, _, body) = get(&dp, "/admin%2Fsecret", true).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_path"))
    );
    for form in [
        "/admin;x/secret",
        "/admin;/secret",
        "/;x/admin/secret",
        "/admin/secret;x",
    ] {
        let (status, _, _) = get(&dp, form, false).await;
        assert_eq!(
            status, 401,
            "{form}: stripped, so routed to /admin and its auth"
        );
        let (status, path, _) = get(&dp, form, true).await;
        assert_eq!(
            (status, path.as_deref()),
            (200, Some("/admin/secret")),
            "{form}"
        );
    }

    // keep + keep: the documented data rule; the catch-all gets them as written.
    let (_cp, dp, _up) = gateway(
        &["--encoded-slashes", "keep", "--path-parameters", "keep"],
        json!({}),
    )
    .await;
    let (status, path, _) = get(&dp, "/admin%2fsecret", false).await;
    assert_eq!((status, path.as_deref()), (200, Some("/admin%2Fsecret")));
    let (status, path, _) = get(&dp, "/admin;x/secret", false).await;
    assert_eq!((status, path.as_deref()), (200, Some("/admin;x/secret")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_can_keep_encoded_slashes_for_an_api_that_needs_them() {
    // Gateway-wide reject; `/files` keeps `%2F` (object keys with slashes).
    let (_cp, dp, _up) = gateway(
        &["--encoded-slashes", "reject"],
        json!({"encoded_slashes": "keep", "path_parameters": "keep"}),
    )
    .await;
    let (status, path, _) = get(&dp, "/files/a%2fb.txt", false).await;
    assert_eq!((status, path.as_deref()), (200, Some("/files/a%2Fb.txt")));
    let (status, path, _) = get(&dp, "/files/v;1", false).await;
    assert_eq!((status, path.as_deref()), (200, Some("/files/v;1")));
    // Elsewhere the gateway's setting holds.
    let (status, _, body) = get(&dp, "/admin%2Fsecret", true).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_path"))
    );
    let (status, _, _) = get(&dp, "/other%2Fx", false).await;
    assert_eq!(status, 400);
}
