//! `proxy-cache`'s config: which responses a route caches, for how long,
//! keyed by what, and where they are kept.

use serde::{Deserialize, Serialize};

use super::{check_header_name, PluginConfigSchema};

/// Where cached responses live.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum CacheStrategy {
    /// In this data plane's memory (bounded by bytes, TLFU eviction).
    #[default]
    Memory,
    /// In the data plane's `--redis-url` Redis, shared by the fleet.
    Redis,
}

/// Cache responses of a route (RFC 9111 rules for a shared cache).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyCacheConfig {
    pub strategy: CacheStrategy,
    /// Request methods whose responses are cached (upper case).
    pub methods: Vec<String>,
    /// Response statuses that are cached.
    pub statuses: Vec<u16>,
    /// Seconds a response without its own freshness (`max-age`,
    /// `s-maxage`, `Expires`) stays fresh.
    pub ttl: u64,
    /// Cap in seconds on any freshness, the upstream's included.
    pub max_ttl: u64,
    /// Seconds a stale response may still be served while one request
    /// refreshes it (the upstream's `stale-while-revalidate` wins).
    pub stale_while_revalidate: u64,
    /// Query parameters in the key: `None` all of them; a list keeps only
    /// those (order never matters).
    pub query_keys: Option<Vec<String>>,
    /// Request headers whose values are part of the key.
    pub vary_headers: Vec<String>,
    /// Serve one consumer's cached answer to another (the route's content
    /// does not depend on who asks). Off: the consumer is in the key.
    pub public: bool,
    /// Honour a client's `Cache-Control: no-cache` / `max-age=0` (fetch
    /// anew) and `no-store` (bypass). Off: clients cannot force misses.
    pub client_cache_control: bool,
    /// Responses with bodies larger than this are not cached.
    pub max_body_bytes: usize,
    /// Bytes of responses kept in memory per plugin instance (memory
    /// strategy).
    pub memory_max_bytes: u64,
    /// Milliseconds a request waits for a concurrent identical miss to be
    /// fetched before going upstream itself.
    pub lock_timeout_ms: u64,
    /// Per-call Redis timeout (redis strategy).
    pub redis_timeout_ms: u64,
}

impl Default for ProxyCacheConfig {
    fn default() -> Self {
        ProxyCacheConfig {
            strategy: CacheStrategy::Memory,
            methods: vec!["GET".into(), "HEAD".into()],
            statuses: vec![200, 301, 404],
            ttl: 300,
            max_ttl: 86_400,
            stale_while_revalidate: 0,
            query_keys: None,
            vary_headers: Vec::new(),
            public: false,
            client_cache_control: false,
            max_body_bytes: 1024 * 1024,
            memory_max_bytes: 64 * 1024 * 1024,
            lock_timeout_ms: 5_000,
            redis_timeout_ms: 100,
        }
    }
}

/// Largest body a cache entry may hold.
pub const MAX_CACHED_BODY: usize = 64 * 1024 * 1024;

impl PluginConfigSchema for ProxyCacheConfig {
    const NAME: &'static str = "proxy-cache";

    fn check(&self) -> Result<(), String> {
        if self.methods.is_empty() {
            return Err("config.methods: must name at least one method".into());
        }
        for (i, method) in self.methods.iter().enumerate() {
            if !["GET", "HEAD", "POST"].contains(&method.as_str()) {
                return Err(format!(
                    "config.methods[{i}]: {} is not cacheable here (GET, HEAD or POST, upper case)",
                    crate::limits::show(method)
                ));
            }
        }
        if self.statuses.is_empty() {
            return Err("config.statuses: must name at least one status".into());
        }
        for (i, status) in self.statuses.iter().enumerate() {
            if !(200..600).contains(status) || *status == 206 {
                return Err(format!(
                    "config.statuses[{i}]: {status} cannot be cached (200-599, not 206)"
                ));
            }
        }
        if self.ttl == 0 || self.ttl > self.max_ttl {
            return Err("config.ttl: must be between 1 and max_ttl".into());
        }
        if self.max_ttl > 366 * 86_400 {
            return Err("config.max_ttl: at most 366 days (31622400 seconds)".into());
        }
        if self.stale_while_revalidate > 86_400 {
            return Err("config.stale_while_revalidate: at most 86400 seconds".into());
        }
        if let Some(keys) = &self.query_keys {
            for (i, key) in keys.iter().enumerate() {
                crate::validate::check_query_name(key)
                    .map_err(|m| format!("config.query_keys[{i}]: {m}"))?;
            }
        }
        for (i, name) in self.vary_headers.iter().enumerate() {
            check_header_name(&format!("config.vary_headers[{i}]"), name)?;
        }
        if self.max_body_bytes == 0 || self.max_body_bytes > MAX_CACHED_BODY {
            return Err(format!(
                "config.max_body_bytes: must be between 1 and {MAX_CACHED_BODY}"
            ));
        }
        if self.memory_max_bytes < self.max_body_bytes as u64 || self.memory_max_bytes > 1 << 40 {
            return Err(
                "config.memory_max_bytes: must be at least max_body_bytes and at most 1 TiB".into(),
            );
        }
        if self.lock_timeout_ms == 0 || self.lock_timeout_ms > 60_000 {
            return Err("config.lock_timeout_ms: must be between 1 and 60000".into());
        }
        if self.redis_timeout_ms == 0 || self.redis_timeout_ms > 10_000 {
            return Err("config.redis_timeout_ms: must be between 1 and 10000".into());
        }
        Ok(())
    }
}
