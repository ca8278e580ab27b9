//! `concurrency-limit`'s config: at most `limit` requests in flight per
//! scope value, on each data plane.

use serde::{Deserialize, Serialize};

use super::{check_header_name, PluginConfigSchema, Scope};

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
}

fn default_status() -> u16 {
    429
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
        if let Scope::Header(name) = &self.scope {
            check_header_name("config.scope", name)?;
        }
        Ok(())
    }
}
