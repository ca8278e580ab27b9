//! End-to-end tests of the `concurrency-limit` plugin: the real
//! `tollgate-cp` and `tollgate-dp`, and the test's echo upstream whose
//! `/slow?ms=N` holds a request for N ms. Every wait is a bounded poll.

use std::time::{Duration, Instant};

use serde_json::json;
use tollgate_integration_tests::cp::config_from_json as config;
use tollgate_integration_tests::cp::ControlPlane;
use tollgate_integration_tests::dp::{DataPlane, WAIT};
use tollgate_integration_tests::process::wait_until;
use tollgate_integration_tests::upstream::Upstream;

const HOST: &str = "cl.test";

async fn status(dp: &DataPlane, path: &str, headers: &[(&str, &str)]) -> (u16, serde_json::Value) {
    let mut request = dp.get(HOST, path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let body = response.json().await.unwrap_or(serde_json::Value::Null);
            (status, body)
        }
        Err(err) => panic!("GET {path} failed: {err}"),
    }
}

/// With `limit` slow requests in flight the next is refused (429, or 503 as
/// configured), per scope value; slots come back when responses complete
/// and when clients go away mid-request (long before the upstream answers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_requests_are_capped_and_slots_come_back() {
    let cp = ControlPlane::start().await;
    let upstream = Upstream::start("echo").await;
    let value = json!({
        "services": [{"name": "echo", "upstream": {"targets": [{"address": upstream.address()}]}}],
        "routes": [
            {"name": "capped", "service": "echo", "paths": ["/capped"], "plugins": [
                {"name": "concurrency-limit", "config": {"limit": 3, "scope": "route"}}]},
            {"name": "tenants", "service": "echo", "paths": ["/tenants"], "plugins": [
                {"name": "concurrency-limit", "config":
                    {"limit": 1, "scope": "header:x-tenant", "status": 503}}]},
        ],
    });
    let revision = cp.apply_revision(&config(value)).await;
    let dp = &DataPlane::start(cp.port(), "cl-dp", &[]);
    dp.wait_version(revision).await;

    // Three slow requests hold the three slots.
    let slow: Vec<_> = (0..3)
        .map(|_| {
            let request = dp.get(HOST, "/capped/slow?ms=5000");
            tokio::spawn(async move { request.send().await.map(|r| r.status().as_u16()) })
        })
        .collect();
    // The fourth is refused once the three are in flight (a probe sent
    // before they arrive would take a slot itself: give them a moment).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (refused, body) = wait_until("the fourth request refused", WAIT, || async move {
        let answer = status(dp, "/capped/fast", &[]).await;
        (answer.0 == 429).then_some(answer)
    })
    .await;
    assert_eq!(refused, 429);
    assert_eq!(body["error"], "concurrency_limited", "{body}");
    for handle in slow {
        let answered = handle.await.expect("task").expect("slow request");
        assert_eq!(answered, 200);
    }
    // Completed: the slots are free again.
    assert_eq!(status(dp, "/capped/fast", &[]).await.0, 200);

    // Clients that go away mid-request (a 300 ms client timeout against a
    // 20 s upstream) give their slots back when they disconnect.
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .expect("client");
    for _ in 0..3 {
        let gone = impatient
            .get(dp.url("/capped/slow?ms=20000"))
            .header("host", HOST)
            .send()
            .await;
        assert!(gone.is_err(), "the client should have timed out");
    }
    let started = Instant::now();
    wait_until("slots back after the clients left", WAIT, || async move {
        (status(dp, "/capped/fast", &[]).await.0 == 200).then_some(())
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "slots came back only when the upstream answered ({:?})",
        started.elapsed()
    );
    // All three are back, not just one.
    let held: Vec<_> = (0..3)
        .map(|_| {
            let request = dp.get(HOST, "/capped/slow?ms=1500");
            tokio::spawn(async move { request.send().await.map(|r| r.status().as_u16()) })
        })
        .collect();
    for handle in held {
        assert_eq!(handle.await.expect("task").expect("request"), 200);
    }

    // 503 as configured, per header value.
    let a = {
        let request = dp
            .get(HOST, "/tenants/slow?ms=5000")
            .header("x-tenant", "a");
        tokio::spawn(async move { request.send().await.map(|r| r.status().as_u16()) })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (busy, body) = wait_until("tenant a refused", WAIT, || async move {
        let answer = status(dp, "/tenants/fast", &[("x-tenant", "a")]).await;
        (answer.0 == 503).then_some(answer)
    })
    .await;
    assert_eq!(busy, 503);
    assert_eq!(body["error"], "concurrency_limited", "{body}");
    assert_eq!(
        status(dp, "/tenants/fast", &[("x-tenant", "b")]).await.0,
        200,
        "another tenant has its own slot"
    );
    assert_eq!(a.await.expect("task").expect("tenant a"), 200);

    // Invalid config is refused by the control plane, naming the field.
    let bad = json!({
        "services": [{"name": "echo", "upstream": {"targets": [{"address": upstream.address()}]}}],
        "routes": [{"name": "bad", "service": "echo", "paths": ["/bad"], "plugins": [
            {"name": "concurrency-limit", "config": {"limit": 2, "status": 500}}]}],
    });
    let err = cp
        .try_apply(&config(bad), false)
        .await
        .expect_err("status 500 must be refused");
    assert!(err.message().contains("config.status"), "{}", err.message());
}
