//! `request-transformer`: edits the request before it goes upstream.
//!
//! Operations run in the order remove, rename, add, first on headers, then on
//! query parameters. An added header replaces any value already there; an
//! added query parameter replaces every existing parameter of that name.
//! Renaming keeps every value of a repeated header or parameter.
//!
//! Header names and values are parsed once, when the snapshot compiles.
//! Query parameter names are compared after percent-decoding (so
//! `user%5Fid` matches `user_id`); added names and values are
//! percent-encoded. The query string is only rebuilt when the request has one
//! or the plugin adds parameters.

use std::borrow::Cow;

use http::header::{Entry, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{request, Uri};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use tollgate_shared::plugins::RequestTransformerConfig;

use tollgate_plugin_api::{Refusal, RefusalKind};

mod plugin;
pub use plugin::RequestTransformerFactory;

/// Bytes left unescaped in added query names and values (RFC 3986 unreserved).
const QUERY_ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

#[derive(Debug)]
pub struct RequestTransformer {
    remove_headers: Box<[HeaderName]>,
    rename_headers: Box<[(HeaderName, HeaderName)]>,
    add_headers: Box<[(HeaderName, HeaderValue)]>,
    remove_query: Box<[String]>,
    rename_query: Box<[(String, String)]>,
    /// (decoded name, encoded `name=value` pair).
    add_query: Box<[(String, String)]>,
}

fn header_name(name: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("config: {name:?} is not a valid header name"))
}

impl RequestTransformer {
    pub fn new(config: &RequestTransformerConfig) -> Result<RequestTransformer, String> {
        let remove_headers = config
            .remove
            .headers
            .iter()
            .map(|n| header_name(n))
            .collect::<Result<_, _>>()?;
        let rename_headers = config
            .rename
            .headers
            .iter()
            .map(|(from, to)| Ok((header_name(from)?, header_name(to)?)))
            .collect::<Result<_, String>>()?;
        let add_headers = config
            .add
            .headers
            .iter()
            .map(|(name, value)| {
                let value = HeaderValue::from_str(value)
                    .map_err(|_| format!("config.add.headers.{name}: not a valid header value"))?;
                Ok((header_name(name)?, value))
            })
            .collect::<Result<_, String>>()?;
        let add_query = config
            .add
            .querystring
            .iter()
            .map(|(name, value)| {
                (
                    name.clone(),
                    format!(
                        "{}={}",
                        utf8_percent_encode(name, QUERY_ENCODE),
                        utf8_percent_encode(value, QUERY_ENCODE)
                    ),
                )
            })
            .collect();
        Ok(RequestTransformer {
            remove_headers,
            rename_headers,
            add_headers,
            remove_query: config.remove.querystring.clone().into_boxed_slice(),
            rename_query: config
                .rename
                .querystring
                .iter()
                .map(|(from, to)| (from.clone(), to.clone()))
                .collect(),
            add_query,
        })
    }

    /// Edits the request; a query that cannot be rebuilt into a valid URI
    /// is a 400.
    pub fn apply(&self, request: &mut request::Parts) -> Result<(), Refusal> {
        self.apply_headers(&mut request.headers);
        if self.touches_query(&request.uri) {
            let Some(rebuilt) = self.rewrite_query(&request.uri) else {
                return Err(Refusal::new(RefusalKind::BadRequest));
            };
            request.uri = rebuilt;
        }
        Ok(())
    }

    fn apply_headers(&self, headers: &mut http::HeaderMap) {
        for name in self.remove_headers.iter() {
            headers.remove(name);
        }
        for (from, to) in self.rename_headers.iter() {
            if let Entry::Occupied(entry) = headers.entry(from) {
                let (_, values) = entry.remove_entry_mult();
                let values: Vec<HeaderValue> = values.collect();
                headers.remove(to);
                for value in values {
                    headers.append(to, value);
                }
            }
        }
        for (name, value) in self.add_headers.iter() {
            headers.insert(name, value.clone());
        }
    }

    fn touches_query(&self, uri: &Uri) -> bool {
        !self.add_query.is_empty()
            || (uri.query().is_some()
                && (!self.remove_query.is_empty() || !self.rename_query.is_empty()))
    }

