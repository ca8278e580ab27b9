//! Validation of a whole [`GatewayConfig`]: every write to the control plane
//! passes through [`validate`] before anything is stored, and a data plane runs
//! it again on every snapshot it receives.
//!
//! Errors name the entity and the field, e.g.
//! `route "orders-api": service "ordrs" does not exist`.

use std::collections::{HashMap, HashSet};

use crate::model::*;
use crate::plugins::{check_header_name, PluginConfig};

/// A rejected configuration: which entity, and what is wrong with which field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{entity}: {message}")]
pub struct ConfigError {
    /// `route "orders-api"`, `service "orders"`, `config`.
    pub entity: String,
    /// `service "ordrs" does not exist`, `paths[0]: must start with "/"`.
    pub message: String,
}

impl ConfigError {
    pub fn new(kind: &str, name: &str, message: impl Into<String>) -> Self {
        ConfigError {
            entity: format!("{kind} {name:?}"),
            message: message.into(),
        }
    }
}

/// Longest entity name accepted.
pub const MAX_NAME_LEN: usize = 128;
/// Upper bounds that keep one config from exhausting a data plane.
pub const MAX_TIMEOUT_MS: u64 = 24 * 3_600 * 1_000;
pub const MAX_TARGETS: usize = 1_024;

/// Checks a whole desired state.
pub fn validate(config: &GatewayConfig) -> Result<(), ConfigError> {
    let mut service_names = HashSet::new();
    for service in &config.services {
        let err = |msg: String| ConfigError::new("service", &service.name, msg);
        check_name(&service.name).map_err(|m| err(format!("name: {m}")))?;
        if !service_names.insert(service.name.as_str()) {
            return Err(err("name: defined more than once".into()));
        }
        validate_service(service).map_err(err)?;
    }

    let mut route_names = HashSet::new();
    for route in &config.routes {
        let err = |msg: String| ConfigError::new("route", &route.name, msg);
        check_name(&route.name).map_err(|m| err(format!("name: {m}")))?;
        if !route_names.insert(route.name.as_str()) {
            return Err(err("name: defined more than once".into()));
        }
        if !service_names.contains(route.service.as_str()) {
            return Err(err(format!("service {:?} does not exist", route.service)));
        }
        validate_route(route).map_err(err)?;
    }

    let mut consumer_names = HashSet::new();
    let mut api_key_owner: HashMap<String, &str> = HashMap::new();
    let mut jwt_owner: HashMap<(JwtKeyClaim, &str), &str> = HashMap::new();
    for consumer in &config.consumers {
        let err = |msg: String| ConfigError::new("consumer", &consumer.name, msg);
        check_name(&consumer.name).map_err(|m| err(format!("name: {m}")))?;
        if !consumer_names.insert(consumer.name.as_str()) {
            return Err(err("name: defined more than once".into()));
        }
        for (i, group) in consumer.groups.iter().enumerate() {
            check_name(group).map_err(|m| err(format!("groups[{i}]: {m}")))?;
        }
        for (i, credential) in consumer.credentials.iter().enumerate() {
            validate_credential(credential).map_err(|m| err(format!("credentials[{i}].{m}")))?;
            let hash = match (&credential.api_key, &credential.api_key_hash) {
                (Some(key), _) => Some(crate::secrets::hash_api_key(key)),
                (None, Some(hash)) => Some(hash.clone()),
                _ => None,
            };
            if let Some(hash) = hash {
                if let Some(other) = api_key_owner.insert(hash, &consumer.name) {
                    return Err(err(format!(
                        "credentials[{i}].api_key: the same key is already a credential of consumer {other:?}"
                    )));
                }
            }
            if let Some(jwt) = &credential.jwt {
                if let Some(other) =
                    jwt_owner.insert((jwt.key_claim, jwt.key.as_str()), &consumer.name)
                {
                    return Err(err(format!(
                        "credentials[{i}].jwt.key: {:?} is already a JWT key of consumer {other:?}",
                        jwt.key
                    )));
                }
            }
        }
    }

    let mut plugin_names = HashSet::new();
    for plugin in &config.plugins {
        let name = plugin.instance_name();
        let err = |msg: String| ConfigError::new("plugin", name, msg);
        check_name(name).map_err(|m| err(format!("instance: {m}")))?;
        if !plugin_names.insert(name) {
            return Err(err("instance: defined more than once".into()));
        }
        let parsed = PluginConfig::parse(&plugin.name, &plugin.config).map_err(&err)?;
        check_anonymous(&parsed, &consumer_names).map_err(err)?;
    }

    // Plugins on routes and services may name an anonymous consumer: check it exists.
    for route in &config.routes {
        for (i, plugin) in route.plugins.iter().enumerate() {
            if let Ok(parsed) = PluginConfig::parse(&plugin.name, &plugin.config) {
                check_anonymous(&parsed, &consumer_names).map_err(|m| {
                    ConfigError::new("route", &route.name, format!("plugins[{i}].{m}"))
                })?;
            }
        }
    }
    for service in &config.services {
        for (i, plugin) in service.plugins.iter().enumerate() {
            if let Ok(parsed) = PluginConfig::parse(&plugin.name, &plugin.config) {
                check_anonymous(&parsed, &consumer_names).map_err(|m| {
                    ConfigError::new("service", &service.name, format!("plugins[{i}].{m}"))
                })?;
            }
        }
    }

    let mut certificate_names = HashSet::new();
    let mut sni_owner: HashMap<String, &str> = HashMap::new();
    let mut default_owner: Option<&str> = None;
    for certificate in &config.certificates {
        let err = |msg: String| ConfigError::new("certificate", &certificate.name, msg);
        check_name(&certificate.name).map_err(|m| err(format!("name: {m}")))?;
        if !certificate_names.insert(certificate.name.as_str()) {
            return Err(err("name: defined more than once".into()));
        }
        validate_certificate(certificate).map_err(err)?;
        for (i, sni) in certificate.snis.iter().enumerate() {
            if let Some(other) = sni_owner.insert(sni.to_ascii_lowercase(), &certificate.name) {
                return Err(err(format!(
                    "snis[{i}]: {sni:?} is already served by certificate {other:?}"
                )));
            }
        }
        if certificate.default {
            if let Some(other) = default_owner.replace(&certificate.name) {
                return Err(err(format!(
                    "default: certificate {other:?} is already the default"
                )));
            }
        }
    }
    for service in &config.services {
        let ca = service
            .tls
            .as_ref()
            .and_then(|tls| tls.ca_certificate.as_ref());
        if let Some(name) = ca {
            if !certificate_names.contains(name.as_str()) {
                return Err(ConfigError::new(
                    "service",
                    &service.name,
                    format!("tls.ca_certificate: certificate {name:?} does not exist"),
                ));
            }
        }
    }
    Ok(())
}

