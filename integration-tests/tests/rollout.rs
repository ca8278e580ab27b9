//! Honest rollouts (issue 18), end to end with the real `tollgate-cp`,
//! `tollgatectl` and several real `tollgate-dp` processes:
//!
//! - `apply --wait` with three data planes confirms each; a data plane that
//!   rejects the version (started with `--plugins key-auth`, a real operator
//!   flag: it NACKs any config using another plugin) makes it exit 1 naming it
//!   and its reason; a frozen data plane (SIGSTOP of the PID this test
//!   started) makes it exit 1 after the timeout naming it; `delete --wait`.
//! - The fleet view after a control-plane restart: every data plane shows the
//!   version it serves, a fixed rejection disappears (there and on the data
//!   plane's `/status`), and LAST SEEN moves while idle (heartbeats).
//! - Recovery: kill -9 and restart of the control plane, 20 times, measuring
//!   how long until every data plane is back on the stream; SIGSTOP of the
//!   control plane, measuring how long until data planes report it
//!   unreachable, while every proxied request keeps succeeding.
//!
//! Timing assertions are generous (the machine is shared); the measured
//! figures are printed (`--nocapture`) for the report.
//!
//! Run `cargo build --bins` first.

use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::json;
use tollgate_integration_tests::cp::{config_from_json, ControlPlane};
use tollgate_integration_tests::dp::DataPlane;
use tollgate_integration_tests::process::wait_until;
use tollgate_integration_tests::upstream::Upstream;
use tollgate_shared::model::GatewayConfig;
use tollgate_shared::proto::admin::{DataPlane as PbDataPlane, ListDataPlanesRequest};

const HEARTBEAT_MS: &str = "300";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn show(output: &Output) -> String {
    format!(
        "exit {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        text(&output.stdout),
        text(&output.stderr)
    )
}

/// One service on `upstream`, one route; with `cors` on the route when asked
/// (a plugin the `--plugins key-auth` data plane does not load).
fn config(upstream: &Upstream, path: &str, cors: bool) -> GatewayConfig {
    let plugins = if cors {
        json!([{"name": "cors", "config": {"origins": ["https://app.example.com"]}}])
    } else {
        json!([])
    };
    config_from_json(json!({
        "services": [{"name": "echo", "upstream": {"targets": [{"address": upstream.address()}]}}],
        "routes": [{"name": "echo-api", "service": "echo", "paths": [path], "plugins": plugins}],
    }))
}

fn write_config(cp: &ControlPlane, name: &str, config: &GatewayConfig) -> String {
    let path = cp.scratch_dir().join(name);
    std::fs::write(&path, config.to_yaml()).expect("write config file");
    path.display().to_string()
}

fn start_dp(cp: &ControlPlane, node_id: &str, extra: &[&str]) -> DataPlane {
    let mut args = vec!["--heartbeat-interval-ms".to_string(), HEARTBEAT_MS.into()];
    args.extend(extra.iter().map(|a| a.to_string()));
    DataPlane::start(cp.stream_port(), node_id, &args)
}

async fn planes(cp: &ControlPlane) -> Vec<PbDataPlane> {
    match cp
        .admin()
        .await
        .list_data_planes(ListDataPlanesRequest {})
        .await
    {
        Ok(response) => response.into_inner().data_planes,
        Err(_) => Vec::new(),
    }
}

/// Waits (bounded) until `count` data planes are connected.
async fn wait_connected(cp: &ControlPlane, count: usize) {
    wait_until(
        &format!("{count} data planes connected"),
        Duration::from_secs(20),
        || async {
            let connected = planes(cp).await.iter().filter(|p| p.connected).count();
            (connected == count).then_some(())
        },
    )
    .await
}

