//! `key-auth`'s config: where the API key is read and the anonymous consumer.

use serde::{Deserialize, Serialize};

use super::{check_header_name, PluginConfigSchema};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
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

impl PluginConfigSchema for KeyAuthConfig {
    const NAME: &'static str = "key-auth";

    fn check(&self) -> Result<(), String> {
        check_header_name("config.header", &self.header)?;
        if self.query_param.as_deref() == Some("") {
            return Err("config.query_param: must not be empty".into());
        }
        Ok(())
    }

    fn anonymous(&self) -> Option<&str> {
        self.anonymous.as_deref()
    }
}
