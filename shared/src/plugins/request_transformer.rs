//! `request-transformer`'s config: header and query edits, applied in the
//! order remove, rename, add. Values are checked as the data plane sends
//! them (no CR/LF or control characters; query names that cannot split or
//! add parameters).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{check_header_name, PluginConfigSchema};
use crate::limits::Shown;
use crate::validate::{check_header_value, check_query_name, check_query_value};

/// Edits applied to the request before it is proxied, in the order
/// remove, rename, add.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RequestTransformerConfig {
    pub remove: RemoveSpec,
    pub rename: RenameSpec,
    pub add: AddSpec,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RemoveSpec {
    pub headers: Vec<String>,
    pub querystring: Vec<String>,
}

/// Old name -> new name.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RenameSpec {
    pub headers: BTreeMap<String, String>,
    pub querystring: BTreeMap<String, String>,
}

/// Name -> value; an added header replaces any existing value.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AddSpec {
    pub headers: BTreeMap<String, String>,
    pub querystring: BTreeMap<String, String>,
}

impl PluginConfigSchema for RequestTransformerConfig {
    const NAME: &'static str = "request-transformer";

    fn check(&self) -> Result<(), String> {
        for (name, _) in self.add.headers.iter().chain(self.rename.headers.iter()) {
            check_header_name("config.add/rename.headers", name)?;
        }
        for (i, name) in self.remove.headers.iter().enumerate() {
            check_header_name(&format!("config.remove.headers[{i}]"), name)?;
        }
        for (from, to) in &self.rename.headers {
            check_header_name(&format!("config.rename.headers.{}", Shown(from)), to)?;
        }
        for (name, value) in &self.add.headers {
            check_header_value(value)
                .map_err(|m| format!("config.add.headers.{}: {m}", Shown(name)))?;
        }
        for (i, name) in self.remove.querystring.iter().enumerate() {
            check_query_name(name).map_err(|m| format!("config.remove.querystring[{i}]: {m}"))?;
        }
        for (from, to) in &self.rename.querystring {
            check_query_name(from).map_err(|m| format!("config.rename.querystring: {m}"))?;
            check_query_name(to)
                .map_err(|m| format!("config.rename.querystring.{}: {m}", Shown(from)))?;
        }
        for (name, value) in &self.add.querystring {
            check_query_name(name).map_err(|m| format!("config.add.querystring: {m}"))?;
            check_query_value(value)
                .map_err(|m| format!("config.add.querystring.{}: {m}", Shown(name)))?;
        }
        Ok(())
    }
}
