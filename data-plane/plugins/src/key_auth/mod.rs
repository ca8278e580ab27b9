//! `key-auth`: a consumer proves who it is with an API key.
//!
//! The key is read from a header (default `apikey`) or, when configured, a
//! query parameter; it is hashed once (SHA-256) and looked up in the
//! snapshot's [`ConsumerIndex`] by digest, so the data plane holds no key in
//! clear and the lookup does no byte-by-byte comparison of secrets.
//!
//! A request carrying the key more than once (two headers, two parameters)
//! is rejected rather than guessing which copy counts: a proxy in front of
//! us might pick the other one. With `hide_credential` the key is removed
//! from the header and from the query string before the request goes
//! upstream. The hot path allocates nothing unless the key must be
//! percent-decoded or removed from the query string.

use std::borrow::Cow;
use std::sync::Arc;

use http::header::{HeaderMap, HeaderName};
use http::uri::PathAndQuery;
use http::{request, Uri};
use percent_encoding::percent_decode_str;
use tollgate_shared::plugins::KeyAuthConfig;
use tollgate_shared::secrets::api_key_digest;

use crate::auth::{AuthAttempt, Authenticated, KeyReject};
use crate::consumers::{ConsumerIdentity, ConsumerIndex};

mod plugin;
pub use plugin::KeyAuthFactory;

#[derive(Debug)]
pub struct KeyAuth {
    header: HeaderName,
    query_param: Option<Box<str>>,
    hide_credential: bool,
    anonymous: Option<Arc<ConsumerIdentity>>,
    index: Arc<ConsumerIndex>,
}

impl KeyAuth {
    pub fn new(config: &KeyAuthConfig, index: &Arc<ConsumerIndex>) -> Result<KeyAuth, String> {
        let header = HeaderName::from_bytes(config.header.as_bytes()).map_err(|_| {
            format!(
                "config.header: {:?} is not a valid header name",
                config.header
            )
        })?;
        let anonymous =
            match &config.anonymous {
                Some(name) => Some(index.consumer(name).cloned().ok_or_else(|| {
                    format!("config.anonymous: consumer {name:?} does not exist")
                })?),
                None => None,
            };
        Ok(KeyAuth {
            header,
            query_param: config
                .query_param
                .as_deref()
                .filter(|q| !q.is_empty())
                .map(Box::from),
            hide_credential: config.hide_credential,
            anonymous,
            index: index.clone(),
        })
    }

    /// The consumer used when no key is presented, if any.
    pub fn anonymous(&self) -> Option<&Arc<ConsumerIdentity>> {
        self.anonymous.as_ref()
    }

    /// Finds the consumer owning the presented key.
    pub fn authenticate(&self, request: &mut request::Parts) -> AuthAttempt<'_> {
        let digest = match self.presented_key(request) {
            Ok(Some(key)) => api_key_digest(&key),
            Ok(None) => return AuthAttempt::NoCredential,
            Err(reject) => return AuthAttempt::Rejected(reject.into()),
        };
        let Some(owner) = self.index.api_key_owner(&digest) else {
            return AuthAttempt::Rejected(KeyReject::Unknown.into());
        };
        if self.hide_credential {
            self.hide(request);
        }
        AuthAttempt::Authenticated(Authenticated::Indexed(owner))
    }

    /// The key bytes from the header, else from the query parameter. An
    /// empty value counts as no key.
    fn presented_key<'r>(
        &self,
        request: &'r request::Parts,
    ) -> Result<Option<Cow<'r, [u8]>>, KeyReject> {
        if let Some(value) = single_header(&request.headers, &self.header)? {
            if !value.is_empty() {
                return Ok(Some(Cow::Borrowed(value)));
            }
        }
        let Some(param) = &self.query_param else {
            return Ok(None);
        };
        let Some(query) = request.uri.query() else {
            return Ok(None);
        };
        let mut found = None;
        for (name, value) in pairs(query) {
            if name_matches(name, param) {
                if found.is_some() {
                    return Err(KeyReject::Duplicate);
                }
                found = Some(value);
            }
        }
        Ok(found
            .filter(|value| !value.is_empty())
            .map(|value| Cow::from(percent_decode_str(value))))
    }

    fn hide(&self, request: &mut request::Parts) {
        request.headers.remove(&self.header);
        if let Some(param) = &self.query_param {
            if let Some(uri) = without_query_param(&request.uri, param) {
                request.uri = uri;
            }
        }
    }
}

/// The only value of `name`, or an error when the client sent several.
fn single_header<'h>(
    headers: &'h HeaderMap,
    name: &HeaderName,
) -> Result<Option<&'h [u8]>, KeyReject> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(KeyReject::Duplicate);
    }
    Ok(first.map(|v| v.as_bytes()))
}

/// `name=value` pairs of a query string (a pair without `=` has an empty value).
fn pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
}

/// Parameter names are compared after percent-decoding, as the request
/// transformer does, so `api%5Fkey` is `api_key`.
fn name_matches(raw: &str, wanted: &str) -> bool {
    if raw.contains('%') {
        percent_decode_str(raw).eq(wanted.bytes())
    } else {
        raw == wanted
    }
}

