//! The config on the wire: every protobuf config message
//! ([`crate::proto::config`]) carries its entity as the JSON of the model
//! ([`crate::model`]), so the model's serde declaration is the one schema of
//! files, the admin API and the config stream (see `docs/architecture.md`,
//! "One config schema").
//!
//! Model -> proto cannot fail. Proto -> model fails with a [`ConfigError`]
//! naming the entity and the field (`service "s": upstream.load_balancing:
//! unknown variant ...`), so a bad gRPC request is rejected as precisely as a
//! bad YAML file; echoed values are cut like every validation error.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::limits::Shown;
use crate::model::*;
use crate::proto::config as pb;
use crate::ConfigError;

/// The model's JSON. Serializing the model cannot fail (no non-string map
/// keys, no custom serializer that errors); an empty string would be refused
/// on the way back, never misread.
fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// The `kind "name"` label of an entity whose JSON may not parse into the
/// model: its name when the JSON has one.
fn label(kind: &str, value: &serde_json::Value, name_fields: &[&str]) -> ConfigError {
    let name = name_fields
        .iter()
        .find_map(|field| value.get(field).and_then(serde_json::Value::as_str));
    match name {
        Some(name) => ConfigError::new(kind, name, String::new()),
        None => ConfigError {
            entity: kind.to_string(),
            message: String::new(),
            over_limit: false,
        },
    }
}

/// What serde says, with its path as the field (`config.window: ...`).
fn field_message(path: &str, inner: &serde_json::Error) -> String {
    let inner = inner.to_string();
    let inner = format!("{}", Shown(&inner));
    if path.is_empty() || path == "." {
        inner
    } else {
        format!("{path}: {inner}")
    }
}

/// Parses one entity of `kind` from its JSON.
fn entity_from_json<T: DeserializeOwned>(
    kind: &str,
    name_fields: &[&str],
    json: &str,
) -> Result<T, ConfigError> {
    let value: serde_json::Value = serde_json::from_str(json).map_err(|err| ConfigError {
        entity: kind.to_string(),
        message: format!("json: {}", Shown(&err.to_string())),
        over_limit: false,
    })?;
    let base = label(kind, &value, name_fields);
    serde_path_to_error::deserialize(&value).map_err(|err| ConfigError {
        message: field_message(&err.path().to_string(), err.inner()),
        ..base
    })
}

const NAME: &[&str] = &["name"];
const INSTANCE: &[&str] = &["instance", "name"];

/// Parses a whole config; an error inside `services[3]` names that service.
fn config_from_json(json: &str) -> Result<GatewayConfig, ConfigError> {
    let value: serde_json::Value = serde_json::from_str(json).map_err(|err| ConfigError {
        entity: "config".into(),
        message: format!("json: {}", Shown(&err.to_string())),
        over_limit: false,
    })?;
    serde_path_to_error::deserialize(&value).map_err(|err| {
        let path = err.path().to_string();
        // `services[3].upstream.x` -> service "<name of services[3]>": upstream.x
        for (list, kind, names) in [
            ("services", "service", NAME),
            ("routes", "route", NAME),
            ("consumers", "consumer", NAME),
            ("plugins", "plugin", INSTANCE),
            ("certificates", "certificate", NAME),
        ] {
            let Some(rest) = path.strip_prefix(list).and_then(|r| r.strip_prefix('[')) else {
                continue;
            };
            let Some((index, field)) = rest.split_once(']') else {
                continue;
            };
            let Ok(index) = index.parse::<usize>() else {
                continue;
            };
            let entity = value
                .get(list)
                .and_then(|items| items.get(index))
                .map(|item| label(kind, item, names))
                .unwrap_or_else(|| label(kind, &serde_json::Value::Null, names));
            let field = field.strip_prefix('.').unwrap_or(field);
            return ConfigError {
                message: field_message(field, err.inner()),
                ..entity
            };
        }
        ConfigError {
            entity: "config".into(),
            message: field_message(&path, err.inner()),
            over_limit: false,
        }
    })
}

impl From<&GatewayConfig> for pb::GatewayConfig {
    fn from(config: &GatewayConfig) -> Self {
        pb::GatewayConfig {
            json: to_json(config),
        }
    }
}

impl TryFrom<&pb::GatewayConfig> for GatewayConfig {
    type Error = ConfigError;
    fn try_from(config: &pb::GatewayConfig) -> Result<Self, ConfigError> {
        if config.json.is_empty() {
            return Ok(GatewayConfig::default());
        }
        config_from_json(&config.json)
    }
}