/// The served names of a value type, for errors.
fn served<'a>(all: impl Iterator<Item = (&'a str, bool)>) -> String {
    all.filter(|(_, served)| *served)
        .map(|(name, _)| name)
        .collect::<Vec<_>>()
        .join(", ")
}

fn check_anonymous(plugin: &PluginConfig, consumers: &HashSet<&str>) -> Result<(), String> {
    let anonymous = match plugin {
        PluginConfig::KeyAuth(c) => c.anonymous.as_deref(),
        PluginConfig::Jwt(c) => c.anonymous.as_deref(),
        _ => None,
    };
    match anonymous {
        Some(name) if !consumers.contains(name) => Err(format!(
            "config.anonymous: consumer {name:?} does not exist"
        )),
        _ => Ok(()),
    }
}

/// Names: 1..=128 of `[A-Za-z0-9._-]`, so they are safe in metric labels,
/// Redis keys and URLs.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!("must be at most {MAX_NAME_LEN} characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(format!(
            "{name:?} may only contain letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}

fn validate_service(service: &Service) -> Result<(), String> {
    let balancing = service.upstream.load_balancing;
    if !balancing.is_served() {
        return Err(format!(
            "upstream.load_balancing: {:?} is not supported yet (supported: {})",
            balancing.as_str(),
            served(LoadBalancing::ALL.iter().map(|(n, v)| (*n, v.is_served())))
        ));
    }
    if !service.protocol.is_served() {
        return Err(format!(
            "protocol: {:?} is not supported yet (supported: {})",
            service.protocol.as_str(),
            served(Protocol::ALL.iter().map(|(n, v)| (*n, v.is_served())))
        ));
    }
    crate::certs::check_upstream_tls(service)?;
    if service.upstream.targets.is_empty() {
        return Err("upstream.targets: at least one target is required".into());
    }
    if service.upstream.targets.len() > MAX_TARGETS {
        return Err(format!("upstream.targets: at most {MAX_TARGETS} targets"));
    }
    let mut seen = HashSet::new();
    for (i, target) in service.upstream.targets.iter().enumerate() {
        check_address(&target.address)
            .map_err(|m| format!("upstream.targets[{i}].address: {m}"))?;
        if !seen.insert(target.address.as_str()) {
            return Err(format!(
                "upstream.targets[{i}].address: {:?} is listed twice",
                target.address
            ));
        }
        if target.weight > MAX_WEIGHT {
            return Err(format!(
                "upstream.targets[{i}].weight: must be at most {MAX_WEIGHT}"
            ));
        }
    }
    for (field, value) in [
        ("timeouts.connect_ms", service.timeouts.connect_ms),
        ("timeouts.request_ms", service.timeouts.request_ms),
    ] {
        if let Some(ms) = value {
            if ms == 0 || ms > MAX_TIMEOUT_MS {
                return Err(format!("{field}: must be between 1 and {MAX_TIMEOUT_MS}"));
            }
        }
    }
    if let Some(host) = &service.host_header {
        check_host(host, false).map_err(|m| format!("host_header: {m}"))?;
    }
    validate_plugins(&service.plugins)
}

