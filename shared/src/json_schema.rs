//! The JSON Schema of the config file (`docs/gateway.schema.json`), generated
//! from the one schema: the model's types and each plugin's config type, so
//! an editor (VS Code's YAML extension, JetBrains) completes and checks a
//! `gateway.yaml` with exactly the fields the control plane accepts.
//!
//! Plugin instances carry their config as a JSON object whose shape depends
//! on the plugin's `name`; the generated schema says so with one
//! `if name = X then config: <X's schema>` branch per plugin in
//! [`crate::plugins::SCHEMAS`]. Checks serde cannot express (cross-field
//! rules, references between entities) stay the control plane's.
//!
//! `cargo test -p tollgate-shared json_schema` fails when the published file
//! is stale; `TOLLGATE_WRITE_SCHEMA=1` with the same command rewrites it.

use schemars::gen::SchemaSettings;
use schemars::schema::{InstanceType, Schema, SchemaObject, StringValidation};
use serde_json::{json, Value};

use crate::model::GatewayConfig;
use crate::plugins::SCHEMAS;

/// Where the generated schema is published, relative to the repository root.
pub const PUBLISHED_PATH: &str = "docs/gateway.schema.json";

/// A string matching `pattern`, for types with a hand-written `Deserialize`.
pub fn pattern_string(pattern: &str, description: &str) -> Schema {
    let mut schema = SchemaObject {
        instance_type: Some(InstanceType::String.into()),
        string: Some(Box::new(StringValidation {
            pattern: Some(pattern.to_string()),
            ..StringValidation::default()
        })),
        ..SchemaObject::default()
    };
    schema.metadata().description = Some(description.to_string());
    Schema::Object(schema)
}

/// The config file's JSON Schema (draft 2019-09), as pretty JSON text.
pub fn config_schema() -> String {
    let mut generator = SchemaSettings::draft2019_09().into_generator();
    let mut plugin_branches = Vec::new();
    for plugin in SCHEMAS.iter() {
        let config = plugin.json_schema(&mut generator);
        plugin_branches.push(json!({
            "if": { "properties": { "name": { "const": plugin.name() } }, "required": ["name"] },
            "then": { "properties": { "config": config } }
        }));
    }
    let root = generator.into_root_schema_for::<GatewayConfig>();
    let mut root = serde_json::to_value(root).unwrap_or(Value::Null);
    root["title"] = json!("Tollgate gateway config");
    root["$id"] = json!("https://tollgate.dev/schemas/gateway.schema.json");
    let names: Vec<&str> = SCHEMAS.iter().map(|p| p.name()).collect();
    // Both plugin shapes (on routes and services, and global ones) get the
    // per-plugin branches and the list of known names.
    let defs_key = if root.get("$defs").is_some() {
        "$defs"
    } else {
        "definitions"
    };
    for shape in ["PluginInstance", "GlobalPlugin"] {
        if let Some(definition) = root.get_mut(defs_key).and_then(|defs| defs.get_mut(shape)) {
            definition["allOf"] = Value::Array(plugin_branches.clone());
            if let Some(name) = definition.pointer_mut("/properties/name") {
                name["enum"] = json!(names);
            }
        }
    }
    let mut text = serde_json::to_string_pretty(&root).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_json_schema_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/gateway.schema.json");
        let generated = config_schema();
        if std::env::var_os("TOLLGATE_WRITE_SCHEMA").is_some() {
            std::fs::write(path, &generated).expect("write the schema");
        }
        let published = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            published == generated,
            "{PUBLISHED_PATH} is stale: run `TOLLGATE_WRITE_SCHEMA=1 cargo test -p tollgate-shared json_schema` and commit it"
        );
    }

    #[test]
    fn the_schema_describes_plugins_by_name() {
        let schema: Value = serde_json::from_str(&config_schema()).expect("json");
        let defs = schema
            .get("definitions")
            .or_else(|| schema.get("$defs"))
            .expect("definitions");
        let branches = defs["PluginInstance"]["allOf"].as_array().expect("allOf");
        assert_eq!(branches.len(), SCHEMAS.len());
        assert!(defs["Route"]["properties"]["paths"].is_object());
        assert_eq!(defs["Route"]["additionalProperties"], json!(false));
    }
}
