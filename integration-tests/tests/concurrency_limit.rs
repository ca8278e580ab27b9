//! End-to-end tests of the `concurrency-limit` plugin: the real
//! `tollgate-cp` and `tollgate-dp`, and the test's echo upstream whose
//! `/slow?ms=N` holds a request for N ms. Every wait is a bounded poll.

use std::time::{Duration, Instant};

use serde_json::json;
use tollgate_integration_tests::cp::config_from_json as config;
use tollgate_integration_tests::cp::ControlPlane;
use tollgate_integration_tests::dp::{DataPlane, WAIT};
use tollgate_integration_tests::process::wait_until;
use tollgate_integration_tests::redis::RedisServer;
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

/// Slow requests through `dp`, each in its own task: their statuses (0: the
/// connection failed).
fn spawn_slow(dp: &DataPlane, path: &str, count: usize) -> Vec<tokio::task::JoinHandle<u16>> {
    (0..count)
        .map(|_| {
            let request = dp.get(HOST, path);
            tokio::spawn(async move {
                request
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0)
            })
        })
        .collect()
}

/// `policy: redis`: the slots are the fleet's. Three data planes on one
/// real Redis, 3 slots on a route: two slow requests on one data plane and
/// one on another fill them and a fourth is refused on the third data plane,
/// still after the lease TTL has passed (leases are renewed while their
/// requests run); slots come back when responses complete and at once when
/// clients go away; a data plane killed (SIGKILL) with its leases held frees
/// them within the TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_slots_are_leases_that_expire_with_their_data_plane() {
    const TTL: Duration = Duration::from_secs(5);
    let redis = RedisServer::start();
    let cp = ControlPlane::start().await;
    let upstream = Upstream::start("echo").await;
    let value = json!({
        "services": [{"name": "echo", "upstream": {"targets": [{"address": upstream.address()}]}}],
        "routes": [
            {"name": "fleet", "service": "echo", "paths": ["/fleet"], "plugins": [
                {"name": "concurrency-limit", "config": {"limit": 3, "scope": "route",
                    "policy": "redis", "lease_ttl_ms": TTL.as_millis() as u64,
                    "on_redis_failure": "deny"}}]},
        ],
    });
    let revision = cp.apply_revision(&config(value)).await;
    let args = vec!["--redis-url".to_string(), redis.url()];
    let mut dps: Vec<DataPlane> = (0..3)
        .map(|i| DataPlane::start(cp.port(), &format!("cl-fleet-dp{i}"), &args))
        .collect();
    for dp in &dps {
        dp.wait_version(revision).await;
    }
    let leases = || -> u64 {
        let keys = redis.keys("tollgate:cl:*");
        keys.iter()
            .filter_map(|key| redis.cli(&["ZCARD", key])?.parse::<u64>().ok())
            .sum()
    };

    // 2 + 1 slow requests on two data planes hold the fleet's 3 slots; the
    // third data plane refuses, also after the TTL (renewals).
    let slow_ms = TTL.as_millis() as u64 + 3_000;
    let mut slow = spawn_slow(&dps[0], &format!("/fleet/slow?ms={slow_ms}"), 2);
    slow.extend(spawn_slow(&dps[1], &format!("/fleet/slow?ms={slow_ms}"), 1));
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let dp2 = &dps[2];
    let (refused, body) = wait_until("the fourth request refused", WAIT, || async move {
        let answer = status(dp2, "/fleet/fast", &[]).await;
        assert!(answer.0 == 429 || answer.0 == 200, "{answer:?}");
        (answer.0 == 429).then_some(answer)
    })
    .await;
    assert_eq!(body["error"], "concurrency_limited", "{body}");
    assert_eq!(refused, 429);
    assert_eq!(leases(), 3);
    tokio::time::sleep((TTL + Duration::from_secs(1)).saturating_sub(started.elapsed())).await;
    if started.elapsed() < Duration::from_millis(slow_ms - 500) {
        assert_eq!(
            status(dp2, "/fleet/fast", &[]).await.0,
            429,
            "the leases lapsed while their requests ran"
        );
    }
    for handle in slow {
        assert_eq!(handle.await.expect("task"), 200);
    }
    wait_until("leases given back", WAIT, || async {
        (leases() == 0).then_some(())
    })
    .await;
    assert_eq!(status(dp2, "/fleet/fast", &[]).await.0, 200);

    // Clients that go away: the leases are given back at once (long before
    // the TTL could expire them).
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .expect("client");
    for dp in &dps[..2] {
        let gone = impatient
            .get(dp.url("/fleet/slow?ms=30000"))
            .header("host", HOST)
            .send()
            .await;
        assert!(gone.is_err(), "the client should have timed out");
    }
    let left = Instant::now();
    wait_until("leases back after the clients left", WAIT, || async {
        (leases() == 0).then_some(())
    })
    .await;
    let freed_after_leaving = left.elapsed();
    assert!(
        freed_after_leaving < TTL,
        "given back only by expiry ({freed_after_leaving:?})"
    );

    // A data plane killed with 3 leases held: the fleet gets them back
    // within the TTL (plus a generous margin for a loaded machine).
    let held = spawn_slow(&dps[1], "/fleet/slow?ms=60000", 3);
    let dp0 = &dps[0];
    wait_until("all slots held by dp1", WAIT, || async move {
        (leases() == 3 && status(dp0, "/fleet/fast", &[]).await.0 == 429).then_some(())
    })
    .await;
    dps[1].kill_9();
    let killed = Instant::now();
    let dp0 = &dps[0];
    wait_until(
        "the dead data plane's slots back",
        TTL + WAIT,
        || async move { (status(dp0, "/fleet/fast", &[]).await.0 == 200).then_some(()) },
    )
    .await;
    let freed_after_kill = killed.elapsed();
    for handle in held {
        assert_eq!(handle.await.expect("task"), 0, "dp1 died under them");
    }
    eprintln!(
        "fleet concurrency: leases given back {:.2} s after clients left; a killed data plane's \
         slots back {:.2} s after the kill (TTL {} s)",
        freed_after_leaving.as_secs_f64(),
        freed_after_kill.as_secs_f64(),
        TTL.as_secs()
    );
    assert!(
        freed_after_kill <= TTL + Duration::from_secs(5),
        "{freed_after_kill:?}"
    );
    // Renewed every TTL/3: the last renewal was at most TTL/3 before the
    // kill, so expiry comes 2/3 TTL to TTL after it.
    assert!(
        freed_after_kill >= TTL * 2 / 3 - Duration::from_secs(1),
        "freed before the leases could expire ({freed_after_kill:?})"
    );
}