    /// The URI with its query edited; `None` if the result is not a valid URI.
    fn rewrite_query(&self, uri: &Uri) -> Option<Uri> {
        let mut pairs: Vec<Cow<'_, str>> = Vec::new();
        for pair in uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
        {
            let (raw_name, raw_value) = match pair.split_once('=') {
                Some((name, value)) => (name, Some(value)),
                None => (pair, None),
            };
            let name = percent_decode_str(raw_name).decode_utf8_lossy();
            if self.remove_query.iter().any(|r| *r == name) {
                continue;
            }
            if self.add_query.iter().any(|(added, _)| *added == name) {
                continue;
            }
            match self.rename_query.iter().find(|(from, _)| *from == name) {
                Some((_, to)) => {
                    let to = utf8_percent_encode(to, QUERY_ENCODE);
                    pairs.push(Cow::Owned(match raw_value {
                        Some(value) => format!("{to}={value}"),
                        None => to.to_string(),
                    }));
                }
                None => pairs.push(Cow::Borrowed(pair)),
            }
        }
        for (_, encoded) in self.add_query.iter() {
            pairs.push(Cow::Borrowed(encoded));
        }
        let query = pairs.join("&");
        let path = uri.path();
        let path_and_query = if query.is_empty() {
            PathAndQuery::try_from(path).ok()?
        } else {
            PathAndQuery::try_from(format!("{path}?{query}")).ok()?
        };
        let mut parts = uri.clone().into_parts();
        parts.path_and_query = Some(path_and_query);
        Uri::from_parts(parts).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn transformer(config: serde_json::Value) -> RequestTransformer {
        let config: RequestTransformerConfig = serde_json::from_value(config).expect("config");
        RequestTransformer::new(&config).expect("compiles")
    }

    fn run(plugin: &RequestTransformer, request: http::Request<()>) -> request::Parts {
        let (mut parts, ()) = request.into_parts();
        assert_eq!(plugin.apply(&mut parts), Ok(()));
        parts
    }

    #[test]
    fn headers_are_removed_renamed_and_added_in_that_order() {
        let plugin = transformer(json!({
            "remove": {"headers": ["x-secret"]},
            "rename": {"headers": {"x-old": "x-new"}},
            "add": {"headers": {"x-added": "yes", "x-new": "replaced-by-add"}},
        }));
        let request = http::Request::builder()
            .uri("/a")
            .header("x-secret", "s")
            .header("x-old", "1")
            .header("x-old", "2")
            .header("x-added", "client")
            .header("x-keep", "k")
            .body(())
            .expect("request");
        let parts = run(&plugin, request);
        assert!(parts.headers.get("x-secret").is_none());
        assert!(parts.headers.get("x-old").is_none());
        let new: Vec<_> = parts.headers.get_all("x-new").iter().collect();
        assert_eq!(new, vec!["replaced-by-add"]);
        assert_eq!(parts.headers["x-added"], "yes");
        assert_eq!(parts.headers["x-keep"], "k");
    }

    #[test]
    fn rename_keeps_every_value() {
        let plugin = transformer(json!({"rename": {"headers": {"x-old": "x-new"}}}));
        let request = http::Request::builder()
            .uri("/a")
            .header("x-old", "1")
            .header("x-old", "2")
            .body(())
            .expect("request");
        let parts = run(&plugin, request);
        let new: Vec<_> = parts.headers.get_all("x-new").iter().collect();
        assert_eq!(new, vec!["1", "2"]);
    }

    #[test]
    fn query_parameters_are_removed_renamed_and_added() {
        let plugin = transformer(json!({
            "remove": {"querystring": ["token"]},
            "rename": {"querystring": {"user_id": "uid"}},
            "add": {"querystring": {"source": "gate way", "page": "1"}},
        }));
        let request = http::Request::builder()
            .uri("/items?token=abc&user%5Fid=7&page=9&keep=yes&flag")
            .body(())
            .expect("request");
        let parts = run(&plugin, request);
        assert_eq!(parts.uri.path(), "/items");
        assert_eq!(
            parts.uri.query(),
            Some("uid=7&keep=yes&flag&page=1&source=gate%20way")
        );
    }

    #[test]
    fn adding_to_a_request_without_query_creates_one_and_removing_all_drops_it() {
        let plugin = transformer(json!({"add": {"querystring": {"v": "2"}}}));
        let parts = run(
            &plugin,
            http::Request::builder()
                .uri("/x")
                .body(())
                .expect("request"),
        );
        assert_eq!(parts.uri.to_string(), "/x?v=2");

        let plugin = transformer(json!({"remove": {"querystring": ["a"]}}));
        let parts = run(
            &plugin,
            http::Request::builder()
                .uri("/x?a=1&a=2")
                .body(())
                .expect("request"),
        );
        assert_eq!(parts.uri.to_string(), "/x");
    }

    #[test]
    fn untouched_requests_keep_their_uri() {
        let plugin = transformer(json!({"remove": {"querystring": ["a"]}}));
        let parts = run(
            &plugin,
            http::Request::builder()
                .uri("/x")
                .body(())
                .expect("request"),
        );
        assert_eq!(parts.uri.to_string(), "/x");
    }
}
