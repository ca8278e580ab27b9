//! What the gateway records about a response that breaks off (issue 21): an
//! upstream that announces 1,000 body bytes, sends 10 and closes. The client
//! sees a cut response (the status line was already sent); the access log
//! says so in `error` and the route's `tollgate_upstream_body_errors_total`
//! counts it, through the real binaries. A body already broken when the head
//! arrives (bad chunked framing) gets a 502 instead of a head and a dead
//! connection.

use serde_json::json;
use tollgate_integration_tests::cp::config_from_json as config;
use tollgate_integration_tests::cp::ControlPlane;
use tollgate_integration_tests::dp::{DataPlane, WAIT};
use tollgate_integration_tests::process::wait_until;
use tollgate_integration_tests::upstream::{RawBehaviour, RawUpstream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_cut_by_the_upstream_is_logged_and_counted() {
    let cp = ControlPlane::start().await;
    let upstream = RawUpstream::start(RawBehaviour::TruncatedBody).await;
    let revision = cp
        .apply_revision(&config(json!({
            "services": [{"name": "dying", "upstream": {"targets": [{"address": upstream.address()}]}}],
            "routes": [{"name": "cut", "service": "dying"}],
        })))
        .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("access.log");
    let args = ["--access-log".to_string(), log.display().to_string()];
    let dp = DataPlane::start(cp.port(), "cut-dp", &args);
    dp.wait_version(revision).await;

    let response = dp
        .get("cut.test", "/x")
        .header("x-request-id", "cut-1")
        .send()
        .await
        .expect("head");
    assert_eq!(response.status(), 200, "the head was relayed");
    assert!(response.bytes().await.is_err(), "the client sees the cut");

    let line = wait_until("the access-log line", WAIT, || async {
        let text = std::fs::read_to_string(&log).ok()?;
        text.lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .find(|line| line["request_id"] == "cut-1")
    })
    .await;
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["error"], "upstream_body_error", "{line}");
    assert_eq!(line["bytes_out"], 10, "{line}");

    let url = dp.status_url("/metrics");
    wait_until("the error counted", WAIT, || async {
        let text = reqwest::get(&url).await.ok()?.text().await.ok()?;
        text.lines()
            .any(|l| {
                l.starts_with("tollgate_upstream_body_errors_total{")
                    && l.contains("route=\"cut\"")
                    && l.ends_with(" 1")
            })
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_broken_before_anything_was_sent_gets_a_502() {
    let cp = ControlPlane::start().await;
    let upstream = RawUpstream::start(RawBehaviour::BadChunk).await;
    let revision = cp
        .apply_revision(&config(json!({
            "services": [{"name": "bad", "upstream": {"targets": [{"address": upstream.address()}]}}],
            "routes": [{"name": "chunks", "service": "bad"}],
        })))
        .await;
    let dp = DataPlane::start(cp.port(), "chunk-dp", &[]);
    dp.wait_version(revision).await;
    for _ in 0..3 {
        let (status, body) = dp.get_json("chunk.test", "/x").await;
        assert_eq!(status, 502, "{body}");
        assert_eq!(body["error"], "upstream_malformed_response", "{body}");
    }
}
