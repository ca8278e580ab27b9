//! The `rate-limit` plugin: how many requests a consumer (or credential,
//! route, service, client IP, header value) may make per window.
//!
//! Data planes are stateless and scale out, so a limit meant for the fleet
//! (`policy: redis`) keeps its counters in Redis ([`redis`]); `policy: local`
//! keeps them in this process ([`local`]), for a single data plane or a quick
//! start without Redis. Both run the same algorithms ([`algorithm`]): a
//! weighted sliding window or GCRA, never a fixed window.
//!
//! A plugin instance is compiled once per snapshot ([`RateLimit::new`]) and
//! checked once per request ([`RateLimit::check`]). Its counters are keyed by
//! the instance (route, service or global instance and its position among the
//! rate limits there), so limits on different routes never share a counter,
//! and by the scope value. In-process counters outlive snapshots: a config
//! change does not hand every client a fresh quota.
//!
//! `sync: strict` (the default) makes one Redis round trip per request and is
//! exact across the fleet; `sync: batched` ([`batched`]) decides locally and
//! syncs with Redis once per `sync_interval_ms`, within a stated bound.
//!
//! When Redis cannot answer, `on_redis_failure` decides: `local` (enforce the
//! limit per data plane meanwhile), `allow`, or `deny` (503). The rate-limit
//! phase runs after authentication, so none of these ever skips it.
//!
//! Responses: 429 with a JSON body and `Retry-After`; `RateLimit-Limit`,
//! `RateLimit-Remaining` and `RateLimit-Reset` (seconds until the quota is
//! back, as in the IETF httpapi draft) on every response of a limited route
//! unless `headers: false`. With several limits on a route the most
//! restrictive one is reported.

pub mod algorithm;
pub mod batched;
pub mod breaker;
pub mod local;
mod plugin;
pub mod quota;
pub mod redis;
mod redis_target;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use http::header::{HeaderMap, HeaderValue};
use sha2::{Digest, Sha256};
use tollgate_shared::plugins::{
    OnRedisFailure, RateLimitAlgorithm, RateLimitConfig, RateLimitPolicy, RateLimitSync, Scope,
};

use tollgate_plugin_api::{Refusal, RefusalKind};

pub use algorithm::{Decision, Params};
pub use batched::BatchedLimiter;
pub use local::LocalLimiter;
pub(crate) use plugin::subject;
pub use plugin::RateLimitFactory;
pub use quota::{most_restrictive, Quota, RATELIMIT_LIMIT, RATELIMIT_REMAINING, RATELIMIT_RESET};
pub use redis::RedisStore;
pub use redis_target::RedisOptions;

/// Scope values longer than this are hashed into the Redis key.
const MAX_PLAIN_KEY_PART: usize = 64;

/// What a request looks like to a rate limit: everything a scope can be keyed by.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// The client IP as resolved through the trusted proxies.
    pub client_ip: IpAddr,
    /// The authenticated consumer; `None` for anonymous requests.
    pub consumer: Option<&'a str>,
    /// A stable id of the credential that authenticated the request.
    pub credential: Option<&'a str>,
    pub route: &'a str,
    pub service: &'a str,
    pub headers: &'a HeaderMap,
}

