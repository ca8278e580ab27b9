//! `cors`: cross-origin resource sharing for browser callers.
//!
//! - A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-
//!   Method`) is answered by the gateway in the admit phase (204), before
//!   authentication (browsers send preflights without credentials) and
//!   without reaching the upstream.
//! - Other requests with an allowed `Origin` get `Access-Control-Allow-
//!   Origin` (and credentials / exposed headers as configured) on whatever
//!   response they receive.
//! - A disallowed origin (or a preflight asking for a method or header that
//!   is not allowed) gets no CORS headers: the browser blocks the call. It is
//!   never an error response from the gateway.
//!
//! Origins: `*`, exact (`https://app.example.com`, compared case-
//! insensitively) and patterns with a leading wildcard label
//! (`https://*.example.com` matches `https://a.example.com` and
//! `https://a.b.example.com`, never `https://example.com` or
//! `https://evilexample.com`). With `*` and no credentials the answer is
//! `*`; otherwise the request's origin is echoed with `Vary: Origin`.
//!
//! A route restricted to some `methods` must list `OPTIONS` too for its
//! preflights to reach this plugin (routing runs first).

use std::sync::Arc;

use bytes::Bytes;
use http::header::{
    HeaderMap, HeaderValue, ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS,
    ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS,
    ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN,
    VARY,
};
use http::{request, response, Method, StatusCode};
use tollgate_plugin_api::{
    BuildCtx, Outcome, Phase, Plugin, PluginFactory, Reply, RequestCtx, Step,
};
use tollgate_shared::plugins::CorsConfig;

const ANY: HeaderValue = HeaderValue::from_static("*");
const TRUE: HeaderValue = HeaderValue::from_static("true");
const VARY_ORIGIN: HeaderValue = HeaderValue::from_static("Origin");

/// `https://*.example.com[:port]`, split for matching.
#[derive(Debug)]
struct OriginPattern {
    /// `https://`
    scheme: Box<str>,
    /// `.example.com`
    suffix: Box<str>,
    /// `:8443`, or empty for none.
    port: Box<str>,
}

/// One compiled instance.
#[derive(Debug)]
pub struct Cors {
    any_origin: bool,
    exact: Box<[Box<str>]>,
    patterns: Box<[OriginPattern]>,
    methods: Box<[Method]>,
    allow_methods: HeaderValue,
    /// Lower-case allowed request headers; `None`: any requested header.
    headers: Option<Box<[Box<str>]>>,
    allow_headers: Option<HeaderValue>,
    expose_headers: Option<HeaderValue>,
    max_age: Option<HeaderValue>,
    credentials: bool,
}

/// The `Access-Control-Allow-Origin` value decided for a request, kept in
/// its extensions until the response.
#[derive(Debug)]
struct AllowedOrigin(HeaderValue);

fn header_list(items: &[String]) -> Result<Option<HeaderValue>, String> {
    if items.is_empty() {
        return Ok(None);
    }
    HeaderValue::from_str(&items.join(", "))
        .map(Some)
        .map_err(|_| "config: a list does not form a valid header value".to_string())
}

