//! Host normalization for routing: the request's authority or `Host` header
//! reduced to the bare, lower-case name that route hosts are written in.
//!
//! Why a separate step: `API.example.com:8443`, `api.example.com.` and
//! `api.example.com` are the same host to DNS and to the client, so they must
//! pick the same routes.

use std::borrow::Cow;

/// Strips the port (`host:8080`, `[::1]:8080`), one trailing dot, and
/// lower-cases. Allocates only when the name has upper-case letters.
///
/// A value that is not a host name at all is returned as is (minus what was
/// stripped): it then matches only routes without `hosts`.
pub fn normalize_host(authority: &str) -> Cow<'_, str> {
    let name = strip_port(authority.trim());
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        // IPv6 literal: keep the brackets, drop whatever follows `]`.
        return match authority.find(']') {
            Some(end) => &authority[..=end],
            None => authority,
        };
    }
    match authority.split_once(':') {
        // A second colon means an unbracketed IPv6 address, not a port.
        Some((name, port)) if !port.contains(':') => name,
        _ => authority,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_normalized() {
        for (raw, expected) in [
            ("api.example.com", "api.example.com"),
            ("API.Example.COM", "api.example.com"),
            ("api.example.com:8443", "api.example.com"),
            ("api.example.com.", "api.example.com"),
            ("Api.Example.Com.:80", "api.example.com"),
            ("127.0.0.1:8000", "127.0.0.1"),
            ("[::1]:8000", "[::1]"),
            ("[::1]", "[::1]"),
            ("::1", "::1"),
            ("host:", "host"),
            ("", ""),
            (" api.example.com ", "api.example.com"),
        ] {
            assert_eq!(normalize_host(raw), expected, "{raw:?}");
        }
        assert!(matches!(
            normalize_host("api.example.com:1"),
            Cow::Borrowed(_)
        ));
    }
}