/// The URI without any `param` pair, or `None` when it has none.
fn without_query_param(uri: &Uri, param: &str) -> Option<Uri> {
    let query = uri.query()?;
    if !pairs(query).any(|(name, _)| name_matches(name, param)) {
        return None;
    }
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .filter(|pair| !name_matches(pair.split_once('=').map_or(*pair, |(n, _)| n), param))
        .collect();
    let mut path_and_query = String::with_capacity(uri.path().len() + query.len());
    path_and_query.push_str(uri.path());
    if !kept.is_empty() {
        path_and_query.push('?');
        path_and_query.push_str(&kept.join("&"));
    }
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(PathAndQuery::try_from(path_and_query).ok()?);
    Uri::from_parts(parts).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::AuthError;
    use crate::consumers::tests::key_consumer;
    use serde_json::json;

    fn index() -> Arc<ConsumerIndex> {
        Arc::new(
            ConsumerIndex::compile(&[
                key_consumer("alice", &["partners"], "alice-secret-key"),
                key_consumer("bob", &[], "bob+key/with%chars"),
                key_consumer("guest", &["public"], "guest-unused-key"),
            ])
            .expect("compiles"),
        )
    }

    fn plugin(config: serde_json::Value) -> KeyAuth {
        plugin_for(config)
    }

    fn plugin_for(config: serde_json::Value) -> KeyAuth {
        let config: KeyAuthConfig = serde_json::from_value(config).expect("config");
        KeyAuth::new(&config, &index()).expect("plugin")
    }

    fn parts(uri: &str, headers: &[(&str, &str)]) -> request::Parts {
        let mut builder = http::Request::builder().uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).expect("request").into_parts().0
    }

    fn consumer(attempt: AuthAttempt) -> String {
        match attempt {
            AuthAttempt::Authenticated(a) => a.owner().consumer.name.to_string(),
            other => panic!("not authenticated: {other:?}"),
        }
    }

    #[test]
    fn header_key_is_accepted_and_consumers_are_told_apart() {
        let plugin = plugin(json!({}));
        let mut req = parts("/x", &[("apikey", "alice-secret-key")]);
        assert_eq!(consumer(plugin.authenticate(&mut req)), "alice");
        assert_eq!(
            req.headers["apikey"], "alice-secret-key",
            "kept without hide_credential"
        );
        let mut req = parts("/x", &[("ApiKey", "bob+key/with%chars")]);
        assert_eq!(consumer(plugin.authenticate(&mut req)), "bob");
    }

    #[test]
    fn missing_wrong_and_duplicate_keys() {
        let plugin = plugin(json!({}));
        assert!(matches!(
            plugin.authenticate(&mut parts("/x", &[])),
            AuthAttempt::NoCredential
        ));
        assert!(matches!(
            plugin.authenticate(&mut parts("/x", &[("apikey", "")])),
            AuthAttempt::NoCredential
        ));
        assert!(matches!(
            plugin.authenticate(&mut parts("/x", &[("apikey", "alice-secret-kez")])),
            AuthAttempt::Rejected(AuthError::InvalidKey(KeyReject::Unknown))
        ));
        let mut req = parts("/x", &[("apikey", "nope"), ("apikey", "alice-secret-key")]);
        assert!(matches!(
            plugin.authenticate(&mut req),
            AuthAttempt::Rejected(AuthError::InvalidKey(KeyReject::Duplicate))
        ));
        // The query parameter is not consulted unless configured.
        assert!(matches!(
            plugin.authenticate(&mut parts("/x?apikey=alice-secret-key", &[])),
            AuthAttempt::NoCredential
        ));
    }

    #[test]
    fn query_parameter_keys_are_decoded_and_hidden() {
        let plugin = plugin(json!({"query_param": "api_key", "hide_credential": true}));
        let mut req = parts("/x?a=1&api_key=alice-secret-key&b=2", &[]);
        assert_eq!(consumer(plugin.authenticate(&mut req)), "alice");
        assert_eq!(req.uri.to_string(), "/x?a=1&b=2");

        let mut req = parts("/x?api%5Fkey=bob%2Bkey%2Fwith%25chars", &[]);
        assert_eq!(consumer(plugin.authenticate(&mut req)), "bob");
        assert_eq!(req.uri.to_string(), "/x");

        let mut req = parts("/x?api_key=a&api_key=alice-secret-key", &[]);
        assert!(matches!(
            plugin.authenticate(&mut req),
            AuthAttempt::Rejected(AuthError::InvalidKey(KeyReject::Duplicate))
        ));
        let mut req = parts("/x?api_key=wrong-key-value", &[]);
        assert!(matches!(
            plugin.authenticate(&mut req),
            AuthAttempt::Rejected(_)
        ));
        assert_eq!(req.uri.to_string(), "/x?api_key=wrong-key-value");
        assert!(matches!(
            plugin.authenticate(&mut parts("/x?api_key=&q=1", &[])),
            AuthAttempt::NoCredential
        ));
    }

    #[test]
    fn hide_credential_strips_the_header_and_header_wins_over_query() {
        let plugin = plugin(json!({"query_param": "k", "hide_credential": true}));
        let mut req = parts(
            "/x?k=bob%2Bkey%2Fwith%25chars&z",
            &[("apikey", "alice-secret-key")],
        );
        assert_eq!(consumer(plugin.authenticate(&mut req)), "alice");
        assert!(req.headers.get("apikey").is_none());
        assert_eq!(req.uri.to_string(), "/x?z", "the query copy is hidden too");

        let custom = plugin_for(json!({"header": "x-api-key", "hide_credential": true}));
        let mut req = parts(
            "/x",
            &[("x-api-key", "alice-secret-key"), ("apikey", "other")],
        );
        assert_eq!(consumer(custom.authenticate(&mut req)), "alice");
        assert!(req.headers.get("x-api-key").is_none());
        assert_eq!(req.headers["apikey"], "other");
    }

    #[test]
    fn anonymous_must_exist() {
        let plugin = plugin(json!({"anonymous": "guest"}));
        assert_eq!(&*plugin.anonymous().expect("anonymous").name, "guest");
        let config: KeyAuthConfig =
            serde_json::from_value(json!({"anonymous": "ghost"})).expect("config");
        let err = KeyAuth::new(&config, &index()).expect_err("must be refused");
        assert!(err.contains("ghost"), "{err}");
    }
}