impl Cors {
    pub fn new(config: &CorsConfig) -> Result<Cors, String> {
        let mut exact = Vec::new();
        let mut patterns = Vec::new();
        let mut any_origin = false;
        for origin in &config.origins {
            let origin = origin.to_ascii_lowercase();
            if origin == "*" {
                any_origin = true;
            } else if let Some((scheme, rest)) = origin.split_once("://*.") {
                let (host, port) = match rest.rsplit_once(':') {
                    Some((host, port)) => (host, format!(":{port}")),
                    None => (rest, String::new()),
                };
                patterns.push(OriginPattern {
                    scheme: format!("{scheme}://").into(),
                    suffix: format!(".{host}").into(),
                    port: port.into(),
                });
            } else {
                exact.push(Box::from(origin.as_str()));
            }
        }
        let methods = config
            .methods
            .iter()
            .map(|m| Method::from_bytes(m.as_bytes()).map_err(|_| format!("config.methods: {m:?}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Cors {
            any_origin,
            exact: exact.into_boxed_slice(),
            patterns: patterns.into_boxed_slice(),
            methods: methods.into_boxed_slice(),
            allow_methods: header_list(&config.methods)?.unwrap_or(ANY),
            headers: (!config.headers.is_empty()).then(|| {
                config
                    .headers
                    .iter()
                    .map(|h| Box::from(h.to_ascii_lowercase().as_str()))
                    .collect()
            }),
            allow_headers: header_list(&config.headers)?,
            expose_headers: header_list(&config.exposed_headers)?,
            max_age: config.max_age.map(HeaderValue::from),
            credentials: config.credentials,
        })
    }

    /// The `Access-Control-Allow-Origin` value for `origin`, or `None` when
    /// the origin is not allowed.
    fn allow_origin(&self, origin: &HeaderValue) -> Option<HeaderValue> {
        if self.any_origin && !self.credentials {
            return Some(ANY);
        }
        let text = origin.to_str().ok()?;
        let lower = text.to_ascii_lowercase();
        let allowed = self.any_origin
            || self.exact.iter().any(|e| **e == *lower)
            || self.patterns.iter().any(|p| p.matches(&lower));
        allowed.then(|| origin.clone())
    }

    fn method_allowed(&self, requested: &HeaderValue) -> bool {
        self.methods
            .iter()
            .any(|m| m.as_str().as_bytes() == requested.as_bytes())
    }

    fn headers_allowed(&self, requested: Option<&HeaderValue>) -> bool {
        let (Some(allowed), Some(requested)) = (&self.headers, requested) else {
            return true;
        };
        let Ok(requested) = requested.to_str() else {
            return false;
        };
        requested
            .split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .all(|name| allowed.iter().any(|a| a.eq_ignore_ascii_case(name)))
    }

    /// The gateway's answer to a preflight.
    fn preflight(&self, request: &request::Parts, origin: &HeaderValue) -> Reply {
        let mut headers = HeaderMap::new();
        if !self.any_origin || self.credentials {
            headers.insert(VARY, VARY_ORIGIN);
        }
        let requested_method = request.headers.get(ACCESS_CONTROL_REQUEST_METHOD);
        let requested_headers = request.headers.get(ACCESS_CONTROL_REQUEST_HEADERS);
        let allowed = self.allow_origin(origin).filter(|_| {
            requested_method.is_some_and(|m| self.method_allowed(m))
                && self.headers_allowed(requested_headers)
        });
        if let Some(allow_origin) = allowed {
            headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin);
            headers.insert(ACCESS_CONTROL_ALLOW_METHODS, self.allow_methods.clone());
            match (&self.allow_headers, requested_headers) {
                (Some(configured), _) => {
                    headers.insert(ACCESS_CONTROL_ALLOW_HEADERS, configured.clone());
                }
                (None, Some(requested)) => {
                    headers.insert(ACCESS_CONTROL_ALLOW_HEADERS, requested.clone());
                }
                (None, None) => {}
            }
            if let Some(age) = &self.max_age {
                headers.insert(ACCESS_CONTROL_MAX_AGE, age.clone());
            }
            if self.credentials {
                headers.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE);
            }
        }
        Reply {
            status: StatusCode::NO_CONTENT,
            headers,
            body: Bytes::new(),
        }
    }
}

impl OriginPattern {
    fn matches(&self, origin: &str) -> bool {
        let Some(rest) = origin.strip_prefix(&*self.scheme) else {
            return false;
        };
        let Some(host) = rest.strip_suffix(&*self.port) else {
            return false;
        };
        // Without a port in the pattern, an origin with a port does not match.
        if self.port.is_empty() && host.contains(':') {
            return false;
        }
        match host.strip_suffix(&*self.suffix) {
            Some(label) => !label.is_empty() && !label.contains('/') && !label.contains(':'),
            None => false,
        }
    }
}

pub struct CorsFactory;

impl PluginFactory for CorsFactory {
    fn name(&self) -> &'static str {
        "cors"
    }

    fn phase(&self) -> Phase {
        Phase::Admit
    }

    fn build(
        &self,
        config: &serde_json::Value,
        _ctx: &BuildCtx<'_>,
    ) -> Result<Arc<dyn Plugin>, String> {
        let config = tollgate_shared::plugins::parse::<CorsConfig>(config)?;
        Ok(Arc::new(Cors::new(&config)?))
    }
}

