//! The plugins' config schemas, one file per plugin, and [`SCHEMAS`], the one
//! list of them.
//!
//! A plugin instance in the model carries its config as a JSON object. Its
//! schema is a typed struct (`serde(deny_unknown_fields)`) that implements
//! [`PluginConfigSchema`]: its name, whether instances stack, and the checks
//! serde cannot express. Validation ([`crate::validate`]) looks a plugin up
//! in [`SCHEMAS`] by name, so the control plane refuses any config no data
//! plane of this version can build, naming the field (`config.window: ...`);
//! the data plane's plugin factories parse the same structs with [`parse`].
//! The schemas live here, not beside each plugin's implementation
//! (`data-plane/plugins/src/<name>/`), so the control plane validates
//! without linking the data plane; a test in `tollgate-plugins` checks that
//! its registry and this list name the same plugins.

use std::marker::PhantomData;

use serde::de::DeserializeOwned;

mod acl;
mod concurrency_limit;
mod cors;
mod ip_restriction;
mod jwt;
mod key_auth;
mod mtls_auth;
mod proxy_cache;
mod rate_limit;
mod request_transformer;
mod response_transformer;
pub mod template;

pub use acl::AclConfig;
pub use concurrency_limit::ConcurrencyLimitConfig;
pub use cors::CorsConfig;
pub use ip_restriction::{parse_network, IpRestrictionConfig};
pub use jwt::JwtConfig;
pub use key_auth::KeyAuthConfig;
pub use mtls_auth::MtlsAuthConfig;
pub use proxy_cache::{CacheStrategy, ProxyCacheConfig, MAX_CACHED_BODY};
pub use rate_limit::{
    OnRedisFailure, RateLimitAlgorithm, RateLimitConfig, RateLimitPolicy, RateLimitSync, Scope,
    Window,
};
pub use request_transformer::{
    AddSpec, RemoveSpec, RenameSpec, RequestTransformerConfig, MAX_REQUEST_JSON,
};
pub use response_transformer::{
    HeaderEdits, JsonEdits, ResponseTransformerConfig, MAX_TRANSFORMED_BODY,
};

/// One plugin's typed config.
pub trait PluginConfigSchema: DeserializeOwned + schemars::JsonSchema + 'static {
    /// The name configs use (`key-auth`).
    const NAME: &'static str;
    /// Whether several instances on one route all run (rate limits) instead
    /// of the most specific one replacing the others.
    const STACKABLE: bool = false;

    /// Checks serde cannot express; errors name the field (`config.x: ...`).
    fn check(&self) -> Result<(), String> {
        Ok(())
    }

    /// The consumer this config names as its `anonymous` one, which must exist.
    fn anonymous(&self) -> Option<&str> {
        None
    }

    /// The `certificates` entries this config names (`mtls-auth`'s CAs),
    /// which must exist.
    fn certificates(&self) -> &[String] {
        &[]
    }

    /// Route path captures (`{id}`) the config uses, which every route it
    /// runs on must declare.
    fn path_captures(&self) -> Vec<String> {
        Vec::new()
    }
}

/// What validation learns from a config beyond "it is valid".
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Checked {
    /// A consumer the config refers to (`anonymous`).
    pub anonymous: Option<String>,
    /// Certificates the config refers to (`ca_certificates`).
    pub certificates: Vec<String>,
    /// Route path captures the config uses (`request-transformer`'s path).
    pub path_captures: Vec<String>,
}

/// A schema as validation sees it, whatever its config type.
pub trait PluginSchema: Sync {
    fn name(&self) -> &'static str;
    fn stackable(&self) -> bool;
    /// Parses and checks a config.
    fn check(&self, config: &serde_json::Value) -> Result<Checked, String>;
    /// The JSON Schema of its config, for editors (`crate::json_schema`).
    fn json_schema(
        &self,
        generator: &mut schemars::gen::SchemaGenerator,
    ) -> schemars::schema::Schema;
}

struct Schema<T>(PhantomData<fn() -> T>);

impl<T: PluginConfigSchema> PluginSchema for Schema<T> {
    fn name(&self) -> &'static str {
        T::NAME
    }

    fn stackable(&self) -> bool {
        T::STACKABLE
    }

    fn check(&self, config: &serde_json::Value) -> Result<Checked, String> {
        let parsed = parse::<T>(config)?;
        Ok(Checked {
            anonymous: parsed.anonymous().map(str::to_string),
            certificates: parsed.certificates().to_vec(),
            path_captures: parsed.path_captures(),
        })
    }

    fn json_schema(
        &self,
        generator: &mut schemars::gen::SchemaGenerator,
    ) -> schemars::schema::Schema {
        generator.subschema_for::<T>()
    }
}

/// Every plugin this version knows: one line each.
pub static SCHEMAS: [&dyn PluginSchema; 11] = [
    &Schema::<KeyAuthConfig>(PhantomData),
    &Schema::<JwtConfig>(PhantomData),
    &Schema::<AclConfig>(PhantomData),
    &Schema::<RateLimitConfig>(PhantomData),
    &Schema::<RequestTransformerConfig>(PhantomData),
    &Schema::<IpRestrictionConfig>(PhantomData),
    &Schema::<CorsConfig>(PhantomData),
    &Schema::<MtlsAuthConfig>(PhantomData),
    &Schema::<ConcurrencyLimitConfig>(PhantomData),
    &Schema::<ProxyCacheConfig>(PhantomData),
    &Schema::<ResponseTransformerConfig>(PhantomData),
];

