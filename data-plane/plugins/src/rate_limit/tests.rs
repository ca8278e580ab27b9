//! Plugin-level tests: scopes and policies, and the Redis policy against a
//! real `redis-server` each test starts on a free port (and kills by PID).

use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use super::*;

fn config(value: serde_json::Value) -> RateLimitConfig {
    match tollgate_shared::plugins::parse::<RateLimitConfig>(&value) {
        Ok(config) => config,
        Err(err) => panic!("not a rate-limit config: {err}"),
    }
}

fn subject<'a>(headers: &'a HeaderMap, consumer: Option<&'a str>, ip: [u8; 4]) -> Subject<'a> {
    Subject {
        client_ip: IpAddr::V4(Ipv4Addr::from(ip)),
        consumer,
        credential: None,
        route: "orders",
        service: "shop",
        headers,
    }
}

fn admitted(verdict: &Verdict) -> bool {
    matches!(verdict, Verdict::Continue(_))
}

#[tokio::test]
async fn local_scope_consumer_falls_back_to_ip() {
    let limiters = RateLimiters::new(None);
    let plugin = RateLimit::new(
        "route:orders#0",
        &config(json!({"limit": 2, "window": "1m"})),
        &limiters,
    );
    let headers = HeaderMap::new();
    let alice = subject(&headers, Some("alice"), [10, 0, 0, 1]);
    let anon = subject(&headers, None, [10, 0, 0, 1]);
    let anon_other_ip = subject(&headers, None, [10, 0, 0, 2]);
    for _ in 0..2 {
        assert!(admitted(&plugin.check(&alice).await));
        assert!(admitted(&plugin.check(&anon).await));
    }
    assert!(!admitted(&plugin.check(&alice).await));
    assert!(!admitted(&plugin.check(&anon).await));
    assert!(admitted(&plugin.check(&anon_other_ip).await));
}

#[tokio::test]
async fn local_header_scope_and_instances_are_separate() {
    let limiters = RateLimiters::new(None);
    let cfg = config(json!({"limit": 1, "window": "1h", "scope": "header:X-Tenant"}));
    let a = RateLimit::new("route:a#0", &cfg, &limiters);
    let b = RateLimit::new("route:b#0", &cfg, &limiters);
    let mut t1 = HeaderMap::new();
    t1.insert("x-tenant", HeaderValue::from_static("one"));
    let mut t2 = HeaderMap::new();
    t2.insert("x-tenant", HeaderValue::from_static("two"));
    let s1 = subject(&t1, None, [1, 1, 1, 1]);
    let s2 = subject(&t2, None, [1, 1, 1, 1]);
    assert!(admitted(&a.check(&s1).await));
    assert!(!admitted(&a.check(&s1).await));
    assert!(admitted(&a.check(&s2).await), "tenants are separate");
    assert!(admitted(&b.check(&s1).await), "routes are separate");
}

#[tokio::test]
async fn local_counters_survive_recompiling() {
    let limiters = RateLimiters::new(None);
    let cfg = config(json!({"limit": 1, "window": "1h", "scope": "ip"}));
    let headers = HeaderMap::new();
    let s = subject(&headers, None, [1, 2, 3, 4]);
    let first = RateLimit::new("route:a#0", &cfg, &limiters);
    assert!(admitted(&first.check(&s).await));
    let second = RateLimit::new("route:a#0", &cfg, &limiters);
    drop(first);
    assert!(!admitted(&second.check(&s).await));
}

