//! End-to-end tests of `response-transformer` and the extended
//! `request-transformer` (issue 24) through the real `tollgate-cp`,
//! `tollgate-dp` and a real upstream on 127.0.0.1: JSON body edits with a
//! correct `Content-Length`, bodies left alone, and a path rewritten with
//! route-template captures as the upstream received it.

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
    let upstream = Upstream::start("origin").await;
    let revision = cp
        .apply_revision(&config(json!({
            "services": [{"name": "origin", "upstream": {"targets": [{"address": upstream.address()}]}}],
            "routes": routes,
            "consumers": consumers,
        })))
        .await;
    let dp = DataPlane::start(cp.port(), "transform-dp", &[]);
    dp.wait_version(revision).await;
    (cp, dp, upstream)
}

/// Status, `X-Cache-Status`, and the body of one GET.
async fn fetch(dp: &DataPlane, path: &str) -> (u16, String, String) {
    let response = dp
        .get("transform.test", path)
        .send()
        .await
        .expect("response");
    let status = response.status().as_u16();
    let cache = response
        .headers()
        .get("x-cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = response.text().await.expect("body");
    (status, cache, body)
}

#[tokio::test]
async fn response_transformer_edits_json_bodies_with_a_correct_length() {
    let edits = json!({
        "headers": {"add": {"x-edited": "yes"}, "remove": ["x-drop"]},
        "json": {"remove": ["headers"], "rename": {"name": "upstream"}, "add": {"source": "gateway"}},
    });
    let mut small = edits.clone();
    small["max_body_bytes"] = json!(50);
    let (_cp, dp, _upstream) = gateway(
        json!([
            {"name": "rt", "service": "origin", "paths": ["/rt"],
             "plugins": [{"name": "response-transformer", "config": edits}]},
            {"name": "small", "service": "origin", "paths": ["/small"],
             "plugins": [{"name": "response-transformer", "config": small}]},
            {"name": "both", "service": "origin", "paths": ["/both"],
             "plugins": [{"name": "response-transformer", "config": edits},
                         {"name": "proxy-cache"}]},
        ]),
        json!([]),
    )
    .await;
    let response = dp
        .get("transform.test", "/rt/x?set-x-drop=1")
        .send()
        .await
        .expect("rt");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-edited"], "yes");
    assert!(response.headers().get("x-drop").is_none());
    let length: usize = response.headers()["content-length"]
        .to_str()
        .expect("length")
        .parse()
        .expect("number");
    let body = response.bytes().await.expect("body");
    assert_eq!(body.len(), length);
    let json: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(json["source"], "gateway");
    assert_eq!(json["upstream"], "origin");
    assert!(json.get("headers").is_none() && json.get("name").is_none());
    assert_eq!(json["path"], "/rt/x?set-x-drop=1");

    // Not JSON: streamed through untouched, headers still edited.
    let response = dp
        .get("transform.test", "/rt/bytes?n=200000")
        .send()
        .await
        .expect("bytes");
    assert_eq!(response.headers()["x-edited"], "yes");
    assert_eq!(response.bytes().await.expect("body").len(), 200_000);
    // JSON over the cap: untouched.
    let response = dp
        .get("transform.test", "/small/x")
        .send()
        .await
        .expect("small");
    let json: serde_json::Value = response.json().await.expect("json");
    assert!(json.get("headers").is_some() && json.get("source").is_none());

    // With a cache: the edited body is what is stored and served.
    let (_, cache, body) = fetch(&dp, "/both/x").await;
    assert_eq!(cache, "MISS");
    let (_, cache, hit) = fetch(&dp, "/both/x").await;
    assert_eq!(cache, "HIT");
    assert_eq!(body, hit);
    assert!(hit.contains("\"source\":\"gateway\""));
}

#[tokio::test]
async fn request_transformer_rewrites_path_method_and_templated_values() {
    let (cp, dp, _upstream) = gateway(
        json!([
            {"name": "users", "service": "origin", "paths": ["/users/{id}"],
             "plugins": [{"name": "key-auth"},
                         {"name": "request-transformer", "config": {
                "path": "/v2/accounts/{id}",
                "method": "POST",
                "replace": {"querystring": {"page": "1"}},
                "add": {"headers": {"x-tenant": "$(headers.x-org)", "x-caller": "$(consumer.name)",
                                    "x-route": "$(route.name)"}}}}]},
            {"name": "json", "service": "origin", "paths": ["/json"],
             "plugins": [{"name": "request-transformer", "config": {
                "json": {"remove": ["password"], "replace": {"role": "user"}, "add": {"source": "gateway"}}}}]},
        ]),
        json!([{"name": "alice", "credentials": [{"api_key": "alice-key-0123456789"}]}]),
    )
    .await;
    let response = dp
        .get("transform.test", "/users/42/orders?page=9&keep=1")
        .header("apikey", "alice-key-0123456789")
        .header("x-org", "acme")
        .send()
        .await
        .expect("users");
    assert_eq!(response.status(), 200);
    let echo: serde_json::Value = response.json().await.expect("echo");
    assert_eq!(echo["path"], "/v2/accounts/42/orders?page=1&keep=1");
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["headers"]["x-tenant"], "acme");
    assert_eq!(echo["headers"]["x-caller"], "alice");
    assert_eq!(echo["headers"]["x-route"], "users");

    // JSON request bodies: fields edited, Content-Length follows; other
    // bodies pass as sent.
    let sent = r#"{"user":"ann","password":"s3cret","role":"admin"}"#;
    for (content_type, expected) in [
        (
            "application/json",
            json!({"user": "ann", "role": "user", "source": "gateway"}),
        ),
        ("text/plain", serde_json::Value::Null),
    ] {
        let response = dp
            .request(reqwest::Method::POST, "transform.test", "/json/echo-body")
            .header("content-type", content_type)
            .body(sent)
            .send()
            .await
            .expect("json");
        assert_eq!(response.status(), 200);
        let received_length: usize = response.headers()["x-received-length"]
            .to_str()
            .expect("length")
            .parse()
            .expect("number");
        let body = response.bytes().await.expect("body");
        assert_eq!(
            received_length,
            body.len(),
            "Content-Length matches the edited body"
        );
        if expected.is_null() {
            assert_eq!(&body[..], sent.as_bytes(), "{content_type} untouched");
        } else {
            let got: serde_json::Value = serde_json::from_slice(&body).expect("json");
            assert_eq!(got, expected);
        }
    }

    // A capture the route does not declare, or a route that strips its
    // path, is refused by the control plane, naming the field.
    for (paths, strip, expected) in [
        (
            json!(["/users/{uid}"]),
            false,
            "capture {id} is not in path",
        ),
        (json!(["/users/{id}"]), true, "strips its path"),
    ] {
        let err = cp
            .try_apply(
                &config(json!({
                    "services": [{"name": "origin", "upstream": {"targets": [{"address": "127.0.0.1:9"}]}}],
                    "routes": [{"name": "users", "service": "origin", "paths": paths, "strip_path": strip,
                                "plugins": [{"name": "request-transformer", "config": {"path": "/v2/{id}"}}]}],
                })),
                false,
            )
            .await
            .expect_err("refused");
        assert!(
            err.message().contains("config.path") && err.message().contains(expected),
            "{}",
            err.message()
        );
    }
}
