//! `rate-limit`'s config: the limit, its window, what it is keyed by, the
//! algorithm, and where the counters live.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};

use super::{check_header_name, PluginConfigSchema};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    pub limit: u64,
    pub window: Window,
    #[serde(default)]
    pub scope: Scope,
    #[serde(default)]
    pub algorithm: RateLimitAlgorithm,
    /// Extra requests admitted at once (gcra only).
    #[serde(default)]
    pub burst: Option<u64>,
    #[serde(default)]
    pub policy: RateLimitPolicy,
    #[serde(default)]
    pub sync: RateLimitSync,
    /// `sync: batched`: how often each data plane pushes its increments to
    /// Redis and reads back the fleet's totals (default 100 ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_interval_ms: Option<u64>,
    #[serde(default)]
    pub on_redis_failure: OnRedisFailure,
    /// Per-call Redis timeout.
    #[serde(default = "default_redis_timeout_ms")]
    pub redis_timeout_ms: u64,
    /// Send `RateLimit-*` headers on every response of the route.
    #[serde(default = "default_true")]
    pub headers: bool,
}

fn default_redis_timeout_ms() -> u64 {
    25
}

/// `sync_interval_ms` when not given.
pub const DEFAULT_SYNC_INTERVAL_MS: u64 = 100;

impl RateLimitConfig {
    /// The batched sync interval in effect.
    pub fn sync_interval(&self) -> Duration {
        Duration::from_millis(self.sync_interval_ms.unwrap_or(DEFAULT_SYNC_INTERVAL_MS))
    }
}
fn default_true() -> bool {
    true
}

/// A window length written `<n>s|m|h|d` (e.g. `1m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window(pub Duration);

impl Window {
    /// Total: any text gives a window or an error (the unit is split off on
    /// a character boundary, so `"1é"` is an error, not a panic).
    pub fn parse(text: &str) -> Result<Window, String> {
        let bad = || {
            format!(
                "{} is not a window like 1s, 1m, 1h or 1d",
                crate::limits::show(text)
            )
        };
        let unit_len = text.chars().next_back().map_or(0, char::len_utf8);
        let (digits, unit) = text.split_at(text.len() - unit_len);
        if digits.is_empty() || digits.len() > 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let count: u64 = digits.parse().map_err(|_| bad())?;
        let seconds = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3_600,
            "d" => 86_400,
            _ => return Err(bad()),
        };
        if count == 0 || count > 366 * 86_400 / seconds {
            return Err(format!(
                "{} must be between 1s and 366d",
                crate::limits::show(text)
            ));
        }
        Ok(Window(Duration::from_secs(count * seconds)))
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.as_secs();
        if secs.is_multiple_of(86_400) {
            write!(f, "{}d", secs / 86_400)
        } else if secs.is_multiple_of(3_600) {
            write!(f, "{}h", secs / 3_600)
        } else if secs.is_multiple_of(60) {
            write!(f, "{}m", secs / 60)
        } else {
            write!(f, "{secs}s")
        }
    }
}

impl schemars::JsonSchema for Window {
    fn schema_name() -> String {
        "Window".into()
    }

    fn json_schema(_: &mut schemars::gen::SchemaGenerator) -> schemars::schema::Schema {
        crate::json_schema::pattern_string(r"^[0-9]+[smhd]$", "A window like 1s, 1m, 1h or 1d.")
    }
}

impl Serialize for Window {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Window {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Window::parse(&text).map_err(de::Error::custom)
    }
}

/// What a rate-limit counter is keyed by.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Scope {
    #[default]
    Consumer,
    Credential,
    Route,
    Service,
    Ip,
    Header(String),
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Consumer => f.write_str("consumer"),
            Scope::Credential => f.write_str("credential"),
            Scope::Route => f.write_str("route"),
            Scope::Service => f.write_str("service"),
            Scope::Ip => f.write_str("ip"),
            Scope::Header(name) => write!(f, "header:{name}"),
        }
    }
}

impl schemars::JsonSchema for Scope {
    fn schema_name() -> String {
        "Scope".into()
    }

    fn json_schema(_: &mut schemars::gen::SchemaGenerator) -> schemars::schema::Schema {
        crate::json_schema::pattern_string(
            r"^(consumer|credential|route|service|ip|header:.+)$",
            "What the counter is keyed by: consumer, credential, route, service, ip or header:<name>.",
        )
    }
}

impl Serialize for Scope {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Ok(match text.as_str() {
            "consumer" => Scope::Consumer,
            "credential" => Scope::Credential,
            "route" => Scope::Route,
            "service" => Scope::Service,
            "ip" => Scope::Ip,
            other => match other.strip_prefix("header:") {
                Some(name) => Scope::Header(name.to_ascii_lowercase()),
                None => {
                    return Err(de::Error::custom(format!(
                        "{} is not one of consumer, credential, route, service, ip, header:<name>",
                        crate::limits::show(other)
                    )))
                }
            },
        })
    }
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitAlgorithm {
    #[default]
    SlidingWindow,
    Gcra,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitPolicy {
    #[default]
    Local,
    Redis,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitSync {
    #[default]
    Strict,
    Batched,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum OnRedisFailure {
    Allow,
    #[default]
    Local,
    Deny,
}

impl PluginConfigSchema for RateLimitConfig {
    const NAME: &'static str = "rate-limit";
    /// Several limits may stack on a route (per minute and per hour).
    const STACKABLE: bool = true;

    fn check(&self) -> Result<(), String> {
        if self.limit == 0 {
            return Err("config.limit: must be at least 1".into());
        }
        if let Scope::Header(name) = &self.scope {
            check_header_name("config.scope", name)?;
        }
        if self.burst.is_some() && self.algorithm != RateLimitAlgorithm::Gcra {
            return Err("config.burst: only applies to algorithm gcra".into());
        }
        if self.redis_timeout_ms == 0 || self.redis_timeout_ms > 10_000 {
            return Err("config.redis_timeout_ms: must be between 1 and 10000".into());
        }
        if let Some(interval) = self.sync_interval_ms {
            if self.sync != RateLimitSync::Batched || self.policy != RateLimitPolicy::Redis {
                return Err(
                    "config.sync_interval_ms: only applies to policy redis with sync batched"
                        .into(),
                );
            }
            if !(10..=60_000).contains(&interval) {
                return Err("config.sync_interval_ms: must be between 10 and 60000".into());
            }
        }
        Ok(())
    }
}
