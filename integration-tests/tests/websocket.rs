//! WebSocket through the gateway (issue 16, item 1), end to end: the real
//! `tollgate-cp` and `tollgate-dp`, a real WebSocket echo server and a real
//! WebSocket client (Python `websockets`, see `tollgate_integration_tests::python`).
//!
//! - On a route with `websocket: true`, 1,000 messages go through the tunnel
//!   and come back; the upgrade request carried the client's credentials
//!   through `key-auth`, and without a key the upgrade is refused (401) and
//!   never reaches the upstream.
//! - The same upgrade on a route without `websocket` reaches the upstream, if
//!   at all, as a plain request without `Upgrade`, and no tunnel opens.
//! - A silent tunnel is closed after the route's idle timeout; the access log
//!   records each tunnel's duration and bytes, and the metrics count upgrades
//!   and open tunnels.

use std::time::Duration;

use serde_json::{json, Value};
use tollgate_integration_tests::cp::{config_from_json as config, ControlPlane};
use tollgate_integration_tests::dp::DataPlane;
use tollgate_integration_tests::process::{free_port, wait_until, ChildProcess};
use tollgate_integration_tests::python;

const WEBSOCKETS: &[&str] = &["websockets"];
const KEY: &str = "ws-client-key-0123456789";

struct Gateway {
    _cp: ControlPlane,
    dp: DataPlane,
    upstream: ChildProcess,
    log_path: std::path::PathBuf,
    _log_dir: tempfile::TempDir,
}

async fn gateway() -> Gateway {
    let port = free_port();
    let upstream = python::server("ws_echo_server.py", WEBSOCKETS, port, &[]).await;
    let cp = ControlPlane::start().await;
    let revision = cp
        .apply_revision(&config(json!({
            "services": [{"name": "echo", "upstream": {"targets": [{"address": format!("127.0.0.1:{port}")}]}}],
            "routes": [
                {"name": "live", "service": "echo", "paths": ["/live"], "websocket": true,
                 "plugins": [{"name": "key-auth"}]},
                {"name": "quiet", "service": "echo", "paths": ["/quiet"], "websocket": true,
                 "websocket_idle_timeout_ms": 1500},
                {"name": "plain", "service": "echo", "paths": ["/plain"]},
            ],
            "consumers": [{"name": "ws-app", "credentials": [{"api_key": KEY}]}],
        })))
        .await;
    let log_dir = tempfile::tempdir().expect("log dir");
    let log_path = log_dir.path().join("access.log");
    let dp = DataPlane::start(
        cp.port(),
        "dp-websocket",
        &[
            "--access-log".to_string(),
            log_path.to_string_lossy().into_owned(),
        ],
    );
    dp.wait_version(revision).await;
    Gateway {
        _cp: cp,
        dp,
        upstream,
        log_path,
        _log_dir: log_dir,
    }
}

fn ws_client(spec: Value, timeout: Duration) -> Value {
    let mut lines = python::client("ws_client.py", WEBSOCKETS, &spec, timeout);
    lines.remove(0)
}

async fn ws_client_async(spec: Value, timeout: Duration) -> Value {
    tokio::task::spawn_blocking(move || ws_client(spec, timeout))
        .await
        .expect("client thread")
}

