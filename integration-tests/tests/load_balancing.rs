//! Load balancing through the real binaries (issue 16): `least_request`
//! sends most requests to the faster of two targets, and `consistent_hash`
//! keeps a key on one target and moves only about 1/N of the keys when a
//! target is added.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tollgate_integration_tests::cp::config_from_json as config;
use tollgate_integration_tests::cp::ControlPlane;
use tollgate_integration_tests::dp::DataPlane;
use tollgate_integration_tests::upstream::Upstream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_favours_the_faster_target() {
    let cp = ControlPlane::start().await;
    let fast = Upstream::start("fast").await;
    let slow = Upstream::start("slow").await;
    slow.set_delay(Duration::from_millis(150));
    let revision = cp
        .apply_revision(&config(json!({
            "services": [{"name": "pair", "upstream": {
                "load_balancing": "least_request",
                "targets": [{"address": fast.address()}, {"address": slow.address()}],
            }}],
            "routes": [{"name": "lr", "service": "pair"}],
        })))
        .await;
    let dp = Arc::new(DataPlane::start(cp.port(), "lr-dp", &[]));
    dp.wait_version(revision).await;

    // 8 clients, 25 requests each: bounded in count, and in time by the
    // client's own timeout.
    let mut clients = Vec::new();
    for _ in 0..8 {
        let dp = dp.clone();
        clients.push(tokio::spawn(async move {
            let mut ok = 0;
            for _ in 0..25 {
                let response = dp.get("lr.test", "/x").send().await;
                if response.is_ok_and(|r| r.status() == 200) {
                    ok += 1;
                }
            }
            ok
        }));
    }
    let mut ok = 0;
    for client in clients {
        ok += client.await.expect("client task");
    }
    assert_eq!(ok, 200, "every request answered");
    let (fast_n, slow_n) = (fast.requests(), slow.requests());
    eprintln!("least_request: fast {fast_n}, slow {slow_n}");
    assert_eq!(fast_n + slow_n, 200);
    // Round robin would give 100/100; P2C sends the slow target only the
    // requests that arrive when it has no more in flight than the fast one.
    assert!(fast_n > 3 * slow_n, "fast {fast_n}, slow {slow_n}");
}

/// Which target answers each of `keys` (by the echo's `name`).
async fn owners(dp: &DataPlane, keys: &[String]) -> HashMap<String, String> {
    let mut owners = HashMap::new();
    for key in keys {
        let response = dp
            .get("ch.test", "/x")
            .header("x-user", key.as_str())
            .send()
            .await
            .expect("response");
        assert_eq!(response.status(), 200);
        let echo: serde_json::Value = response.json().await.expect("echo");
        owners.insert(key.clone(), echo["name"].as_str().unwrap_or("").to_string());
    }
    owners
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_keeps_keys_and_moves_about_one_nth_on_add() {
    let cp = ControlPlane::start().await;
    let upstreams = [
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("c").await,
        Upstream::start("d").await,
    ];
    let service = |n: usize| {
        config(json!({
            "services": [{"name": "sticky", "upstream": {
                "load_balancing": "consistent_hash",
                "hash_on": "header:x-user",
                "targets": upstreams[..n].iter().map(|u| json!({"address": u.address()})).collect::<Vec<_>>(),
            }}],
            "routes": [{"name": "ch", "service": "sticky"}],
        }))
    };
    let revision = cp.apply_revision(&service(3)).await;
    let dp = DataPlane::start(cp.port(), "ch-dp", &[]);
    dp.wait_version(revision).await;

    let keys: Vec<String> = (0..300).map(|i| format!("user-{i}")).collect();
    let first = owners(&dp, &keys).await;
    let again = owners(&dp, &keys).await;
    assert_eq!(first, again, "every key stays on its target");
    let used: std::collections::HashSet<&String> = first.values().collect();
    assert_eq!(used.len(), 3, "the keys spread over all three targets");

    let revision = cp.apply_revision(&service(4)).await;
    dp.wait_version(revision).await;
    let after = owners(&dp, &keys).await;
    let moved: Vec<&String> = keys.iter().filter(|k| first[*k] != after[*k]).collect();
    for key in &moved {
        assert_eq!(after[*key], "d", "{key} moved, but not to the new target");
    }
    eprintln!(
        "consistent_hash: {} of 300 keys moved on adding a 4th target",
        moved.len()
    );
    // Ideal: 75 of 300 (1/4).
    assert!((30..=120).contains(&moved.len()), "{} moved", moved.len());
}