/// `host:port` with a port in 1..=65535 and a plausible host.
pub fn check_address(address: &str) -> Result<(), String> {
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| format!("{address:?} must be host:port"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{address:?} has an invalid port"))?;
    if port == 0 {
        return Err(format!("{address:?} has port 0"));
    }
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    check_host(host, false).map_err(|m| format!("{address:?}: {m}"))
}

/// A DNS host name, optionally with one leading `*.` wildcard label.
pub fn check_host(host: &str, allow_wildcard: bool) -> Result<(), String> {
    let bare = match host.strip_prefix("*.") {
        Some(rest) if allow_wildcard => rest,
        Some(_) => return Err(format!("{host:?}: wildcards are not allowed here")),
        None => host,
    };
    if bare.is_empty() || bare.len() > 253 {
        return Err(format!("{host:?} is not a valid host name"));
    }
    for label in bare.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!("{host:?} is not a valid host name"));
        }
    }
    Ok(())
}

/// HTTP methods a route may name.
pub const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT",
];

fn validate_route(route: &Route) -> Result<(), String> {
    if route.https_redirect && !route.https_only {
        return Err("https_redirect: only with https_only: true".into());
    }
    for (i, host) in route.hosts.iter().enumerate() {
        if host != &host.to_ascii_lowercase() {
            return Err(format!("hosts[{i}]: {host:?} must be lower case"));
        }
        check_host(host, true).map_err(|m| format!("hosts[{i}]: {m}"))?;
    }
    let mut seen_paths = HashSet::new();
    for (i, path) in route.paths.iter().enumerate() {
        check_route_path(path).map_err(|m| format!("paths[{i}]: {m}"))?;
        if !seen_paths.insert(path.as_str()) {
            return Err(format!("paths[{i}]: {path:?} is listed twice"));
        }
    }
    for (i, method) in route.methods.iter().enumerate() {
        if !METHODS.contains(&method.as_str()) {
            return Err(format!(
                "methods[{i}]: {method:?} is not one of {}",
                METHODS.join(", ")
            ));
        }
    }
    for (i, header) in route.headers.iter().enumerate() {
        check_header_name(&format!("headers[{i}].name"), &header.name)?;
        if let Some(value) = &header.value {
            if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                return Err(format!(
                    "headers[{i}].value: must not contain CR, LF or NUL"
                ));
            }
        }
    }
    if route.max_body_bytes == Some(0) {
        return Err("max_body_bytes: must be at least 1".into());
    }
    validate_plugins(&route.plugins)
}

