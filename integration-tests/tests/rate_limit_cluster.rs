//! End-to-end tests of rate limiting on a Redis Cluster and over TLS (issue
//! 23): real `tollgate-cp`, real `tollgate-dp` processes, and real
//! `redis-server` processes the test starts on free loopback ports: a
//! cluster of 3 primaries and 3 replicas joined by `redis-cli --cluster
//! create`, and a TLS-only Redis (`--tls-port`) whose certificate comes from
//! a private CA made by the test.
//!
//! Waits are bounded polls; every load loop is bounded in count and time;
//! only processes the test started are killed, by PID.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tollgate_integration_tests::cp::config_from_json as config;
use tollgate_integration_tests::cp::ControlPlane;
use tollgate_integration_tests::dp::{DataPlane, WAIT};
use tollgate_integration_tests::process::{free_port, wait_until};
use tollgate_integration_tests::redis::{RedisCluster, RedisServer, CLUSTER_TIMEOUT};
use tollgate_integration_tests::tls::{write, Ca};
use tollgate_integration_tests::upstream::Upstream;

const HOST: &str = "rlc.test";
const SYNC_INTERVAL: Duration = Duration::from_millis(100);

fn limit(extra: Value) -> Value {
    let mut config = json!({"window": "1h", "scope": "header:x-tenant", "policy": "redis"});
    if let (Some(config), Some(extra)) = (config.as_object_mut(), extra.as_object()) {
        config.extend(extra.clone());
    }
    json!({"name": "rate-limit", "config": config})
}

fn route(name: &str, plugin: Value) -> Value {
    json!({"name": name, "service": "echo", "paths": [format!("/{name}")], "plugins": [plugin]})
}

async fn apply(cp: &ControlPlane, dps: &[DataPlane], upstream: &Upstream, routes: Value) {
    let value = json!({
        "services": [{"name": "echo", "upstream": {"targets": [{"address": upstream.address()}]}}],
        "routes": routes,
    });
    let revision = cp.apply_revision(&config(value)).await;
    for dp in dps {
        dp.wait_version(revision).await;
    }
}

/// `GET /<path>` with `x-tenant: tenant` through `dp`: the status.
async fn status(dp: &DataPlane, path: &str, tenant: &str) -> u16 {
    dp.get(HOST, path)
        .header("x-tenant", tenant)
        .send()
        .await
        .unwrap_or_else(|err| panic!("GET {path} via {} failed: {err}", dp.node_id()))
        .status()
        .as_u16()
}

fn admitted(statuses: &[u16]) -> usize {
    statuses.iter().filter(|s| **s == 200).count()
}

/// Ports of the primaries holding keys that match `pattern`.
fn holders(cluster: &RedisCluster, pattern: &str) -> Vec<u16> {
    cluster
        .primaries()
        .into_iter()
        .filter(|port| !cluster.node(*port).keys(pattern).is_empty())
        .collect()
}

