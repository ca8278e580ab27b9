//! Validation of a whole [`GatewayConfig`]: every write to the control plane
//! passes through [`validate`] before anything is stored, and a data plane runs
//! it again on every snapshot it receives.
//!
//! Errors name the entity and the field, e.g.
//! `route "orders-api": service "ordrs" does not exist`.
//!
//! Every check here is total: it returns an error (never panics, never
//! recurses on input) for any string, and every field is bounded by a limit
//! from [`crate::limits`]. There is one rule per value type (addresses, host
//! patterns, header names and values, query names, PEM keys), written to
//! accept exactly what the data plane can serve as written: a value it would
//! NACK, or turn into a different request upstream, is refused here, naming
//! the field. Values echoed in errors are cut to
//! [`crate::limits::MAX_ECHO_CHARS`] characters.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::limits::{self, check_len, show, Shown};
use crate::model::*;
use crate::plugins::{check_header_name, Checked};

/// A rejected configuration: which entity, and what is wrong with which field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{entity}: {message}")]
pub struct ConfigError {
    /// `route "orders-api"`, `service "orders"`, `config`.
    pub entity: String,
    /// `service "ordrs" does not exist`, `paths[0]: must start with "/"`.
    pub message: String,
    /// Whether the config as a whole is over a limit (entities per kind):
    /// the control plane answers `RESOURCE_EXHAUSTED` rather than
    /// `INVALID_ARGUMENT`.
    pub over_limit: bool,
}

impl ConfigError {
    /// `name` is shown cut to [`limits::MAX_ECHO_CHARS`] characters, so an
    /// oversized name never comes back whole in an error.
    pub fn new(kind: &str, name: &str, message: impl Into<String>) -> Self {
        ConfigError {
            entity: format!("{kind} {}", Shown(name)),
            message: message.into(),
            over_limit: false,
        }
    }

    /// The config as a whole is over a limit (entity counts, total size).
    pub fn whole_over_limit(message: impl Into<String>) -> Self {
        ConfigError {
            entity: "config".into(),
            message: message.into(),
            over_limit: true,
        }
    }
}

/// Longest entity name accepted.
pub const MAX_NAME_LEN: usize = limits::MAX_NAME_LEN;
/// Upper bounds that keep one config from exhausting a data plane.
pub const MAX_TIMEOUT_MS: u64 = 24 * 3_600 * 1_000;
pub const MAX_TARGETS: usize = limits::MAX_TARGETS;

/// `tags`: at most [`limits::MAX_TAGS`], each a name, none twice.
fn check_tags(tags: &[String]) -> Result<(), String> {
    check_len(tags.len(), limits::MAX_TAGS, "tags").map_err(|m| format!("tags: {m}"))?;
    for (i, tag) in tags.iter().enumerate() {
        check_name(tag).map_err(|m| format!("tags[{i}]: {m}"))?;
        if tags[..i].contains(tag) {
            return Err(format!("tags[{i}]: {} is listed twice", show(tag)));
        }
    }
    Ok(())
}

