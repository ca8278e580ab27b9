//! Typed configuration schemas of the plugins Tollgate knows.
//!
//! A plugin instance in the model carries its config as a JSON object;
//! [`PluginConfig::parse`] turns it into one of the structs below, rejecting
//! unknown plugin names, unknown fields and bad values with a message that
//! names the field (`config.window: ...`). The control plane parses on every
//! write; the data plane parses again when it compiles a snapshot.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};

mod edge;

pub use edge::{parse_network, CorsConfig, IpRestrictionConfig};

/// Every plugin name the schema knows.
pub const KNOWN_PLUGINS: [&str; 7] = [
    "key-auth",
    "jwt",
    "acl",
    "rate-limit",
    "request-transformer",
    "ip-restriction",
    "cors",
];

#[derive(Debug, Clone, PartialEq)]
pub enum PluginConfig {
    KeyAuth(KeyAuthConfig),
    Jwt(JwtConfig),
    Acl(AclConfig),
    RateLimit(RateLimitConfig),
    RequestTransformer(RequestTransformerConfig),
    IpRestriction(IpRestrictionConfig),
    Cors(CorsConfig),
}

impl PluginConfig {
    /// Parses and checks a plugin's config. The error names the field.
    pub fn parse(name: &str, config: &serde_json::Value) -> Result<PluginConfig, String> {
        let config = if config.is_null() {
            serde_json::Value::Object(serde_json::Map::new())
        } else {
            config.clone()
        };
        if !config.is_object() {
            return Err("config: must be an object".to_string());
        }
        let parsed = match name {
            "key-auth" => PluginConfig::KeyAuth(typed(config)?),
            "jwt" => PluginConfig::Jwt(typed(config)?),
            "acl" => PluginConfig::Acl(typed(config)?),
            "rate-limit" => PluginConfig::RateLimit(typed(config)?),
            "request-transformer" => PluginConfig::RequestTransformer(typed(config)?),
            "ip-restriction" => PluginConfig::IpRestriction(typed(config)?),
            "cors" => PluginConfig::Cors(typed(config)?),
            other => {
                return Err(format!(
                    "name: unknown plugin {other:?} (known: {})",
                    KNOWN_PLUGINS.join(", ")
                ))
            }
        };
        parsed.check()?;
        Ok(parsed)
    }

