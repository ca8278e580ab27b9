//! `request-transformer`: edits the request before it goes upstream.
//!
//! Operations run in the order remove, rename, replace (only what is
//! present), add, first on headers, then on query parameters; then the
//! method override and the path rewrite. An added header replaces any value
//! already there; an added query parameter replaces every existing parameter
//! of that name. Renaming keeps every value of a repeated header or
//! parameter.
//!
//! Values may be templated from the request as the client sent it
//! (`$(headers.x-tenant)`, `$(query.page)`, `$(consumer.name)`,
//! `$(route.name)`, see `tollgate_shared::plugins::template`); the path
//! rewrite also takes `{name}` captures of the route's path template
//! (`/users/{id}` -> `/v2/accounts/{id}`): the part of the path the template
//! matched is replaced, the rest is kept.
//!
//! Header names and values are parsed once, when the snapshot compiles;
//! templates are split into parts then and only joined per request.
//! Query parameter names are compared after percent-decoding (so
//! `user%5Fid` matches `user_id`); added names and values are
//! percent-encoded. The query string is only rebuilt when the request has one
//! or the plugin adds parameters.

use std::borrow::Cow;
use std::collections::HashMap;

use http::header::{Entry, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{request, Method, Uri};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use tollgate_shared::model::GatewayConfig;
use tollgate_shared::plugins::template::{self, Part};
use tollgate_shared::plugins::RequestTransformerConfig;

use tollgate_plugin_api::{Refusal, RefusalKind, RequestCtx};

mod plugin;
pub use plugin::RequestTransformerFactory;

/// Bytes left unescaped in added query names and values (RFC 3986 unreserved).
const QUERY_ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Bytes escaped in a path segment rendered from a template value.
const PATH_ENCODE: &AsciiSet = &QUERY_ENCODE.remove(b'/').remove(b':').remove(b'@');

/// A configured value: sent as written, or rendered per request.
#[derive(Debug)]
enum Value<T> {
    Static(T),
    Template(Box<[Part]>),
}

/// Header edits: name and value.
type HeaderEdits = Box<[(HeaderName, Value<HeaderValue>)]>;
/// Query edits: decoded name and value.
type QueryEdits = Box<[(String, Value<String>)]>;

/// One segment of a route path template.
#[derive(Debug)]
enum Segment {
    Literal(String),
    Capture(String),
}

/// A route path as a template: its segments, and whether it is exact.
#[derive(Debug)]
struct RouteTemplate {
    segments: Box<[Segment]>,
    exact: bool,
}

#[derive(Debug)]
struct PathRewrite {
    parts: Box<[Part]>,
    /// The path templates of the routes this instance may run on, by name.
    routes: HashMap<String, Box<[RouteTemplate]>>,
}

#[derive(Debug)]
pub struct RequestTransformer {
    remove_headers: Box<[HeaderName]>,
    rename_headers: Box<[(HeaderName, HeaderName)]>,
    replace_headers: HeaderEdits,
    add_headers: HeaderEdits,
    remove_query: Box<[String]>,
    rename_query: Box<[(String, String)]>,
    /// (decoded name, value).
    replace_query: QueryEdits,
    add_query: QueryEdits,
    method: Option<Method>,
    path: Option<PathRewrite>,
    json: Option<tollgate_shared::plugins::JsonEdits>,
}

fn header_name(name: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("config: {name:?} is not a valid header name"))
}

fn header_values(
    section: &str,
    edits: &std::collections::BTreeMap<String, String>,
) -> Result<HeaderEdits, String> {
    edits
        .iter()
        .map(|(name, value)| {
            let value = if template::is_templated(value) {
                Value::Template(
                    template::parse(value, false)
                        .map_err(|m| format!("config.{section}.headers.{name}: {m}"))?
                        .into_boxed_slice(),
                )
            } else {
                Value::Static(HeaderValue::from_str(value).map_err(|_| {
                    format!("config.{section}.headers.{name}: not a valid header value")
                })?)
            };
            Ok((header_name(name)?, value))
        })
        .collect()
}

fn query_values(
    section: &str,
    edits: &std::collections::BTreeMap<String, String>,
) -> Result<QueryEdits, String> {
    edits
        .iter()
        .map(|(name, value)| {
            let value = if template::is_templated(value) {
                Value::Template(
                    template::parse(value, false)
                        .map_err(|m| format!("config.{section}.querystring.{name}: {m}"))?
                        .into_boxed_slice(),
                )
            } else {
                Value::Static(value.clone())
            };
            Ok((name.clone(), value))
        })
        .collect()
}