/// A route path: `/prefix`, `=/exact`, or a template with `{name}` segments.
/// Paths are matched after normalization, so they must be normalized
/// themselves: no `//`, no `.`/`..` segments, no `%` escapes, no `?`/`#`.
pub fn check_route_path(path: &str) -> Result<(), String> {
    let body = path.strip_prefix('=').unwrap_or(path);
    if !body.starts_with('/') {
        return Err(format!(
            "{path:?} must start with \"/\" (or \"=/\" for an exact match)"
        ));
    }
    if body.len() > 1024 {
        return Err(format!("{path:?} is longer than 1024 characters"));
    }
    if body.contains("//") {
        return Err(format!("{path:?} must not contain \"//\""));
    }
    if body
        .bytes()
        .any(|b| matches!(b, b'?' | b'#' | b'%' | b'\\' | b';') || b <= b' ' || b >= 0x7f)
    {
        return Err(format!(
            "{path:?} must not contain spaces, '?', '#', '%', '\\\\' or ';'"
        ));
    }
    let mut params = HashSet::new();
    for segment in body.split('/').skip(1) {
        if segment == "." || segment == ".." {
            return Err(format!(
                "{path:?} must not contain \".\" or \"..\" segments"
            ));
        }
        if segment.contains('{') || segment.contains('}') {
            let name = segment
                .strip_prefix('{')
                .and_then(|s| s.strip_suffix('}'))
                .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
                .ok_or_else(|| format!("{path:?}: template segment {segment:?} must be a whole segment like {{id}}"))?;
            if !params.insert(name) {
                return Err(format!(
                    "{path:?}: template parameter {name:?} is used twice"
                ));
            }
        }
    }
    Ok(())
}

fn validate_plugins(plugins: &[PluginInstance]) -> Result<(), String> {
    let mut seen = HashSet::new();
    for (i, plugin) in plugins.iter().enumerate() {
        PluginConfig::parse(&plugin.name, &plugin.config)
            .map_err(|m| format!("plugins[{i}].{m}"))?;
        // Several rate limits may stack (per minute and per hour); others run once.
        if plugin.name != "rate-limit" && !seen.insert(plugin.name.as_str()) {
            return Err(format!(
                "plugins[{i}].name: {:?} is attached twice",
                plugin.name
            ));
        }
    }
    Ok(())
}

fn validate_credential(credential: &Credential) -> Result<(), String> {
    let set = [
        credential.api_key.is_some(),
        credential.api_key_hash.is_some(),
        credential.jwt.is_some(),
    ]
    .iter()
    .filter(|s| **s)
    .count();
    if set != 1 {
        return Err("kind: exactly one of api_key, api_key_hash or jwt must be set".into());
    }
    if let Some(key) = &credential.api_key {
        if key.len() < 8 || key.len() > 512 {
            return Err("api_key: must be between 8 and 512 characters".into());
        }
        if key.bytes().any(|b| !(0x21..0x7f).contains(&b)) {
            return Err("api_key: must be printable ASCII without spaces".into());
        }
    }
    if let Some(hash) = &credential.api_key_hash {
        if crate::secrets::parse_hash(hash).is_none() {
            return Err("api_key_hash: must be \"sha256:\" followed by 64 hex digits".into());
        }
    }
    if let Some(jwt) = &credential.jwt {
        if jwt.key.is_empty() || jwt.key.len() > 512 {
            return Err("jwt.key: must be between 1 and 512 characters".into());
        }
        if !JWT_ALGORITHMS.contains(&jwt.algorithm.as_str()) {
            return Err(format!(
                "jwt.algorithm: {:?} is not one of {}",
                jwt.algorithm,
                JWT_ALGORITHMS.join(", ")
            ));
        }
        let hmac = jwt.algorithm.starts_with("HS");
        if hmac {
            if jwt.public_key.is_some() {
                return Err(format!(
                    "jwt.public_key: {} uses a shared secret, not a public key",
                    jwt.algorithm
                ));
            }
            match (&jwt.secret, &jwt.secret_fingerprint) {
                (Some(secret), _) if secret.len() < 16 => {
                    return Err("jwt.secret: must be at least 16 bytes".into())
                }
                (Some(secret), _) if looks_like_pem(secret) => {
                    return Err("jwt.secret: a PEM key is never an HMAC secret".into())
                }
                (None, None) => return Err(format!("jwt.secret: required for {}", jwt.algorithm)),
                _ => {}
            }
        } else {
            if jwt.secret.is_some() || jwt.secret_fingerprint.is_some() {
                return Err(format!(
                    "jwt.secret: {} verifies with public_key, not a shared secret",
                    jwt.algorithm
                ));
            }
            match &jwt.public_key {
                Some(key) if looks_like_pem(key) && key.contains("PUBLIC KEY") => {
                    check_public_key(&jwt.algorithm, key)?
                }
                Some(_) => return Err("jwt.public_key: must be a PEM public key".into()),
                None => return Err(format!("jwt.public_key: required for {}", jwt.algorithm)),
            }
        }
    }
    Ok(())
}

