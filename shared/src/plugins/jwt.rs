//! `jwt`'s config: which tokens a route accepts and which claims it forwards.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{check_header_name, is_gateway_owned_header, PluginConfigSchema};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
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

impl PluginConfigSchema for JwtConfig {
    const NAME: &'static str = "jwt";

    fn check(&self) -> Result<(), String> {
        check_header_name("config.header", &self.header)?;
        for (i, alg) in self.algorithms.iter().enumerate() {
            if !crate::model::JWT_ALGORITHMS.contains(&alg.as_str()) {
                return Err(format!(
                    "config.algorithms[{i}]: unsupported algorithm {} (supported: {})",
                    crate::limits::show(alg),
                    crate::model::JWT_ALGORITHMS.join(", ")
                ));
            }
        }
        if self.leeway_s > 300 {
            return Err("config.leeway_s: must be at most 300".into());
        }
        for (claim, header) in &self.forward_claims {
            if claim.is_empty() {
                return Err("config.forward_claims: claim name must not be empty".into());
            }
            let field = format!("config.forward_claims.{}", crate::limits::show(claim));
            check_header_name(&field, header)?;
            if is_gateway_owned_header(header) {
                return Err(format!(
                    "{field}: {} is set by the gateway itself",
                    crate::limits::show(header)
                ));
            }
        }
        Ok(())
    }

    fn anonymous(&self) -> Option<&str> {
        self.anonymous.as_deref()
    }
}