/// Three data planes on a 3+3 Redis Cluster:
/// - `sync: strict` is exact across the fleet for counters spread over the
///   primaries;
/// - `sync: batched` with requests paced slower than a sync round is exact
///   too, and each data plane's sync spans several slots;
/// - a primary killed under load (`on_redis_failure: local`): no 5xx, the
///   replica takes over, and the fleet counts exactly again without any data
///   plane restarting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_limits_hold_and_survive_a_failover() {
    let mut cluster = RedisCluster::start(3);
    let cp = ControlPlane::start().await;
    let upstream = Upstream::start("echo").await;
    let args = vec!["--redis-url".to_string(), cluster.url()];
    let dps: Vec<DataPlane> = (0..3)
        .map(|i| DataPlane::start(cp.port(), &format!("rlc-dp{i}"), &args))
        .collect();
    for dp in &dps {
        dp.wait_alive().await;
    }
    apply(
        &cp,
        &dps,
        &upstream,
        json!([
            route("strict", limit(json!({"limit": 5}))),
            route(
                "batched",
                limit(json!({"limit": 5, "sync": "batched",
                    "sync_interval_ms": SYNC_INTERVAL.as_millis() as u64}))
            ),
            route(
                "load",
                limit(json!({"limit": 1_000_000, "on_redis_failure": "local"}))
            ),
            route(
                "after",
                limit(json!({"limit": 5, "on_redis_failure": "deny"}))
            ),
        ]),
    )
    .await;

    // Strict: 15 requests per tenant round-robin, exactly 5 admitted each.
    let tenants: Vec<String> = (0..6).map(|i| format!("strict-{i}")).collect();
    for tenant in &tenants {
        let mut statuses = Vec::new();
        for i in 0..15 {
            statuses.push(status(&dps[i % 3], "/strict", tenant).await);
        }
        assert_eq!(admitted(&statuses), 5, "{tenant}: {statuses:?}");
        assert!(
            statuses.iter().all(|s| *s == 200 || *s == 429),
            "{statuses:?}"
        );
    }
    let keys = cluster.keys("tollgate:rl:{route:strict#0:*");
    assert_eq!(keys.len(), 6, "{keys:?}");
    assert!(
        keys.iter().all(|key| key.ends_with('}')),
        "keys are hash tags: {keys:?}"
    );
    let spread = holders(&cluster, "tollgate:rl:{route:strict#0:*");
    assert!(
        spread.len() >= 2,
        "counters on one primary only: {spread:?}"
    );

    // Batched: each round sends one request per tenant (to rotating data
    // planes), then waits a sync round, so each data plane's sync carries
    // several counters in several slots.
    let tenants: Vec<String> = (0..6).map(|i| format!("batched-{i}")).collect();
    let mut statuses = vec![Vec::new(); tenants.len()];
    let evalsha_before = cluster.command_calls("evalsha");
    let started = Instant::now();
    for round in 0..9 {
        for (t, tenant) in tenants.iter().enumerate() {
            statuses[t].push(status(&dps[(round + t) % 3], "/batched", tenant).await);
        }
        tokio::time::sleep(SYNC_INTERVAL * 3).await;
    }
    let took = started.elapsed().as_secs_f64();
    let evalsha = cluster.command_calls("evalsha") - evalsha_before;
    for (tenant, statuses) in tenants.iter().zip(&statuses) {
        assert_eq!(admitted(statuses), 5, "{tenant}: {statuses:?}");
    }
    let spread = holders(&cluster, "tollgate:rl:{route:batched#0:*");
    assert!(
        spread.len() >= 2,
        "counters on one primary only: {spread:?}"
    );
    eprintln!(
        "cluster batched: {} requests, {evalsha} EVALSHA on the cluster in {took:.1} s \
         ({:.1}/s; 3 data planes x 6 counters / {} ms at most {:.0}/s)",
        tenants.len() * 9,
        evalsha as f64 / took,
        SYNC_INTERVAL.as_millis(),
        3.0 * 6.0 / SYNC_INTERVAL.as_secs_f64()
    );

    // Failover. One `/after` request first: its counter's primary is the
    // one killed.
    assert_eq!(status(&dps[0], "/after", "fo").await, 200);
    let after_keys = cluster.keys("tollgate:rl:{route:after#0:*");
    assert_eq!(after_keys.len(), 1, "{after_keys:?}");
    let after_key = after_keys[0].clone();
    let victim = cluster.primary_of(&after_key).expect("the key's primary");

    // Bounded load on `/load` (24 tenants over every slot range) from each
    // data plane, sequential per data plane, while the primary dies.
    let stop = Arc::new(AtomicBool::new(false));
    let loads: Vec<_> = dps
        .iter()
        .enumerate()
        .map(|(i, dp)| {
            let (client, url, stop) = (dp.client().clone(), dp.url("/load"), stop.clone());
            tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(120);
                let mut statuses = Vec::new();
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline && n < 50_000 {
                    let answer = client
                        .get(&url)
                        .header(reqwest::header::HOST, HOST)
                        .header("x-tenant", format!("load-{}", (n * 3 + i) % 24))
                        .send()
                        .await;
                    statuses.push(answer.map(|r| r.status().as_u16()).unwrap_or(0));
                    n += 1;
                }
                statuses
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed_at = Instant::now();
    cluster.kill(victim);
    wait_until("the replica to take over", CLUSTER_TIMEOUT, || {
        let cluster = &cluster;
        async move { cluster.is_healthy().then_some(()) }
    })
    .await;
    let healed = killed_at.elapsed();
    let new_primary = cluster.primary_of(&after_key).expect("a new primary");
    assert_ne!(new_primary, victim);

    // Fleet-wide again, same processes: `/after` (deny on failure) answers
    // 200/429 from Redis only; the fleet admits exactly what the counter on
    // the promoted replica leaves of 5.
    let before: u64 = cluster
        .node(new_primary)
        .cli(&["HGET", &after_key, "c"])
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    assert!(before <= 1, "counter {before}");
    let mut after = Vec::new();
    let mut last = [0u16; 3];
    let mut counting_again = None;
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline && after.len() < 2_000 {
        let i = after.len() % 3;
        let answer = status(&dps[i], "/after", "fo").await;
        assert!(matches!(answer, 200 | 429 | 503), "{answer}");
        after.push(answer);
        last[i] = answer;
        if counting_again.is_none() && last.iter().all(|s| *s != 503 && *s != 0) {
            counting_again = Some(killed_at.elapsed());
        }
        if last.iter().all(|s| *s == 429) {
            break;
        }
        if answer == 503 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut load = Vec::new();
    for task in loads {
        load.extend(task.await.expect("load task"));
    }
    assert!(
        last.iter().all(|s| *s == 429),
        "not limiting again: {after:?}"
    );
    assert_eq!(
        admitted(&after) as u64,
        5 - before,
        "after the failover the fleet admits what is left of 5: {after:?}"
    );
    let failed = load.iter().filter(|s| **s != 200).count();
    eprintln!(
        "cluster failover: {} load requests, {failed} not 200; every slot served {:.1} s after the kill, \
         every data plane counting in Redis {:.1} s after; {} answers 503 on the deny route meanwhile",
        load.len(),
        healed.as_secs_f64(),
        counting_again.unwrap_or_default().as_secs_f64(),
        after.iter().filter(|s| **s == 503).count()
    );
    assert!(load.len() >= 30, "no load: {}", load.len());
    assert_eq!(failed, 0, "5xx or errors under on_redis_failure local");
}

/// `rediss://` to a TLS-only Redis whose certificate comes from a private
/// CA and which asks for client certificates: with `--redis-ca-file` and a
/// client certificate the fleet's limit is exact; a data plane without the
/// CA cannot verify Redis and runs under `on_redis_failure` (here `deny`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_private_ca() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::new("tollgate redis test CA");
    let server = ca.issue(&["127.0.0.1"]);
    let client = ca.issue_client("tollgate-dp", &[], 7);
    let ca_file = write(dir.path(), "ca.pem", &ca.pem);
    let server_cert = write(dir.path(), "redis.pem", &server.cert_pem);
    let server_key = write(dir.path(), "redis.key", &server.key_pem);
    let client_cert = write(dir.path(), "dp.pem", &client.cert_pem);
    let client_key = write(dir.path(), "dp.key", &client.key_pem);
    let tls_port = free_port();
    let path = |p: &std::path::Path| p.display().to_string();
    let redis = RedisServer::start_with(&[
        "--tls-port".into(),
        tls_port.to_string(),
        "--tls-cert-file".into(),
        path(&server_cert),
        "--tls-key-file".into(),
        path(&server_key),
        "--tls-ca-cert-file".into(),
        path(&ca_file),
    ]);
    let url = format!("rediss://127.0.0.1:{tls_port}/0");
    let client_args = [
        "--redis-client-cert".to_string(),
        path(&client_cert),
        "--redis-client-key".into(),
        path(&client_key),
    ];
    let mut trusting = vec![
        "--redis-url".to_string(),
        url.clone(),
        "--redis-ca-file".into(),
        path(&ca_file),
    ];
    trusting.extend(client_args.iter().cloned());
    let mut untrusting = vec!["--redis-url".to_string(), url];
    untrusting.extend(client_args.iter().cloned());

    let cp = ControlPlane::start().await;
    let upstream = Upstream::start("echo").await;
    let dps = vec![
        DataPlane::start(cp.port(), "rls-dp0", &trusting),
        DataPlane::start(cp.port(), "rls-dp1", &trusting),
        DataPlane::start(cp.port(), "rls-dp2", &untrusting),
    ];
    for dp in &dps {
        dp.wait_alive().await;
    }
    apply(
        &cp,
        &dps,
        &upstream,
        json!([route(
            "tls",
            limit(json!({"limit": 5, "on_redis_failure": "deny"}))
        )]),
    )
    .await;

    let mut statuses = Vec::new();
    for i in 0..12 {
        statuses.push(status(&dps[i % 2], "/tls", "t").await);
    }
    assert_eq!(admitted(&statuses), 5, "{statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    // The counts went over TLS into this Redis (read on its plain port).
    let keys = redis.keys("tollgate:rl:{route:tls#0:*");
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_eq!(redis.cli(&["HGET", &keys[0], "c"]).as_deref(), Some("5"));
    assert!(redis.command_calls("evalsha") >= 12);

    // Without the private CA the certificate is not trusted.
    assert_eq!(status(&dps[2], "/tls", "t").await, 503);
    let logs = dps[2].logs();
    assert!(
        logs.contains("cannot reach redis") || logs.contains("redis still unreachable"),
        "{logs}"
    );
}
