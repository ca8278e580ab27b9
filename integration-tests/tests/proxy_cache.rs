//! End-to-end tests of `proxy-cache` (issue 24) through the real
//! `tollgate-cp`, `tollgate-dp` and a real upstream on 127.0.0.1: what is
//! cached (RFC 9111 rules), for whom, `Vary`, stale-while-revalidate and
//! request collapsing. The transformers are in `transformers.rs`.

use std::time::Duration;

use serde_json::json;
use tollgate_integration_tests::cp::config_from_json as config;
use tollgate_integration_tests::cp::ControlPlane;
use tollgate_integration_tests::dp::DataPlane;
use tollgate_integration_tests::redis::RedisServer;
use tollgate_integration_tests::upstream::Upstream;

async fn gateway(
    routes: serde_json::Value,
    consumers: serde_json::Value,
) -> (ControlPlane, DataPlane, Upstream) {
    let cp = ControlPlane::start().await;
    let upstream = Upstream::start("origin").await;
    let revision = cp
        .apply_revision(&config(json!({
            "services": [{"name": "origin", "upstream": {"targets": [{"address": upstream.address()}]}}],
            "routes": routes,
            "consumers": consumers,
        })))
        .await;
    let dp = DataPlane::start(cp.port(), "cache-dp", &[]);
    dp.wait_version(revision).await;
    (cp, dp, upstream)
}