/// The value a counter is keyed by, tagged with its kind so that a consumer
/// named `10.0.0.1` and the client IP `10.0.0.1` never share a counter.
#[derive(Debug, Clone, Copy)]
enum ScopeValue<'a> {
    Consumer(&'a str),
    Credential(&'a str),
    Route(&'a str),
    Service(&'a str),
    Ip(IpAddr),
    Header(&'a [u8]),
}

impl ScopeValue<'_> {
    fn tag(&self) -> u8 {
        match self {
            ScopeValue::Consumer(_) => b'c',
            ScopeValue::Credential(_) => b'k',
            ScopeValue::Route(_) => b'r',
            ScopeValue::Service(_) => b's',
            ScopeValue::Ip(_) => b'i',
            ScopeValue::Header(_) => b'h',
        }
    }

    /// The in-process counter key: a keyed hash, no allocation.
    fn local_key(&self) -> u64 {
        match self {
            ScopeValue::Consumer(v)
            | ScopeValue::Credential(v)
            | ScopeValue::Route(v)
            | ScopeValue::Service(v) => local::counter_key(self.tag(), v.as_bytes()),
            ScopeValue::Header(v) => local::counter_key(self.tag(), v),
            ScopeValue::Ip(IpAddr::V4(ip)) => local::counter_key(self.tag(), &ip.octets()),
            ScopeValue::Ip(IpAddr::V6(ip)) => local::counter_key(self.tag(), &ip.octets()),
        }
    }

    /// Appends `<tag>:<value>` to a Redis key; header values (untrusted) and
    /// long values are hashed.
    fn write_redis_part(&self, key: &mut String) {
        key.push(self.tag() as char);
        key.push(':');
        match self {
            ScopeValue::Consumer(v)
            | ScopeValue::Credential(v)
            | ScopeValue::Route(v)
            | ScopeValue::Service(v) => push_key_part(key, v),
            ScopeValue::Ip(IpAddr::V4(ip)) => push_ipv4(key, *ip),
            ScopeValue::Ip(ip) => {
                let _ = write!(key, "{ip}");
            }
            ScopeValue::Header(v) => push_hashed(key, v),
        }
    }
}

/// `ip` in dotted decimal, as its `Display` writes it, without the
/// formatter (a tenth of its instructions, on every `policy: redis` check).
fn push_ipv4(key: &mut String, ip: std::net::Ipv4Addr) {
    for (index, octet) in ip.octets().into_iter().enumerate() {
        if index > 0 {
            key.push('.');
        }
        if octet >= 100 {
            key.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            key.push(char::from(b'0' + octet / 10 % 10));
        }
        key.push(char::from(b'0' + octet % 10));
    }
}

/// A key part as is when short and printable, otherwise hashed.
fn push_key_part(key: &mut String, value: &str) {
    let plain = value.len() <= MAX_PLAIN_KEY_PART
        && value
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'{' && b != b'}');
    if plain {
        key.push_str(value);
    } else {
        push_hashed(key, value.as_bytes());
    }
}

/// `#` and the first 128 bits of the value's SHA-256, in hex.
fn push_hashed(key: &mut String, value: &[u8]) {
    let digest = Sha256::digest(value);
    key.push('#');
    for byte in &digest[..16] {
        let _ = write!(key, "{byte:02x}");
    }
}

/// `prefix` (which opens a hash tag: `...{...`), `subject`'s value under
/// `scope` as in a rate-limit key, and the closing `}` (the concurrency
/// limiter's lease sets are keyed alike).
pub(crate) fn scope_redis_key(prefix: &str, scope: &Scope, subject: &Subject<'_>) -> String {
    let mut key = String::with_capacity(prefix.len() + 48);
    key.push_str(prefix);
    scope_value(scope, subject).write_redis_part(&mut key);
    key.push('}');
    key
}

/// Appends `value` to a Redis key: as is when short and printable (and
/// free of braces), otherwise hashed.
pub(crate) fn push_redis_key_part(key: &mut String, value: &str) {
    push_key_part(key, value);
}

/// The in-process counter key of `subject` under `scope` (the
/// concurrency limiter counts by the same values).
pub(crate) fn scope_key(scope: &Scope, subject: &Subject<'_>) -> u64 {
    scope_value(scope, subject).local_key()
}

fn scope_value<'a>(scope: &Scope, subject: &Subject<'a>) -> ScopeValue<'a> {
    let ip = ScopeValue::Ip(subject.client_ip);
    match scope {
        Scope::Consumer => subject.consumer.map_or(ip, ScopeValue::Consumer),
        Scope::Credential => subject.credential.map_or(ip, ScopeValue::Credential),
        Scope::Route => ScopeValue::Route(subject.route),
        Scope::Service => ScopeValue::Service(subject.service),
        Scope::Ip => ip,
        Scope::Header(name) => subject
            .headers
            .get(name.as_str())
            .map_or(ip, |value| ScopeValue::Header(value.as_bytes())),
    }
}

/// What the rate-limit phase decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Admitted; the quota to report in `RateLimit-*` headers, unless the
    /// instance has `headers: false` or nothing is known (`on_redis_failure:
    /// allow` during an outage).
    Continue(Option<Decision>),
    /// Over the limit: answer 429 ([`too_many_requests`]); `headers` says
    /// whether to add the `RateLimit-*` headers.
    TooManyRequests { decision: Decision, headers: bool },
    /// Redis is unavailable and `on_redis_failure: deny`: answer 503 ([`unavailable`]).
    Unavailable,
}

/// One compiled `rate-limit` plugin instance.
pub struct RateLimit {
    params: Params,
    scope: Scope,
    policy: RateLimitPolicy,
    on_redis_failure: OnRedisFailure,
    redis_timeout: Duration,
    headers: bool,
    /// `RateLimit-Limit`'s value, built once.
    limit_value: HeaderValue,
    local: Arc<LocalLimiter>,
    redis: Option<RedisStore>,
    /// `sync: batched` with a Redis: the counters synced in the background.
    batched: Option<Arc<BatchedLimiter>>,
    /// `tollgate:rl:{<instance>:<algorithm>:<window s>:` (the key ends with `}`)
    redis_prefix: String,
}