/// Checks a whole desired state.
pub fn validate(config: &GatewayConfig) -> Result<(), ConfigError> {
    for (kind, count, max) in [
        ("services", config.services.len(), limits::MAX_SERVICES),
        ("routes", config.routes.len(), limits::MAX_ROUTES),
        ("consumers", config.consumers.len(), limits::MAX_CONSUMERS),
        ("plugins", config.plugins.len(), limits::MAX_GLOBAL_PLUGINS),
        (
            "certificates",
            config.certificates.len(),
            limits::MAX_CERTIFICATES,
        ),
    ] {
        check_len(count, max, "entities")
            .map_err(|m| ConfigError::whole_over_limit(format!("{kind}: {m}")))?;
    }

    let mut service_names = HashSet::new();
    for service in &config.services {
        let err = |msg: String| ConfigError::new("service", &service.name, msg);
        check_name(&service.name).map_err(|m| err(format!("name: {m}")))?;
        if !service_names.insert(service.name.as_str()) {
            return Err(err("name: defined more than once".into()));
        }
        validate_service(service).map_err(err)?;
        check_tags(&service.tags).map_err(err)?;
    }

    let mut route_names = HashSet::new();
    for route in &config.routes {
        let err = |msg: String| ConfigError::new("route", &route.name, msg);
        check_name(&route.name).map_err(|m| err(format!("name: {m}")))?;
        if !route_names.insert(route.name.as_str()) {
            return Err(err("name: defined more than once".into()));
        }
        if !service_names.contains(route.service.as_str()) {
            return Err(err(format!(
                "service {} does not exist",
                show(&route.service)
            )));
        }
        validate_route(route).map_err(err)?;
        if route.websocket {
            let protocol = config
                .services
                .iter()
                .find(|service| service.name == route.service)
                .map(|service| service.protocol);
            if let Some(protocol) = protocol.filter(|p| p.is_http2()) {
                return Err(err(format!(
                    "websocket: service {} speaks {}, which carries no HTTP/1.1 upgrade",
                    show(&route.service),
                    protocol.as_str()
                )));
            }
        }
        check_tags(&route.tags).map_err(err)?;
    }

    let mut consumer_names = HashSet::new();
    // Keyed by the hash's 32 bytes, so hex case cannot make one key two.
    let mut api_key_owner: HashMap<[u8; 32], &str> = HashMap::new();
    let mut jwt_owner: HashMap<(JwtKeyClaim, &str), &str> = HashMap::new();
    let mut mtls_owner: HashMap<(&str, String), &str> = HashMap::new();
    for consumer in &config.consumers {
        let err = |msg: String| ConfigError::new("consumer", &consumer.name, msg);
        check_name(&consumer.name).map_err(|m| err(format!("name: {m}")))?;
        if !consumer_names.insert(consumer.name.as_str()) {
            return Err(err("name: defined more than once".into()));
        }
        check_len(consumer.groups.len(), limits::MAX_GROUPS, "groups")
            .map_err(|m| err(format!("groups: {m}")))?;
        for (i, group) in consumer.groups.iter().enumerate() {
            check_name(group).map_err(|m| err(format!("groups[{i}]: {m}")))?;
        }
        check_tags(&consumer.tags).map_err(err)?;
        check_len(
            consumer.credentials.len(),
            limits::MAX_CREDENTIALS,
            "credentials",
        )
        .map_err(|m| err(format!("credentials: {m}")))?;
        for (i, credential) in consumer.credentials.iter().enumerate() {
            validate_credential(credential).map_err(|m| err(format!("credentials[{i}].{m}")))?;
            let digest = match (&credential.api_key, &credential.api_key_hash) {
                (Some(key), _) => Some(crate::secrets::api_key_digest(key.as_bytes())),
                (None, Some(hash)) => crate::secrets::parse_hash(hash),
                _ => None,
            };
            if let Some(digest) = digest {
                if let Some(other) = api_key_owner.insert(digest, &consumer.name) {
                    return Err(err(format!(
                        "credentials[{i}].api_key: the same key is already a credential of consumer {}",
                        show(other)
                    )));
                }
            }
            if let Some(key) = credential.mtls.as_ref().and_then(|m| m.key()) {
                if let Some(other) = mtls_owner.insert(key.clone(), &consumer.name) {
                    return Err(err(format!(
                        "credentials[{i}].mtls.{}: {} is already an mtls credential of consumer {}",
                        key.0,
                        show(&key.1),
                        show(other)
                    )));
                }
            }
            if let Some(jwt) = &credential.jwt {
                if let Some(other) =
                    jwt_owner.insert((jwt.key_claim, jwt.key.as_str()), &consumer.name)
                {
                    return Err(err(format!(
                        "credentials[{i}].jwt.key: {} is already a JWT key of consumer {}",
                        show(&jwt.key),
                        show(other)
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
        check_tags(&plugin.tags).map_err(err)?;
        let parsed = parse_plugin(&plugin.name, &plugin.config).map_err(&err)?;
        check_anonymous(&parsed, &consumer_names).map_err(&err)?;
        for route in &config.routes {
            check_captures(&parsed, route).map_err(&err)?;
        }
    }

    // Plugins on routes and services may name an anonymous consumer: check it exists.
    for route in &config.routes {
        for (i, plugin) in route.plugins.iter().enumerate() {
            if let Ok(parsed) = crate::plugins::check(&plugin.name, &plugin.config) {
                check_anonymous(&parsed, &consumer_names)
                    .and_then(|()| check_captures(&parsed, route))
                    .map_err(|m| {
                        ConfigError::new("route", &route.name, format!("plugins[{i}].{m}"))
                    })?;
            }
        }
    }
    for service in &config.services {
        for (i, plugin) in service.plugins.iter().enumerate() {
            if let Ok(parsed) = crate::plugins::check(&plugin.name, &plugin.config) {
                check_anonymous(&parsed, &consumer_names)
                    .and_then(|()| {
                        config
                            .routes
                            .iter()
                            .filter(|route| route.service == service.name)
                            .try_for_each(|route| check_captures(&parsed, route))
                    })
                    .map_err(|m| {
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
        check_tags(&certificate.tags).map_err(err)?;
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
    check_certificate_refs(config, &certificate_names)?;
    Ok(())
}

/// Plugins that name `certificates` entries (`mtls-auth`'s CAs): each must
/// exist.
fn check_certificate_refs(
    config: &GatewayConfig,
    certificates: &HashSet<&str>,
) -> Result<(), ConfigError> {
    let missing = |instances: &mut dyn Iterator<Item = (&str, &serde_json::Value)>| {
        for (i, (name, plugin_config)) in instances.enumerate() {
            let Ok(parsed) = crate::plugins::check(name, plugin_config) else {
                continue;
            };
            for (j, wanted) in parsed.certificates.iter().enumerate() {
                if !certificates.contains(wanted.as_str()) {
                    return Err((
                        i,
                        format!(
                            "config.ca_certificates[{j}]: certificate {} does not exist",
                            show(wanted)
                        ),
                    ));
                }
            }
        }
        Ok(())
    };
    for plugin in &config.plugins {
        missing(&mut std::iter::once((plugin.name.as_str(), &plugin.config)))
            .map_err(|(_, m)| ConfigError::new("plugin", plugin.instance_name(), m))?;
    }
    for route in &config.routes {
        missing(&mut route.plugins.iter().map(|p| (p.name.as_str(), &p.config))).map_err(
            |(i, m)| ConfigError::new("route", &route.name, format!("plugins[{i}].{m}")),
        )?;
    }
    for service in &config.services {
        missing(&mut service.plugins.iter().map(|p| (p.name.as_str(), &p.config))).map_err(
            |(i, m)| ConfigError::new("service", &service.name, format!("plugins[{i}].{m}")),
        )?;
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

fn check_anonymous(plugin: &Checked, consumers: &HashSet<&str>) -> Result<(), String> {
    match plugin.anonymous.as_deref() {
        Some(name) if !consumers.contains(name) => Err(format!(
            "config.anonymous: consumer {} does not exist",
            show(name)
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
        return Err(format!(
            "must be at most {MAX_NAME_LEN} characters (got {})",
            name.len()
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(format!(
            "{} may only contain letters, digits, '-', '_' and '.'",
            show(name)
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
    check_len(service.upstream.targets.len(), MAX_TARGETS, "targets")
        .map_err(|m| format!("upstream.targets: {m}"))?;
    let mut seen = HashSet::new();
    for (i, target) in service.upstream.targets.iter().enumerate() {
        check_address(&target.address)
            .map_err(|m| format!("upstream.targets[{i}].address: {m}"))?;
        if !seen.insert(target.address.as_str()) {
            return Err(format!(
                "upstream.targets[{i}].address: {} is listed twice",
                show(&target.address)
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
    match (&service.upstream.hash_on, balancing) {
        (None, LoadBalancing::ConsistentHash) => {
            return Err(
                "upstream.hash_on: required with consistent_hash (header:NAME, cookie:NAME, ip or path)"
                    .into(),
            )
        }
        (Some(_), other) if other != LoadBalancing::ConsistentHash => {
            return Err("upstream.hash_on: only with load_balancing: consistent_hash".into())
        }
        (Some(key), _) => check_hash_on(key).map_err(|m| format!("upstream.hash_on: {m}"))?,
        (None, _) => {}
    }
    check_health(&service.upstream.health_checks)
        .map_err(|m| format!("upstream.health_checks.{m}"))?;
    validate_plugins(&service.plugins)
}

/// `header:NAME`, `cookie:NAME`, `ip` or `path`.
pub fn check_hash_on(key: &str) -> Result<(), String> {
    match key.split_once(':') {
        None if key == "ip" || key == "path" => Ok(()),
        Some(("header", name)) => check_header_name("header", name),
        Some(("cookie", name))
            if !name.is_empty()
                && name.len() <= limits::MAX_HEADER_NAME_LEN
                && name
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b)) =>
        {
            Ok(())
        }
        Some(("cookie", _)) => Err(format!("{} is not a valid cookie name", show(key))),
        _ => Err(format!(
            "{} is not one of header:NAME, cookie:NAME, ip, path",
            show(key)
        )),
    }
}

fn check_health(health: &HealthChecks) -> Result<(), String> {
    let passive = &health.passive;
    if passive.base_ejection_ms == Some(0) || passive.base_ejection_ms > Some(MAX_TIMEOUT_MS) {
        return Err(format!(
            "passive.base_ejection_ms: must be between 1 and {MAX_TIMEOUT_MS}"
        ));
    }
    if passive
        .max_ejection_ms
        .is_some_and(|max| max < passive.base_ejection_ms())
    {
        return Err("passive.max_ejection_ms: must be at least base_ejection_ms".into());
    }
    if passive.max_ejection_ms > Some(24 * 3_600_000) {
        return Err("passive.max_ejection_ms: must be at most 86400000 (a day)".into());
    }
    if passive.max_ejected_percent > Some(100) {
        return Err("passive.max_ejected_percent: must be between 0 and 100".into());
    }
    if passive.consecutive_failures > Some(1_000) {
        return Err("passive.consecutive_failures: must be at most 1000 (0 turns it off)".into());
    }
    if let Some(active) = &health.active {
        if !active.path.starts_with('/')
            || active.path.len() > limits::MAX_PATH_LEN
            || !active.path.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(format!(
                "active.path: {} must start with '/' and be at most {} visible ASCII characters",
                show(&active.path),
                limits::MAX_PATH_LEN
            ));
        }
        if !(100..=3_600_000).contains(&active.interval_ms) {
            return Err("active.interval_ms: must be between 100 and 3600000".into());
        }
        if active.timeout_ms == 0 || active.timeout_ms > active.interval_ms {
            return Err("active.timeout_ms: must be between 1 and interval_ms".into());
        }
        for (field, value) in [
            ("healthy_threshold", active.healthy_threshold),
            ("unhealthy_threshold", active.unhealthy_threshold),
        ] {
            if !(1..=100).contains(&value) {
                return Err(format!("active.{field}: must be between 1 and 100"));
            }
        }
        if active.expected_statuses.len() > 64 {
            return Err("active.expected_statuses: at most 64 allowed".into());
        }
        for (i, status) in active.expected_statuses.iter().enumerate() {
            if !(100..=599).contains(status) {
                return Err(format!(
                    "active.expected_statuses[{i}]: {status} is not an HTTP status (100-599)"
                ));
            }
        }
    }
    Ok(())
}

/// A target address, exactly as the data plane connects to it:
/// `name:port`, `1.2.3.4:port` or `[v6]:port`, with a port of 1 to 5 ASCII
/// digits in 1..=65535. Refused: an unbracketed IPv6 (`::1:80`), a bracketed
/// IPv4 (`[1.2.3.4]:80`), a signed port (`h:+80`), zone ids, a name whose
/// last label is all digits (`1.2.3:80`, not an IPv4 and not a DNS name).
pub fn check_address(address: &str) -> Result<(), String> {
    if address.len() > limits::MAX_ADDRESS_LEN {
        return Err(format!(
            "at most {} bytes allowed (got {})",
            limits::MAX_ADDRESS_LEN,
            address.len()
        ));
    }
    let bad = |why: &str| format!("{} {why}", show(address));
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| bad("must be host:port"))?;
    if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("has an invalid port (1 to 65535, digits only)"));
    }
    match port.parse::<u32>() {
        Ok(1..=65_535) => {}
        _ => return Err(bad("has an invalid port (1 to 65535, digits only)")),
    }
    if let Some(inner) = host.strip_prefix('[') {
        let inner = inner
            .strip_suffix(']')
            .ok_or_else(|| bad("has an unclosed '['"))?;
        return match inner.parse::<Ipv6Addr>() {
            Ok(_) => Ok(()),
            Err(_) => Err(bad("must hold an IPv6 address inside [...]")),
        };
    }
    if host.contains(':') {
        return Err(bad(
            "is an IPv6 address without brackets: write [addr]:port",
        ));
    }
    if host.parse::<Ipv4Addr>().is_ok() {
        return Ok(());
    }
    check_host(host, false).map_err(|m| format!("{}: {m}", show(address)))
}

/// A DNS host name (or an IPv4 address), optionally with one leading `*.`
/// wildcard label that must cover at least two labels (`*.example.com`, not
/// `*.com`). The last label of a name is never all digits.
pub fn check_host(host: &str, allow_wildcard: bool) -> Result<(), String> {
    let invalid = || format!("{} is not a valid host name", show(host));
    if host.len() > limits::MAX_HOST_LEN {
        return Err(format!(
            "at most {} bytes allowed (got {})",
            limits::MAX_HOST_LEN,
            host.len()
        ));
    }
    let (bare, wildcard) = match host.strip_prefix("*.") {
        Some(rest) if allow_wildcard => (rest, true),
        Some(_) => return Err(format!("{}: wildcards are not allowed here", show(host))),
        None => (host, false),
    };
    if bare.is_empty() {
        return Err(invalid());
    }
    if !wildcard && bare.parse::<Ipv4Addr>().is_ok() {
        return Ok(());
    }
    let mut labels = 0usize;
    let mut last = "";
    for label in bare.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(invalid());
        }
        labels += 1;
        last = label;
    }
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    if wildcard && labels < 2 {
        return Err(format!(
            "{}: a wildcard must cover at least two labels, like *.example.com",
            show(host)
        ));
    }
    Ok(())
}

/// A header value as both planes handle it: at most
/// [`limits::MAX_HEADER_VALUE_LEN`] bytes of visible characters, spaces and
/// tabs (and non-ASCII bytes), no control characters (CR, LF, NUL, `\x01`,
/// DEL...), and no leading or trailing whitespace (HTTP strips it, so such a
/// value could never match or would not be sent as written).
pub fn check_header_value(value: &str) -> Result<(), String> {
    check_len(value.len(), limits::MAX_HEADER_VALUE_LEN, "bytes")?;
    if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err("must not contain control characters (CR, LF, NUL, DEL...)".into());
    }
    if value.starts_with([' ', '\t']) || value.ends_with([' ', '\t']) {
        return Err("must not start or end with spaces or tabs".into());
    }
    Ok(())
}

/// A query parameter name in `request-transformer`: 1 to
/// [`limits::MAX_QUERY_NAME_LEN`] bytes, no control characters, and none of
/// `&`, `=`, `#` (they would split or add parameters).
pub fn check_query_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    check_len(name.len(), limits::MAX_QUERY_NAME_LEN, "bytes")?;
    if name
        .bytes()
        .any(|b| b < 0x20 || b == 0x7f || matches!(b, b'&' | b'=' | b'#'))
    {
        return Err(format!(
            "{} must not contain '&', '=', '#' or control characters",
            show(name)
        ));
    }
    Ok(())
}

/// A query parameter value to add (sent percent-encoded): at most
/// [`limits::MAX_QUERY_VALUE_LEN`] bytes, no control characters.
pub fn check_query_value(value: &str) -> Result<(), String> {
    check_len(value.len(), limits::MAX_QUERY_VALUE_LEN, "bytes")?;
    if value.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err("must not contain control characters".into());
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
    check_len(route.hosts.len(), limits::MAX_HOSTS, "hosts").map_err(|m| format!("hosts: {m}"))?;
    for (i, host) in route.hosts.iter().enumerate() {
        check_host(host, true).map_err(|m| format!("hosts[{i}]: {m}"))?;
        if host.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(format!("hosts[{i}]: {} must be lower case", show(host)));
        }
    }
    check_len(route.paths.len(), limits::MAX_PATHS, "paths").map_err(|m| format!("paths: {m}"))?;
    let mut seen_paths = HashSet::new();
    for (i, path) in route.paths.iter().enumerate() {
        check_route_path(path).map_err(|m| format!("paths[{i}]: {m}"))?;
        if !seen_paths.insert(path.as_str()) {
            return Err(format!("paths[{i}]: {} is listed twice", show(path)));
        }
    }
    let mut seen_methods = HashSet::new();
    for (i, method) in route.methods.iter().enumerate() {
        if !METHODS.contains(&method.as_str()) {
            return Err(format!(
                "methods[{i}]: {} is not one of {}",
                show(method),
                METHODS.join(", ")
            ));
        }
        if !seen_methods.insert(method.as_str()) {
            return Err(format!("methods[{i}]: {method:?} is listed twice"));
        }
    }
    check_len(
        route.headers.len(),
        limits::MAX_HEADER_MATCHES,
        "header conditions",
    )
    .map_err(|m| format!("headers: {m}"))?;
    for (i, header) in route.headers.iter().enumerate() {
        check_header_name(&format!("headers[{i}].name"), &header.name)?;
        if let Some(value) = &header.value {
            check_header_value(value).map_err(|m| format!("headers[{i}].value: {m}"))?;
        }
    }
    if route.max_body_bytes == Some(0) {
        return Err("max_body_bytes: must be at least 1".into());
    }
    if route.retries > Some(MAX_RETRIES) {
        return Err(format!("retries: must be at most {MAX_RETRIES}"));
    }
    if let Some(idle) = route.websocket_idle_timeout_ms {
        if !route.websocket {
            return Err("websocket_idle_timeout_ms: only with websocket: true".into());
        }
        if idle == 0 || idle > MAX_TIMEOUT_MS {
            return Err(format!(
                "websocket_idle_timeout_ms: must be between 1 and {MAX_TIMEOUT_MS}"
            ));
        }
    }
    validate_plugins(&route.plugins)
}

/// A route path: `/prefix`, `=/exact`, or a template with `{name}` segments.
/// Paths are matched after normalization, so they must be normalized
/// themselves: no `//`, no `.`/`..` segments, no `%` escapes, no `?`/`#`.
pub fn check_route_path(path: &str) -> Result<(), String> {
    let body = path.strip_prefix('=').unwrap_or(path);
    if body.len() > limits::MAX_PATH_LEN {
        return Err(format!(
            "at most {} bytes allowed (got {})",
            limits::MAX_PATH_LEN,
            body.len()
        ));
    }
    if !body.starts_with('/') {
        return Err(format!(
            "{} must start with \"/\" (or \"=/\" for an exact match)",
            show(path)
        ));
    }
    if body.contains("//") {
        return Err(format!("{} must not contain \"//\"", show(path)));
    }
    if body
        .bytes()
        .any(|b| matches!(b, b'?' | b'#' | b'%' | b'\\' | b';') || b <= b' ' || b >= 0x7f)
    {
        return Err(format!(
            "{} must not contain spaces, '?', '#', '%', '\\\\' or ';'",
            show(path)
        ));
    }
    let mut params = HashSet::new();
    for segment in body.split('/').skip(1) {
        if segment == "." || segment == ".." {
            return Err(format!(
                "{} must not contain \".\" or \"..\" segments",
                show(path)
            ));
        }
        if segment.contains('{') || segment.contains('}') {
            let name = segment
                .strip_prefix('{')
                .and_then(|s| s.strip_suffix('}'))
                .filter(|n| {
                    !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                })
                .ok_or_else(|| {
                    format!(
                        "{}: template segment {} must be a whole segment like {{id}}",
                        show(path),
                        show(segment)
                    )
                })?;
            if !params.insert(name) {
                return Err(format!(
                    "{}: template parameter {} is used twice",
                    show(path),
                    show(name)
                ));
            }
        }
    }
    Ok(())
}

/// Size limits first (so nothing large is parsed or echoed), then the
/// plugin's schema (its typed config and its own checks, see
/// [`crate::plugins`]).
fn parse_plugin(name: &str, config: &serde_json::Value) -> Result<Checked, String> {
    if crate::plugins::schema(name).is_none() {
        return Err(format!(
            "name: unknown plugin {} (known: {})",
            show(name),
            crate::plugins::known_names()
        ));
    }
    limits::check_plugin_config_size(config)?;
    crate::plugins::check(name, config)
}

/// A path rewrite's captures must be declared by every path of every route
/// the plugin runs on, and the route must not strip its path (the rewrite
/// matches the template against the path as routed).
fn check_captures(parsed: &Checked, route: &Route) -> Result<(), String> {
    if parsed.path_captures.is_empty() {
        return Ok(());
    }
    if route.strip_path {
        return Err(format!(
            "config.path: uses route captures, but route {} strips its path",
            show(&route.name)
        ));
    }
    for path in &route.paths {
        let declared = crate::plugins::template::route_captures(path);
        if let Some(missing) = parsed
            .path_captures
            .iter()
            .find(|name| !declared.contains(&name.as_str()))
        {
            return Err(format!(
                "config.path: capture {{{missing}}} is not in path {} of route {}",
                show(path),
                show(&route.name)
            ));
        }
    }
    Ok(())
}

fn validate_plugins(plugins: &[PluginInstance]) -> Result<(), String> {
    check_len(plugins.len(), limits::MAX_PLUGINS_PER_ENTITY, "plugins")
        .map_err(|m| format!("plugins: {m}"))?;
    let mut seen = HashSet::new();
    for (i, plugin) in plugins.iter().enumerate() {
        parse_plugin(&plugin.name, &plugin.config).map_err(|m| format!("plugins[{i}].{m}"))?;
        // Stackable plugins (rate limits: per minute and per hour) may be
        // attached several times; others run once.
        let stackable = crate::plugins::schema(&plugin.name).is_some_and(|s| s.stackable());
        if !stackable && !seen.insert(plugin.name.as_str()) {
            return Err(format!(
                "plugins[{i}].name: {:?} is attached twice",
                plugin.name
            ));
        }
    }
    Ok(())
}

fn check_fingerprint(field: &str, value: &str) -> Result<(), String> {
    if crate::secrets::parse_hash(value).is_none() {
        return Err(format!(
            "{field}: must be \"sha256:\" followed by 64 hex digits"
        ));
    }
    Ok(())
}

fn validate_credential(credential: &Credential) -> Result<(), String> {
    let set = [
        credential.api_key.is_some(),
        credential.api_key_hash.is_some(),
        credential.jwt.is_some(),
        credential.mtls.is_some(),
    ]
    .iter()
    .filter(|s| **s)
    .count();
    if set != 1 {
        return Err("kind: exactly one of api_key, api_key_hash, jwt or mtls must be set".into());
    }
    if let Some(mtls) = &credential.mtls {
        validate_mtls_credential(mtls)?;
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
        check_fingerprint("api_key_hash", hash)?;
    }
    if let Some(jwt) = &credential.jwt {
        if jwt.key.is_empty() || jwt.key.len() > 512 {
            return Err("jwt.key: must be between 1 and 512 characters".into());
        }
        if !JWT_ALGORITHMS.contains(&jwt.algorithm.as_str()) {
            return Err(format!(
                "jwt.algorithm: {} is not one of {}",
                show(&jwt.algorithm),
                JWT_ALGORITHMS.join(", ")
            ));
        }
        if let Some(fingerprint) = &jwt.secret_fingerprint {
            check_fingerprint("jwt.secret_fingerprint", fingerprint)?;
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
                (Some(secret), _) if secret.len() > limits::MAX_SECRET_LEN => {
                    return Err(format!(
                        "jwt.secret: at most {} bytes allowed (got {})",
                        limits::MAX_SECRET_LEN,
                        secret.len()
                    ))
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
                Some(key) if key.len() > limits::MAX_KEY_PEM_BYTES => {
                    return Err(format!(
                        "jwt.public_key: at most {} bytes allowed (got {})",
                        limits::MAX_KEY_PEM_BYTES,
                        key.len()
                    ))
                }
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
/// would reject (and NACK) is refused at write time instead. The DER inside
/// is first walked without recursion and refused when nested too deep: the
/// key parsers recurse once per level.
fn check_public_key(algorithm: &str, pem: &str) -> Result<(), String> {
    use jsonwebtoken::DecodingKey;
    limits::check_pem_der_depth(pem).map_err(|m| format!("jwt.public_key: {m}"))?;
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

fn validate_mtls_credential(mtls: &crate::model::MtlsCredential) -> Result<(), String> {
    let Some((kind, value)) = mtls.key() else {
        return Err(
            "mtls: exactly one of subject_cn, san_dns, san_uri or fingerprint_sha256 must be set"
                .into(),
        );
    };
    if value.is_empty() || value.len() > 1024 {
        return Err(format!(
            "mtls.{kind}: must be between 1 and 1024 characters"
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("mtls.{kind}: must not contain control characters"));
    }
    if kind == "fingerprint_sha256"
        && !(value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(
            "mtls.fingerprint_sha256: must be 64 hex digits (colons and a sha256: prefix allowed)"
                .into(),
        );
    }
    Ok(())
}

fn validate_certificate(certificate: &Certificate) -> Result<(), String> {
    check_len(
        certificate.cert_pem.len(),
        limits::MAX_CERT_PEM_BYTES,
        "bytes",
    )
    .map_err(|m| format!("cert_pem: {m}"))?;
    if !certificate.cert_pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err("cert_pem: must be a PEM certificate chain".into());
    }
    limits::check_pem_der_depth(&certificate.cert_pem).map_err(|m| format!("cert_pem: {m}"))?;
    if let Some(fingerprint) = &certificate.key_fingerprint {
        check_fingerprint("key_fingerprint", fingerprint)?;
    }
    match (&certificate.key_pem, &certificate.key_fingerprint) {
        (Some(key), _) if key.len() > limits::MAX_KEY_PEM_BYTES => {
            return Err(format!(
                "key_pem: at most {} bytes allowed (got {})",
                limits::MAX_KEY_PEM_BYTES,
                key.len()
            ))
        }
        (Some(key), _) if !(looks_like_pem(key) && key.contains("PRIVATE KEY")) => {
            return Err("key_pem: must be a PEM private key".into())
        }
        (Some(key), _) => {
            limits::check_pem_der_depth(key).map_err(|m| format!("key_pem: {m}"))?;
        }
        // Without a key a certificate is only a CA for `tls.ca_certificate`
        // (certs::check refuses it if it is also to be served).
        _ => {}
    }
    check_len(certificate.snis.len(), limits::MAX_HOSTS, "SNI names")
        .map_err(|m| format!("snis: {m}"))?;
    for (i, sni) in certificate.snis.iter().enumerate() {
        check_host(sni, true).map_err(|m| format!("snis[{i}]: {m}"))?;
    }
    if let Some(crl) = &certificate.crl_pem {
        check_len(crl.len(), limits::MAX_CRL_PEM_BYTES, "bytes")
            .map_err(|m| format!("crl_pem: {m}"))?;
        limits::check_pem_der_depth(crl).map_err(|m| format!("crl_pem: {m}"))?;
        crate::certs::check_crl(&certificate.cert_pem, crl)?;
    }
    crate::certs::check(certificate)
}

/// What a delta of routes and services changed, for [`validate_changed`].
#[derive(Debug, Default)]
pub struct ChangedEntities<'a> {
    /// Routes added or updated (by name).
    pub routes: Vec<&'a str>,
    /// Services added or updated.
    pub services: Vec<&'a str>,
    /// Services removed.
    pub removed_services: Vec<&'a str>,
}

/// Checks the state a delta of routes and services led to, looking only at
/// what it touched: the same rules [`validate`] applies to those entities
/// and to the references between them and the rest (a route's service, a
/// removed service's routes, plugins' consumers, certificates and captures).
/// `config`'s lists are sorted by name (as deltas keep them). Deltas that
/// touch consumers, global plugins or certificates go through [`validate`].
pub fn validate_changed(
    config: &GatewayConfig,
    changed: &ChangedEntities<'_>,
) -> Result<(), ConfigError> {
    for (kind, count, max) in [
        ("services", config.services.len(), limits::MAX_SERVICES),
        ("routes", config.routes.len(), limits::MAX_ROUTES),
    ] {
        check_len(count, max, "entities")
            .map_err(|m| ConfigError::whole_over_limit(format!("{kind}: {m}")))?;
    }
    let consumers: HashSet<&str> = if changed_plugins_name_consumers(config, changed) {
        config.consumers.iter().map(|c| c.name.as_str()).collect()
    } else {
        HashSet::new()
    };
    let certificates: HashSet<&str> = config
        .certificates
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    let globals: Vec<(&GlobalPlugin, Checked)> = config
        .plugins
        .iter()
        .filter_map(|p| Some((p, parse_plugin(&p.name, &p.config).ok()?)))
        .collect();

    for &name in &changed.removed_services {
        if let Some(route) = config.routes.iter().find(|route| route.service == name) {
            return Err(ConfigError::new(
                "route",
                &route.name,
                format!("service {} does not exist", show(&route.service)),
            ));
        }
    }
    for &name in &changed.services {
        let Some(service) = find(&config.services, name, |s| &s.name) else {
            continue;
        };
        let err = |msg: String| ConfigError::new("service", &service.name, msg);
        check_name(&service.name).map_err(|m| err(format!("name: {m}")))?;
        validate_service(service).map_err(err)?;
        let routes = || config.routes.iter().filter(|r| r.service == service.name);
        if service.protocol.is_http2() {
            if let Some(route) = routes().find(|r| r.websocket) {
                return Err(ConfigError::new(
                    "route",
                    &route.name,
                    format!(
                        "websocket: service {} speaks {}, which carries no HTTP/1.1 upgrade",
                        show(&service.name),
                        service.protocol.as_str()
                    ),
                ));
            }
        }
        for (i, plugin) in service.plugins.iter().enumerate() {
            if let Ok(parsed) = crate::plugins::check(&plugin.name, &plugin.config) {
                check_anonymous(&parsed, &consumers)
                    .and_then(|()| routes().try_for_each(|route| check_captures(&parsed, route)))
                    .and_then(|()| check_certificates(&parsed, &certificates))
                    .map_err(|m| err(format!("plugins[{i}].{m}")))?;
            }
        }
        if let Some(name) = service
            .tls
            .as_ref()
            .and_then(|tls| tls.ca_certificate.as_ref())
        {
            if !certificates.contains(name.as_str()) {
                return Err(err(format!(
                    "tls.ca_certificate: certificate {name:?} does not exist"
                )));
            }
        }
    }
    for &name in &changed.routes {
        let Some(route) = find(&config.routes, name, |r| &r.name) else {
            continue;
        };
        let err = |msg: String| ConfigError::new("route", &route.name, msg);
        check_name(&route.name).map_err(|m| err(format!("name: {m}")))?;
        let Some(service) = find(&config.services, &route.service, |s| &s.name) else {
            return Err(err(format!(
                "service {} does not exist",
                show(&route.service)
            )));
        };
        validate_route(route).map_err(err)?;
        if route.websocket && service.protocol.is_http2() {
            return Err(err(format!(
                "websocket: service {} speaks {}, which carries no HTTP/1.1 upgrade",
                show(&route.service),
                service.protocol.as_str()
            )));
        }
        for (i, plugin) in route.plugins.iter().enumerate() {
            if let Ok(parsed) = crate::plugins::check(&plugin.name, &plugin.config) {
                check_anonymous(&parsed, &consumers)
                    .and_then(|()| check_captures(&parsed, route))
                    .and_then(|()| check_certificates(&parsed, &certificates))
                    .map_err(|m| err(format!("plugins[{i}].{m}")))?;
            }
        }
        for (global, parsed) in &globals {
            check_captures(parsed, route)
                .map_err(|m| ConfigError::new("plugin", global.instance_name(), m))?;
        }
        // The plugins of its service apply to it too.
        for (i, plugin) in service.plugins.iter().enumerate() {
            if let Ok(parsed) = crate::plugins::check(&plugin.name, &plugin.config) {
                check_captures(&parsed, route).map_err(|m| {
                    ConfigError::new("service", &service.name, format!("plugins[{i}].{m}"))
                })?;
            }
        }
    }
    Ok(())
}

/// The entity named `name` of a list sorted by name.
fn find<'c, T>(items: &'c [T], name: &str, key: impl Fn(&T) -> &str) -> Option<&'c T> {
    items
        .binary_search_by(|item| key(item).cmp(name))
        .ok()
        .map(|i| &items[i])
}

/// Whether a changed route or service has a plugin (the consumer names are
/// only collected then).
fn changed_plugins_name_consumers(config: &GatewayConfig, changed: &ChangedEntities<'_>) -> bool {
    let route_plugins = changed
        .routes
        .iter()
        .any(|name| find(&config.routes, name, |r| &r.name).is_some_and(|r| !r.plugins.is_empty()));
    let service_plugins = changed.services.iter().any(|name| {
        find(&config.services, name, |s| &s.name).is_some_and(|s| !s.plugins.is_empty())
    });
    route_plugins || service_plugins
}

/// A plugin's named certificates must exist (see `check_certificate_refs`).
fn check_certificates(parsed: &Checked, certificates: &HashSet<&str>) -> Result<(), String> {
    for (j, wanted) in parsed.certificates.iter().enumerate() {
        if !certificates.contains(wanted.as_str()) {
            return Err(format!(
                "config.ca_certificates[{j}]: certificate {} does not exist",
                show(wanted)
            ));
        }
    }
    Ok(())
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

    // ------------------------------------------------------------ limits at the boundary

    use crate::limits::{self as l, MAX_ECHO_CHARS};

    const RSA_PUBLIC: &str = include_str!("../../data-plane/plugins/src/testdata/rsa_public.pem");

    /// `ok` passes; `bad` fails with an error containing every `needle`.
    fn boundary(ok: &GatewayConfig, bad: &GatewayConfig, needles: &[&str]) {
        if let Err(err) = validate(ok) {
            panic!("the limit itself must be accepted: {err}");
        }
        let err = validate(bad)
            .expect_err("limit + 1 must be refused")
            .to_string();
        for needle in needles {
            assert!(err.contains(needle), "{err:?} should contain {needle:?}");
        }
        assert!(err.len() < 1_024, "error too long: {} bytes", err.len());
    }

    /// `f(limit)` passes the size check (other rules may still object, but
    /// not with `needle`); `f(limit + 1)` fails with `needle`.
    fn size_boundary(limit: usize, needle: &str, f: impl Fn(usize) -> GatewayConfig) {
        if let Err(err) = validate(&f(limit)) {
            assert!(
                !err.to_string().contains(needle),
                "limit itself refused: {err}"
            );
        }
        let err = validate(&f(limit + 1)).expect_err("limit + 1").to_string();
        assert!(err.contains(needle), "{err:?} should contain {needle:?}");
        assert!(
            err.contains(&limit.to_string()),
            "{err:?} should name the limit"
        );
    }

    /// A real certificate for `*.example.com` and its key (PEM), made once.
    fn test_pair() -> &'static (String, String) {
        static PAIR: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();
        PAIR.get_or_init(|| {
            let key =
                rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("test key");
            let cert = rcgen::CertificateParams::new(vec!["*.example.com".to_string()])
                .expect("params")
                .self_signed(&key)
                .expect("test certificate");
            (cert.pem(), key.serialize_pem())
        })
    }

    fn service(name: &str) -> Service {
        Service {
            tags: Vec::new(),
            name: name.into(),
            upstream: Upstream {
                targets: vec![Target {
                    address: "127.0.0.1:9001".into(),
                    weight: 1,
                }],
                load_balancing: LoadBalancing::RoundRobin,
                hash_on: None,
                health_checks: HealthChecks::default(),
            },
            timeouts: Timeouts::default(),
            protocol: Protocol::Http,
            host_header: None,
            plugins: Vec::new(),
            tls: None,
        }
    }

    /// A valid DNS name of exactly `n` bytes (labels of at most 62 bytes).
    fn dns_name(n: usize) -> String {
        let mut name: String = "a"
            .repeat(62)
            .chars()
            .chain(['.'])
            .cycle()
            .take(n)
            .collect();
        if name.ends_with('.') {
            name.pop();
            name.push('b');
        }
        name
    }

    fn route(name: &str) -> Route {
        Route {
            tags: Vec::new(),
            name: name.into(),
            service: "orders".into(),
            hosts: Vec::new(),
            paths: Vec::new(),
            methods: Vec::new(),
            headers: Vec::new(),
            strip_path: false,
            priority: 0,
            plugins: Vec::new(),
            max_body_bytes: None,
            metrics: RouteMetricsOptions::default(),
            https_only: false,
            https_redirect: false,
            encoded_slashes: None,
            path_parameters: None,
            retries: None,
            retry_non_idempotent: false,
            websocket: false,
            websocket_idle_timeout_ms: None,
        }
    }

    fn with_routes(routes: Vec<Route>) -> GatewayConfig {
        GatewayConfig {
            services: vec![service("orders")],
            routes,
            ..GatewayConfig::default()
        }
    }

    fn one_route(edit: impl Fn(&mut Route)) -> GatewayConfig {
        let mut r = route("r");
        edit(&mut r);
        with_routes(vec![r])
    }

    fn transformer(config: serde_json::Value) -> GatewayConfig {
        one_route(|r| r.plugins = vec![PluginInstance::new("request-transformer", config.clone())])
    }

    #[test]
    fn entity_counts_at_the_boundary() {
        let services = |n: usize| GatewayConfig {
            services: (0..n).map(|i| service(&format!("s{i}"))).collect(),
            ..GatewayConfig::default()
        };
        boundary(
            &services(l::MAX_SERVICES),
            &services(l::MAX_SERVICES + 1),
            &["config: services", "10000"],
        );
        let routes = |n: usize| with_routes((0..n).map(|i| route(&format!("r{i}"))).collect());
        boundary(
            &routes(l::MAX_ROUTES),
            &routes(l::MAX_ROUTES + 1),
            &["config: routes", "100000"],
        );
        let consumers = |n: usize| GatewayConfig {
            consumers: (0..n)
                .map(|i| Consumer {
                    tags: Vec::new(),
                    name: format!("c{i}"),
                    groups: Vec::new(),
                    credentials: Vec::new(),
                })
                .collect(),
            ..GatewayConfig::default()
        };
        boundary(
            &consumers(l::MAX_CONSUMERS),
            &consumers(l::MAX_CONSUMERS + 1),
            &["config: consumers"],
        );
        let plugins = |n: usize| GatewayConfig {
            plugins: (0..n)
                .map(|i| GlobalPlugin {
                    tags: Vec::new(),
                    instance: Some(format!("p{i}")),
                    name: "key-auth".into(),
                    config: serde_json::json!({}),
                    enabled: true,
                })
                .collect(),
            ..GatewayConfig::default()
        };
        boundary(
            &plugins(l::MAX_GLOBAL_PLUGINS),
            &plugins(l::MAX_GLOBAL_PLUGINS + 1),
            &["config: plugins"],
        );
        let certificates = |n: usize| GatewayConfig {
            certificates: (0..n)
                .map(|i| Certificate {
                    tags: Vec::new(),
                    name: format!("c{i}"),
                    cert_pem: test_pair().0.clone(),
                    key_pem: Some(test_pair().1.clone()),
                    key_fingerprint: None,
                    snis: vec![format!("c{i}.example.com")],
                    default: false,
                    crl_pem: None,
                    info: None,
                })
                .collect(),
            ..GatewayConfig::default()
        };
        boundary(
            &certificates(l::MAX_CERTIFICATES),
            &certificates(l::MAX_CERTIFICATES + 1),
            &["config: certificates"],
        );
    }

    #[test]
    fn names_at_the_boundary() {
        let named = |n: usize| with_routes(vec![route(&"r".repeat(n))]);
        boundary(
            &named(l::MAX_NAME_LEN),
            &named(l::MAX_NAME_LEN + 1),
            &["name: must be at most 128"],
        );
        // A huge invalid name is echoed cut, never whole.
        let err = validate(&named(1_000_000))
            .expect_err("refused")
            .to_string();
        assert!(err.len() < 400, "{} bytes", err.len());
        assert!(err.contains('…'));
        let group = |n: usize| GatewayConfig {
            consumers: vec![Consumer {
                tags: Vec::new(),
                name: "c".into(),
                groups: (0..n).map(|i| format!("g{i}")).collect(),
                credentials: Vec::new(),
            }],
            ..GatewayConfig::default()
        };
        boundary(
            &group(l::MAX_GROUPS),
            &group(l::MAX_GROUPS + 1),
            &["groups: at most 64"],
        );
    }

    #[test]
    fn service_fields_at_the_boundary() {
        let targets = |n: usize| {
            let mut s = service("orders");
            s.upstream.targets = (0..n)
                .map(|i| Target {
                    address: format!("10.0.{}.{}:80", i / 250, i % 250 + 1),
                    weight: 1,
                })
                .collect();
            GatewayConfig {
                services: vec![s],
                ..GatewayConfig::default()
            }
        };
        boundary(
            &targets(l::MAX_TARGETS),
            &targets(l::MAX_TARGETS + 1),
            &["upstream.targets: at most 1024"],
        );
        // Address: a DNS name of labels up to 63 bytes, then ":65535".
        let address = |n: usize| {
            let mut s = service("orders");
            s.upstream.targets[0].address = format!("{}:65535", dns_name(n - 6));
            GatewayConfig {
                services: vec![s],
                ..GatewayConfig::default()
            }
        };
        size_boundary(
            l::MAX_ADDRESS_LEN,
            "upstream.targets[0].address: at most",
            address,
        );
        let plugins = |n: usize| {
            let mut s = service("orders");
            s.plugins = (0..n)
                .map(|_| {
                    PluginInstance::new(
                        "rate-limit",
                        serde_json::json!({"limit": 1, "window": "1s"}),
                    )
                })
                .collect();
            GatewayConfig {
                services: vec![s],
                ..GatewayConfig::default()
            }
        };
        boundary(
            &plugins(l::MAX_PLUGINS_PER_ENTITY),
            &plugins(l::MAX_PLUGINS_PER_ENTITY + 1),
            &["plugins: at most 32"],
        );
    }

    #[test]
    fn balancing_health_and_retry_fields_are_checked_naming_the_field() {
        let with = |yaml: &str| {
            let config = GatewayConfig::from_yaml(yaml).expect("yaml");
            validate(&config).map_err(|e| e.to_string())
        };
        let svc = |upstream: &str| {
            format!(
                "services:\n  - name: s\n    upstream: {{ targets: [{{address: 'a:1'}}, {{address: 'b:1'}}], {upstream} }}\n"
            )
        };
        for ok in [
            "load_balancing: least_request",
            "load_balancing: consistent_hash, hash_on: 'header:x-user'",
            "load_balancing: consistent_hash, hash_on: 'cookie:session'",
            "load_balancing: consistent_hash, hash_on: ip",
            "load_balancing: consistent_hash, hash_on: path",
            "health_checks: { passive: { consecutive_failures: 0 } }",
            "health_checks: { active: { path: /healthz, interval_ms: 100, timeout_ms: 100, expected_statuses: [200, 204] } }",
        ] {
            assert_eq!(with(&svc(ok)), Ok(()), "{ok}");
        }
        for (bad, expected) in [
            (
                "load_balancing: consistent_hash",
                "service \"s\": upstream.hash_on: required with consistent_hash",
            ),
            (
                "hash_on: ip",
                "upstream.hash_on: only with load_balancing: consistent_hash",
            ),
            (
                "load_balancing: consistent_hash, hash_on: 'query:q'",
                "upstream.hash_on: \"query:q\" is not one of",
            ),
            (
                "load_balancing: consistent_hash, hash_on: 'header:a b'",
                "upstream.hash_on: header",
            ),
            (
                "load_balancing: consistent_hash, hash_on: 'cookie:a;b'",
                "upstream.hash_on: \"cookie:a;b\" is not a valid cookie name",
            ),
            (
                "health_checks: { passive: { max_ejected_percent: 101 } }",
                "upstream.health_checks.passive.max_ejected_percent",
            ),
            (
                "health_checks: { passive: { base_ejection_ms: 0 } }",
                "upstream.health_checks.passive.base_ejection_ms",
            ),
            (
                "health_checks: { passive: { base_ejection_ms: 5000, max_ejection_ms: 1000 } }",
                "upstream.health_checks.passive.max_ejection_ms",
            ),
            (
                "health_checks: { active: { path: healthz } }",
                "upstream.health_checks.active.path",
            ),
            (
                "health_checks: { active: { path: /h, interval_ms: 50 } }",
                "upstream.health_checks.active.interval_ms",
            ),
            (
                "health_checks: { active: { path: /h, interval_ms: 1000, timeout_ms: 2000 } }",
                "upstream.health_checks.active.timeout_ms",
            ),
            (
                "health_checks: { active: { path: /h, healthy_threshold: 0 } }",
                "upstream.health_checks.active.healthy_threshold",
            ),
            (
                "health_checks: { active: { path: /h, expected_statuses: [700] } }",
                "upstream.health_checks.active.expected_statuses[0]",
            ),
        ] {
            let err = with(&svc(bad)).expect_err(bad);
            assert!(err.contains(expected), "{bad}: {err}");
        }
        let route = "services:\n  - name: s\n    upstream: { targets: [{address: 'a:1'}] }\nroutes:\n  - { name: r, service: s, retries: 6 }\n";
        let err = with(route).expect_err("retries");
        assert!(
            err.contains("route \"r\": retries: must be at most 5"),
            "{err}"
        );
    }

    #[test]
    fn websocket_fields_are_checked() {
        let ok = one_route(|r| {
            r.websocket = true;
            r.websocket_idle_timeout_ms = Some(1_000);
        });
        assert!(validate(&ok).is_ok());
        for (edit, expected) in [
            (
                (|r: &mut Route| r.websocket_idle_timeout_ms = Some(1_000)) as fn(&mut Route),
                "websocket_idle_timeout_ms: only with websocket: true",
            ),
            (
                |r: &mut Route| {
                    r.websocket = true;
                    r.websocket_idle_timeout_ms = Some(0);
                },
                "websocket_idle_timeout_ms: must be between 1 and",
            ),
        ] {
            let err = validate(&one_route(edit)).expect_err("refused");
            assert!(err.to_string().contains(expected), "{err}");
        }
        let mut h2c = one_route(|r| r.websocket = true);
        h2c.services[0].protocol = Protocol::H2c;
        let err = validate(&h2c).expect_err("refused");
        assert!(err.to_string().contains("websocket: service"), "{err}");
        h2c.routes[0].websocket = false;
        assert!(validate(&h2c).is_ok());
    }

    #[test]
    fn route_fields_at_the_boundary() {
        let host = dns_name;
        size_boundary(l::MAX_HOST_LEN, "hosts[0]: at most", |n| {
            one_route(|r| r.hosts = vec![host(n)])
        });
        let hosts = |n: usize| {
            one_route(|r| r.hosts = (0..n).map(|i| format!("h{i}.example.com")).collect())
        };
        boundary(
            &hosts(l::MAX_HOSTS),
            &hosts(l::MAX_HOSTS + 1),
            &["hosts: at most 64"],
        );
        let paths = |n: usize| one_route(|r| r.paths = (0..n).map(|i| format!("/p{i}")).collect());
        boundary(
            &paths(l::MAX_PATHS),
            &paths(l::MAX_PATHS + 1),
            &["paths: at most 64"],
        );
        let path = |n: usize| one_route(|r| r.paths = vec![format!("/{}", "a".repeat(n - 1))]);
        boundary(
            &path(l::MAX_PATH_LEN),
            &path(l::MAX_PATH_LEN + 1),
            &["paths[0]: at most 512"],
        );
        let exact = |n: usize| one_route(|r| r.paths = vec![format!("=/{}", "a".repeat(n - 1))]);
        boundary(
            &exact(l::MAX_PATH_LEN),
            &exact(l::MAX_PATH_LEN + 1),
            &["paths[0]: at most 512"],
        );
        let headers = |n: usize| {
            one_route(|r| {
                r.headers = (0..n)
                    .map(|i| HeaderMatch {
                        name: format!("x-h{i}"),
                        value: None,
                    })
                    .collect()
            })
        };
        boundary(
            &headers(l::MAX_HEADER_MATCHES),
            &headers(l::MAX_HEADER_MATCHES + 1),
            &["headers: at most 32"],
        );
        let name = |n: usize| {
            one_route(|r| {
                r.headers = vec![HeaderMatch {
                    name: "x".repeat(n),
                    value: None,
                }]
            })
        };
        boundary(
            &name(l::MAX_HEADER_NAME_LEN),
            &name(l::MAX_HEADER_NAME_LEN + 1),
            &["headers[0].name", "256"],
        );
        let value = |n: usize| {
            one_route(|r| {
                r.headers = vec![HeaderMatch {
                    name: "x-v".into(),
                    value: Some("v".repeat(n)),
                }]
            })
        };
        boundary(
            &value(l::MAX_HEADER_VALUE_LEN),
            &value(l::MAX_HEADER_VALUE_LEN + 1),
            &["headers[0].value: at most 4096"],
        );
        let plugins = |n: usize| {
            one_route(|r| {
                r.plugins = (0..n)
                    .map(|_| {
                        PluginInstance::new(
                            "rate-limit",
                            serde_json::json!({"limit": 1, "window": "1s"}),
                        )
                    })
                    .collect()
            })
        };
        boundary(
            &plugins(l::MAX_PLUGINS_PER_ENTITY),
            &plugins(l::MAX_PLUGINS_PER_ENTITY + 1),
            &["plugins: at most 32"],
        );
    }

    #[test]
    fn plugin_config_at_the_boundary() {
        let acl = |pad: usize| serde_json::json!({"allow": ["x".repeat(pad)]});
        let base = l::json_size_and_depth(&acl(0)).0;
        let config =
            |n: usize| one_route(|r| r.plugins = vec![PluginInstance::new("acl", acl(n - base))]);
        boundary(
            &config(l::MAX_PLUGIN_CONFIG_BYTES),
            &config(l::MAX_PLUGIN_CONFIG_BYTES + 1),
            &["plugins[0].config: at most 65536 bytes"],
        );
        let nested = |depth: usize| {
            let mut value = serde_json::json!(1);
            for _ in 0..depth {
                value = serde_json::json!([value]);
            }
            value
        };
        assert!(l::check_plugin_config_size(&nested(l::MAX_PLUGIN_CONFIG_DEPTH)).is_ok());
        let err =
            l::check_plugin_config_size(&nested(l::MAX_PLUGIN_CONFIG_DEPTH + 1)).expect_err("deep");
        assert!(err.contains("16 levels"), "{err}");
    }

    #[test]
    fn transformer_values_at_the_boundary() {
        let header =
            |n: usize| transformer(serde_json::json!({"add": {"headers": {"x-a": "v".repeat(n)}}}));
        boundary(
            &header(l::MAX_HEADER_VALUE_LEN),
            &header(l::MAX_HEADER_VALUE_LEN + 1),
            &["config.add.headers.\"x-a\": at most 4096"],
        );
        let qname =
            |n: usize| transformer(serde_json::json!({"remove": {"querystring": ["q".repeat(n)]}}));
        boundary(
            &qname(l::MAX_QUERY_NAME_LEN),
            &qname(l::MAX_QUERY_NAME_LEN + 1),
            &["config.remove.querystring[0]: at most 256"],
        );
        let qvalue = |n: usize| {
            transformer(serde_json::json!({"add": {"querystring": {"q": "v".repeat(n)}}}))
        };
        boundary(
            &qvalue(l::MAX_QUERY_VALUE_LEN),
            &qvalue(l::MAX_QUERY_VALUE_LEN + 1),
            &["config.add.querystring.\"q\": at most 4096"],
        );
    }

    fn jwt_consumer(jwt: JwtCredential) -> GatewayConfig {
        GatewayConfig {
            consumers: vec![Consumer {
                tags: Vec::new(),
                name: "c".into(),
                groups: Vec::new(),
                credentials: vec![Credential {
                    jwt: Some(jwt),
                    ..Credential::default()
                }],
            }],
            ..GatewayConfig::default()
        }
    }

    #[test]
    fn credential_fields_at_the_boundary() {
        let credentials = |n: usize| GatewayConfig {
            consumers: vec![Consumer {
                tags: Vec::new(),
                name: "c".into(),
                groups: Vec::new(),
                credentials: (0..n)
                    .map(|i| Credential {
                        api_key: Some(format!("key-number-{i:04}")),
                        ..Credential::default()
                    })
                    .collect(),
            }],
            ..GatewayConfig::default()
        };
        boundary(
            &credentials(l::MAX_CREDENTIALS),
            &credentials(l::MAX_CREDENTIALS + 1),
            &["credentials: at most 32"],
        );
        let key = |n: usize| {
            jwt_consumer(JwtCredential {
                key: "k".repeat(n),
                algorithm: "HS256".into(),
                secret: Some("0123456789abcdef".into()),
                ..JwtCredential::default()
            })
        };
        boundary(
            &key(512),
            &key(513),
            &["jwt.key: must be between 1 and 512"],
        );
        let secret = |n: usize| {
            jwt_consumer(JwtCredential {
                key: "iss".into(),
                algorithm: "HS256".into(),
                secret: Some("s".repeat(n)),
                ..JwtCredential::default()
            })
        };
        boundary(
            &secret(l::MAX_SECRET_LEN),
            &secret(l::MAX_SECRET_LEN + 1),
            &["jwt.secret: at most 4096"],
        );
        let api_key = |n: usize| GatewayConfig {
            consumers: vec![Consumer {
                tags: Vec::new(),
                name: "c".into(),
                groups: Vec::new(),
                credentials: vec![Credential {
                    api_key: Some("k".repeat(n)),
                    ..Credential::default()
                }],
            }],
            ..GatewayConfig::default()
        };
        boundary(
            &api_key(512),
            &api_key(513),
            &["api_key: must be between 8 and 512"],
        );
        boundary(
            &api_key(8),
            &api_key(7),
            &["api_key: must be between 8 and 512"],
        );
        // A valid key padded with trailing newlines up to the size.
        let public_key = |n: usize| {
            jwt_consumer(JwtCredential {
                key: "iss".into(),
                algorithm: "RS256".into(),
                public_key: Some(format!("{RSA_PUBLIC}{}", "\n".repeat(n - RSA_PUBLIC.len()))),
                ..JwtCredential::default()
            })
        };
        size_boundary(l::MAX_KEY_PEM_BYTES, "jwt.public_key: at most", public_key);
        validate(&public_key(RSA_PUBLIC.len())).expect("the real key is accepted");
    }

    #[test]
    fn certificate_fields_at_the_boundary() {
        let certificate = |cert: String, key: String, snis: usize| GatewayConfig {
            certificates: vec![Certificate {
                tags: Vec::new(),
                name: "c".into(),
                cert_pem: cert,
                key_pem: Some(key),
                key_fingerprint: None,
                snis: (0..snis).map(|i| format!("s{i}.example.com")).collect(),
                default: false,
                crl_pem: None,
                info: None,
            }],
            ..GatewayConfig::default()
        };
        let (cert, key) = (test_pair().0.as_str(), test_pair().1.as_str());
        let pad = |text: &str, n: usize| format!("{text}{}", "\n".repeat(n - text.len()));
        size_boundary(l::MAX_CERT_PEM_BYTES, "cert_pem: at most", |n| {
            certificate(pad(cert, n), key.into(), 1)
        });
        size_boundary(l::MAX_KEY_PEM_BYTES, "key_pem: at most", |n| {
            certificate(cert.into(), pad(key, n), 1)
        });
        boundary(
            &certificate(cert.into(), key.into(), l::MAX_HOSTS),
            &certificate(cert.into(), key.into(), l::MAX_HOSTS + 1),
            &["snis: at most 64"],
        );
    }

    // ------------------------------------------------------------ values a data plane cannot serve

    #[test]
    fn deeply_nested_der_names_the_field_without_recursing() {
        // 3,000 levels with minimal length octets: about 11 KB of DER,
        // under the PEM size limit, so the depth check is what answers.
        let mut der = vec![0x05, 0x00];
        for _ in 0..3_000 {
            let len = der.len();
            let mut wrapped = vec![0x30];
            match len {
                0..=0x7f => wrapped.push(len as u8),
                0x80..=0xff => wrapped.extend([0x81, len as u8]),
                _ => wrapped.extend([0x82, (len >> 8) as u8, len as u8]),
            }
            wrapped.extend_from_slice(&der);
            der = wrapped;
        }
        let table = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut b64 = String::new();
        for chunk in der.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                b64.push(if i <= chunk.len() {
                    table[((n >> (18 - 6 * i)) & 63) as usize] as char
                } else {
                    '='
                });
            }
        }
        let pem = format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n");
        // Run on a small stack: the check must not recurse per level.
        let err = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || {
                validate(&jwt_consumer(JwtCredential {
                    key: "iss".into(),
                    algorithm: "RS256".into(),
                    public_key: Some(pem),
                    ..JwtCredential::default()
                }))
            })
            .expect("thread")
            .join()
            .expect("no stack overflow")
            .expect_err("refused")
            .to_string();
        assert!(
            err.contains("credentials[0].jwt.public_key: DER nested more than 32"),
            "{err}"
        );
    }

    #[test]
    fn addresses_the_data_plane_cannot_dial_are_refused() {
        for bad in [
            "h:+80",
            "::1:80",
            "[1.2.3.4]:80",
            "h:0",
            "h:65536",
            "h:",
            ":80",
            "h",
            "[::1]",
            "[::1:80",
            "[fe80::1%eth0]:80",
            "1.2.3:80",
            "999.1.1.1:80",
            "h:080080",
            "h h:80",
            "h\u{1}:80",
            "é:80",
        ] {
            let err = check_address(bad).expect_err(bad);
            assert!(err.len() < 400, "{err}");
        }
        for good in [
            "127.0.0.1:80",
            "[::1]:8080",
            "api.internal:443",
            "h:65535",
            "h:1",
            "my-svc:9000",
        ] {
            check_address(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
    }

    #[test]
    fn host_patterns_are_checked() {
        for bad in [
            "*.com",
            "*.",
            "*",
            "a.*.com",
            "*.*.com",
            "Ex ample.com",
            "-a.com",
            "a..com",
            "1.2.3",
            "*.1.2",
        ] {
            assert!(check_host(bad, true).is_err(), "{bad}");
        }
        for good in [
            "*.example.com",
            "api.example.com",
            "localhost",
            "127.0.0.1",
            "x1.example.c0m",
        ] {
            check_host(good, true).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        let err = validate(&one_route(|r| r.hosts = vec!["*.com".into()])).expect_err("refused");
        assert!(err.to_string().contains("hosts[0]"), "{err}");
    }

    #[test]
    fn header_values_with_control_characters_are_refused() {
        for bad in [
            "a\u{1}b", "a\u{7f}", "a\rb", "a\nb", "\0", " lead", "trail\t",
        ] {
            let err = validate(&one_route(|r| {
                r.headers = vec![HeaderMatch {
                    name: "x-v".into(),
                    value: Some(bad.into()),
                }]
            }))
            .expect_err(bad);
            assert!(err.to_string().contains("headers[0].value"), "{err}");
            let err = validate(&transformer(
                serde_json::json!({"add": {"headers": {"x-a": bad}}}),
            ))
            .expect_err(bad);
            assert!(err.to_string().contains("config.add.headers"), "{err}");
        }
        for good in ["2", "a b", "tab\tinside", "UTF-8 é"] {
            validate(&transformer(
                serde_json::json!({"add": {"headers": {"x-a": good}}}),
            ))
            .unwrap_or_else(|e| panic!("{good}: {e}"));
        }
    }

    #[test]
    fn query_names_that_would_split_parameters_are_refused() {
        for bad in ["a&b", "a=b", "a#b", "a\rb", "a\nb", "", "a\u{1}"] {
            for config in [
                serde_json::json!({"remove": {"querystring": [bad]}}),
                serde_json::json!({"rename": {"querystring": {bad: "x"}}}),
                serde_json::json!({"rename": {"querystring": {"x": bad}}}),
                serde_json::json!({"add": {"querystring": {bad: "x"}}}),
            ] {
                let err = validate(&transformer(config.clone()))
                    .expect_err(bad)
                    .to_string();
                assert!(
                    err.contains("config.") && err.contains("querystring"),
                    "{err}"
                );
            }
        }
        validate(&transformer(
            serde_json::json!({"add": {"querystring": {"user_id": "a&b=c"}}}),
        ))
        .expect("values are percent-encoded, so & and = are fine there");
    }

    #[test]
    fn api_key_hashes_differing_in_case_are_one_key() {
        let hash = crate::secrets::hash_api_key("alice-secret-key");
        let upper = format!("sha256:{}", hash["sha256:".len()..].to_ascii_uppercase());
        let config = GatewayConfig {
            consumers: vec![
                Consumer {
                    tags: Vec::new(),
                    name: "a".into(),
                    groups: Vec::new(),
                    credentials: vec![Credential {
                        api_key_hash: Some(hash),
                        ..Credential::default()
                    }],
                },
                Consumer {
                    tags: Vec::new(),
                    name: "b".into(),
                    groups: Vec::new(),
                    credentials: vec![Credential {
                        api_key_hash: Some(upper),
                        ..Credential::default()
                    }],
                },
            ],
            ..GatewayConfig::default()
        };
        let err = validate(&config).expect_err("duplicate").to_string();
        assert!(
            err.contains("consumer \"b\": credentials[0].api_key: the same key"),
            "{err}"
        );
    }

    #[test]
    fn echoed_values_are_cut() {
        let long = "x".repeat(10 * MAX_ECHO_CHARS);
        let err = validate(&one_route(|r| r.methods = vec![long.clone()])).expect_err("bad");
        assert!(err.to_string().len() < 500, "{err}");
        let err = validate(&one_route(|r| r.service = long.clone())).expect_err("bad");
        assert!(err.to_string().len() < 500, "{err}");
    }
}
