//! Headers that upstreams commonly trust as identity or routing facts, and
//! that a client outside `--trusted-proxies` must not be able to set.
//!
//! `X-Forwarded-*` are replaced ([`crate::forward`]) and `X-Consumer-*` are
//! stripped before the plugins run; this covers the rest: `Forwarded` and
//! `X-Real-IP` are rewritten from the real client address when the client
//! sent them (as `X-Forwarded-For` is), and a documented list
//! ([`DEFAULT_UNTRUSTED`], extended by `--untrusted-headers`) is dropped.
//! From a trusted proxy they all pass as sent.
//!
//! Cost on the hot path: one pass over the request's header names with a
//! length filter (a bit per name length), so a request carrying none of them
//! hashes nothing and allocates nothing.

use std::net::IpAddr;

use http::header::{HeaderMap, HeaderName, HeaderValue, FORWARDED};

/// `X-Real-IP`, rewritten from the client address.
pub const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Dropped from untrusted clients by default.
pub const DEFAULT_UNTRUSTED: [&str; 10] = [
    "x-original-url",
    "x-rewrite-url",
    "x-original-uri",
    "x-authenticated-user",
    "x-authenticated-userid",
    "x-credential-identifier",
    "x-consumer-id",
    "x-consumer-username",
    "x-client-ip",
    "x-forwarded-server",
];

/// The headers to drop from untrusted clients, compiled once at startup.
#[derive(Debug, Clone)]
pub struct UntrustedHeaders {
    /// Dropped names; `Forwarded` and `X-Real-IP` come last (rewritten).
    names: Box<[HeaderName]>,
    /// Bit `n` set when some name (or the rewritten two) is `n` bytes long.
    lengths: u64,
}

impl Default for UntrustedHeaders {
    fn default() -> Self {
        UntrustedHeaders::new(&[]).unwrap_or(UntrustedHeaders {
            names: Box::new([]),
            lengths: 0,
        })
    }
}

fn length_bit(name: &str) -> u64 {
    1 << name.len().min(63)
}

impl UntrustedHeaders {
    /// The default list plus `extra` names (`--untrusted-headers`).
    pub fn new(extra: &[String]) -> Result<Self, String> {
        let mut names: Vec<HeaderName> = Vec::new();
        for name in DEFAULT_UNTRUSTED
            .iter()
            .copied()
            .chain(extra.iter().map(String::as_str))
        {
            let name = HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|_| format!("{name:?} is not a header name"))?;
            if name != FORWARDED && name != X_REAL_IP && !names.contains(&name) {
                names.push(name);
            }
        }
        let lengths = names
            .iter()
            .map(|n| length_bit(n.as_str()))
            .chain([
                length_bit(FORWARDED.as_str()),
                length_bit(X_REAL_IP.as_str()),
            ])
            .fold(0, |all, bit| all | bit);
        Ok(UntrustedHeaders {
            names: names.into_boxed_slice(),
            lengths,
        })
    }

    /// For a request from an untrusted peer: drops the listed headers and
    /// rewrites `Forwarded` / `X-Real-IP` (when sent) from `client`.
    pub fn apply(&self, headers: &mut HeaderMap, client: IpAddr) {
        let mut found: u64 = 0;
        let mut rewrite = false;
        for name in headers.keys() {
            if self.lengths & length_bit(name.as_str()) == 0 {
                continue;
            }
            if name == FORWARDED || name == X_REAL_IP {
                rewrite = true;
            } else if let Some(index) = self.names.iter().position(|n| n == name) {
                found |= 1 << index.min(63);
            }
        }
        if found != 0 {
            for (index, name) in self.names.iter().enumerate() {
                if found & (1 << index.min(63)) != 0 {
                    headers.remove(name);
                }
            }
        }
        if rewrite {
            if headers.contains_key(X_REAL_IP) {
                if let Ok(value) = HeaderValue::from_str(&client.to_string()) {
                    headers.insert(X_REAL_IP, value);
                }
            }
            if headers.contains_key(FORWARDED) {
                // RFC 7239: an IPv6 node is quoted and bracketed.
                let node = match client {
                    IpAddr::V4(ip) => format!("for={ip};proto=http"),
                    IpAddr::V6(ip) => format!("for=\"[{ip}]\";proto=http"),
                };
                if let Ok(value) = HeaderValue::from_str(&node) {
                    headers.insert(FORWARDED, value);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        map
    }

    #[test]
    fn listed_headers_go_and_forwarding_headers_are_rewritten() {
        let untrusted = UntrustedHeaders::new(&["X-Tenant-Admin".into()]).expect("valid");
        let mut map = headers(&[
            ("x-original-url", "/admin"),
            ("X-Rewrite-URL", "/admin"),
            ("x-authenticated-user", "root"),
            ("x-consumer-id", "1"),
            ("x-tenant-admin", "yes"),
            ("forwarded", "for=10.0.0.1;by=evil"),
            ("x-real-ip", "10.0.0.1"),
            ("content-length", "0"),
            ("user-agent", "t"),
        ]);
        untrusted.apply(&mut map, "203.0.113.7".parse().expect("ip"));
        for gone in [
            "x-original-url",
            "x-rewrite-url",
            "x-authenticated-user",
            "x-consumer-id",
            "x-tenant-admin",
        ] {
            assert!(map.get(gone).is_none(), "{gone}");
        }
        assert_eq!(map["forwarded"], "for=203.0.113.7;proto=http");
        assert_eq!(map["x-real-ip"], "203.0.113.7");
        assert_eq!(map["content-length"], "0");
        assert_eq!(map["user-agent"], "t");
        let mut v6 = headers(&[("forwarded", "for=x")]);
        untrusted.apply(&mut v6, "2001:db8::1".parse().expect("ip"));
        assert_eq!(v6["forwarded"], "for=\"[2001:db8::1]\";proto=http");
        let mut none = headers(&[("accept", "*/*")]);
        untrusted.apply(&mut none, "203.0.113.7".parse().expect("ip"));
        assert_eq!(none.len(), 1, "nothing added when nothing was sent");
        assert!(UntrustedHeaders::new(&["bad name".into()]).is_err());
    }
}
