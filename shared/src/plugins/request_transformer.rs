//! `request-transformer`'s config: header and query edits, applied in the
//! order remove, rename, replace, add; a method override; a path rewrite
//! with the route template's captures (`/users/{id}` -> `/v2/accounts/{id}`);
//! values templated from the request ([`super::template`]). Values are
//! checked as the data plane sends them (no CR/LF or control characters;
//! query names that cannot split or add parameters).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{check_header_name, template, JsonEdits, PluginConfigSchema};
use crate::limits::Shown;
use crate::validate::{check_header_value, check_query_name, check_query_value};

/// Edits applied to the request before it is proxied, in the order
/// remove, rename, add.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RequestTransformerConfig {
    pub remove: RemoveSpec,
    pub rename: RenameSpec,
    /// Name -> value, only where the header or parameter is present.
    pub replace: AddSpec,
    pub add: AddSpec,
    /// The method sent upstream instead of the client's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// The path sent upstream: literal text, `{capture}` of the route's
    /// path template, `$(...)` templates; the part of the request path the
    /// template matched is replaced, the rest kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Edits of a JSON object request body's top-level fields (bodies with
    /// a `Content-Length` up to [`MAX_REQUEST_JSON`]; others pass as sent).
    #[serde(skip_serializing_if = "JsonEdits::is_empty")]
    pub json: JsonEdits,
}

/// Largest request body `request-transformer` edits.
pub const MAX_REQUEST_JSON: usize = 1024 * 1024;

impl RequestTransformerConfig {
    /// The captures `path` uses, which the routes it runs on must declare.
    pub fn path_captures(&self) -> Vec<String> {
        let Some(path) = &self.path else {
            return Vec::new();
        };
        super::template::parse(path, true)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|part| match part {
                super::template::Part::Capture(name) => Some(name),
                _ => None,
            })
            .collect()
    }
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

    fn path_captures(&self) -> Vec<String> {
        RequestTransformerConfig::path_captures(self)
    }

    fn check(&self) -> Result<(), String> {
        for (name, _) in self
            .add
            .headers
            .iter()
            .chain(self.rename.headers.iter())
            .chain(self.replace.headers.iter())
        {
            check_header_name("config.add/rename/replace.headers", name)?;
        }
        for (i, name) in self.remove.headers.iter().enumerate() {
            check_header_name(&format!("config.remove.headers[{i}]"), name)?;
        }
        for (from, to) in &self.rename.headers {
            check_header_name(&format!("config.rename.headers.{}", Shown(from)), to)?;
        }
        for (section, edits) in [("add", &self.add), ("replace", &self.replace)] {
            for (name, value) in &edits.headers {
                check_header_value(value)
                    .and_then(|()| template::parse(value, false).map(drop))
                    .map_err(|m| format!("config.{section}.headers.{}: {m}", Shown(name)))?;
            }
            for (name, value) in &edits.querystring {
                check_query_name(name).map_err(|m| format!("config.{section}.querystring: {m}"))?;
                check_query_value(value)
                    .and_then(|()| template::parse(value, false).map(drop))
                    .map_err(|m| format!("config.{section}.querystring.{}: {m}", Shown(name)))?;
            }
        }
        self.json.check()?;
        if let Some(method) = &self.method {
            if method.is_empty()
                || method.len() > 32
                || !method.bytes().all(|b| b.is_ascii_uppercase())
            {
                return Err(format!(
                    "config.method: {} is not a method (upper-case letters, e.g. POST)",
                    crate::limits::show(method)
                ));
            }
        }
        if let Some(path) = &self.path {
            if !path.starts_with('/') {
                return Err("config.path: must start with /".into());
            }
            check_header_value(path).map_err(|m| format!("config.path: {m}"))?;
            if path.contains(['?', '#', ' ']) {
                return Err("config.path: must not contain '?', '#' or spaces".into());
            }
            template::parse(path, true).map_err(|m| format!("config.path: {m}"))?;
        }
        for (i, name) in self.remove.querystring.iter().enumerate() {
            check_query_name(name).map_err(|m| format!("config.remove.querystring[{i}]: {m}"))?;
        }
        for (from, to) in &self.rename.querystring {
            check_query_name(from).map_err(|m| format!("config.rename.querystring: {m}"))?;
            check_query_name(to)
                .map_err(|m| format!("config.rename.querystring.{}: {m}", Shown(from)))?;
        }

        Ok(())
    }
}
