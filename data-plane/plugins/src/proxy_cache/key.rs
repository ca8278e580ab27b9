//! The cache key: which requests share a cached response.
//!
//! Method, host, path, the query (all parameters, or the configured ones,
//! sorted so their order never matters), the configured `vary_headers`, and
//! the consumer unless the route is `public`, hashed with SHA-256 into 16
//! bytes (shown as 32 hex digits in `X-Cache-Key`, and what `tollgatectl
//! cache purge --key` takes). The route name is kept beside the digest, so
//! a purge can drop one route's entries.

use std::sync::Arc;

use http::header::HOST;
use http::{request, HeaderName};
use sha2::{Digest, Sha256};

/// One cached response's identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    pub route: Arc<str>,
    pub digest: [u8; 16],
}

impl CacheKey {
    /// The digest as 32 lower-case hex digits.
    pub fn hex(&self) -> String {
        hex::encode(self.digest)
    }
}

/// What goes into a key besides the request.
pub struct KeySpec<'a> {
    pub query_keys: Option<&'a [String]>,
    pub vary_headers: &'a [HeaderName],
    /// `None` for a public route or an anonymous request.
    pub consumer: Option<&'a str>,
}

/// Builds the key of `request` on `route`.
pub fn key(route: &Arc<str>, request: &request::Parts, spec: &KeySpec<'_>) -> CacheKey {
    let mut hash = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hash.update((bytes.len() as u32).to_le_bytes());
        hash.update(bytes);
    };
    field(request.method.as_str().as_bytes());
    let host = request.headers.get(HOST).map_or(&b""[..], |h| h.as_bytes());
    field(&host.to_ascii_lowercase());
    field(request.uri.path().as_bytes());
    if let Some(query) = request.uri.query() {
        let mut pairs: Vec<&str> = query
            .split('&')
            .filter(|pair| !pair.is_empty())
            .filter(|pair| match spec.query_keys {
                None => true,
                Some(keys) => {
                    let name = pair.split_once('=').map_or(*pair, |(name, _)| name);
                    keys.iter().any(|key| key == name)
                }
            })
            .collect();
        pairs.sort_unstable();
        for pair in pairs {
            field(pair.as_bytes());
        }
    }
    field(b"\0headers");
    for name in spec.vary_headers {
        for value in request.headers.get_all(name) {
            field(value.as_bytes());
        }
        field(b"\0");
    }
    field(b"\0consumer");
    if let Some(consumer) = spec.consumer {
        field(consumer.as_bytes());
    }
    let full = hash.finalize();
    let mut digest = [0u8; 16];
    digest.copy_from_slice(&full[..16]);
    CacheKey {
        route: route.clone(),
        digest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, headers: &[(&'static str, &'static str)]) -> request::Parts {
        let mut builder = http::Request::builder().uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).expect("request").into_parts().0
    }

    #[test]
    fn query_order_is_ignored_and_listed_keys_filter() {
        let route: Arc<str> = "r".into();
        let all = KeySpec {
            query_keys: None,
            vary_headers: &[],
            consumer: None,
        };
        let a = key(&route, &parts("/x?a=1&b=2", &[("host", "H")]), &all);
        let b = key(&route, &parts("/x?b=2&a=1", &[("host", "h")]), &all);
        let c = key(&route, &parts("/x?b=2&a=1&c=3", &[("host", "h")]), &all);
        assert_eq!(a, b);
        assert_ne!(a, c);
        let listed = ["a".to_string(), "b".to_string()];
        let only = KeySpec {
            query_keys: Some(&listed),
            ..all
        };
        let c = key(&route, &parts("/x?b=2&a=1&utm=3", &[("host", "h")]), &only);
        assert_eq!(
            key(&route, &parts("/x?a=1&b=2", &[("host", "h")]), &only),
            c
        );
        assert_eq!(c.hex().len(), 32);
    }

    #[test]
    fn consumers_and_vary_headers_split_keys() {
        let route: Arc<str> = "r".into();
        let vary = [HeaderName::from_static("accept-language")];
        let spec = |consumer| KeySpec {
            query_keys: None,
            vary_headers: &vary,
            consumer,
        };
        let en = parts("/x", &[("accept-language", "en")]);
        let fr = parts("/x", &[("accept-language", "fr")]);
        assert_ne!(key(&route, &en, &spec(None)), key(&route, &fr, &spec(None)));
        assert_ne!(
            key(&route, &en, &spec(Some("alice"))),
            key(&route, &en, &spec(Some("bob")))
        );
        assert_ne!(
            key(&route, &en, &spec(None)),
            key(&"other".into(), &en, &spec(None))
        );
    }
}