impl Plugin for Cors {
    fn name(&self) -> &'static str {
        "cors"
    }

    fn phase(&self) -> Phase {
        Phase::Admit
    }

    fn on_request<'a>(
        &'a self,
        ctx: &'a mut RequestCtx<'_>,
        request: &'a mut request::Parts,
    ) -> Step<'a> {
        let Some(origin) = request.headers.get(ORIGIN) else {
            return Step::CONTINUE;
        };
        if request.method == Method::OPTIONS
            && request.headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD)
        {
            return Step::Done(Outcome::Reply(self.preflight(request, origin)));
        }
        if let Some(allowed) = self.allow_origin(origin) {
            ctx.ext.insert(AllowedOrigin(allowed));
        }
        Step::CONTINUE
    }

    fn on_response(&self, ctx: &mut RequestCtx<'_>, response: &mut response::Parts) {
        let Some(AllowedOrigin(origin)) = ctx.ext.remove::<AllowedOrigin>() else {
            return;
        };
        let headers = &mut response.headers;
        if origin != ANY {
            headers.append(VARY, VARY_ORIGIN);
        }
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        if self.credentials {
            headers.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE);
        }
        if let Some(exposed) = &self.expose_headers {
            headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, exposed.clone());
        }
    }

    fn has_response_hook(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cors(config: serde_json::Value) -> Cors {
        let config = tollgate_shared::plugins::parse::<CorsConfig>(&config).expect("valid config");
        Cors::new(&config).expect("compiles")
    }

    fn origin(text: &'static str) -> HeaderValue {
        HeaderValue::from_static(text)
    }

    #[test]
    fn origins_match_exactly_or_by_leading_wildcard_label() {
        let c = cors(json!({
            "origins": ["https://app.example.com", "https://*.example.org", "http://*.local.test:8080"],
            "credentials": true,
        }));
        for allowed in [
            "https://app.example.com",
            "HTTPS://APP.EXAMPLE.COM",
            "https://a.example.org",
            "https://a.b.example.org",
            "http://x.local.test:8080",
        ] {
            assert!(c.allow_origin(&origin(allowed)).is_some(), "{allowed}");
        }
        for refused in [
            "https://example.org",
            "https://evilexample.org",
            "http://a.example.org",
            "https://a.example.org:444",
            "https://app.example.com.evil.test",
            "http://x.local.test:8081",
            "null",
        ] {
            assert!(c.allow_origin(&origin(refused)).is_none(), "{refused}");
        }
        // Credentials: the origin is echoed, never `*`.
        assert_eq!(
            c.allow_origin(&origin("https://a.example.org")),
            Some(origin("https://a.example.org"))
        );
        let any = cors(json!({}));
        assert_eq!(any.allow_origin(&origin("https://x.test")), Some(ANY));
    }

    fn preflight(c: &Cors, headers: &[(&str, &str)]) -> Reply {
        let mut builder = http::Request::builder().method("OPTIONS").uri("/r");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let mut parts = builder.body(()).expect("request").into_parts().0;
        let id = HeaderValue::from_static("r");
        let mut ctx = RequestCtx::new(
            "127.0.0.1".parse().expect("ip"),
            &id,
            "r",
            "s",
            std::time::Instant::now(),
        );
        let reply = match c.on_request(&mut ctx, &mut parts) {
            Step::Done(Outcome::Reply(reply)) => reply,
            _ => panic!("a preflight is answered"),
        };
        reply
    }

    #[test]
    fn preflights_are_answered_with_the_allowed_methods_and_headers() {
        let c = cors(json!({
            "origins": ["https://app.example.com"],
            "methods": ["GET", "POST"],
            "headers": ["content-type", "x-api-key"],
            "max_age": 600,
            "credentials": true,
        }));
        let ok = preflight(
            &c,
            &[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "Content-Type, X-Api-Key"),
            ],
        );
        assert_eq!(ok.status, StatusCode::NO_CONTENT);
        assert_eq!(
            ok.headers[ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://app.example.com"
        );
        assert_eq!(ok.headers[ACCESS_CONTROL_ALLOW_METHODS], "GET, POST");
        assert_eq!(
            ok.headers[ACCESS_CONTROL_ALLOW_HEADERS],
            "content-type, x-api-key"
        );
        assert_eq!(ok.headers[ACCESS_CONTROL_MAX_AGE], "600");
        assert_eq!(ok.headers[ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert_eq!(ok.headers[VARY], "Origin");
        for refused in [
            vec![
                ("origin", "https://evil.test"),
                ("access-control-request-method", "GET"),
            ],
            vec![
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "DELETE"),
            ],
            vec![
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "GET"),
                ("access-control-request-headers", "x-other"),
            ],
        ] {
            let reply = preflight(&c, &refused);
            assert_eq!(reply.status, StatusCode::NO_CONTENT, "{refused:?}");
            assert!(
                reply.headers.get(ACCESS_CONTROL_ALLOW_ORIGIN).is_none(),
                "{refused:?}"
            );
        }
    }

    #[test]
    fn simple_requests_get_headers_on_the_response_only_when_allowed() {
        let c = cors(json!({
            "origins": ["https://app.example.com"],
            "exposed_headers": ["x-total"],
        }));
        let id = HeaderValue::from_static("r");
        for (sent, expected) in [
            (
                Some("https://app.example.com"),
                Some("https://app.example.com"),
            ),
            (Some("https://evil.test"), None),
            (None, None),
        ] {
            let mut builder = http::Request::builder().uri("/r");
            if let Some(sent) = sent {
                builder = builder.header("origin", sent);
            }
            let mut parts = builder.body(()).expect("request").into_parts().0;
            let mut ctx = RequestCtx::new(
                "127.0.0.1".parse().expect("ip"),
                &id,
                "r",
                "s",
                std::time::Instant::now(),
            );
            assert!(matches!(
                c.on_request(&mut ctx, &mut parts),
                Step::Done(Outcome::Continue)
            ));
            let mut response = http::Response::new(()).into_parts().0;
            c.on_response(&mut ctx, &mut response);
            assert_eq!(
                response
                    .headers
                    .get(ACCESS_CONTROL_ALLOW_ORIGIN)
                    .and_then(|v| v.to_str().ok()),
                expected,
                "{sent:?}"
            );
            if expected.is_some() {
                assert_eq!(response.headers[ACCESS_CONTROL_EXPOSE_HEADERS], "x-total");
                assert_eq!(response.headers[VARY], "Origin");
            }
        }
    }
}