/// A series of the data plane's `/metrics`, `None` when absent.
async fn metric(dp: &DataPlane, series: &str) -> Option<f64> {
    let text = reqwest::get(dp.status_url("/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

/// The upstream's log lines for requests to `path`.
fn upstream_requests(upstream: &ChildProcess, path: &str) -> Vec<Value> {
    python::server_lines(upstream)
        .into_iter()
        .filter(|line| line["path"].as_str().is_some_and(|p| p.starts_with(path)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_only_on_opted_in_routes_with_auth_metrics_and_log() {
    let gw = gateway().await;
    let base = format!("ws://{}", gw.dp.addr());

    // 1,000 messages through the tunnel, authenticated on the upgrade.
    let echoed = ws_client_async(
        json!({"url": format!("{base}/live/chat"), "headers": {"apikey": KEY}, "messages": 1000}),
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(echoed["ok"], true, "{echoed}");
    assert_eq!(echoed["echoed"], 1000, "{echoed}");
    let reached = upstream_requests(&gw.upstream, "/live");
    assert_eq!(reached.len(), 1, "{reached:?}");
    assert_eq!(reached[0]["upgrade"], "websocket");
    assert_eq!(reached[0]["apikey"], KEY);

    // No key: refused at the upgrade, never reaches the upstream.
    let refused = ws_client_async(
        json!({"url": format!("{base}/live/chat"), "messages": 1}),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(refused["ok"], false, "{refused}");
    assert_eq!(refused["status"], 401, "{refused}");
    assert_eq!(upstream_requests(&gw.upstream, "/live").len(), 1);

    // The same upgrade on a route without `websocket`: stripped, no tunnel.
    let stripped = ws_client_async(
        json!({"url": format!("{base}/plain/chat"), "messages": 1}),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(stripped["ok"], false, "{stripped}");
    assert_ne!(stripped["status"], 101, "{stripped}");
    for request in upstream_requests(&gw.upstream, "/plain") {
        assert!(
            request["upgrade"].is_null() && request["connection"].is_null(),
            "an upgrade reached the upstream on a route without websocket: {request}"
        );
    }

    // A silent tunnel closes after the route's idle timeout (1.5 s); while
    // it is open the gauge counts it.
    let quiet = tokio::spawn(ws_client_async(
        json!({"url": format!("{base}/quiet/chat"), "messages": 3, "wait_close": 30}),
        Duration::from_secs(60),
    ));
    wait_until(
        "the quiet tunnel in the gauge",
        Duration::from_secs(20),
        || async {
            (metric(&gw.dp, "tollgate_websocket_tunnels{route=\"quiet\"}").await == Some(1.0))
                .then_some(())
        },
    )
    .await;
    let quiet = quiet.await.expect("quiet client");
    assert_eq!(quiet["ok"], true, "{quiet}");
    assert_eq!(quiet["closed"], true, "closed by the gateway: {quiet}");
    let seconds = quiet["seconds"].as_f64().unwrap_or_default();
    assert!(
        (1.0..25.0).contains(&seconds),
        "closed after the idle timeout, not before: {seconds}"
    );

    wait_until(
        "tunnels closed in the gauge",
        Duration::from_secs(20),
        || async {
            let live = metric(&gw.dp, "tollgate_websocket_tunnels{route=\"live\"}").await;
            let quiet = metric(&gw.dp, "tollgate_websocket_tunnels{route=\"quiet\"}").await;
            (live == Some(0.0) && quiet == Some(0.0)).then_some(())
        },
    )
    .await;
    assert_eq!(
        metric(&gw.dp, "tollgate_websocket_upgrades_total{route=\"live\"}").await,
        Some(1.0)
    );
    assert_eq!(
        metric(&gw.dp, "tollgate_websocket_upgrades_total{route=\"quiet\"}").await,
        Some(1.0)
    );
    assert_eq!(
        metric(&gw.dp, "tollgate_websocket_upgrades_total{route=\"plain\"}").await,
        None
    );

    // The access log: one line per tunnel, written when it closed, with its
    // duration and bytes both ways.
    let lines = wait_until(
        "tunnel access-log lines",
        Duration::from_secs(20),
        || async {
            let text = std::fs::read_to_string(&gw.log_path).unwrap_or_default();
            let lines: Vec<Value> = text
                .lines()
                .filter_map(|line| serde_json::from_str(line).ok())
                .filter(|line: &Value| line["status"] == 101)
                .collect();
            (lines.len() >= 2).then_some(lines)
        },
    )
    .await;
    let live = lines
        .iter()
        .find(|line| line["route"] == "live")
        .expect("live tunnel line");
    assert_eq!(live["consumer"], "ws-app");
    assert!(
        live["tunnel_ms"].as_f64().is_some_and(|ms| ms > 0.0),
        "{live}"
    );
    // 1,000 frames each way (compressed by permessage-deflate, which the
    // tunnel carries untouched): a header and a payload byte at least.
    for field in ["bytes_in", "bytes_out"] {
        assert!(
            live[field].as_u64().is_some_and(|bytes| bytes > 3_000),
            "{field}: {live}"
        );
    }
    let quiet = lines
        .iter()
        .find(|line| line["route"] == "quiet")
        .expect("quiet tunnel line");
    assert!(
        quiet["tunnel_ms"].as_f64().is_some_and(|ms| ms >= 1400.0),
        "{quiet}"
    );
    let refused_line = std::fs::read_to_string(&gw.log_path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|line| line["route"] == "live" && line["status"] == 401);
    assert!(
        refused_line.is_some_and(|line| line["tunnel_ms"].is_null()),
        "refused upgrade logged without a tunnel"
    );
}
