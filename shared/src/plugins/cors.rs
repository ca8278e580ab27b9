//! `cors`'s config: the origins, methods and headers browsers may use.

use serde::{Deserialize, Serialize};

use super::{check_header_name, PluginConfigSchema};

/// Cross-origin resource sharing: which browser origins may call the route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CorsConfig {
    /// `*`, exact origins (`https://app.example.com`) and patterns with a
    /// leading wildcard label (`https://*.example.com`).
    pub origins: Vec<String>,
    /// Methods a preflight may ask for.
    pub methods: Vec<String>,
    /// Request headers a preflight may ask for; empty = any requested.
    pub headers: Vec<String>,
    /// Response headers the browser may expose to the page.
    pub exposed_headers: Vec<String>,
    /// Whether the page may send cookies/credentials.
    pub credentials: bool,
    /// How long (seconds) a browser may cache a preflight answer.
    pub max_age: Option<u32>,
}

impl Default for CorsConfig {
    fn default() -> Self {
        CorsConfig {
            origins: vec!["*".into()],
            methods: ["GET", "HEAD", "PUT", "PATCH", "POST", "DELETE"]
                .map(String::from)
                .to_vec(),
            headers: Vec::new(),
            exposed_headers: Vec::new(),
            credentials: false,
            max_age: None,
        }
    }
}

/// Longest list in a CORS config.
pub const MAX_CORS_ENTRIES: usize = 256;

impl PluginConfigSchema for CorsConfig {
    const NAME: &'static str = "cors";

    fn check(&self) -> Result<(), String> {
        for (field, list) in [
            ("origins", &self.origins),
            ("methods", &self.methods),
            ("headers", &self.headers),
            ("exposed_headers", &self.exposed_headers),
        ] {
            if list.len() > MAX_CORS_ENTRIES {
                return Err(format!(
                    "config.{field}: at most {MAX_CORS_ENTRIES} entries"
                ));
            }
        }
        if self.origins.is_empty() {
            return Err("config.origins: must not be empty".into());
        }
        for (i, origin) in self.origins.iter().enumerate() {
            check_origin(origin)
                .map_err(|m| format!("config.origins[{i}]: {:?} {m}", super::truncated(origin)))?;
        }
        if self.credentials && self.origins.iter().any(|o| o == "*") {
            return Err(
                "config.credentials: browsers refuse credentials with origin \"*\"; list the origins"
                    .into(),
            );
        }
        if self.methods.is_empty() {
            return Err("config.methods: must not be empty".into());
        }
        for (i, method) in self.methods.iter().enumerate() {
            if method.is_empty()
                || method.len() > 32
                || !method.bytes().all(|b| b.is_ascii_uppercase())
            {
                return Err(format!(
                    "config.methods[{i}]: {:?} is not an upper-case HTTP method",
                    super::truncated(method)
                ));
            }
        }
        for (i, name) in self.headers.iter().enumerate() {
            check_header_name(&format!("config.headers[{i}]"), name)?;
        }
        for (i, name) in self.exposed_headers.iter().enumerate() {
            check_header_name(&format!("config.exposed_headers[{i}]"), name)?;
        }
        if self.max_age.is_some_and(|age| age > 86_400) {
            return Err("config.max_age: must be at most 86400 (one day)".into());
        }
        Ok(())
    }
}

/// `*`, or `scheme://host[:port]` with an optional leading `*.` label.
fn check_origin(origin: &str) -> Result<(), &'static str> {
    if origin == "*" {
        return Ok(());
    }
    let Some((scheme, rest)) = origin.split_once("://") else {
        return Err("is not an origin (scheme://host[:port])");
    };
    if scheme != "http" && scheme != "https" {
        return Err("must use http or https");
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (rest, None),
    };
    if let Some(port) = port {
        if port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err("has an invalid port");
        }
    }
    let host = host.strip_prefix("*.").unwrap_or(host);
    let valid = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        });
    if valid {
        Ok(())
    } else {
        Err("has an invalid host (lower-case letters, digits, '-' and '.'; no path)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cors_origins_methods_and_credentials_are_checked() {
        assert_eq!(CorsConfig::default().check(), Ok(()));
        let mut config = CorsConfig {
            origins: vec![
                "https://app.example.com".into(),
                "http://*.example.com:8080".into(),
            ],
            credentials: true,
            ..CorsConfig::default()
        };
        assert_eq!(config.check(), Ok(()));
        for (origin, expected) in [
            ("app.example.com", "is not an origin"),
            ("ftp://x.example", "must use http or https"),
            ("https://x.example/path", "has an invalid host"),
            ("https://x.example:0", "has an invalid port"),
        ] {
            config.origins = vec![origin.into()];
            let err = config.check().expect_err(origin);
            assert!(
                err.starts_with("config.origins[0]:") && err.contains(expected),
                "{err}"
            );
        }
        config.origins = vec!["*".into()];
        assert!(config
            .check()
            .expect_err("credentials")
            .starts_with("config.credentials"));
        config.credentials = false;
        config.methods = vec!["get".into()];
        assert!(config
            .check()
            .expect_err("method")
            .starts_with("config.methods[0]"));
    }
}