fn route_template(path: &str) -> RouteTemplate {
    let exact = path.starts_with('=');
    let segments = path
        .trim_start_matches('=')
        .split('/')
        .filter(|s| !s.is_empty())
        .map(
            |segment| match segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(name) => Segment::Capture(name.to_string()),
                None => Segment::Literal(segment.to_string()),
            },
        )
        .collect();
    RouteTemplate { segments, exact }
}

/// The route templates an instance may need: its own route's when it is a
/// route's plugin (`route:NAME#n`), else every route's.
fn route_templates(
    config: &GatewayConfig,
    instance: &str,
) -> HashMap<String, Box<[RouteTemplate]>> {
    let own = instance
        .strip_prefix("route:")
        .and_then(|rest| rest.rsplit_once('#'))
        .map(|(name, _)| name);
    config
        .routes
        .iter()
        .filter(|route| own.is_none_or(|name| name == route.name))
        .map(|route| {
            let templates = route.paths.iter().map(|p| route_template(p)).collect();
            (route.name.clone(), templates)
        })
        .collect()
}

/// What templates are rendered from: the request as the client sent it.
struct Source<'a> {
    ctx: &'a RequestCtx<'a>,
    request: &'a request::Parts,
}

impl Source<'_> {
    fn render(&self, parts: &[Part], captures: &[(&str, &str)]) -> String {
        let mut out = String::new();
        for part in parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Header(name) => {
                    if let Some(value) = self.request.headers.get(name.as_str()) {
                        out.push_str(&String::from_utf8_lossy(value.as_bytes()));
                    }
                }
                Part::Query(name) => {
                    let found = self.request.uri.query().and_then(|query| {
                        query.split('&').find_map(|pair| {
                            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                            (percent_decode_str(key).decode_utf8_lossy() == name.as_str())
                                .then(|| percent_decode_str(value).decode_utf8_lossy())
                        })
                    });
                    if let Some(value) = found {
                        out.push_str(&value);
                    }
                }
                Part::Consumer => {
                    if let Some(identity) = &self.ctx.consumer {
                        out.push_str(&identity.consumer);
                    }
                }
                Part::Route => out.push_str(self.ctx.route_name),
                Part::Capture(name) => {
                    if let Some((_, value)) = captures.iter().find(|(n, _)| n == name) {
                        out.push_str(value);
                    }
                }
            }
        }
        out
    }

    fn header(&self, value: &Value<HeaderValue>) -> Option<HeaderValue> {
        match value {
            Value::Static(value) => Some(value.clone()),
            // A rendered value that is not a valid header value (a control
            // character from a query) is not sent.
            Value::Template(parts) => HeaderValue::from_str(&self.render(parts, &[])).ok(),
        }
    }

    fn query(&self, value: &Value<String>) -> String {
        match value {
            Value::Static(value) => utf8_percent_encode(value, QUERY_ENCODE).to_string(),
            Value::Template(parts) => {
                utf8_percent_encode(&self.render(parts, &[]), QUERY_ENCODE).to_string()
            }
        }
    }
}

/// Values rendered before any edit, so every template sees the client's
/// request.
struct Rendered {
    replace_headers: Vec<(HeaderName, HeaderValue)>,
    add_headers: Vec<(HeaderName, HeaderValue)>,
    /// (decoded name, encoded value)
    replace_query: Vec<(String, String)>,
    /// (decoded name, encoded `name=value` pair)
    add_query: Vec<(String, String)>,
    path: Option<String>,
}

impl RequestTransformer {
    pub fn new(
        config: &RequestTransformerConfig,
        gateway: &GatewayConfig,
        instance: &str,
    ) -> Result<RequestTransformer, String> {
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
        let method = match &config.method {
            Some(method) => Some(
                Method::from_bytes(method.as_bytes())
                    .map_err(|_| format!("config.method: {method:?} is not a method"))?,
            ),
            None => None,
        };
        let path = match &config.path {
            Some(path) => Some(PathRewrite {
                parts: template::parse(path, true)
                    .map_err(|m| format!("config.path: {m}"))?
                    .into_boxed_slice(),
                routes: route_templates(gateway, instance),
            }),
            None => None,
        };
        Ok(RequestTransformer {
            remove_headers,
            rename_headers,
            replace_headers: header_values("replace", &config.replace.headers)?,
            add_headers: header_values("add", &config.add.headers)?,
            remove_query: config.remove.querystring.clone().into_boxed_slice(),
            rename_query: config
                .rename
                .querystring
                .iter()
                .map(|(from, to)| (from.clone(), to.clone()))
                .collect(),
            replace_query: query_values("replace", &config.replace.querystring)?,
            add_query: query_values("add", &config.add.querystring)?,
            method,
            path,
            json: (!config.json.is_empty()).then(|| config.json.clone()),
        })
    }