/// Parses the PEM for the algorithm's key family, so a key every data plane
/// would reject (and NACK) is refused at write time instead.
fn check_public_key(algorithm: &str, pem: &str) -> Result<(), String> {
    use jsonwebtoken::DecodingKey;
    let parsed = match algorithm {
        "RS256" | "RS384" | "RS512" => DecodingKey::from_rsa_pem(pem.as_bytes()),
        "ES256" | "ES384" => DecodingKey::from_ec_pem(pem.as_bytes()),
        _ => DecodingKey::from_ed_pem(pem.as_bytes()),
    };
    parsed
        .map(|_| ())
        .map_err(|_| format!("jwt.public_key: not a valid PEM public key for {algorithm}"))
}

fn looks_like_pem(text: &str) -> bool {
    text.trim_start().starts_with("-----BEGIN ")
}

fn validate_certificate(certificate: &Certificate) -> Result<(), String> {
    for (i, sni) in certificate.snis.iter().enumerate() {
        check_host(sni, true).map_err(|m| format!("snis[{i}]: {m}"))?;
    }
    crate::certs::check(certificate)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> GatewayConfig {
        GatewayConfig::from_yaml(
            r#"
services:
  - name: orders
    upstream:
      targets: [{ address: "127.0.0.1:9001" }, { address: "127.0.0.1:9002", weight: 2 }]
    timeouts: { connect_ms: 1000, request_ms: 15000 }
routes:
  - name: orders-api
    service: orders
    hosts: ["api.example.com"]
    paths: ["/v1/orders"]
    methods: [GET, POST]
    strip_path: true
    plugins:
      - name: key-auth
      - name: rate-limit
        config: { limit: 100, window: 1m, scope: consumer }
consumers:
  - name: alice
    groups: [partners]
    credentials:
      - api_key: "alice-secret-key"
"#,
        )
        .expect("example parses")
    }

    #[test]
    fn example_is_valid() {
        validate(&base()).expect("valid");
    }

    #[test]
    fn missing_service_is_named() {
        let mut config = base();
        config.routes[0].service = "ordrs".into();
        let err = validate(&config).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"route "orders-api": service "ordrs" does not exist"#
        );
    }

    #[test]
    fn bad_paths_are_rejected() {
        for bad in [
            "v1",
            "/a//b",
            "/a/../b",
            "/a?x",
            "/users/{id",
            "/a/{x}/{x}",
            "/%2e",
        ] {
            assert!(check_route_path(bad).is_err(), "{bad}");
        }
        for good in ["/", "=/exact", "/users/{id}", "/v1/orders"] {
            assert!(check_route_path(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn duplicate_api_key_across_consumers_is_rejected() {
        let mut config = base();
        let mut bob = config.consumers[0].clone();
        bob.name = "bob".into();
        config.consumers.push(bob);
        let err = validate(&config).unwrap_err();
        assert!(err.to_string().contains("already a credential"), "{err}");
        assert!(!err.to_string().contains("alice-secret-key"));
    }

    #[test]
    fn unparsable_public_key_is_rejected_at_write_time() {
        let mut config = base();
        config.consumers[0].credentials.push(Credential {
            jwt: Some(JwtCredential {
                key: "issuer".into(),
                algorithm: "RS256".into(),
                public_key: Some(
                    "-----BEGIN PUBLIC KEY-----\nnot base64 at all\n-----END PUBLIC KEY-----\n"
                        .into(),
                ),
                ..JwtCredential::default()
            }),
            ..Credential::default()
        });
        let err = validate(&config).unwrap_err().to_string();
        assert!(err.contains("credentials[1].jwt.public_key"), "{err}");
    }
}
