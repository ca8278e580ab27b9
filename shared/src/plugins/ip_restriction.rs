//! `ip-restriction`'s config: `allow` or `deny` lists of IPs and CIDRs.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::PluginConfigSchema;

/// `allow` or `deny` (exactly one non-empty) lists of IPs and CIDRs, IPv4
/// and IPv6, matched against the client IP (after `--trusted-proxies`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct IpRestrictionConfig {
    pub allow: Vec<String>,
    pub deny: Vec<String>,
}

/// Longest list of addresses one instance takes.
pub const MAX_IP_ENTRIES: usize = 10_000;

impl PluginConfigSchema for IpRestrictionConfig {
    const NAME: &'static str = "ip-restriction";

    fn check(&self) -> Result<(), String> {
        let (field, list) = match (self.allow.is_empty(), self.deny.is_empty()) {
            (false, true) => ("allow", &self.allow),
            (true, false) => ("deny", &self.deny),
            _ => {
                return Err("config: exactly one of allow or deny must be a non-empty list".into())
            }
        };
        if list.len() > MAX_IP_ENTRIES {
            return Err(format!(
                "config.{field}: at most {MAX_IP_ENTRIES} entries (got {})",
                list.len()
            ));
        }
        for (i, entry) in list.iter().enumerate() {
            parse_network(entry).ok_or_else(|| {
                format!(
                    "config.{field}[{i}]: {:?} is not an IP address or CIDR",
                    super::truncated(entry)
                )
            })?;
        }
        Ok(())
    }
}

impl IpRestrictionConfig {
    /// The networks of the non-empty list and whether it is an allow list.
    pub fn networks(&self) -> (bool, Vec<IpNet>) {
        let allow = !self.allow.is_empty();
        let list = if allow { &self.allow } else { &self.deny };
        (
            allow,
            list.iter().filter_map(|e| parse_network(e)).collect(),
        )
    }
}

/// `10.0.0.0/8`, `2001:db8::/32`, or a single address (`/32` or `/128`).
pub fn parse_network(text: &str) -> Option<IpNet> {
    let text = text.trim();
    if let Ok(net) = text.parse::<IpNet>() {
        return Some(net.trunc());
    }
    text.parse::<IpAddr>().ok().map(IpNet::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_lists_take_addresses_and_cidrs_of_both_families() {
        let ok = IpRestrictionConfig {
            allow: vec![
                "10.0.0.0/8".into(),
                "192.168.1.7".into(),
                "2001:db8::/32".into(),
                "::1".into(),
            ],
            deny: vec![],
        };
        assert_eq!(ok.check(), Ok(()));
        let (allow, nets) = ok.networks();
        assert!(allow);
        assert_eq!(nets.len(), 4);
        let bad = IpRestrictionConfig {
            allow: vec![],
            deny: vec!["10.0.0.0/8".into(), "10.0.0.0/33".into()],
        };
        assert_eq!(
            bad.check(),
            Err("config.deny[1]: \"10.0.0.0/33\" is not an IP address or CIDR".into())
        );
        assert!(IpRestrictionConfig::default().check().is_err());
    }
}