    /// Edits the request; a query or path that cannot be rebuilt into a
    /// valid URI is a 400.
    pub fn apply(&self, ctx: &RequestCtx<'_>, request: &mut request::Parts) -> Result<(), Refusal> {
        let rendered = self.render(ctx, request);
        self.apply_headers(&mut request.headers, &rendered);
        if self.touches_query(&request.uri) {
            let Some(rebuilt) = self.rewrite_query(&request.uri, &rendered) else {
                return Err(Refusal::new(RefusalKind::BadRequest));
            };
            request.uri = rebuilt;
        }
        if let Some(method) = &self.method {
            request.method = method.clone();
        }
        if let Some(path) = rendered.path {
            let text = match request.uri.query() {
                Some(query) => format!("{path}?{query}"),
                None => path,
            };
            let Ok(path_and_query) = PathAndQuery::try_from(text) else {
                return Err(Refusal::new(RefusalKind::BadRequest));
            };
            request.uri = Uri::from(path_and_query);
        }
        Ok(())
    }

    /// The body cap when this request's body is one to edit.
    pub fn wants_body(&self, request: &request::Parts) -> Option<usize> {
        self.json.as_ref()?;
        crate::json_body::is_plain_json(&request.headers)
            .then_some(tollgate_shared::plugins::MAX_REQUEST_JSON)
    }

    /// Edits a JSON object body; anything else is left as it is.
    pub fn edit_body(&self, body: &mut bytes::Bytes) {
        if let Some(edits) = &self.json {
            crate::json_body::edit(edits, body);
        }
    }

    pub fn edits_bodies(&self) -> bool {
        self.json.is_some()
    }

    fn render(&self, ctx: &RequestCtx<'_>, request: &request::Parts) -> Rendered {
        let source = Source { ctx, request };
        let headers = |edits: &[(HeaderName, Value<HeaderValue>)]| {
            edits
                .iter()
                .filter_map(|(name, value)| Some((name.clone(), source.header(value)?)))
                .collect()
        };
        Rendered {
            replace_headers: headers(&self.replace_headers),
            add_headers: headers(&self.add_headers),
            replace_query: self
                .replace_query
                .iter()
                .map(|(name, value)| (name.clone(), source.query(value)))
                .collect(),
            add_query: self
                .add_query
                .iter()
                .map(|(name, value)| {
                    let pair = format!(
                        "{}={}",
                        utf8_percent_encode(name, QUERY_ENCODE),
                        source.query(value)
                    );
                    (name.clone(), pair)
                })
                .collect(),
            path: self
                .path
                .as_ref()
                .map(|rewrite| rewrite_path(rewrite, &source)),
        }
    }

    fn apply_headers(&self, headers: &mut http::HeaderMap, rendered: &Rendered) {
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
        for (name, value) in &rendered.replace_headers {
            if headers.contains_key(name) {
                headers.insert(name, value.clone());
            }
        }
        for (name, value) in &rendered.add_headers {
            headers.insert(name, value.clone());
        }
    }

    fn touches_query(&self, uri: &Uri) -> bool {
        !self.add_query.is_empty()
            || (uri.query().is_some()
                && (!self.remove_query.is_empty()
                    || !self.rename_query.is_empty()
                    || !self.replace_query.is_empty()))
    }

