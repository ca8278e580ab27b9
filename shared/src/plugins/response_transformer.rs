//! `response-transformer`'s config: edits of response headers (every
//! response of the route) and of top-level fields of JSON bodies (upstream
//! responses up to `max_body_bytes`), each applied in the order remove,
//! rename, replace, add.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{check_header_name, is_gateway_owned_header, PluginConfigSchema};
use crate::limits::Shown;
use crate::validate::check_header_value;

/// Edit the response before it goes to the client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ResponseTransformerConfig {
    pub headers: HeaderEdits,
    pub json: JsonEdits,
    /// JSON bodies larger than this stream through unedited.
    pub max_body_bytes: usize,
}

impl Default for ResponseTransformerConfig {
    fn default() -> Self {
        ResponseTransformerConfig {
            headers: HeaderEdits::default(),
            json: JsonEdits::default(),
            max_body_bytes: 1024 * 1024,
        }
    }
}

/// Header edits: `add` sets a header only when absent, `replace` only when
/// present.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct HeaderEdits {
    pub remove: Vec<String>,
    pub rename: BTreeMap<String, String>,
    pub replace: BTreeMap<String, String>,
    pub add: BTreeMap<String, String>,
}

/// Edits of a JSON object body's top-level fields: `add` only when absent,
/// `replace` only when present.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct JsonEdits {
    pub remove: Vec<String>,
    pub rename: BTreeMap<String, String>,
    pub replace: BTreeMap<String, serde_json::Value>,
    pub add: BTreeMap<String, serde_json::Value>,
}

impl JsonEdits {
    /// Field names: 1 to 256 bytes.
    pub fn check(&self) -> Result<(), String> {
        let names = self
            .remove
            .iter()
            .chain(self.rename.keys())
            .chain(self.rename.values())
            .chain(self.replace.keys())
            .chain(self.add.keys());
        for name in names {
            if name.is_empty() || name.len() > 256 {
                return Err(format!(
                    "config.json: field name {} must be 1 to 256 bytes",
                    crate::limits::show(name)
                ));
            }
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.remove.is_empty()
            && self.rename.is_empty()
            && self.replace.is_empty()
            && self.add.is_empty()
    }
}

/// Largest JSON body the transformer will buffer.
pub const MAX_TRANSFORMED_BODY: usize = 16 * 1024 * 1024;

fn check_edited_header(field: &str, name: &str) -> Result<(), String> {
    check_header_name(field, name)?;
    if is_gateway_owned_header(name) {
        return Err(format!(
            "{field}: {} is set by the gateway",
            crate::limits::show(name)
        ));
    }
    Ok(())
}

impl PluginConfigSchema for ResponseTransformerConfig {
    const NAME: &'static str = "response-transformer";

    fn check(&self) -> Result<(), String> {
        let h = &self.headers;
        for (i, name) in h.remove.iter().enumerate() {
            check_edited_header(&format!("config.headers.remove[{i}]"), name)?;
        }
        for (from, to) in &h.rename {
            check_edited_header("config.headers.rename", from)?;
            check_edited_header(&format!("config.headers.rename.{}", Shown(from)), to)?;
        }
        for (section, edits) in [("replace", &h.replace), ("add", &h.add)] {
            for (name, value) in edits {
                check_edited_header(&format!("config.headers.{section}"), name)?;
                check_header_value(value)
                    .map_err(|m| format!("config.headers.{section}.{}: {m}", Shown(name)))?;
            }
        }
        self.json.check()?;
        if self.max_body_bytes == 0 || self.max_body_bytes > MAX_TRANSFORMED_BODY {
            return Err(format!(
                "config.max_body_bytes: must be between 1 and {MAX_TRANSFORMED_BODY}"
            ));
        }
        Ok(())
    }
}