    /// Semantic checks serde cannot express.
    fn check(&self) -> Result<(), String> {
        match self {
            PluginConfig::KeyAuth(c) => {
                check_header_name("config.header", &c.header)?;
                if let Some(q) = &c.query_param {
                    if q.is_empty() {
                        return Err("config.query_param: must not be empty".into());
                    }
                }
            }
            PluginConfig::Jwt(c) => {
                check_header_name("config.header", &c.header)?;
                for (i, alg) in c.algorithms.iter().enumerate() {
                    if !crate::model::JWT_ALGORITHMS.contains(&alg.as_str()) {
                        return Err(format!(
                            "config.algorithms[{i}]: unsupported algorithm {alg:?} (supported: {})",
                            crate::model::JWT_ALGORITHMS.join(", ")
                        ));
                    }
                }
                if c.leeway_s > 300 {
                    return Err("config.leeway_s: must be at most 300".into());
                }
                for (claim, header) in &c.forward_claims {
                    if claim.is_empty() {
                        return Err("config.forward_claims: claim name must not be empty".into());
                    }
                    check_header_name(&format!("config.forward_claims.{claim}"), header)?;
                    if is_gateway_owned_header(header) {
                        return Err(format!(
                            "config.forward_claims.{claim}: {header:?} is set by the gateway itself"
                        ));
                    }
                }
            }
            PluginConfig::Acl(c) => {
                if c.allow.is_empty() == c.deny.is_empty() {
                    return Err(
                        "config: exactly one of allow or deny must be a non-empty list".into(),
                    );
                }
            }
            PluginConfig::RateLimit(c) => {
                if c.limit == 0 {
                    return Err("config.limit: must be at least 1".into());
                }
                if let Scope::Header(name) = &c.scope {
                    check_header_name("config.scope", name)?;
                }
                if c.burst.is_some() && c.algorithm != RateLimitAlgorithm::Gcra {
                    return Err("config.burst: only applies to algorithm gcra".into());
                }
                if c.redis_timeout_ms == 0 || c.redis_timeout_ms > 10_000 {
                    return Err("config.redis_timeout_ms: must be between 1 and 10000".into());
                }
            }
            PluginConfig::IpRestriction(c) => c.check()?,
            PluginConfig::Cors(c) => c.check()?,
            PluginConfig::RequestTransformer(c) => {
                for (name, _) in c.add.headers.iter().chain(c.rename.headers.iter()) {
                    check_header_name("config.add/rename.headers", name)?;
                }
                for (i, name) in c.remove.headers.iter().enumerate() {
                    check_header_name(&format!("config.remove.headers[{i}]"), name)?;
                }
                for (from, to) in &c.rename.headers {
                    check_header_name(&format!("config.rename.headers.{from}"), to)?;
                }
                for (name, value) in &c.add.headers {
                    if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                        return Err(format!(
                            "config.add.headers.{name}: value must not contain CR, LF or NUL"
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    pub fn name(&self) -> &'static str {
        match self {
            PluginConfig::KeyAuth(_) => "key-auth",
            PluginConfig::Jwt(_) => "jwt",
            PluginConfig::Acl(_) => "acl",
            PluginConfig::RateLimit(_) => "rate-limit",
            PluginConfig::RequestTransformer(_) => "request-transformer",
            PluginConfig::IpRestriction(_) => "ip-restriction",
            PluginConfig::Cors(_) => "cors",
        }
    }
}

/// At most 64 characters of an echoed value, so an error never repeats a
/// huge input.
fn truncated(value: &str) -> &str {
    match value.char_indices().nth(64) {
        Some((end, _)) => &value[..end],
        None => value,
    }
}

fn typed<T: for<'de> Deserialize<'de>>(config: serde_json::Value) -> Result<T, String> {
    serde_path_to_error::deserialize(config).map_err(|err| {
        let path = err.path().to_string();
        if path == "." || path.is_empty() {
            format!("config: {}", err.inner())
        } else {
            format!("config.{path}: {}", err.inner())
        }
    })
}

/// Headers the gateway itself sets or that frame the message: a plugin may not
/// fill them with request-derived values (e.g. JWT `forward_claims`).
pub fn is_gateway_owned_header(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name.starts_with("x-consumer-")
        || name.starts_with("x-forwarded-")
        || name.starts_with("proxy-")
        || [
            "x-anonymous-consumer",
            "x-request-id",
            "host",
            "forwarded",
            "connection",
            "keep-alive",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "content-length",
        ]
        .contains(&name.as_str())
}

/// A header name as HTTP allows it (RFC 9110 token).
pub fn check_header_name(field: &str, name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= crate::limits::MAX_HEADER_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{field}: {} is not a valid header name (at most {} bytes of letters, digits and !#$%&'*+-.^_`|~)",
            crate::limits::show(name),
            crate::limits::MAX_HEADER_NAME_LEN
        ))
    }
}

// ---------------------------------------------------------------- key-auth

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeyAuthConfig {
    /// Header carrying the key.
    pub header: String,
    /// Query parameter carrying the key, if keys may come in the URL.
    pub query_param: Option<String>,
    /// Remove the credential before proxying.
    pub hide_credential: bool,
    /// Consumer to use when no credential is presented.
    pub anonymous: Option<String>,
}

impl Default for KeyAuthConfig {
    fn default() -> Self {
        KeyAuthConfig {
            header: "apikey".to_string(),
            query_param: None,
            hide_credential: false,
            anonymous: None,
        }
    }
}

// ---------------------------------------------------------------- jwt

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// Header carrying `Bearer <token>`.
    pub header: String,
    /// Algorithms this route accepts (intersected with the credential's own).
    pub algorithms: Vec<String>,
    /// Reject tokens without `exp`.
    pub require_exp: bool,
    /// Clock skew allowed on `exp`/`nbf`, seconds.
    pub leeway_s: u64,
    /// Accepted `aud` values; empty = not checked.
    pub audiences: Vec<String>,
    /// Accepted `iss` values; empty = any issuer with a credential.
    pub issuers: Vec<String>,
    /// Claim name -> upstream header name.
    pub forward_claims: BTreeMap<String, String>,
    pub anonymous: Option<String>,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            header: "authorization".to_string(),
            algorithms: crate::model::JWT_ALGORITHMS
                .iter()
                .map(|a| a.to_string())
                .collect(),
            require_exp: true,
            leeway_s: 5,
            audiences: Vec::new(),
            issuers: Vec::new(),
            forward_claims: BTreeMap::new(),
            anonymous: None,
        }
    }
}

