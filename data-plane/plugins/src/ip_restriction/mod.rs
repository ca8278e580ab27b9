//! `ip-restriction`: admit or refuse a request by the client IP (as resolved
//! through `--trusted-proxies`), from an `allow` or a `deny` list of IPs and
//! CIDRs, IPv4 and IPv6. Refused requests get 403 `ip_forbidden` in the
//! admit phase, before any credential is checked. IPv4-mapped IPv6 peers
//! (`::ffff:10.0.0.1`) are matched as the IPv4 address they are.

use std::net::IpAddr;
use std::sync::Arc;

use http::request;
use ipnet::IpNet;
use tollgate_plugin_api::{
    BuildCtx, Phase, Plugin, PluginFactory, Refusal, RefusalKind, RequestCtx, Step,
};
use tollgate_shared::plugins::IpRestrictionConfig;

/// One compiled instance.
#[derive(Debug)]
pub struct IpRestriction {
    allow: bool,
    networks: Box<[IpNet]>,
}

impl IpRestriction {
    pub fn new(config: &IpRestrictionConfig) -> IpRestriction {
        let (allow, networks) = config.networks();
        IpRestriction {
            allow,
            networks: networks.into_boxed_slice(),
        }
    }

    /// Whether `ip` may pass.
    pub fn admits(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        let listed = self.networks.iter().any(|net| net.contains(&ip));
        listed == self.allow
    }
}

pub struct IpRestrictionFactory;

impl PluginFactory for IpRestrictionFactory {
    fn name(&self) -> &'static str {
        "ip-restriction"
    }

    fn phase(&self) -> Phase {
        Phase::Admit
    }

    fn build(
        &self,
        config: &serde_json::Value,
        _ctx: &BuildCtx<'_>,
    ) -> Result<Arc<dyn Plugin>, String> {
        let config = tollgate_shared::plugins::parse::<IpRestrictionConfig>(config)?;
        Ok(Arc::new(IpRestriction::new(&config)))
    }
}

impl Plugin for IpRestriction {
    fn name(&self) -> &'static str {
        "ip-restriction"
    }

    fn phase(&self) -> Phase {
        Phase::Admit
    }

    fn on_request<'a>(
        &'a self,
        ctx: &'a mut RequestCtx<'_>,
        _request: &'a mut request::Parts,
    ) -> Step<'a> {
        if self.admits(ctx.client_ip) {
            Step::CONTINUE
        } else {
            Err(Refusal::new(RefusalKind::IpForbidden)).into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn plugin(config: serde_json::Value) -> IpRestriction {
        let config =
            tollgate_shared::plugins::parse::<IpRestrictionConfig>(&config).expect("valid config");
        IpRestriction::new(&config)
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    #[test]
    fn allow_lists_admit_only_listed_networks_of_both_families() {
        let allow = plugin(json!({"allow": ["10.0.0.0/8", "192.168.1.7", "2001:db8::/32"]}));
        assert!(allow.admits(ip("10.1.2.3")));
        assert!(allow.admits(ip("192.168.1.7")));
        assert!(!allow.admits(ip("192.168.1.8")));
        assert!(allow.admits(ip("2001:db8::1")));
        assert!(!allow.admits(ip("2001:db9::1")));
        assert!(allow.admits(ip("::ffff:10.0.0.1")), "mapped IPv4 matches");
    }

    #[test]
    fn deny_lists_refuse_only_listed_networks() {
        let deny = plugin(json!({"deny": ["127.0.0.1", "::1"]}));
        assert!(!deny.admits(ip("127.0.0.1")));
        assert!(!deny.admits(ip("::1")));
        assert!(deny.admits(ip("127.0.0.2")));
    }

    #[test]
    fn refusals_are_403_ip_forbidden() {
        let deny = plugin(json!({"deny": ["127.0.0.0/8"]}));
        let id = http::HeaderValue::from_static("r");
        let mut ctx = RequestCtx::new(ip("127.0.0.1"), &id, "r", "s", std::time::Instant::now());
        let mut parts = http::Request::new(()).into_parts().0;
        let Step::Done(tollgate_plugin_api::Outcome::Refuse(refusal)) =
            deny.on_request(&mut ctx, &mut parts)
        else {
            panic!("refused");
        };
        assert_eq!(refusal.status(), 403);
        assert_eq!(refusal.code(), "ip_forbidden");
    }
}
