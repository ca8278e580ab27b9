//! Health checks and retries through the real binaries (issue 16): a target
//! killed under steady load costs GET clients nothing (connect failures are
//! retried on another target, then the target is ejected); after the
//! ejection even a route without retries sees no error; active probes take
//! the dead target out and bring it back when it returns; `/status`,
//! `/metrics` and `tollgatectl health` show each target's state; a retry
//! storm is capped by the retry budget.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tollgate_integration_tests::cp::config_from_json as config;
use tollgate_integration_tests::cp::ControlPlane;
use tollgate_integration_tests::dp::{DataPlane, WAIT};
use tollgate_integration_tests::process::wait_until;
use tollgate_integration_tests::upstream::Upstream;

/// `count` GETs of `path` from `clients` concurrent clients; the statuses
/// that were not 200 (a failed request counts as 0).
async fn load(dp: &Arc<DataPlane>, path: &'static str, clients: usize, count: usize) -> Vec<u16> {
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let dp = dp.clone();
        tasks.push(tokio::spawn(async move {
            let mut errors = Vec::new();
            for _ in 0..count / clients {
                match dp.get("health.test", path).send().await {
                    Ok(response) if response.status() == 200 => {}
                    Ok(response) => errors.push(response.status().as_u16()),
                    Err(_) => errors.push(0),
                }
            }
            errors
        }));
    }
    let mut errors = Vec::new();
    for task in tasks {
        errors.extend(task.await.expect("load task"));
    }
    errors
}