impl std::fmt::Debug for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit")
            .field("params", &self.params)
            .field("scope", &self.scope)
            .field("policy", &self.policy)
            .field("on_redis_failure", &self.on_redis_failure)
            .field("redis_prefix", &self.redis_prefix)
            .finish()
    }
}

impl RateLimit {
    /// Compiles an instance. `instance` identifies it uniquely and stably
    /// across snapshots, e.g. `route:orders#0` (the first rate limit on route
    /// `orders`), `service:billing#1`, `global:per-ip`.
    pub fn new(instance: &str, config: &RateLimitConfig, limiters: &RateLimiters) -> RateLimit {
        let params = Params {
            algorithm: config.algorithm,
            limit: config.limit.max(1),
            window_us: u64::try_from(config.window.0.as_micros())
                .unwrap_or(u64::MAX)
                .max(1),
            burst: match config.algorithm {
                RateLimitAlgorithm::Gcra => config.burst.unwrap_or(0),
                RateLimitAlgorithm::SlidingWindow => 0,
            },
        };
        let algorithm = match config.algorithm {
            RateLimitAlgorithm::SlidingWindow => "sw",
            RateLimitAlgorithm::Gcra => "gcra",
        };
        // The counter's identity is a hash tag (`{...}`), so that in a Redis
        // Cluster every key of one counter lives in one slot (values never
        // contain braces: `push_key_part` hashes those).
        let mut redis_prefix = String::from("tollgate:rl:{");
        push_key_part(&mut redis_prefix, instance);
        let _ = write!(redis_prefix, ":{algorithm}:{}:", config.window.0.as_secs());
        let redis = match config.policy {
            RateLimitPolicy::Local => None,
            RateLimitPolicy::Redis => {
                if limiters.redis.is_none() {
                    tracing::warn!(
                        instance,
                        on_redis_failure = ?config.on_redis_failure,
                        "rate limit has policy redis but this data plane has no --redis-url; it runs under on_redis_failure"
                    );
                }
                limiters.redis.clone()
            }
        };
        let batched = match (&redis, config.sync) {
            (Some(store), RateLimitSync::Batched) => {
                Some(limiters.batched(instance, params, config.sync_interval(), store))
            }
            _ => None,
        };
        RateLimit {
            params,
            scope: config.scope.clone(),
            policy: config.policy,
            on_redis_failure: config.on_redis_failure,
            redis_timeout: Duration::from_millis(config.redis_timeout_ms.max(1)),
            headers: config.headers,
            limit_value: quota::number_value(params.limit),
            local: limiters.local(instance, params),
            redis,
            batched,
            redis_prefix,
        }
    }

    /// Whether responses of this route carry `RateLimit-*` headers.
    pub fn sends_headers(&self) -> bool {
        self.headers
    }

    fn scope_value<'a>(&self, subject: &Subject<'a>) -> ScopeValue<'a> {
        scope_value(&self.scope, subject)
    }

    /// Checks and counts one request.
    pub async fn check(&self, subject: &Subject<'_>) -> Verdict {
        if self.batched.is_some() {
            return self.check_local(subject);
        }
        let value = self.scope_value(subject);
        let decision = match self.policy {
            RateLimitPolicy::Local => self.local.check(value.local_key()),
            RateLimitPolicy::Redis => match self.check_redis(&value).await {
                Some(decision) => decision,
                None => match self.on_redis_failure {
                    OnRedisFailure::Local => self.local.check(value.local_key()),
                    OnRedisFailure::Allow => return Verdict::Continue(None),
                    OnRedisFailure::Deny => return Verdict::Unavailable,
                },
            },
        };
        self.verdict(decision)
    }

    /// Whether a check completes without waiting (in-process counters, or
    /// batched ones synced in the background).
    pub fn is_local(&self) -> bool {
        self.policy == RateLimitPolicy::Local || self.batched.is_some()
    }

    /// [`RateLimit::check`] for an instance that [`RateLimit::is_local`]: no
    /// await, no future.
    pub fn check_local(&self, subject: &Subject<'_>) -> Verdict {
        let value = self.scope_value(subject);
        let key = value.local_key();
        let (Some(batched), Some(store)) = (&self.batched, &self.redis) else {
            return self.verdict(self.local.check(key));
        };
        match store.redis_now_us().filter(|_| store.is_available()) {
            Some(now) => self.verdict(batched.check_at(key, now, || self.redis_key(&value))),
            None => match self.on_redis_failure {
                OnRedisFailure::Local => self.verdict(self.local.check(key)),
                OnRedisFailure::Allow => Verdict::Continue(None),
                OnRedisFailure::Deny => Verdict::Unavailable,
            },
        }
    }

    fn redis_key(&self, value: &ScopeValue<'_>) -> String {
        let mut key = String::with_capacity(self.redis_prefix.len() + 48);
        key.push_str(&self.redis_prefix);
        value.write_redis_part(&mut key);
        key.push('}');
        key
    }

    fn verdict(&self, decision: Decision) -> Verdict {
        if decision.allowed {
            Verdict::Continue(self.headers.then_some(decision))
        } else {
            Verdict::TooManyRequests {
                decision,
                headers: self.headers,
            }
        }
    }

    fn quota(&self, decision: Decision) -> Quota {
        Quota {
            decision,
            limit_value: self.limit_value.clone(),
        }
    }

    async fn check_redis(&self, value: &ScopeValue<'_>) -> Option<Decision> {
        let store = self.redis.as_ref()?;
        if !store.is_available() {
            return None;
        }
        let key = self.redis_key(value);
        store.check(&key, &self.params, self.redis_timeout).await
    }
}

