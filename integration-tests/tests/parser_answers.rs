//! The answers hyper's parser makes itself (issue 21): a request head it
//! cannot parse gets the gateway's JSON 400 with a request id, counted in
//! `tollgate_requests_total` and written to the access log with its `error`
//! code, like every other answer the gateway makes, through the real binaries.

use serde_json::{json, Value};
use tollgate_integration_tests::cp::config_from_json as config;
use tollgate_integration_tests::cp::ControlPlane;
use tollgate_integration_tests::dp::{raw_http, DataPlane, WAIT};
use tollgate_integration_tests::process::wait_until;
use tollgate_integration_tests::upstream::Upstream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unparseable_heads_get_json_are_counted_and_logged() {
    let cp = ControlPlane::start().await;
    let upstream = Upstream::start("app").await;
    let revision = cp
        .apply_revision(&config(json!({
            "services": [{"name": "app", "upstream": {"targets": [{"address": upstream.address()}]}}],
            "routes": [{"name": "all", "service": "app"}],
        })))
        .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("access.log");
    let args = ["--access-log".to_string(), log.display().to_string()];
    let dp = DataPlane::start(cp.port(), "parse-dp", &args);
    dp.wait_version(revision).await;

    let heads: [&[u8]; 3] = [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost a\r\n\r\n",
    ];
    let mut ids = Vec::new();
    for head in heads {
        let answer = raw_http(dp.addr(), head).await.expect("an answer");
        assert_eq!(answer.status, 400, "{:?}", String::from_utf8_lossy(head));
        let body: Value = serde_json::from_slice(&answer.body).expect("a JSON body");
        assert_eq!(body["error"], "bad_request", "{body}");
        let id = answer
            .header("x-request-id")
            .expect("a request id")
            .to_string();
        assert_eq!(body["request_id"], id.as_str());
        assert_eq!(answer.header("content-type"), Some("application/json"));
        ids.push(id);
    }
    // Far over the header limits, hyper's parser stops reading and answers
    // 431 itself: the same treatment.
    let mut huge = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 300 * 1024));
    huge.extend_from_slice(b"\r\n\r\n");
    let answer = raw_http(dp.addr(), &huge).await.expect("an answer");
    assert_eq!(answer.status, 431);
    let body: Value = serde_json::from_slice(&answer.body).expect("a JSON body");
    assert_eq!(body["error"], "request_headers_too_large", "{body}");
    assert_eq!(upstream.requests(), 0);

    let url = dp.status_url("/metrics");
    wait_until("the parse errors counted", WAIT, || async {
        let text = reqwest::get(&url).await.ok()?.text().await.ok()?;
        text.lines()
            .any(|l| {
                l.starts_with("tollgate_requests_total{")
                    && l.contains("route=\"none\"")
                    && l.contains("code=\"400\"")
                    && l.ends_with(" 3")
            })
            .then_some(())
    })
    .await;
    let lines = wait_until("the access-log lines", WAIT, || async {
        let text = std::fs::read_to_string(&log).ok()?;
        let lines: Vec<Value> = text
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .filter(|line: &Value| line["error"] == "bad_request")
            .collect();
        (lines.len() == 3).then_some(lines)
    })
    .await;
    for line in lines {
        assert_eq!(line["status"], 400, "{line}");
        assert_eq!(line["client_ip"], "127.0.0.1", "{line}");
        assert!(
            ids.iter().any(|id| line["request_id"] == id.as_str()),
            "{line}"
        );
    }
}