/// Runs `tollgatectl` off the async workers (a `--wait` takes seconds).
async fn ctl(cp: &ControlPlane, args: &[&str]) -> Output {
    let server = cp.url();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(tollgate_integration_tests::process::bin_path("tollgatectl"))
            .env_remove("TOLLGATE_ADMIN_TOKEN")
            .env_remove("TOLLGATE_SERVER")
            .arg("--server")
            .arg(server)
            .args(&args)
            .output()
            .expect("run tollgatectl")
    })
    .await
    .expect("tollgatectl task")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn apply_wait_confirms_each_data_plane_and_names_those_that_do_not() {
    let upstream = Upstream::start("echo").await;
    let cp = ControlPlane::start().await;
    let dps = [
        start_dp(&cp, "dp-a", &[]),
        start_dp(&cp, "dp-b", &[]),
        start_dp(&cp, "dp-c", &[]),
    ];
    wait_connected(&cp, 3).await;

    // Three data planes: exit 0 and three confirmations.
    let file = write_config(&cp, "v1.yaml", &config(&upstream, "/v1", false));
    let output = ctl(&cp, &["apply", "-f", &file, "--wait", "--timeout", "20s"]).await;
    assert!(output.status.success(), "{}", show(&output));
    let stdout = text(&output.stdout);
    for dp in &dps {
        assert!(
            stdout.contains(&format!("✓ {} serves version 1", dp.node_id())),
            "{}",
            show(&output)
        );
    }
    assert!(
        stdout.contains("version 1 confirmed by 3 data planes"),
        "{}",
        show(&output)
    );
    for dp in &dps {
        let (status, _) = dp.get_json("any", "/v1/x").await;
        assert_eq!(status, 200, "{} serves what --wait confirmed", dp.node_id());
    }

    // A fourth data plane that loads only key-auth: it takes v1 (no plugin)
    // and rejects a config using cors.
    let picky = start_dp(&cp, "dp-picky", &["--plugins", "key-auth"]);
    picky.wait_version(1).await;
    wait_connected(&cp, 4).await;
    let file = write_config(&cp, "v2.yaml", &config(&upstream, "/v2", true));
    let output = ctl(&cp, &["apply", "-f", &file, "--wait", "--timeout", "20s"]).await;
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("dp-picky rejected it") && stderr.contains("cors"),
        "names the data plane and its reason: {}",
        show(&output)
    );
    assert!(
        stderr.contains("not served by 1 of 4 data planes"),
        "{}",
        show(&output)
    );
    let stdout = text(&output.stdout);
    for dp in &dps {
        assert!(
            stdout.contains(&format!("✓ {} serves version 2", dp.node_id())),
            "{}",
            show(&output)
        );
    }
    // The rejecting data plane still serves v1, whole.
    let (status, _) = picky.get_json("any", "/v1/x").await;
    assert_eq!(status, 200);

    // A frozen data plane: exit 1 after the timeout, naming it.
    dps[1].sigstop();
    let file = write_config(&cp, "v3.yaml", &config(&upstream, "/v3", false));
    let started = Instant::now();
    let output = ctl(&cp, &["apply", "-f", &file, "--wait", "--timeout", "3s"]).await;
    let took = started.elapsed();
    dps[1].sigcont();
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("dp-b: ") && stderr.contains("no answer within 3s"),
        "names the frozen data plane: {}",
        show(&output)
    );
    assert!(
        stderr.contains("not served by 1 of 4 data planes"),
        "the others (dp-picky included: v3 has no cors) confirmed: {}",
        show(&output)
    );
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(20),
        "waited for the timeout: {took:?}"
    );
    println!("apply --wait --timeout 3s with a frozen data plane returned after {took:?}");
    // Resumed, it catches up.
    dps[1].wait_version(3).await;

    // delete --wait: confirmed by all four.
    let service = write_config(
        &cp,
        "v4.yaml",
        &config_from_json(json!({
            "services": [
                {"name": "echo", "upstream": {"targets": [{"address": upstream.address()}]}},
                {"name": "spare", "upstream": {"targets": [{"address": upstream.address()}]}}
            ],
            "routes": [{"name": "echo-api", "service": "echo", "paths": ["/v3"]}],
        })),
    );
    let output = ctl(&cp, &["apply", "-f", &service, "--wait"]).await;
    assert!(output.status.success(), "{}", show(&output));
    let output = ctl(&cp, &["delete", "service", "spare", "--wait"]).await;
    assert!(output.status.success(), "{}", show(&output));
    assert!(
        text(&output.stdout).contains("version 5 confirmed by 4 data planes"),
        "{}",
        show(&output)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_fleet_view_stays_accurate_across_a_restart() {
    let upstream = Upstream::start("echo").await;
    let mut cp = ControlPlane::start().await;
    let steady = start_dp(&cp, "dp-steady", &[]);
    let picky = start_dp(&cp, "dp-picky", &["--plugins", "key-auth"]);
    wait_connected(&cp, 2).await;
    cp.apply(&config(&upstream, "/v1", false)).await;
    picky.wait_version(1).await;
    cp.apply(&config(&upstream, "/v2", true)).await;
    steady.wait_version(2).await;

    // The rejection shows in the control plane and on the data plane.
    wait_until("dp-picky's rejection", Duration::from_secs(15), || async {
        planes(&cp)
            .await
            .into_iter()
            .find(|p| p.node_id == "dp-picky" && p.last_rejection.contains("cors"))
    })
    .await;
    let status = picky.status_json().await.expect("status");
    assert_eq!(
        status["last_rejection"]["version"]["revision"], 2,
        "{status}"
    );
    assert!(
        status["last_rejection"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("cors")),
        "{status}"
    );

    // A control-plane restart: each data plane shows the version it serves.
    cp.kill_9();
    cp.restart().await;
    let healthy = Instant::now();
    let shown = wait_until(
        "both data planes shown with their versions",
        Duration::from_secs(15),
        || async {
            let planes = planes(&cp).await;
            let version = |node: &str| {
                planes
                    .iter()
                    .find(|p| p.node_id == node && p.connected)
                    .and_then(|p| p.applied_version.as_ref())
                    .map(|v| v.revision)
            };
            (version("dp-steady") == Some(2) && version("dp-picky") == Some(1)).then(Instant::now)
        },
    )
    .await;
    let took = shown - healthy;
    println!("after the restart, dataplanes showed every version {took:?} after the control plane was healthy");
    assert!(took < Duration::from_secs(5), "{took:?}");
    let output = cp.ctl(&["dataplanes"]);
    assert!(output.status.success(), "{}", show(&output));
    for line in text(&output.stdout).lines().skip(1) {
        let applied = line.split_whitespace().nth(6).unwrap_or_default();
        assert_ne!(
            applied, "-",
            "a serving data plane shows its version: {line}"
        );
    }

    // Fixed: the rejection disappears in both places.
    let fixed = cp.apply_revision(&config(&upstream, "/v3", false)).await;
    picky.wait_version(fixed).await;
    wait_until(
        "the rejection to clear",
        Duration::from_secs(15),
        || async {
            planes(&cp).await.into_iter().find(|p| {
                p.node_id == "dp-picky"
                    && p.last_rejection.is_empty()
                    && p.rejected_version.is_none()
            })
        },
    )
    .await;
    let status = picky.status_json().await.expect("status");
    assert!(status["last_rejection"].is_null(), "{status}");
    let output = cp.ctl(&["dataplanes"]);
    assert!(!text(&output.stdout).contains("cors"), "{}", show(&output));

    // LAST SEEN moves while nothing changes (heartbeats every 300 ms).
    let seen = |planes: &[PbDataPlane]| {
        planes
            .iter()
            .find(|p| p.node_id == "dp-steady")
            .map(|p| p.last_seen_ms)
            .unwrap_or_default()
    };
    let before = seen(&planes(&cp).await);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = seen(&planes(&cp).await);
    assert!(
        after > before,
        "last seen moved while idle: {before} -> {after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn data_planes_are_back_within_a_second_of_each_restart() {
    let upstream = Upstream::start("echo").await;
    let mut cp = ControlPlane::start().await;
    let _dps = [
        start_dp(&cp, "dp-1", &[]),
        start_dp(&cp, "dp-2", &[]),
        start_dp(&cp, "dp-3", &[]),
    ];
    wait_connected(&cp, 3).await;
    cp.apply(&config(&upstream, "/v1", false)).await;

    let mut after_healthy = Vec::new();
    for round in 0..20 {
        cp.kill_9();
        cp.restart().await;
        let healthy = Instant::now();
        wait_until(
            &format!("round {round}: three data planes back"),
            Duration::from_secs(20),
            || async {
                let planes = planes(&cp).await;
                (planes.iter().filter(|p| p.connected).count() == 3).then_some(())
            },
        )
        .await;
        after_healthy.push(healthy.elapsed());
    }
    after_healthy.sort();
    let median = after_healthy[after_healthy.len() / 2];
    let max = after_healthy[after_healthy.len() - 1];
    println!(
        "reconnect after kill -9 + restart, 3 data planes, 20 rounds, from the control plane \
         answering health checks: median {median:?}, max {max:?}, all {after_healthy:?}"
    );
    assert!(max < Duration::from_secs(5), "{after_healthy:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_control_plane_is_noticed_and_traffic_keeps_flowing() {
    let upstream = Upstream::start("echo").await;
    let cp = ControlPlane::start().await;
    let dps = [start_dp(&cp, "dp-1", &[]), start_dp(&cp, "dp-2", &[])];
    wait_connected(&cp, 2).await;
    let revision = cp.apply_revision(&config(&upstream, "/v1", false)).await;
    for dp in &dps {
        dp.wait_version(revision).await;
    }

    cp.sigstop();
    let frozen = Instant::now();
    let mut noticed = [None, None];
    let (mut sent, mut failed) = (0u32, 0u32);
    // Bounded: at most 20 s of requests, about 25 per second per data plane.
    while frozen.elapsed() < Duration::from_secs(20) && noticed.iter().any(Option::is_none) {
        for (i, dp) in dps.iter().enumerate() {
            let (status, _) = dp.get_json("any", "/v1/ping").await;
            sent += 1;
            if status != 200 {
                failed += 1;
            }
            if noticed[i].is_none()
                && dp.control_plane_state().await.as_deref() != Some("connected")
            {
                noticed[i] = Some(frozen.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    cp.sigcont();
    println!(
        "SIGSTOP of the control plane noticed by the data planes after {noticed:?}; \
         {sent} requests meanwhile, {failed} failed"
    );
    assert_eq!(
        failed, 0,
        "every request served while the control plane was frozen"
    );
    for (i, when) in noticed.iter().enumerate() {
        let when = when.unwrap_or_else(|| panic!("dp-{} never noticed", i + 1));
        assert!(when < Duration::from_secs(10), "{noticed:?}");
    }
    // Resumed, they come back.
    for dp in &dps {
        wait_until("reconnect", Duration::from_secs(20), || async {
            (dp.control_plane_state().await.as_deref() == Some("connected")).then_some(())
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_data_plane_shows_in_the_control_planes_log_and_metrics() {
    let metrics_port = tollgate_integration_tests::process::free_port();
    let cp = ControlPlane::start_with(tollgate_integration_tests::cp::CpOptions {
        cluster_token: Some("right-cluster-token".into()),
        env: vec![(
            "TOLLGATE_METRICS_LISTEN".into(),
            format!("127.0.0.1:{metrics_port}"),
        )],
        ..Default::default()
    })
    .await;
    let _intruder = start_dp(&cp, "dp-wrong-token", &["--cluster-token", "wrong-token"]);
    let metrics_url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let client = reqwest::Client::new();
    wait_until(
        "the refusal to be counted",
        Duration::from_secs(15),
        || async {
            let body = client
                .get(&metrics_url)
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            body.lines()
                .find(|l| {
                    l.starts_with("tollgate_cp_stream_refusals_total{reason=\"unauthenticated\"}")
                })
                .map(str::to_string)
        },
    )
    .await;
    let logs = cp.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("config stream refused"))
        .unwrap_or_else(|| panic!("no refusal in the log:\n{logs}"));
    assert!(
        line.contains("peer") && line.contains("127.0.0.1:") && line.contains("invalid token"),
        "names the peer and the reason: {line}"
    );
    assert!(
        !logs.contains("wrong-token"),
        "the presented token is never logged"
    );
}