    /// The URI with its query edited; `None` if the result is not a valid URI.
    fn rewrite_query(&self, uri: &Uri, rendered: &Rendered) -> Option<Uri> {
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
            if rendered.add_query.iter().any(|(added, _)| *added == name) {
                continue;
            }
            let (name, raw_name) = match self.rename_query.iter().find(|(from, _)| *from == name) {
                Some((_, to)) => (
                    Cow::Borrowed(to.as_str()),
                    Cow::Owned(utf8_percent_encode(to, QUERY_ENCODE).to_string()),
                ),
                None => (name, Cow::Borrowed(raw_name)),
            };
            if let Some((_, value)) = rendered.replace_query.iter().find(|(r, _)| *r == name) {
                pairs.push(Cow::Owned(format!("{raw_name}={value}")));
                continue;
            }
            match (raw_name, raw_value) {
                (Cow::Borrowed(_), _) => pairs.push(Cow::Borrowed(pair)),
                (Cow::Owned(to), Some(value)) => pairs.push(Cow::Owned(format!("{to}={value}"))),
                (Cow::Owned(to), None) => pairs.push(Cow::Owned(to)),
            }
        }
        for (_, encoded) in &rendered.add_query {
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

/// The rewritten path: the route template that matches the request path
/// gives the captures and how much of the path is replaced; the rest of the
/// path is kept. No template matching (a route without one): the whole
/// path is replaced.
fn rewrite_path(rewrite: &PathRewrite, source: &Source<'_>) -> String {
    let path = source.request.uri.path();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let templates = rewrite
        .routes
        .get(source.ctx.route_name)
        .map_or(&[][..], |t| &t[..]);
    let mut captures: Vec<(&str, &str)> = Vec::new();
    let mut consumed = segments.len();
    for template in templates {
        let n = template.segments.len();
        if segments.len() < n || (template.exact && segments.len() != n) {
            continue;
        }
        let mut found = Vec::new();
        let matches = template
            .segments
            .iter()
            .zip(&segments)
            .all(|(want, have)| match want {
                Segment::Literal(text) => text == have,
                Segment::Capture(name) => {
                    found.push((name.as_str(), *have));
                    true
                }
            });
        if matches {
            captures = found;
            consumed = n;
            break;
        }
    }
    // Captured segments are taken as they are on the wire (still
    // percent-encoded); rendered header values are encoded here.
    let mut out = String::new();
    for part in rewrite.parts.iter() {
        match part {
            Part::Literal(text) => out.push_str(text),
            Part::Capture(_) => out.push_str(&source.render(std::slice::from_ref(part), &captures)),
            other => {
                let value = source.render(std::slice::from_ref(other), &[]);
                out.extend(utf8_percent_encode(&value, PATH_ENCODE));
            }
        }
    }
    for rest in &segments[consumed..] {
        if !out.ends_with('/') {
            out.push('/');
        }
        out.push_str(rest);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn transformer(config: serde_json::Value) -> RequestTransformer {
        let config: RequestTransformerConfig = serde_json::from_value(config).expect("config");
        RequestTransformer::new(&config, &GatewayConfig::default(), "route:r#0").expect("compiles")
    }

    fn run(plugin: &RequestTransformer, request: http::Request<()>) -> request::Parts {
        let (mut parts, ()) = request.into_parts();
        let id = HeaderValue::from_static("id");
        let ctx = RequestCtx::new(
            "127.0.0.1".parse().expect("ip"),
            &id,
            "r",
            "s",
            std::time::Instant::now(),
        );
        assert_eq!(plugin.apply(&ctx, &mut parts), Ok(()));
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

    #[test]
    fn path_rewrite_with_captures_method_replace_and_templates() {
        let gateway: GatewayConfig = serde_json::from_value(json!({
            "services": [{"name": "s", "upstream": {"targets": [{"address": "127.0.0.1:1"}]}}],
            "routes": [{"name": "r", "service": "s", "paths": ["/users/{id}", "=/teams/{id}"]}],
        }))
        .expect("gateway config");
        let config: RequestTransformerConfig = serde_json::from_value(json!({
            "path": "/v2/accounts/{id}",
            "method": "POST",
            "replace": {"headers": {"x-mode": "$(route.name)"}, "querystring": {"page": "$(headers.x-page)"}},
            "add": {"headers": {"x-tenant": "t-$(headers.x-tenant)", "x-who": "$(consumer.name)"},
                    "querystring": {"q": "$(query.search)"}},
        }))
        .expect("config");
        let plugin = RequestTransformer::new(&config, &gateway, "route:r#0").expect("compiles");
        let request = http::Request::builder()
            .uri("/users/42/orders?page=1&search=a%20b")
            .header("x-tenant", "acme")
            .header("x-mode", "old")
            .header("x-page", "7")
            .body(())
            .expect("request");
        let parts = run(&plugin, request);
        assert_eq!(parts.uri.path(), "/v2/accounts/42/orders");
        assert_eq!(parts.uri.query(), Some("page=7&search=a%20b&q=a%20b"));
        assert_eq!(parts.method, Method::POST);
        assert_eq!(parts.headers["x-tenant"], "t-acme");
        assert_eq!(parts.headers["x-mode"], "r");
        assert_eq!(parts.headers["x-who"], "");
        // An exact template must match the whole path.
        let parts = run(
            &plugin,
            http::Request::builder()
                .uri("/teams/9")
                .body(())
                .expect("request"),
        );
        assert_eq!(parts.uri.path(), "/v2/accounts/9");
        // replace only touches what is present.
        let parts = run(
            &plugin,
            http::Request::builder()
                .uri("/users/1")
                .body(())
                .expect("request"),
        );
        assert!(parts.headers.get("x-mode").is_none());
        assert_eq!(parts.uri.query(), Some("q="));
    }
}
