//! Fleet analytics end to end (issue 20): three real data planes report usage
//! over the config stream; `tollgatectl stats -o json` must count exactly what
//! a scripted load of known shape sent (per route, consumer and status), keep
//! a killed data plane's reported counts and count nothing twice after it
//! comes back; the dashboard is checked in a real headless Chromium.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tollgate_integration_tests::cp::config_from_json as config;
use tollgate_integration_tests::cp::{ControlPlane, CpOptions};
use tollgate_integration_tests::dp::DataPlane;
use tollgate_integration_tests::process::{free_port, wait_until};
use tollgate_integration_tests::upstream::Upstream;
use tollgate_shared::usage::RELATIVE_ERROR;

const ALICE_KEY: &str = "alice-analytics-key-0123456789";
const BOB_KEY: &str = "bob-analytics-key-0123456789";
/// Requests each consumer may make per data plane on /users (local limiter).
const USERS_LIMIT: usize = 5;
/// How long the upstream takes on /orders: the latency check's known floor.
const ORDERS_DELAY_MS: u64 = 20;
const REPORT_EVERY_MS: &str = "300";
const SETTLE: Duration = Duration::from_secs(30);

fn gateway(upstream: &Upstream) -> Value {
    json!({
        "services": [{"name": "svc", "upstream": {"targets": [{"address": upstream.address()}]}}],
        "routes": [
            {"name": "orders", "service": "svc", "paths": ["/orders"]},
            {"name": "users", "service": "svc", "paths": ["/users"],
             "metrics": {"consumer_labels": true},
             "plugins": [
                {"name": "key-auth"},
                {"name": "rate-limit",
                 "config": {"limit": USERS_LIMIT, "window": "1h", "scope": "consumer"}}
             ]},
            {"name": "health", "service": "svc", "paths": ["=/health"]},
        ],
        "consumers": [
            {"name": "alice", "credentials": [{"api_key": ALICE_KEY}]},
            {"name": "bob", "credentials": [{"api_key": BOB_KEY}]},
        ],
    })
}

fn start_dp(cp: &ControlPlane, node_id: &str) -> DataPlane {
    DataPlane::start(
        cp.stream_port(),
        node_id,
        &[
            "--access-log".to_string(),
            "off".to_string(),
            "--usage-report-interval-ms".to_string(),
            REPORT_EVERY_MS.to_string(),
        ],
    )
}

/// What was sent and answered: (route, status) and (consumer, status) counts.
#[derive(Debug, Default, Clone, PartialEq)]
struct Sent {
    routes: BTreeMap<(String, u16), u64>,
    consumers: BTreeMap<(String, u16), u64>,
    /// Client-side latencies of /orders, in ms.
    orders_ms: Vec<f64>,
}

impl Sent {
    fn total(&self) -> u64 {
        self.routes.values().sum()
    }
}

async fn send(
    dp: &DataPlane,
    sent: &mut Sent,
    route: &str,
    path: &str,
    key: Option<(&str, &str)>,
    times: usize,
    expected: &[u16],
) {
    for _ in 0..times {
        let mut request = dp.get("analytics.test", path);
        if let Some((_, key)) = key {
            request = request.header("apikey", key);
        }
        let started = Instant::now();
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let _ = response.bytes().await;
        let elapsed = started.elapsed().as_secs_f64() * 1000.0;
        assert!(expected.contains(&status), "{path}: {status}");
        *sent.routes.entry((route.to_string(), status)).or_default() += 1;
        if route == "users" {
            let consumer = key.map_or("anonymous", |(name, _)| name);
            *sent
                .consumers
                .entry((consumer.to_string(), status))
                .or_default() += 1;
        }
        if route == "orders" && status == 200 {
            sent.orders_ms.push(elapsed);
        }
    }
}

/// The load of known shape on one data plane: per call 27 requests.
async fn load(dp: &DataPlane, sent: &mut Sent) {
    let orders = format!("/orders/slow?ms={ORDERS_DELAY_MS}");
    send(dp, sent, "orders", &orders, None, 10, &[200]).await;
    send(dp, sent, "orders", "/orders/status/404", None, 2, &[404]).await;
    // alice goes over her limit on this data plane: 5 x 200 then 429s.
    send(
        dp,
        sent,
        "users",
        "/users/a",
        Some(("alice", ALICE_KEY)),
        USERS_LIMIT,
        &[200],
    )
    .await;
    send(
        dp,
        sent,
        "users",
        "/users/a",
        Some(("alice", ALICE_KEY)),
        3,
        &[429],
    )
    .await;
    send(
        dp,
        sent,
        "users",
        "/users/b",
        Some(("bob", BOB_KEY)),
        3,
        &[200],
    )
    .await;
    send(dp, sent, "users", "/users/c", None, 1, &[401]).await;
    send(dp, sent, "none", "/nowhere", None, 2, &[404]).await;
    send(dp, sent, "health", "/health", None, 1, &[200]).await;
}