#[tokio::test]
async fn rejection_and_headers() {
    let limiters = RateLimiters::new(None);
    let plugin = RateLimit::new(
        "route:a#0",
        &config(json!({"limit": 1, "window": "1m", "scope": "ip"})),
        &limiters,
    );
    let headers = HeaderMap::new();
    let s = subject(&headers, None, [9, 9, 9, 9]);
    let Verdict::Continue(Some(decision)) = plugin.check(&s).await else {
        panic!("first request admitted with a quota");
    };
    let mut out = HeaderMap::new();
    Quota {
        decision,
        limit_value: HeaderValue::from(decision.limit),
    }
    .write(&mut out);
    assert_eq!(
        out.get("ratelimit-limit").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    assert_eq!(
        out.get("ratelimit-remaining").map(|v| v.as_bytes()),
        Some(&b"0"[..])
    );
    let Verdict::TooManyRequests { decision, headers } = plugin.check(&s).await else {
        panic!("second request rejected");
    };
    assert!(headers);
    let refusal = too_many_requests(&decision);
    assert_eq!(refusal.status(), http::StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refusal.code(), "rate_limited");
    let retry = refusal.retry_after_s.unwrap_or(0);
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(
        unavailable().status(),
        http::StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(unavailable().retry_after_s, Some(1));
}

#[test]
fn redis_keys_hash_untrusted_values() {
    let mut key = String::new();
    ScopeValue::Header(b"anything\r\n{x}").write_redis_part(&mut key);
    assert!(key.starts_with("h:#") && key.len() == 3 + 32, "{key}");
    let mut key = String::new();
    ScopeValue::Consumer("alice").write_redis_part(&mut key);
    assert_eq!(key, "c:alice");
    let mut key = String::new();
    ScopeValue::Consumer(&"x".repeat(200)).write_redis_part(&mut key);
    assert!(key.len() < 40, "{key}");
    let mut key = String::new();
    ScopeValue::Ip("::1".parse().unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)))
        .write_redis_part(&mut key);
    assert_eq!(key, "i:::1");
}

// ------------------------------------------------------------ real Redis

/// A `redis-server` of the test's own, killed by PID when dropped.
struct RedisServer {
    child: Child,
    port: u16,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
}

impl RedisServer {
    fn start() -> RedisServer {
        Self::start_on(free_port())
    }

    fn start_on(port: u16) -> RedisServer {
        Self::start_with(port, &[])
    }

