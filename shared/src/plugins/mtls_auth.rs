//! `mtls-auth`'s config: the CAs a client certificate must chain to, and the
//! anonymous consumer for clients that present none.

use serde::{Deserialize, Serialize};

use super::PluginConfigSchema;

/// At most this many CAs per instance (each is a trust anchor checked per
/// new connection and route).
pub const MAX_CA_CERTIFICATES: usize = 16;

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct MtlsAuthConfig {
    /// Names of `certificates` entries whose `cert_pem` are the trusted CAs
    /// (their `crl_pem`, if any, is checked too).
    pub ca_certificates: Vec<String>,
    /// Consumer to use when the client presents no certificate.
    pub anonymous: Option<String>,
}

impl PluginConfigSchema for MtlsAuthConfig {
    const NAME: &'static str = "mtls-auth";

    fn check(&self) -> Result<(), String> {
        if self.ca_certificates.is_empty() {
            return Err("config.ca_certificates: name at least one CA certificate".into());
        }
        if self.ca_certificates.len() > MAX_CA_CERTIFICATES {
            return Err(format!(
                "config.ca_certificates: at most {MAX_CA_CERTIFICATES} allowed"
            ));
        }
        for (i, name) in self.ca_certificates.iter().enumerate() {
            crate::validate::check_name(name)
                .map_err(|m| format!("config.ca_certificates[{i}]: {m}"))?;
        }
        Ok(())
    }

    fn anonymous(&self) -> Option<&str> {
        self.anonymous.as_deref()
    }

    fn certificates(&self) -> &[String] {
        &self.ca_certificates
    }
}