/// The schema of the plugin named `name`.
pub fn schema(name: &str) -> Option<&'static dyn PluginSchema> {
    SCHEMAS.iter().copied().find(|schema| schema.name() == name)
}

/// The known plugin names, for errors (`key-auth, jwt, ...`).
pub fn known_names() -> String {
    SCHEMAS
        .iter()
        .map(|schema| schema.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parses and checks a config as `T` (`null` is the defaults). The error
/// names the field.
pub fn parse<T: PluginConfigSchema>(config: &serde_json::Value) -> Result<T, String> {
    let config = if config.is_null() {
        serde_json::Value::Object(serde_json::Map::new())
    } else {
        config.clone()
    };
    if !config.is_object() {
        return Err("config: must be an object".to_string());
    }
    let parsed: T = typed(config)?;
    parsed.check()?;
    Ok(parsed)
}

/// Parses and checks the config of the plugin named `name`.
pub fn check(name: &str, config: &serde_json::Value) -> Result<Checked, String> {
    match schema(name) {
        Some(schema) => schema.check(config),
        None => Err(format!(
            "name: unknown plugin {} (known: {})",
            crate::limits::show(name),
            known_names()
        )),
    }
}

/// At most 64 characters of an echoed value, so an error never repeats a
/// huge input.
pub(crate) fn truncated(value: &str) -> &str {
    match value.char_indices().nth(64) {
        Some((end, _)) => &value[..end],
        None => value,
    }
}

fn typed<T: DeserializeOwned>(config: serde_json::Value) -> Result<T, String> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    #[test]
    fn rate_limit_parses_and_names_bad_fields() {
        let ok =
            parse::<RateLimitConfig>(&json!({"limit": 100, "window": "1m", "scope": "consumer"}));
        assert!(ok.is_ok());
        let err = check("rate-limit", &json!({"limit": 100, "window": "1y"})).unwrap_err();
        assert!(err.starts_with("config.window"), "{err}");
        let err = check("rate-limit", &json!({"limit": "x", "window": "1m"})).unwrap_err();
        assert!(err.starts_with("config.limit"), "{err}");
        let err = check(
            "rate-limit",
            &json!({"limit": 1, "window": "1m", "lmit": 2}),
        )
        .unwrap_err();
        assert!(err.contains("lmit"), "{err}");
        let err = check("nope", &json!({})).unwrap_err();
        assert!(err.starts_with("name:"), "{err}");
    }

    #[test]
    fn concurrency_limit_leases_are_checked() {
        let ok = check(
            "concurrency-limit",
            &json!({"limit": 5, "policy": "redis", "lease_ttl_ms": 5000, "on_redis_failure": "deny"}),
        );
        assert!(ok.is_ok(), "{ok:?}");
        let config = parse::<ConcurrencyLimitConfig>(&json!({"limit": 5})).unwrap();
        assert_eq!(config.policy, RateLimitPolicy::Local);
        assert_eq!(config.lease_ttl_ms, 30_000);
        for (field, bad) in [
            (
                "config.lease_ttl_ms",
                json!({"limit": 5, "lease_ttl_ms": 10}),
            ),
            (
                "config.lease_ttl_ms",
                json!({"limit": 5, "lease_ttl_ms": 700_000}),
            ),
            (
                "config.redis_timeout_ms",
                json!({"limit": 5, "redis_timeout_ms": 0}),
            ),
            ("config.policy", json!({"limit": 5, "policy": "cluster"})),
        ] {
            let err = check("concurrency-limit", &bad).unwrap_err();
            assert!(err.starts_with(field), "{err}");
        }
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
        let err = check("rate-limit", &json!({"limit": 1, "window": "1é"})).expect_err("refused");
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
            let err =
                check("jwt", &json!({"forward_claims": {"sub": header}})).expect_err("refused");
            assert!(err.contains("set by the gateway"), "{err}");
        }
        assert!(check("jwt", &json!({"forward_claims": {"sub": "x-user-id"}})).is_ok());
    }

    #[test]
    fn every_schema_is_found_by_its_name_once() {
        let mut names: Vec<&str> = SCHEMAS.iter().map(|s| s.name()).collect();
        let count = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), count);
        for name in names {
            assert_eq!(schema(name).map(|s| s.name()), Some(name));
        }
        assert!(schema("rate-limit").is_some_and(|s| s.stackable()));
        assert!(schema("key-auth").is_some_and(|s| !s.stackable()));
        assert_eq!(
            check("key-auth", &json!({"anonymous": "guest"})),
            Ok(Checked {
                anonymous: Some("guest".into()),
                certificates: Vec::new(),
                path_captures: Vec::new(),
            })
        );
    }

    #[test]
    fn acl_needs_exactly_one_list() {
        assert!(check("acl", &json!({})).is_err());
        assert!(check("acl", &json!({"allow": ["a"], "deny": ["b"]})).is_err());
        assert!(check("acl", &json!({"allow": ["a"]})).is_ok());
    }
}