/// The state `/status` reports for `address` in `service`.
async fn state(dp: &DataPlane, service: &str, address: &str) -> Option<String> {
    let status = dp.status_json().await?;
    status["upstreams"][service]["targets"]
        .as_array()?
        .iter()
        .find(|t| t["address"] == address)
        .and_then(|t| t["state"].as_str())
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_target_costs_clients_nothing_and_returns_after_its_probes_pass() {
    let cp = ControlPlane::start().await;
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let mut c = Some(Upstream::start("c").await);
    let c_address = c.as_ref().map(Upstream::address).expect("c");
    let c_port = c.as_ref().map(|u| u.addr().port()).expect("c");
    let targets = json!([
        {"address": a.address()}, {"address": b.address()}, {"address": c_address},
    ]);
    let revision = cp
        .apply_revision(&config(json!({
            "services": [
                {"name": "passive", "upstream": {
                    "targets": targets,
                    "health_checks": {"passive": {"consecutive_failures": 2, "base_ejection_ms": 60000}},
                }},
                {"name": "probed", "upstream": {
                    "targets": targets,
                    "health_checks": {"active": {
                        "path": "/healthz", "interval_ms": 200, "timeout_ms": 150,
                        "healthy_threshold": 2, "unhealthy_threshold": 2,
                    }},
                }},
            ],
            "routes": [
                {"name": "retrying", "service": "passive", "paths": ["/retrying"]},
                {"name": "no-retries", "service": "passive", "paths": ["/once"], "retries": 0},
                {"name": "probed", "service": "probed", "paths": ["/probed"], "retries": 0},
            ],
        })))
        .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("access.log");
    let dp = Arc::new(DataPlane::start(
        cp.port(),
        "health-dp",
        &["--access-log".to_string(), log.display().to_string()],
    ));
    dp.wait_version(revision).await;

    assert!(load(&dp, "/retrying", 4, 60).await.is_empty(), "all up");
    let before = c.as_ref().map(Upstream::requests).expect("c");
    assert!(before > 0, "c takes its share while up");

    // Kill c (listener and connections closed) under steady load: GETs
    // are retried on another target; no client sees an error.
    drop(c.take());
    let errors = load(&dp, "/retrying", 4, 300).await;
    assert!(
        errors.is_empty(),
        "errors before/while ejecting: {errors:?}"
    );
    assert_eq!(
        state(&dp, "passive", &c_address).await.as_deref(),
        Some("ejected")
    );
    // After the ejection, a route without retries sees no error either.
    let errors = load(&dp, "/once", 4, 200).await;
    assert!(errors.is_empty(), "errors after ejection: {errors:?}");

    // The access log shows the retried requests' tries.
    let retried = wait_until("a retried request in the access log", WAIT, || async {
        let text = std::fs::read_to_string(&log).ok()?;
        text.lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .find(|line| line["tries"] == 2 && line["route"] == "retrying")
    })
    .await;
    assert_eq!(retried["status"], 200, "{retried}");

    // The probes took c out of the probed service too.
    wait_until("c fails its probes", WAIT, || async {
        (state(&dp, "probed", &c_address).await.as_deref() == Some("unhealthy")).then_some(())
    })
    .await;
    let errors = load(&dp, "/probed", 2, 60).await;
    assert!(errors.is_empty(), "errors with c probed out: {errors:?}");

    // Metrics and the CLI view say the same.
    let metrics = reqwest::get(dp.status_url("/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("tollgate_upstream_target_state{")
                && l.contains("service=\"passive\"")
                && l.contains(&format!("target=\"{c_address}\""))
                && l.contains("state=\"ejected\"")
                && l.ends_with(" 1")),
        "{metrics}"
    );
    assert!(
        metrics.contains("tollgate_upstream_ejections_total{"),
        "{metrics}"
    );
    let status_url = dp.status_url("");
    let output = cp.ctl(&["health", "probed", "--data-plane", &status_url]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        text.lines()
            .any(|l| l.contains(&c_address) && l.contains("unhealthy")),
        "{text}"
    );

    // c comes back on the same port: its probes pass and it gets traffic.
    let c = Upstream::start_on("c", c_port).await;
    wait_until("c passes its probes", WAIT, || async {
        (state(&dp, "probed", &c_address).await.as_deref() == Some("healthy")).then_some(())
    })
    .await;
    let errors = load(&dp, "/probed", 2, 60).await;
    assert!(errors.is_empty(), "{errors:?}");
    let probed = c
        .targets()
        .iter()
        .filter(|t| t.starts_with("/probed"))
        .count();
    assert!(probed >= 10, "c is back in rotation: {probed} requests");
    assert!(
        c.targets().iter().any(|t| t == "/healthz"),
        "probed with GET /healthz"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_storm_is_capped_by_the_budget() {
    let cp = ControlPlane::start().await;
    let upstreams = [
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("c").await,
    ];
    let revision = cp
        .apply_revision(&config(json!({
            "services": [{"name": "failing", "upstream": {
                "targets": upstreams.iter().map(|u| json!({"address": u.address()})).collect::<Vec<_>>(),
                // Ejection off: every answer is a 503, the budget alone caps retries.
                "health_checks": {"passive": {"consecutive_failures": 0}},
            }}],
            "routes": [{"name": "storm", "service": "failing", "retries": 5}],
        })))
        .await;
    let dp = DataPlane::start(cp.port(), "storm-dp", &[]);
    dp.wait_version(revision).await;

    let requests = 200u64;
    for i in 0..requests {
        let response = dp
            .get("storm.test", "/status/503")
            .header("x-request-id", format!("storm-{i}"))
            .send()
            .await
            .expect("response");
        assert_eq!(response.status(), 503);
    }
    let upstream_requests: u64 = upstreams.iter().map(Upstream::requests).sum();
    eprintln!("retry storm: {requests} client requests -> {upstream_requests} upstream requests");
    // Without a budget: 6 tries each, 1,200. With it: 20% more plus a
    // reserve of 10.
    assert!(
        upstream_requests <= requests + requests / 5 + 10,
        "{upstream_requests}"
    );
    assert!(
        upstream_requests > requests + 10,
        "retries happened: {upstream_requests}"
    );

    // The first request used the reserve: 6 tries with one X-Request-Id,
    // on all three targets.
    let tries: usize = upstreams
        .iter()
        .map(|u| u.request_ids().iter().filter(|id| *id == "storm-0").count())
        .sum();
    assert_eq!(tries, 6);
    assert!(upstreams
        .iter()
        .all(|u| u.request_ids().iter().any(|id| id == "storm-0")));
    // A POST is not retried after an answer.
    let before: u64 = upstreams.iter().map(Upstream::requests).sum();
    let response = dp
        .request(reqwest::Method::POST, "storm.test", "/status/503")
        .body("x")
        .send()
        .await
        .expect("response");
    assert_eq!(response.status(), 503);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after: u64 = upstreams.iter().map(Upstream::requests).sum();
    assert_eq!(after - before, 1, "POST tried once");
}
