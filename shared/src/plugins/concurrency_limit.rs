//! `concurrency-limit`'s config: at most `limit` requests in flight per
//! scope value, on each data plane (`policy: local`) or across the fleet
//! (`policy: redis`, leases with a TTL).

use serde::{Deserialize, Serialize};

use super::{check_header_name, OnRedisFailure, PluginConfigSchema, RateLimitPolicy, Scope};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencyLimitConfig {
    /// Requests in flight at once per scope value.
    pub limit: u64,
    /// What the slots are counted by (as `rate-limit`'s `scope`).
    #[serde(default)]
    pub scope: Scope,
    /// The answer when no slot is free: 429 (default) or 503.
    #[serde(default = "default_status")]
    pub status: u16,
    /// `local` (default): slots counted per data plane; `redis`: slots
    /// shared by the fleet, held as leases in Redis (`--redis-url`).
    #[serde(default)]
    pub policy: RateLimitPolicy,
    /// `policy: redis`: a lease's lifetime in milliseconds, renewed while
    /// its request runs; the slots of a data plane that died come back
    /// within it. 1000 to 600000, default 30000.
    #[serde(default = "default_lease_ttl_ms")]
    pub lease_ttl_ms: u64,
    /// `policy: redis`: what to do while Redis cannot answer: `local`
    /// (default; count per data plane), `allow`, `deny` (503).
    #[serde(default)]
    pub on_redis_failure: OnRedisFailure,
    /// `policy: redis`: per-call timeout in milliseconds, default 25.
    #[serde(default = "default_redis_timeout_ms")]
    pub redis_timeout_ms: u64,
}

fn default_status() -> u16 {
    429
}

fn default_lease_ttl_ms() -> u64 {
    30_000
}

fn default_redis_timeout_ms() -> u64 {
    25
}

impl PluginConfigSchema for ConcurrencyLimitConfig {
    const NAME: &'static str = "concurrency-limit";
    /// Several may stack (per consumer and per route).
    const STACKABLE: bool = true;

    fn check(&self) -> Result<(), String> {
        if self.limit == 0 || self.limit > 1_000_000 {
            return Err("config.limit: must be between 1 and 1000000".into());
        }
        if self.status != 429 && self.status != 503 {
            return Err("config.status: must be 429 or 503".into());
        }
        if self.lease_ttl_ms < 1_000 || self.lease_ttl_ms > 600_000 {
            return Err("config.lease_ttl_ms: must be between 1000 and 600000".into());
        }
        if self.redis_timeout_ms == 0 || self.redis_timeout_ms > 10_000 {
            return Err("config.redis_timeout_ms: must be between 1 and 10000".into());
        }
        if let Scope::Header(name) = &self.scope {
            check_header_name("config.scope", name)?;
        }
        Ok(())
    }
}
