//! `acl`'s config: the groups a route admits or refuses.

use serde::{Deserialize, Serialize};

use super::PluginConfigSchema;

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AclConfig {
    pub allow: Vec<String>,
    pub deny: Vec<String>,
}

impl PluginConfigSchema for AclConfig {
    const NAME: &'static str = "acl";

    fn check(&self) -> Result<(), String> {
        if self.allow.is_empty() == self.deny.is_empty() {
            return Err("config: exactly one of allow or deny must be a non-empty list".into());
        }
        Ok(())
    }
}