fn stats(cp: &ControlPlane, by: &str) -> Value {
    let output = cp.ctl(&["stats", "--by", by, "--since", "1h", "-o", "json"]);
    assert!(
        output.status.success(),
        "tollgatectl stats: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("stats JSON")
}

/// (row key, status) -> requests of a stats document.
fn counts(report: &Value) -> BTreeMap<(String, u16), u64> {
    let mut out = BTreeMap::new();
    for row in report["rows"].as_array().cloned().unwrap_or_default() {
        let key = row["key"].as_str().unwrap_or_default().to_string();
        for (code, count) in row["statuses"].as_object().cloned().unwrap_or_default() {
            out.insert(
                (key.clone(), code.parse().unwrap_or(0)),
                count.as_u64().unwrap_or(0),
            );
        }
    }
    out
}

fn total(report: &Value) -> u64 {
    report["totals"]["requests"].as_u64().unwrap_or(0)
}

async fn wait_total(cp: &ControlPlane, expected: u64) -> Value {
    wait_until(&format!("stats total of {expected}"), SETTLE, || async {
        let report = stats(cp, "route");
        (total(&report) == expected).then_some(report)
    })
    .await
}

fn p99(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((0.99 * sorted.len() as f64).ceil() as usize).max(1);
    sorted[rank - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_exactly_across_three_data_planes_and_a_kill() {
    let upstream = Upstream::start("analytics").await;
    let metrics_port = free_port();
    let cp = ControlPlane::start_with(CpOptions {
        env: vec![(
            "TOLLGATE_METRICS_LISTEN".into(),
            format!("127.0.0.1:{metrics_port}"),
        )],
        ..CpOptions::default()
    })
    .await;
    let revision = cp.apply_revision(&config(gateway(&upstream))).await;
    let mut planes = Vec::new();
    for node in ["dp-a", "dp-b", "dp-c"] {
        planes.push(start_dp(&cp, node));
    }
    for dp in &planes {
        dp.wait_ready().await;
        dp.wait_version(revision).await;
    }

    let mut sent = Sent::default();
    for dp in &planes {
        load(dp, &mut sent).await;
    }
    assert_eq!(sent.total(), 81);
    let by_route = wait_total(&cp, sent.total()).await;

    // Exact per route and status; "none" is what no route matched.
    assert_eq!(counts(&by_route), sent.routes, "{by_route:#}");
    let by_consumer = stats(&cp, "consumer");
    assert_eq!(counts(&by_consumer), sent.consumers, "{by_consumer:#}");
    let by_status = stats(&cp, "status");
    let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
    for ((_, code), n) in &sent.routes {
        *statuses.entry(*code).or_default() += n;
    }
    let reported: BTreeMap<u16, u64> = counts(&by_status)
        .into_iter()
        .map(|((key, _), n)| (key.parse().unwrap_or(0), n))
        .collect();
    assert_eq!(reported, statuses, "{by_status:#}");
    let by_node = stats(&cp, "dataplane");
    let nodes: BTreeMap<String, u64> = by_node["rows"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|r| {
            (
                r["key"].as_str().unwrap_or_default().to_string(),
                r["requests"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        nodes,
        [("dp-a", 27), ("dp-b", 27), ("dp-c", 27)]
            .map(|(k, v)| (k.to_string(), v))
            .into()
    );

    // Refusals by kind: alice's 429s and the request without a key.
    let users = by_route["rows"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["key"] == "users"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(users["refusals"]["rate_limited"], 9, "{users:#}");
    assert_eq!(users["refusals"]["missing_credential"], 3, "{users:#}");

    // p99 of /orders: the upstream holds every request ORDERS_DELAY_MS, so the
    // gateway's p99 lies between that floor and the client's p99 (which adds
    // the client's own time), within the histogram's stated error.
    let orders = by_route["rows"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["key"] == "orders"))
        .cloned()
        .unwrap_or_default();
    let gateway_p99 = orders["p99_ms"].as_f64().expect("orders p99");
    let client_p99 = p99(&sent.orders_ms);
    assert!(
        gateway_p99 >= ORDERS_DELAY_MS as f64 * (1.0 - RELATIVE_ERROR)
            && gateway_p99 <= client_p99 * (1.0 + RELATIVE_ERROR),
        "gateway p99 {gateway_p99} ms, client p99 {client_p99} ms"
    );
    eprintln!("orders p99: gateway {gateway_p99:.2} ms, client {client_p99:.2} ms");

    // The table form has every route and a total line.
    let table = cp.ctl(&["stats", "--since", "1h"]);
    let text = String::from_utf8_lossy(&table.stdout);
    for needle in ["ROUTE", "REQUESTS", "P99 MS", "orders", "users", "total"] {
        assert!(text.contains(needle), "{needle} in\n{text}");
    }

    // The dashboard API serves the same document.
    let api: Value = reqwest::get(format!(
        "http://127.0.0.1:{metrics_port}/api/stats?by=route&since=1h"
    ))
    .await
    .expect("api")
    .json()
    .await
    .expect("api JSON");
    assert_eq!(counts(&api), counts(&by_route));

    // A data plane killed mid-run: what it reported stays, and once it is back
    // (a new process under the same node id) nothing is counted twice.
    let mut before_kill = sent.clone();
    send(
        &planes[1],
        &mut before_kill,
        "orders",
        "/orders/x",
        None,
        10,
        &[200],
    )
    .await;
    wait_total(&cp, before_kill.total()).await;
    planes[1].kill_9();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after_kill = stats(&cp, "route");
    assert_eq!(total(&after_kill), before_kill.total());
    assert_eq!(counts(&after_kill), before_kill.routes);

    let back = start_dp(&cp, "dp-b");
    back.wait_ready().await;
    back.wait_version(revision).await;
    let mut after = before_kill.clone();
    send(&back, &mut after, "orders", "/orders/y", None, 5, &[200]).await;
    send(
        &planes[0],
        &mut after,
        "orders",
        "/orders/z",
        None,
        4,
        &[200],
    )
    .await;
    let settled = wait_total(&cp, after.total()).await;
    assert_eq!(counts(&settled), after.routes);
    // Several more report rounds from every data plane change nothing.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let later = stats(&cp, "route");
    assert_eq!(total(&later), after.total());
    assert_eq!(counts(&later), after.routes);

    // The dashboard in a real headless browser.
    let shots = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/dashboard");
    std::fs::create_dir_all(&shots).expect("screenshot dir");
    let expected = shots.join("expected-stats.json");
    std::fs::write(&expected, serde_json::to_vec(&later).expect("json")).expect("write expected");
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("browser/dashboard_check.py");
    // Debian's interpreter, which sees Debian's python3-websockets (a python3
    // earlier on PATH, e.g. pyenv's, may not).
    let python = ["/usr/bin/python3", "python3"]
        .into_iter()
        .find(|p| !p.starts_with('/') || std::path::Path::new(p).exists())
        .unwrap_or("python3");
    let output = std::process::Command::new(python)
        .arg(script)
        .arg(format!("http://127.0.0.1:{metrics_port}/dashboard/"))
        .arg(&expected)
        .arg(shots.join("dashboard.png"))
        .arg("dp-a,dp-b,dp-c")
        .output()
        .expect("run python3");
    assert!(
        output.status.success(),
        "browser check failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("{}", String::from_utf8_lossy(&output.stdout));
    drop(back);
}

/// With --admin-token the API wants the token, and without one a dashboard
/// on a non-loopback listener refuses to answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_is_behind_the_admin_token() {
    let metrics_port = free_port();
    let cp = ControlPlane::start_with(CpOptions {
        admin_token: Some("analytics-admin-token".into()),
        env: vec![(
            "TOLLGATE_METRICS_LISTEN".into(),
            format!("127.0.0.1:{metrics_port}"),
        )],
        ..CpOptions::default()
    })
    .await;
    let url = format!("http://127.0.0.1:{metrics_port}/api/fleet");
    let client = reqwest::Client::new();
    let refused = client.get(&url).send().await.expect("request");
    assert_eq!(refused.status().as_u16(), 401);
    let wrong = client
        .get(&url)
        .bearer_auth("not-the-token")
        .send()
        .await
        .expect("request");
    assert_eq!(wrong.status().as_u16(), 401);
    let allowed = client
        .get(&url)
        .bearer_auth("analytics-admin-token")
        .send()
        .await
        .expect("request");
    assert_eq!(allowed.status().as_u16(), 200);
    let page = client
        .get(format!("http://127.0.0.1:{metrics_port}/dashboard/"))
        .send()
        .await
        .expect("request");
    assert_eq!(page.status().as_u16(), 200);
    assert!(page
        .headers()
        .get("content-security-policy")
        .is_some_and(|v| v
            .to_str()
            .unwrap_or_default()
            .contains("default-src 'self'")));
    let bad = client
        .get(format!(
            "http://127.0.0.1:{metrics_port}/api/stats?by=colour"
        ))
        .bearer_auth("analytics-admin-token")
        .send()
        .await
        .expect("request");
    assert_eq!(bad.status().as_u16(), 400);
    assert!(bad.text().await.unwrap_or_default().contains("by:"));
    let post = client
        .post(&url)
        .bearer_auth("analytics-admin-token")
        .send()
        .await
        .expect("request");
    assert_eq!(post.status().as_u16(), 405);
    // tollgatectl names a bad window.
    let output = cp.ctl(&["stats", "--since", "5 minutes"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--since"));
}