/// Status, `X-Cache-Status`, and the body of one GET.
async fn fetch(dp: &DataPlane, path: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    let mut request = dp.get("cache.test", path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("response");
    let status = response.status().as_u16();
    let cache = response
        .headers()
        .get("x-cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = response.text().await.expect("body");
    (status, cache, body)
}

fn cached_route(name: &str, path: &str, config: serde_json::Value) -> serde_json::Value {
    json!({"name": name, "service": "origin", "paths": [path],
           "plugins": [{"name": "proxy-cache", "config": config}]})
}

#[tokio::test]
async fn second_get_is_a_hit_and_rfc_9111_rules_decide_what_is_stored() {
    let (_cp, dp, upstream) = gateway(
        json!([cached_route(
            "c",
            "/c",
            json!({"ttl": 60, "statuses": [200, 404]})
        )]),
        json!([]),
    )
    .await;

    // MISS then HIT; the upstream saw one request.
    let before = upstream.requests();
    let first = dp
        .get("cache.test", "/c/a?x=1&y=2")
        .send()
        .await
        .expect("first");
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["x-cache-status"], "MISS");
    let key = first.headers()["x-cache-key"].clone();
    let first_body = first.text().await.expect("body");
    let second = dp
        .get("cache.test", "/c/a?y=2&x=1")
        .send()
        .await
        .expect("second");
    assert_eq!(
        second.headers()["x-cache-status"],
        "HIT",
        "query order is not in the key"
    );
    assert_eq!(second.headers()["x-cache-key"], key);
    assert!(second.headers().get("age").is_some());
    assert_eq!(
        second.headers()["content-length"],
        first_body.len().to_string().as_str()
    );
    assert_eq!(second.text().await.expect("body"), first_body);
    assert_eq!(upstream.requests() - before, 1);

    // Never stored: no-store, private, no-cache, Set-Cookie, Vary: *, a
    // status not listed; each reaches the upstream every time.
    for path in [
        "/c/ns?set-cache-control=no-store",
        "/c/pv?set-cache-control=private%2C%20max-age%3D60",
        "/c/nc?set-cache-control=no-cache",
        "/c/ck?set-set-cookie=session%3D1",
        "/c/vs?set-vary=*",
        "/c/status/500",
    ] {
        let before = upstream.requests();
        for _ in 0..2 {
            let (_, cache, _) = fetch(&dp, path, &[]).await;
            assert_eq!(cache, "MISS", "{path}");
        }
        assert_eq!(upstream.requests() - before, 2, "{path} was cached");
    }
    // A listed 404 is cached; max-age=0 is not.
    let (status, _, _) = fetch(&dp, "/c/status/404", &[]).await;
    assert_eq!(status, 404);
    assert_eq!(fetch(&dp, "/c/status/404", &[]).await.1, "HIT");
    let before = upstream.requests();
    fetch(&dp, "/c/m0?set-cache-control=max-age%3D0", &[]).await;
    fetch(&dp, "/c/m0?set-cache-control=max-age%3D0", &[]).await;
    assert_eq!(upstream.requests() - before, 2);
    // A POST is not cached (BYPASS), and a client's no-cache is ignored
    // unless the route allows it.
    let post = dp
        .request(reqwest::Method::POST, "cache.test", "/c/a?x=1&y=2")
        .send()
        .await
        .expect("post");
    assert_eq!(post.headers()["x-cache-status"], "BYPASS");
    let (_, cache, _) = fetch(&dp, "/c/a?x=1&y=2", &[("cache-control", "no-cache")]).await;
    assert_eq!(cache, "HIT");
}

#[tokio::test]
async fn answers_are_kept_per_consumer_unless_public_and_private_is_never_shared() {
    let auth = json!({"name": "key-auth"});
    let (_cp, dp, upstream) = gateway(
        json!([
            {"name": "mine", "service": "origin", "paths": ["/mine"],
             "plugins": [auth, {"name": "proxy-cache"}]},
            {"name": "shared", "service": "origin", "paths": ["/shared"],
             "plugins": [auth, {"name": "proxy-cache", "config": {"public": true}}]},
        ]),
        json!([
            {"name": "alice", "credentials": [{"api_key": "alice-key-0123456789"}]},
            {"name": "bob", "credentials": [{"api_key": "bob-key-0123456789ab"}]},
        ]),
    )
    .await;
    let alice = [("apikey", "alice-key-0123456789")];
    let bob = [("apikey", "bob-key-0123456789ab")];

    // Not public: bob never gets alice's answer.
    let (_, cache, body) = fetch(&dp, "/mine/x", &alice).await;
    assert_eq!(cache, "MISS");
    assert!(body.contains("alice-key"), "the echo shows alice's request");
    let (_, cache, body) = fetch(&dp, "/mine/x", &bob).await;
    assert_eq!(cache, "MISS");
    assert!(!body.contains("alice"), "{body}");
    assert_eq!(fetch(&dp, "/mine/x", &alice).await.1, "HIT");
    assert_eq!(fetch(&dp, "/mine/x", &bob).await.1, "HIT");
    // Unauthenticated requests are refused before the cache.
    let (status, cache, _) = fetch(&dp, "/mine/x", &[]).await;
    assert_eq!((status, cache.as_str()), (401, ""));

    // Public: one answer for all, except a `private` one, never stored.
    assert_eq!(fetch(&dp, "/shared/x", &alice).await.1, "MISS");
    assert_eq!(fetch(&dp, "/shared/x", &bob).await.1, "HIT");
    let private = "/shared/p?set-cache-control=private";
    let before = upstream.requests();
    let (_, _, body) = fetch(&dp, private, &alice).await;
    assert!(body.contains("alice-key"));
    let (_, cache, body) = fetch(&dp, private, &bob).await;
    assert_eq!(cache, "MISS");
    assert!(
        !body.contains("alice"),
        "private answer served to bob: {body}"
    );
    assert_eq!(upstream.requests() - before, 2);
}

#[tokio::test]
async fn vary_and_vary_headers_select_the_variant() {
    let (_cp, dp, upstream) = gateway(
        json!([
            cached_route("v", "/v", json!({})),
            cached_route(
                "h",
                "/h",
                json!({"vary_headers": ["X-Tenant"], "query_keys": ["page"]})
            ),
        ]),
        json!([]),
    )
    .await;
    // The upstream's Vary.
    let path = "/v/x?set-vary=Accept-Language";
    let en = [("accept-language", "en")];
    let fr = [("accept-language", "fr")];
    assert_eq!(fetch(&dp, path, &en).await.1, "MISS");
    assert_eq!(fetch(&dp, path, &en).await.1, "HIT");
    let (_, cache, body) = fetch(&dp, path, &fr).await;
    assert_eq!(cache, "MISS", "the en variant is not served for fr");
    assert!(body.contains("\"accept-language\":\"fr\""), "{body}");
    assert_eq!(fetch(&dp, path, &fr).await.1, "HIT");

    // The route's vary_headers and query_keys.
    let before = upstream.requests();
    assert_eq!(
        fetch(&dp, "/h/x?page=1&utm=a", &[("x-tenant", "t1")])
            .await
            .1,
        "MISS"
    );
    assert_eq!(
        fetch(&dp, "/h/x?utm=b&page=1", &[("x-tenant", "t1")])
            .await
            .1,
        "HIT"
    );
    assert_eq!(
        fetch(&dp, "/h/x?page=1", &[("x-tenant", "t2")]).await.1,
        "MISS"
    );
    assert_eq!(
        fetch(&dp, "/h/x?page=2", &[("x-tenant", "t1")]).await.1,
        "MISS"
    );
    assert_eq!(upstream.requests() - before, 3);
}

#[tokio::test]
async fn concurrent_misses_of_one_key_make_one_upstream_request() {
    let (_cp, dp, upstream) = gateway(
        json!([cached_route("c", "/c", json!({"lock_timeout_ms": 30000}))]),
        json!([]),
    )
    .await;
    let before = upstream.requests();
    // The upstream takes 1 s, so all 100 requests arrive while the first
    // is being fetched.
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let client = dp.client().clone();
        let url = dp.url("/c/slow?ms=1000");
        tasks.push(tokio::spawn(async move {
            let response = client
                .get(url)
                .header("host", "cache.test")
                .timeout(Duration::from_secs(60))
                .send()
                .await
                .expect("response");
            let status = response.status().as_u16();
            let cache = response.headers()["x-cache-status"]
                .to_str()
                .unwrap_or("")
                .to_string();
            let body = response.text().await.expect("body");
            (status, cache, body)
        }));
    }
    let mut statuses = Vec::new();
    let mut bodies = std::collections::HashSet::new();
    for task in tasks {
        let (status, cache, body) = task.await.expect("task");
        assert_eq!(status, 200);
        statuses.push(cache);
        bodies.insert(body);
    }
    assert_eq!(
        upstream.requests() - before,
        1,
        "one upstream fetch for 100 misses"
    );
    assert_eq!(
        statuses.iter().filter(|s| *s == "MISS").count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(statuses.iter().filter(|s| *s == "HIT").count(), 99);
    assert_eq!(bodies.len(), 1, "everyone got the same answer");
}

#[tokio::test]
async fn stale_answers_are_served_while_one_request_refreshes() {
    let (_cp, dp, upstream) = gateway(
        json!([cached_route(
            "c",
            "/c",
            json!({"ttl": 1, "stale_while_revalidate": 60})
        )]),
        json!([]),
    )
    .await;
    let path = "/c/slow?ms=1500";
    assert_eq!(fetch(&dp, path, &[]).await.1, "MISS");
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let before = upstream.requests();
    // The first request after expiry refreshes (and waits for the upstream);
    // one arriving meanwhile gets the stale answer at once.
    let refresh = {
        let client = dp.client().clone();
        let url = dp.url(path);
        tokio::spawn(async move {
            let response = client
                .get(url)
                .header("host", "cache.test")
                .send()
                .await
                .expect("refresh");
            response.headers()["x-cache-status"]
                .to_str()
                .unwrap_or("")
                .to_string()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    let stale = dp.get("cache.test", path).send().await.expect("stale");
    assert_eq!(stale.headers()["x-cache-status"], "STALE");
    let age: u64 = stale.headers()["age"]
        .to_str()
        .expect("age")
        .parse()
        .expect("number");
    assert!(age >= 1, "age {age}");
    assert!(
        started.elapsed() < Duration::from_millis(1_400),
        "a stale answer does not wait for the upstream"
    );
    assert_eq!(refresh.await.expect("task"), "EXPIRED");
    assert_eq!(fetch(&dp, path, &[]).await.1, "HIT");
    assert_eq!(upstream.requests() - before, 1);
}

#[tokio::test]
async fn bad_cache_and_transformer_configs_are_refused_naming_the_field() {
    let cp = ControlPlane::start().await;
    for (plugin, plugin_config, field) in [
        ("proxy-cache", json!({"ttl": 0}), "config.ttl"),
        (
            "proxy-cache",
            json!({"methods": ["DELETE"]}),
            "config.methods[0]",
        ),
        (
            "proxy-cache",
            json!({"statuses": [206]}),
            "config.statuses[0]",
        ),
        (
            "proxy-cache",
            json!({"vary_headers": ["bad header"]}),
            "config.vary_headers[0]",
        ),
        (
            "proxy-cache",
            json!({"strategy": "disk"}),
            "config.strategy",
        ),
        (
            "response-transformer",
            json!({"headers": {"add": {"content-length": "1"}}}),
            "config.headers.add",
        ),
        (
            "response-transformer",
            json!({"max_body_bytes": 0}),
            "config.max_body_bytes",
        ),
    ] {
        let result = cp
            .try_apply(&config(json!({
                "services": [{"name": "s", "upstream": {"targets": [{"address": "127.0.0.1:9"}]}}],
                "routes": [{"name": "r", "service": "s", "paths": ["/"],
                            "plugins": [{"name": plugin, "config": plugin_config}]}],
            })), false)
            .await;
        let err = result.expect_err("refused");
        assert!(err.message().contains(field), "{plugin}: {}", err.message());
    }
}

#[tokio::test]
async fn redis_strategy_shares_the_cache_across_three_data_planes() {
    let mut redis = RedisServer::start();
    let cp = ControlPlane::start().await;
    let upstream = Upstream::start("origin").await;
    let revision = cp
        .apply_revision(&config(json!({
            "services": [{"name": "origin", "upstream": {"targets": [{"address": upstream.address()}]}}],
            "routes": [cached_route("shared", "/s", json!({"strategy": "redis", "ttl": 60, "redis_timeout_ms": 2000}))],
        })))
        .await;
    let args = vec!["--redis-url".to_string(), redis.url()];
    let dps: Vec<DataPlane> = (0..3)
        .map(|i| DataPlane::start(cp.port(), &format!("cache-redis-{i}"), &args))
        .collect();
    for dp in &dps {
        dp.wait_version(revision).await;
    }
    let before = upstream.requests();
    let (_, cache, first) = fetch(&dps[0], "/s/x", &[]).await;
    assert_eq!(cache, "MISS");
    // The entry is written to Redis just after the answer: wait for it.
    tollgate_integration_tests::process::wait_until(
        "the entry in redis",
        Duration::from_secs(10),
        || async { (!redis.keys("tollgate:cache:*").is_empty()).then_some(()) },
    )
    .await;
    for dp in &dps {
        let (_, cache, body) = fetch(dp, "/s/x", &[]).await;
        assert_eq!(cache, "HIT", "{}", dp.node_id());
        assert_eq!(body, first);
    }
    assert_eq!(
        upstream.requests() - before,
        1,
        "one upstream request for three data planes"
    );
    let keys = redis.keys("tollgate:cache:*");
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(keys[0].starts_with("tollgate:cache:{shared}:"), "{keys:?}");
    let ttl: i64 = redis
        .cli(&["PTTL", &keys[0]])
        .and_then(|t| t.trim().parse().ok())
        .expect("pttl");
    assert!(
        ttl > 0 && ttl <= 120_000,
        "the entry expires in Redis: {ttl}"
    );

    // A purge reaches Redis too.
    let output = cp.ctl(&["cache", "purge", "shared"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    tollgate_integration_tests::process::wait_until(
        "the purge in redis",
        Duration::from_secs(10),
        || async { redis.keys("tollgate:cache:*").is_empty().then_some(()) },
    )
    .await;

    // Redis gone: requests still answer (from the upstream), never an error.
    redis.kill();
    let before = upstream.requests();
    for _ in 0..3 {
        let (status, _, _) = fetch(&dps[1], "/s/y", &[]).await;
        assert_eq!(status, 200);
    }
    assert_eq!(upstream.requests() - before, 3);
}

#[tokio::test]
async fn a_purge_makes_the_next_request_a_miss_on_every_data_plane() {
    let cp = ControlPlane::start().await;
    let upstream = Upstream::start("origin").await;
    let revision = cp
        .apply_revision(&config(json!({
            "services": [{"name": "origin", "upstream": {"targets": [{"address": upstream.address()}]}}],
            "routes": [cached_route("c", "/c", json!({})), cached_route("other", "/o", json!({}))],
        })))
        .await;
    let dps: Vec<DataPlane> = (0..2)
        .map(|i| DataPlane::start(cp.port(), &format!("cache-purge-{i}"), &[]))
        .collect();
    for dp in &dps {
        dp.wait_version(revision).await;
    }
    let mut keys = Vec::new();
    for dp in &dps {
        for path in ["/c/a", "/c/b", "/o/a"] {
            assert_eq!(fetch(dp, path, &[]).await.1, "MISS");
            let hit = dp.get("cache.test", path).send().await.expect("hit");
            assert_eq!(hit.headers()["x-cache-status"], "HIT");
            keys.push(
                hit.headers()["x-cache-key"]
                    .to_str()
                    .expect("key")
                    .to_string(),
            );
        }
    }
    assert_eq!(
        keys[0], keys[3],
        "the same request has the same key on every data plane"
    );

    // One entry, by its key.
    let output = cp.ctl(&["cache", "purge", "c", "--key", &keys[0]]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("on 2 data plane(s)"), "{stdout}");
    for dp in &dps {
        tollgate_integration_tests::process::wait_until(
            "the key purged",
            Duration::from_secs(10),
            || async { (fetch(dp, "/c/a", &[]).await.1 == "MISS").then_some(()) },
        )
        .await;
        assert_eq!(fetch(dp, "/c/b", &[]).await.1, "HIT", "other entries stay");
    }
    // The whole route: every data plane misses next, other routes keep theirs.
    let output = cp.ctl(&["cache", "purge", "c"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for dp in &dps {
        tollgate_integration_tests::process::wait_until(
            "the route purged",
            Duration::from_secs(10),
            || async { (fetch(dp, "/c/b", &[]).await.1 == "MISS").then_some(()) },
        )
        .await;
        assert_eq!(
            fetch(dp, "/c/a", &[]).await.1,
            "MISS",
            "every entry of the route"
        );
        assert_eq!(
            fetch(dp, "/o/a", &[]).await.1,
            "HIT",
            "another route is untouched"
        );
    }
    // Refused: an unknown route, a malformed key.
    for (args, expected) in [
        (vec!["cache", "purge", "nope"], "not found"),
        (vec!["cache", "purge", "c", "--key", "xyz"], "key: must be"),
    ] {
        let output = cp.ctl(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}
