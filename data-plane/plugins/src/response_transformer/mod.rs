//! `response-transformer`: edits the response before it goes to the client.
//!
//! - Headers (every response of the route, the gateway's own answers
//!   included): remove, rename, replace (only when present), add (only when
//!   absent), in that order. Names and values are parsed once per snapshot.
//! - JSON bodies (upstream responses with a JSON `Content-Type`, not
//!   content-encoded, at most `max_body_bytes`): the top-level fields of an
//!   object, in the same order. The body comes whole through the plugin
//!   API's response-body hook and the core sets `Content-Length` from the
//!   result. Anything else (not JSON, compressed, over the cap, not an
//!   object, not parsable) passes untouched, streamed.

mod plugin;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use tollgate_shared::plugins::{JsonEdits, ResponseTransformerConfig};

pub use plugin::ResponseTransformerFactory;

use crate::json_body;

/// One compiled instance.
#[derive(Debug)]
pub struct ResponseTransformer {
    remove_headers: Box<[HeaderName]>,
    rename_headers: Box<[(HeaderName, HeaderName)]>,
    replace_headers: Box<[(HeaderName, HeaderValue)]>,
    add_headers: Box<[(HeaderName, HeaderValue)]>,
    json: Option<JsonEdits>,
    max_body_bytes: usize,
}

fn name(name: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
        .map_err(|_| format!("config.headers: {name:?} is not a valid header name"))
}

fn pairs(
    section: &str,
    edits: &std::collections::BTreeMap<String, String>,
) -> Result<Box<[(HeaderName, HeaderValue)]>, String> {
    edits
        .iter()
        .map(|(n, v)| {
            let value = HeaderValue::from_str(v)
                .map_err(|_| format!("config.headers.{section}.{n}: not a valid header value"))?;
            Ok((name(n)?, value))
        })
        .collect()
}

impl ResponseTransformer {
    pub fn new(config: &ResponseTransformerConfig) -> Result<ResponseTransformer, String> {
        let h = &config.headers;
        Ok(ResponseTransformer {
            remove_headers: h.remove.iter().map(|n| name(n)).collect::<Result<_, _>>()?,
            rename_headers: h
                .rename
                .iter()
                .map(|(from, to)| Ok((name(from)?, name(to)?)))
                .collect::<Result<_, String>>()?,
            replace_headers: pairs("replace", &h.replace)?,
            add_headers: pairs("add", &h.add)?,
            json: (!config.json.is_empty()).then(|| config.json.clone()),
            max_body_bytes: config.max_body_bytes,
        })
    }

    pub fn edit_headers(&self, headers: &mut HeaderMap) {
        for name in self.remove_headers.iter() {
            headers.remove(name);
        }
        for (from, to) in self.rename_headers.iter() {
            let values: Vec<HeaderValue> = headers.get_all(from).iter().cloned().collect();
            if values.is_empty() {
                continue;
            }
            headers.remove(from);
            headers.remove(to);
            for value in values {
                headers.append(to, value);
            }
        }
        for (name, value) in self.replace_headers.iter() {
            if headers.contains_key(name) {
                headers.insert(name, value.clone());
            }
        }
        for (name, value) in self.add_headers.iter() {
            if !headers.contains_key(name) {
                headers.insert(name, value.clone());
            }
        }
    }

    /// The body cap when this response's body is one to edit.
    pub fn wants_body(&self, headers: &HeaderMap) -> Option<usize> {
        self.json.as_ref()?;
        json_body::is_plain_json(headers).then_some(self.max_body_bytes)
    }

    /// Edits a JSON object body; anything else is left as it is.
    pub fn edit_body(&self, body: &mut Bytes) {
        if let Some(edits) = &self.json {
            json_body::edit(edits, body);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{CONTENT_ENCODING, CONTENT_TYPE};
    use serde_json::json;

    fn transformer(config: serde_json::Value) -> ResponseTransformer {
        let config: ResponseTransformerConfig =
            tollgate_shared::plugins::parse(&config).expect("valid");
        ResponseTransformer::new(&config).expect("builds")
    }

    #[test]
    fn json_fields_are_edited_in_order() {
        let t = transformer(json!({"json": {
            "remove": ["password"],
            "rename": {"uid": "user_id"},
            "replace": {"role": "hidden", "absent": 1},
            "add": {"source": "gateway", "name": "not-overwritten"}}}));
        let mut body =
            Bytes::from_static(br#"{"name":"ann","password":"s3cret","uid":7,"role":"admin"}"#);
        t.edit_body(&mut body);
        let edited: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(
            edited,
            json!({"name": "ann", "user_id": 7, "role": "hidden", "source": "gateway"})
        );
        for untouched in [&b"[1,2]"[..], b"not json", b"\"str\""] {
            let mut body = Bytes::copy_from_slice(untouched);
            t.edit_body(&mut body);
            assert_eq!(&body[..], untouched);
        }
    }

    #[test]
    fn only_uncompressed_json_bodies_are_wanted() {
        let t = transformer(json!({"json": {"remove": ["a"]}, "max_body_bytes": 10}));
        let mut h = HeaderMap::new();
        assert_eq!(t.wants_body(&h), None);
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        assert_eq!(t.wants_body(&h), Some(10));
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        assert_eq!(t.wants_body(&h), Some(10));
        h.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        assert_eq!(t.wants_body(&h), None);
        h.remove(CONTENT_ENCODING);
        h.insert(CONTENT_TYPE, HeaderValue::from_static("text/html"));
        assert_eq!(t.wants_body(&h), None);
        let headers_only = transformer(json!({"headers": {"add": {"x-a": "1"}}}));
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        assert_eq!(headers_only.wants_body(&h), None);
    }

    #[test]
    fn headers_are_removed_renamed_replaced_and_added() {
        let t = transformer(json!({"headers": {
            "remove": ["server"],
            "rename": {"x-old": "x-new"},
            "replace": {"x-powered-by": "tollgate", "x-missing": "no"},
            "add": {"x-frame-options": "DENY", "x-kept": "no"}}}));
        let mut h = HeaderMap::new();
        for (n, v) in [
            ("server", "nginx"),
            ("x-old", "1"),
            ("x-powered-by", "php"),
            ("x-kept", "yes"),
        ] {
            h.insert(n, HeaderValue::from_static(v));
        }
        t.edit_headers(&mut h);
        assert!(h.get("server").is_none() && h.get("x-old").is_none());
        assert_eq!(h["x-new"], "1");
        assert_eq!(h["x-powered-by"], "tollgate");
        assert!(h.get("x-missing").is_none());
        assert_eq!(h["x-frame-options"], "DENY");
        assert_eq!(h["x-kept"], "yes");
    }
}
