//! The RFC 9111 rules a shared cache follows, as pure functions of headers:
//! `Cache-Control` directives of requests and responses, and how long a
//! response stays fresh.

use std::time::{Duration, SystemTime};

use http::header::{HeaderMap, HeaderName, AGE, CACHE_CONTROL, DATE, EXPIRES, SET_COOKIE, VARY};

/// The `Cache-Control` directives the cache acts on.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Directives {
    pub no_store: bool,
    pub no_cache: bool,
    pub private: bool,
    pub public: bool,
    pub must_revalidate: bool,
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    pub stale_while_revalidate: Option<u64>,
}

impl Directives {
    /// Parses every `Cache-Control` field of `headers`; unknown directives
    /// are ignored, a malformed number makes the directive absent except
    /// for `max-age` / `s-maxage`, which then count as 0 (RFC 9111 §4.2.1:
    /// treat an invalid freshness as stale).
    pub fn parse(headers: &HeaderMap) -> Directives {
        let mut directives = Directives::default();
        for value in headers.get_all(CACHE_CONTROL) {
            let Ok(text) = value.to_str() else {
                // Unreadable: as if it said no-store.
                directives.no_store = true;
                continue;
            };
            for item in text.split(',') {
                let item = item.trim();
                let (name, arg) = match item.split_once('=') {
                    Some((name, arg)) => (name.trim(), Some(arg.trim().trim_matches('"'))),
                    None => (item, None),
                };
                let seconds = || arg.map(|a| a.parse::<u64>().unwrap_or(0));
                match name.to_ascii_lowercase().as_str() {
                    "no-store" => directives.no_store = true,
                    // A qualified `no-cache="Set-Cookie"` is treated as plain
                    // no-cache: stricter, never wrong.
                    "no-cache" => directives.no_cache = true,
                    "private" => directives.private = true,
                    "public" => directives.public = true,
                    "must-revalidate" | "proxy-revalidate" => directives.must_revalidate = true,
                    "max-age" => directives.max_age = seconds(),
                    "s-maxage" => directives.s_maxage = seconds(),
                    "stale-while-revalidate" => {
                        directives.stale_while_revalidate = arg.and_then(|a| a.parse::<u64>().ok());
                    }
                    _ => {}
                }
            }
        }
        directives
    }
}

/// Why a response is not stored, or for how long it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storable {
    No(&'static str),
    Yes {
        /// How long it is fresh, counted from now (its `Age` already taken off).
        fresh: Duration,
        /// How long after that it may be served stale while refreshed.
        stale: Duration,
        /// The `Age` it arrived with.
        age: Duration,
    },
}

/// What the route's config says about freshness.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub default_ttl: Duration,
    pub max_ttl: Duration,
    pub stale_while_revalidate: Duration,
}

/// Whether a shared cache may store this response (RFC 9111 §3), and for
/// how long. `authorized`: the request carried `Authorization` that the
/// gateway did not turn into a consumer of its own (§3.5).
pub fn storable(headers: &HeaderMap, authorized: bool, limits: &Limits) -> Storable {
    let cc = Directives::parse(headers);
    if cc.no_store {
        return Storable::No("no-store");
    }
    if cc.private {
        return Storable::No("private");
    }
    // Stored responses are never revalidated with the upstream (no
    // conditional requests yet), so no-cache means not stored.
    if cc.no_cache {
        return Storable::No("no-cache");
    }
    if headers.contains_key(SET_COOKIE) {
        return Storable::No("set-cookie");
    }
    if headers.get_all(VARY).iter().any(|v| {
        v.to_str()
            .map_or(true, |v| v.split(',').any(|n| n.trim() == "*"))
    }) {
        return Storable::No("vary-star");
    }
    if authorized && !(cc.public || cc.s_maxage.is_some() || cc.must_revalidate) {
        return Storable::No("authorization");
    }
    let lifetime = match (cc.s_maxage, cc.max_age) {
        (Some(s), _) => Duration::from_secs(s),
        (None, Some(m)) => Duration::from_secs(m),
        (None, None) => match expires_lifetime(headers) {
            Some(lifetime) => lifetime,
            None => limits.default_ttl,
        },
    };
    let lifetime = lifetime.min(limits.max_ttl);
    let age = headers
        .get(AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_secs);
    let fresh = lifetime.saturating_sub(age);
    let stale = if cc.must_revalidate {
        Duration::ZERO
    } else {
        cc.stale_while_revalidate
            .map_or(limits.stale_while_revalidate, Duration::from_secs)
            .min(limits.max_ttl)
    };
    if fresh.is_zero() && stale.is_zero() {
        return Storable::No("stale");
    }
    Storable::Yes { fresh, stale, age }
}