/// Everything rate limits share across snapshots: the Redis store (one per
/// data plane) and the in-process counters of each instance.
pub struct RateLimiters {
    redis: Option<RedisStore>,
    local: Mutex<HashMap<LocalId, Weak<LocalLimiter>>>,
    /// `sync: batched` counters, by instance, numbers and sync interval.
    batched: Mutex<HashMap<(LocalId, Duration), Weak<BatchedLimiter>>>,
}

/// What makes in-process counters reusable: same instance, same algorithm and numbers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct LocalId {
    instance: String,
    algorithm: u8,
    limit: u64,
    window_us: u64,
    burst: u64,
}

impl LocalId {
    fn new(instance: &str, params: Params) -> LocalId {
        LocalId {
            instance: instance.to_string(),
            algorithm: match params.algorithm {
                RateLimitAlgorithm::SlidingWindow => 1,
                RateLimitAlgorithm::Gcra => 2,
            },
            limit: params.limit,
            window_us: params.window_us,
            burst: params.burst,
        }
    }
}

impl Default for RateLimiters {
    /// No Redis: `policy: redis` runs under `on_redis_failure`.
    fn default() -> Self {
        RateLimiters::new(None)
    }
}

impl std::fmt::Debug for RateLimiters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiters")
            .field("redis", &self.redis.as_ref().map(RedisStore::target))
            .finish_non_exhaustive()
    }
}

impl RateLimiters {
    pub fn new(redis: Option<RedisStore>) -> RateLimiters {
        RateLimiters {
            redis,
            local: Mutex::new(HashMap::new()),
            batched: Mutex::new(HashMap::new()),
        }
    }

    pub fn redis(&self) -> Option<&RedisStore> {
        self.redis.as_ref()
    }

    /// The batched counters of `instance` (and their sync loop, started with
    /// them), shared with the previous snapshot's plugin when the limit is
    /// unchanged.
    fn batched(
        &self,
        instance: &str,
        params: Params,
        interval: Duration,
        store: &RedisStore,
    ) -> Arc<BatchedLimiter> {
        let id = (LocalId::new(instance, params), interval);
        let mut map = self
            .batched
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(existing) = map.get(&id).and_then(Weak::upgrade) {
            return existing;
        }
        map.retain(|_, limiter| limiter.strong_count() > 0);
        let metrics = tollgate_telemetry::metrics::global().rate_limit_sync(instance);
        let limiter = Arc::new(BatchedLimiter::new(params, metrics));
        batched::spawn(&limiter, store.clone(), interval);
        map.insert(id, Arc::downgrade(&limiter));
        limiter
    }

    /// The in-process counters of `instance`, shared with the previous
    /// snapshot's plugin when the limit is unchanged.
    fn local(&self, instance: &str, params: Params) -> Arc<LocalLimiter> {
        let id = LocalId::new(instance, params);
        let mut map = self
            .local
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(existing) = map.get(&id).and_then(Weak::upgrade) {
            return existing;
        }
        map.retain(|_, limiter| limiter.strong_count() > 0);
        let limiter = Arc::new(LocalLimiter::new(params));
        map.insert(id, Arc::downgrade(&limiter));
        limiter
    }
}

/// The answer to a request over the limit: 429 with `Retry-After`.
pub fn too_many_requests(decision: &Decision) -> Refusal {
    Refusal::new(RefusalKind::RateLimited).with_retry_after(decision.retry_after_s)
}

/// The answer when Redis is down under `on_redis_failure: deny`: 503.
pub fn unavailable() -> Refusal {
    Refusal::new(RefusalKind::RateLimitUnavailable).with_retry_after(1)
}

#[cfg(test)]
mod tests;