/// `From<&Model> for pb::Message` and `TryFrom<&pb::Message> for Model` for
/// one entity kind.
macro_rules! entity_json {
    ($model:ty, $wire:ident, $kind:literal, $names:expr) => {
        impl From<&$model> for pb::$wire {
            fn from(entity: &$model) -> Self {
                pb::$wire {
                    json: to_json(entity),
                }
            }
        }

        impl TryFrom<&pb::$wire> for $model {
            type Error = ConfigError;
            fn try_from(entity: &pb::$wire) -> Result<Self, ConfigError> {
                entity_from_json($kind, $names, &entity.json)
            }
        }
    };
}

entity_json!(Service, Service, "service", NAME);
entity_json!(Route, Route, "route", NAME);
entity_json!(Consumer, Consumer, "consumer", NAME);
entity_json!(GlobalPlugin, GlobalPlugin, "plugin", INSTANCE);
entity_json!(Certificate, Certificate, "certificate", NAME);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_through_proto() {
        let config = GatewayConfig::from_yaml(
            r#"
services:
  - name: s
    upstream: { targets: [{ address: "127.0.0.1:1", weight: 3 }], load_balancing: least_request }
    host_header: upstream.local
routes:
  - name: r
    service: s
    paths: ["/a"]
    headers: [{ name: x-v, value: "2" }, { name: x-present }]
    plugins: [{ name: acl, config: { allow: [g] } }, { name: key-auth, enabled: false }]
    metrics: { consumer_labels: true }
  - name: plain
    service: s
    paths: ["/p"]
consumers:
  - name: c
    credentials: [{ api_key_hash: "sha256:0000000000000000000000000000000000000000000000000000000000000000" }]
plugins:
  - { name: request-transformer, instance: tag, config: { add: { headers: { x-a: b } } } }
"#,
        )
        .expect("parses");
        let wire = pb::GatewayConfig::from(&config);
        let back = GatewayConfig::try_from(&wire).expect("converts back");
        assert_eq!(back, config);
        for service in &config.services {
            let wire = pb::Service::from(service);
            assert_eq!(&Service::try_from(&wire).expect("service"), service);
        }
        let plugin = &config.plugins[0];
        assert_eq!(
            &GlobalPlugin::try_from(&pb::GlobalPlugin::from(plugin)).expect("plugin"),
            plugin
        );
    }

    #[test]
    fn bad_values_name_the_entity_and_the_field() {
        let wire = pb::Service {
            json: r#"{"name":"s","upstream":{"targets":[]},"protocol":"ftp"}"#.into(),
        };
        let err = Service::try_from(&wire).expect_err("refused").to_string();
        assert!(err.starts_with("service \"s\": protocol:"), "{err}");

        let wire = pb::GatewayConfig {
            json: r#"{"routes":[{"name":"ok","service":"s"},{"name":"bad","service":"s","priority":"high"}]}"#
                .into(),
        };
        let err = GatewayConfig::try_from(&wire)
            .expect_err("refused")
            .to_string();
        assert!(err.starts_with("route \"bad\": priority:"), "{err}");

        let err = Route::try_from(&pb::Route { json: "{".into() })
            .expect_err("refused")
            .to_string();
        assert!(err.starts_with("route: json:"), "{err}");
        let err = Route::try_from(&pb::Route {
            json: format!(
                r#"{{"name":"r","service":"s","nope":"{}"}}"#,
                "x".repeat(10_000)
            ),
        })
        .expect_err("refused")
        .to_string();
        assert!(
            err.starts_with("route \"r\": nope") || err.contains("unknown field"),
            "{err}"
        );
        assert!(err.len() < 1_000, "echoed values are cut: {}", err.len());
    }

    /// Exports made before the config moved onto one schema still apply:
    /// the file format is the model's, unchanged.
    #[test]
    fn an_export_from_before_the_change_still_parses_and_converts() {
        let export = include_str!("../testdata/export-before-one-schema.yaml");
        let config = GatewayConfig::from_yaml(export).expect("old export parses");
        assert!(!config.services.is_empty() && !config.consumers.is_empty());
        let back = GatewayConfig::try_from(&pb::GatewayConfig::from(&config)).expect("wire");
        assert_eq!(back, config);
    }
}