/// `Expires` minus `Date` (or now); an invalid `Expires` means already
/// expired (RFC 9111 §5.3).
fn expires_lifetime(headers: &HeaderMap) -> Option<Duration> {
    let expires = headers.get(EXPIRES)?;
    let Some(expires) = expires
        .to_str()
        .ok()
        .and_then(|v| httpdate::parse_http_date(v).ok())
    else {
        return Some(Duration::ZERO);
    };
    let date = headers
        .get(DATE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
        .unwrap_or_else(SystemTime::now);
    Some(expires.duration_since(date).unwrap_or(Duration::ZERO))
}

/// The request headers a response's `Vary` names (lower case), deduplicated.
pub fn vary_names(headers: &HeaderMap) -> Vec<HeaderName> {
    let mut names: Vec<HeaderName> = Vec::new();
    for value in headers.get_all(VARY) {
        let Ok(text) = value.to_str() else { continue };
        for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if let Ok(name) = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()) {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    const LIMITS: Limits = Limits {
        default_ttl: Duration::from_secs(60),
        max_ttl: Duration::from_secs(3600),
        stale_while_revalidate: Duration::ZERO,
    };

    fn fresh(h: &[(&'static str, &'static str)], authorized: bool) -> Option<u64> {
        match storable(&headers(h), authorized, &LIMITS) {
            Storable::Yes { fresh, .. } => Some(fresh.as_secs()),
            Storable::No(_) => None,
        }
    }

    #[test]
    fn freshness_follows_rfc_9111() {
        assert_eq!(fresh(&[], false), Some(60));
        assert_eq!(fresh(&[("cache-control", "max-age=10")], false), Some(10));
        assert_eq!(
            fresh(&[("cache-control", "max-age=10, s-maxage=20")], false),
            Some(20)
        );
        assert_eq!(
            fresh(&[("cache-control", "max-age=99999")], false),
            Some(3600)
        );
        assert_eq!(
            fresh(&[("cache-control", "max-age=30"), ("age", "10")], false),
            Some(20)
        );
        assert_eq!(
            fresh(
                &[
                    ("date", "Mon, 07 Dec 2026 06:00:00 GMT"),
                    ("expires", "Mon, 07 Dec 2026 06:01:40 GMT")
                ],
                false
            ),
            Some(100)
        );
        assert_eq!(fresh(&[("expires", "garbage")], false), None);
        assert_eq!(fresh(&[("cache-control", "max-age=zz")], false), None);
    }

    #[test]
    fn what_a_shared_cache_never_stores() {
        for h in [
            [("cache-control", "no-store")],
            [("cache-control", "private, max-age=60")],
            [("cache-control", "No-Cache")],
            [("set-cookie", "a=b")],
            [("vary", "Accept, *")],
        ] {
            assert_eq!(fresh(&h, false), None, "{h:?}");
        }
        assert_eq!(fresh(&[], true), None, "Authorization needs permission");
        assert_eq!(fresh(&[("cache-control", "public")], true), Some(60));
        assert_eq!(fresh(&[("cache-control", "s-maxage=5")], true), Some(5));
    }

    #[test]
    fn stale_while_revalidate_from_the_response_or_config() {
        let h = headers(&[("cache-control", "max-age=1, stale-while-revalidate=30")]);
        assert!(matches!(
            storable(&h, false, &LIMITS),
            Storable::Yes { stale, .. } if stale == Duration::from_secs(30)
        ));
        let h = headers(&[(
            "cache-control",
            "max-age=1, stale-while-revalidate=30, must-revalidate",
        )]);
        assert!(matches!(
            storable(&h, false, &LIMITS),
            Storable::Yes { stale, .. } if stale.is_zero()
        ));
    }

    #[test]
    fn vary_names_are_lower_case_and_unique() {
        let h = headers(&[("vary", "Accept-Language, accept"), ("vary", "ACCEPT")]);
        assert_eq!(vary_names(&h), ["accept-language", "accept"]);
    }
}