// ---------------------------------------------------------------- acl

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AclConfig {
    pub allow: Vec<String>,
    pub deny: Vec<String>,
}

// ---------------------------------------------------------------- rate-limit

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitAlgorithm {
    #[default]
    SlidingWindow,
    Gcra,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitPolicy {
    #[default]
    Local,
    Redis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitSync {
    #[default]
    Strict,
    Batched,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnRedisFailure {
    Allow,
    #[default]
    Local,
    Deny,
}

// ---------------------------------------------------------------- request-transformer

/// Edits applied to the request before it is proxied, in the order
/// remove, rename, add.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RequestTransformerConfig {
    pub remove: RemoveSpec,
    pub rename: RenameSpec,
    pub add: AddSpec,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RemoveSpec {
    pub headers: Vec<String>,
    pub querystring: Vec<String>,
}

/// Old name -> new name.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RenameSpec {
    pub headers: BTreeMap<String, String>,
    pub querystring: BTreeMap<String, String>,
}

/// Name -> value; an added header replaces any existing value.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AddSpec {
    pub headers: BTreeMap<String, String>,
    pub querystring: BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rate_limit_parses_and_names_bad_fields() {
        let ok = PluginConfig::parse(
            "rate-limit",
            &json!({"limit": 100, "window": "1m", "scope": "consumer"}),
        );
        assert!(matches!(ok, Ok(PluginConfig::RateLimit(_))));
        let err =
            PluginConfig::parse("rate-limit", &json!({"limit": 100, "window": "1y"})).unwrap_err();
        assert!(err.starts_with("config.window"), "{err}");
        let err =
            PluginConfig::parse("rate-limit", &json!({"limit": "x", "window": "1m"})).unwrap_err();
        assert!(err.starts_with("config.limit"), "{err}");
        let err = PluginConfig::parse(
            "rate-limit",
            &json!({"limit": 1, "window": "1m", "lmit": 2}),
        )
        .unwrap_err();
        assert!(err.contains("lmit"), "{err}");
        let err = PluginConfig::parse("nope", &json!({})).unwrap_err();
        assert!(err.starts_with("name:"), "{err}");
    }

    #[test]
    fn window_parse_is_total() {
        for bad in [
            "1é",
            "é",
            "1日",
            "mé",
            "",
            "m",
            "+5m",
            "-1m",
            " 1m",
            "1 m",
            "99999999999999999999999m",
        ] {
            let err = Window::parse(bad).expect_err(bad);
            assert!(err.contains("window") || err.contains("between"), "{err}");
        }
        assert_eq!(
            Window::parse("366d"),
            Ok(Window(Duration::from_secs(366 * 86_400)))
        );
        assert!(Window::parse("367d").is_err());
        let err = PluginConfig::parse("rate-limit", &json!({"limit": 1, "window": "1é"}))
            .expect_err("refused");
        assert!(err.starts_with("config.window"), "{err}");
    }

    #[test]
    fn scope_and_window_round_trip() {
        let cfg: RateLimitConfig =
            serde_json::from_value(json!({"limit": 5, "window": "2h", "scope": "header:X-Tenant"}))
                .unwrap();
        assert_eq!(cfg.scope, Scope::Header("x-tenant".into()));
        assert_eq!(cfg.window.0, Duration::from_secs(7200));
        let back = serde_json::to_value(&cfg).unwrap();
        assert_eq!(back["window"], "2h");
        assert_eq!(back["scope"], "header:x-tenant");
    }

    #[test]
    fn jwt_claims_cannot_overwrite_gateway_headers() {
        for header in [
            "X-Consumer-Name",
            "x-forwarded-for",
            "Content-Length",
            "host",
        ] {
            let err = PluginConfig::parse("jwt", &json!({"forward_claims": {"sub": header}}))
                .expect_err("refused");
            assert!(err.contains("set by the gateway"), "{err}");
        }
        assert!(
            PluginConfig::parse("jwt", &json!({"forward_claims": {"sub": "x-user-id"}})).is_ok()
        );
    }

    #[test]
    fn acl_needs_exactly_one_list() {
        assert!(PluginConfig::parse("acl", &json!({})).is_err());
        assert!(PluginConfig::parse("acl", &json!({"allow": ["a"], "deny": ["b"]})).is_err());
        assert!(PluginConfig::parse("acl", &json!({"allow": ["a"]})).is_ok());
    }
}