    fn start_with(port: u16, extra: &[&str]) -> RedisServer {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server installed (apt-get install redis-server)");
        let server = RedisServer { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let pong = server.cli(&["PING"]);
            if pong.as_deref() == Some("PONG") || pong.is_some_and(|p| p.contains("NOAUTH")) {
                return server;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server on port {port} did not start");
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn cli(&self, args: &[&str]) -> Option<String> {
        let output = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
    }

    fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.signal("-CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn redis_config(extra: serde_json::Value) -> RateLimitConfig {
    let mut value = json!({"policy": "redis", "scope": "consumer"});
    if let (Some(target), Some(extra)) = (value.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            target.insert(k.clone(), v.clone());
        }
    }
    config(value)
}

async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sliding_window_is_shared_and_exact() {
    let server = RedisServer::start();
    // Two stores: two data planes sharing one Redis.
    let dp1 = RateLimiters::new(Some(RedisStore::start(&server.url()).await));
    let dp2 = RateLimiters::new(Some(RedisStore::start(&server.url()).await));
    let cfg = redis_config(json!({"limit": 10, "window": "1h"}));
    let p1 = RateLimit::new("route:orders#0", &cfg, &dp1);
    let p2 = RateLimit::new("route:orders#0", &cfg, &dp2);
    let headers = HeaderMap::new();
    let alice = subject(&headers, Some("alice"), [1, 1, 1, 1]);
    let mut remaining = Vec::new();
    let mut rejected = 0;
    for i in 0..30 {
        let plugin = if i % 2 == 0 { &p1 } else { &p2 };
        match plugin.check(&alice).await {
            Verdict::Continue(Some(decision)) => remaining.push(decision.remaining),
            Verdict::TooManyRequests { decision, .. } => {
                assert!(decision.retry_after_s >= 1);
                rejected += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(remaining, (0..10).rev().collect::<Vec<u64>>());
    assert_eq!(rejected, 20);
    // Rejections did not count, and the key expires.
    let key = "tollgate:rl:{route:orders#0:sw:3600:c:alice}";
    assert_eq!(server.cli(&["HGET", key, "c"]).as_deref(), Some("10"));
    let ttl: i64 = server
        .cli(&["PTTL", key])
        .and_then(|t| t.parse().ok())
        .unwrap_or(-1);
    assert!(ttl > 3_600_000, "ttl {ttl}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_gcra_burst_and_noscript_reload() {
    let server = RedisServer::start();
    let limiters = RateLimiters::new(Some(RedisStore::start(&server.url()).await));
    let cfg = redis_config(json!({"limit": 1, "window": "1h", "algorithm": "gcra", "burst": 2}));
    let plugin = RateLimit::new("global:g", &cfg, &limiters);
    let headers = HeaderMap::new();
    let bob = subject(&headers, Some("bob"), [1, 1, 1, 1]);
    assert!(admitted(&plugin.check(&bob).await));
    // Redis forgets its scripts: the next call reloads and still counts.
    assert_eq!(server.cli(&["SCRIPT", "FLUSH"]).as_deref(), Some("OK"));
    assert!(admitted(&plugin.check(&bob).await));
    assert!(admitted(&plugin.check(&bob).await));
    match plugin.check(&bob).await {
        Verdict::TooManyRequests { decision, .. } => {
            // One per hour: the next one is an hour away.
            assert!(decision.retry_after_s > 3_500, "{decision:?}");
        }
        other => panic!("burst of 3 exceeded: {other:?}"),
    }
    assert!(limiters.redis().is_some_and(RedisStore::is_available));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_opens_the_breaker_and_recovery_closes_it() {
    let mut server = RedisServer::start();
    let port = server.port;
    let limiters = RateLimiters::new(Some(RedisStore::start(&server.url()).await));
    let store = limiters.redis().cloned().expect("store");
    let local = RateLimit::new(
        "route:a#0",
        &redis_config(json!({"limit": 3, "window": "1h"})),
        &limiters,
    );
    let allow = RateLimit::new(
        "route:b#0",
        &redis_config(json!({"limit": 3, "window": "1h", "on_redis_failure": "allow"})),
        &limiters,
    );
    let deny = RateLimit::new(
        "route:c#0",
        &redis_config(json!({"limit": 3, "window": "1h", "on_redis_failure": "deny"})),
        &limiters,
    );
    let headers = HeaderMap::new();
    let carol = subject(&headers, Some("carol"), [1, 1, 1, 1]);
    assert!(admitted(&local.check(&carol).await));
    assert!(store.is_available());

    let _ = server.child.kill();
    let _ = server.child.wait();
    // Failures fall back to the local counters right away.
    for _ in 0..5 {
        let _ = local.check(&carol).await;
    }
    wait_for("the breaker to open", || !store.is_available()).await;
    // Open breaker: no per-request wait, and each policy does its thing.
    let started = Instant::now();
    for _ in 0..100 {
        let _ = local.check(&carol).await;
    }
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(
        local.check(&carol).await,
        Verdict::TooManyRequests { .. }
    ));
    assert_eq!(allow.check(&carol).await, Verdict::Continue(None));
    assert_eq!(deny.check(&carol).await, Verdict::Unavailable);

    // Redis back on the same port: the probe closes the breaker by itself.
    server = RedisServer::start_on(port);
    wait_for("the breaker to close", || store.is_available()).await;
    assert!(admitted(&deny.check(&carol).await));
    assert_eq!(
        server
            .cli(&["HGET", "tollgate:rl:{route:c#0:sw:3600:c:carol}", "c"])
            .as_deref(),
        Some("1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_redis_costs_at_most_the_timeout() {
    let server = RedisServer::start();
    let limiters = RateLimiters::new(Some(RedisStore::start(&server.url()).await));
    let store = limiters.redis().cloned().expect("store");
    let plugin = RateLimit::new(
        "route:slow#0",
        &redis_config(json!({"limit": 100, "window": "1m", "redis_timeout_ms": 30})),
        &limiters,
    );
    let headers = HeaderMap::new();
    let dave = subject(&headers, Some("dave"), [1, 1, 1, 1]);
    assert!(admitted(&plugin.check(&dave).await));
    server.signal("-STOP");
    for _ in 0..3 {
        let started = Instant::now();
        assert!(admitted(&plugin.check(&dave).await));
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
    }
    assert!(!store.is_available(), "three timeouts open the breaker");
    server.signal("-CONT");
    wait_for("the breaker to close", || store.is_available()).await;
    assert!(admitted(&plugin.check(&dave).await));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_or_invalid_redis_url_still_serves() {
    for url in [
        format!("redis://127.0.0.1:{}/0", free_port()),
        "definitely not a url".to_string(),
        "redis://:secret@127.0.0.1:1/0".to_string(),
    ] {
        let store = RedisStore::start(&url).await;
        assert!(!store.is_available());
        assert!(!store.target().contains("secret"));
        let limiters = RateLimiters::new(Some(store));
        let plugin = RateLimit::new(
            "route:x#0",
            &redis_config(json!({"limit": 1, "window": "1m"})),
            &limiters,
        );
        let headers = HeaderMap::new();
        let erin = subject(&headers, Some("erin"), [1, 1, 1, 1]);
        assert!(admitted(&plugin.check(&erin).await));
        assert!(matches!(
            plugin.check(&erin).await,
            Verdict::TooManyRequests { .. }
        ));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_and_database_come_from_the_url() {
    let port = free_port();
    let server = RedisServer::start_with(port, &["--requirepass", "s3cret-pw"]);
    let url = format!("redis://:s3cret-pw@127.0.0.1:{port}/3");
    let store = RedisStore::start(&url).await;
    assert!(store.is_available(), "authenticated connection");
    assert!(!store.target().contains("s3cret-pw"));
    let limiters = RateLimiters::new(Some(store));
    let plugin = RateLimit::new(
        "route:pw#0",
        &redis_config(json!({"limit": 5, "window": "1m"})),
        &limiters,
    );
    let headers = HeaderMap::new();
    let frank = subject(&headers, Some("frank"), [1, 1, 1, 1]);
    assert!(admitted(&plugin.check(&frank).await));
    let in_db3 = server.cli(&[
        "-a",
        "s3cret-pw",
        "--no-auth-warning",
        "-n",
        "3",
        "HGET",
        "tollgate:rl:{route:pw#0:sw:60:c:frank}",
        "c",
    ]);
    assert_eq!(in_db3.as_deref(), Some("1"));
    // A wrong password is an unreachable Redis, not a crash.
    let wrong = RedisStore::start(&format!("redis://:nope@127.0.0.1:{port}/0")).await;
    assert!(!wrong.is_available());
}

#[test]
fn sync_interval_is_validated_with_its_field_name() {
    let parse = |value| tollgate_shared::plugins::parse::<RateLimitConfig>(&value);
    let ok = parse(
        json!({"limit": 5, "window": "1s", "policy": "redis", "sync": "batched",
        "sync_interval_ms": 250}),
    );
    assert_eq!(
        ok.map(|c| c.sync_interval()),
        Ok(Duration::from_millis(250))
    );
    for (value, message) in [
        (
            json!({"limit": 5, "window": "1s", "policy": "redis", "sync": "batched", "sync_interval_ms": 0}),
            "config.sync_interval_ms: must be between 10 and 60000",
        ),
        (
            json!({"limit": 5, "window": "1s", "policy": "redis", "sync_interval_ms": 100}),
            "config.sync_interval_ms: only applies to policy redis with sync batched",
        ),
        (
            json!({"limit": 5, "window": "1s", "sync": "batched", "sync_interval_ms": 100}),
            "config.sync_interval_ms: only applies to policy redis with sync batched",
        ),
    ] {
        assert_eq!(parse(value).err().as_deref(), Some(message));
    }
}

/// `sync: batched` against a real Redis: decided locally, counted in Redis
/// by the background sync (one pipelined call per interval), under the same
/// key `strict` uses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_counts_locally_and_syncs_to_redis() {
    let redis = RedisServer::start();
    let store = RedisStore::start(&redis.url()).await;
    assert!(store.is_available());
    let limiters = RateLimiters::new(Some(store));
    let plugin = RateLimit::new(
        "route:orders#0",
        &redis_config(
            json!({"limit": 5, "window": "1h", "scope": "ip", "sync": "batched",
            "sync_interval_ms": 50}),
        ),
        &limiters,
    );
    assert!(plugin.is_local(), "no future per request");
    let headers = HeaderMap::new();
    let statuses: Vec<bool> = (0..8)
        .map(|_| admitted(&plugin.check_local(&subject(&headers, None, [10, 0, 0, 9]))))
        .collect();
    assert_eq!(statuses.iter().filter(|a| **a).count(), 5, "{statuses:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let count = redis.cli(&[
            "HGET",
            "tollgate:rl:{route:orders#0:sw:3600:i:10.0.0.9}",
            "c",
        ]);
        if count.as_deref() == Some("5") {
            break;
        }
        assert!(Instant::now() < deadline, "not synced: {count:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn ipv4_key_parts_are_written_as_display_writes_them() {
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut ips: Vec<std::net::Ipv4Addr> = vec![
        [0, 0, 0, 0].into(),
        [255, 255, 255, 255].into(),
        [10, 0, 99, 100].into(),
        [127, 0, 0, 1].into(),
    ];
    for _ in 0..10_000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        ips.push(std::net::Ipv4Addr::from((seed >> 16) as u32));
    }
    for ip in ips {
        let mut key = String::from("p:");
        super::push_ipv4(&mut key, ip);
        assert_eq!(key, format!("p:{ip}"));
    }
}
