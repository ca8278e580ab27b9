//! Conversion between the model ([`crate::model`]) and its protobuf form
//! ([`crate::proto::config`]).
//!
//! Model -> proto cannot fail. Proto -> model fails with a [`ConfigError`]
//! naming the entity and field when a string enum or a plugin's JSON config is
//! not understood, so a bad gRPC request is rejected as precisely as a bad
//! YAML file.

use crate::model::*;
use crate::proto::config as pb;
use crate::ConfigError;

// ---------------------------------------------------------------- model -> proto

impl From<&GatewayConfig> for pb::GatewayConfig {
    fn from(config: &GatewayConfig) -> Self {
        pb::GatewayConfig {
            services: config.services.iter().map(Into::into).collect(),
            routes: config.routes.iter().map(Into::into).collect(),
            consumers: config.consumers.iter().map(Into::into).collect(),
            plugins: config.plugins.iter().map(Into::into).collect(),
            certificates: config.certificates.iter().map(Into::into).collect(),
        }
    }
}

fn plugin_to_pb(plugin: &PluginInstance) -> pb::Plugin {
    pb::Plugin {
        name: plugin.name.clone(),
        config_json: if plugin.config.is_null() {
            String::new()
        } else {
            plugin.config.to_string()
        },
        enabled: if plugin.enabled { None } else { Some(false) },
    }
}

impl From<&Service> for pb::Service {
    fn from(service: &Service) -> Self {
        pb::Service {
            name: service.name.clone(),
            upstream: Some(pb::Upstream {
                targets: service
                    .upstream
                    .targets
                    .iter()
                    .map(|t| pb::Target {
                        address: t.address.clone(),
                        weight: Some(t.weight),
                    })
                    .collect(),
                load_balancing: service.upstream.load_balancing.as_str().to_string(),
            }),
            timeouts: Some(pb::Timeouts {
                connect_ms: service.timeouts.connect_ms,
                request_ms: service.timeouts.request_ms,
            }),
            protocol: service.protocol.as_str().to_string(),
            host_header: service.host_header.clone().unwrap_or_default(),
            plugins: service.plugins.iter().map(plugin_to_pb).collect(),
            tls: service.tls.as_ref().map(|tls| pb::UpstreamTls {
                ca_pem: tls.ca_pem.clone().unwrap_or_default(),
                ca_certificate: tls.ca_certificate.clone().unwrap_or_default(),
                sni: tls.sni.clone().unwrap_or_default(),
                verify: tls.verify,
            }),
        }
    }
}

impl From<&Route> for pb::Route {
    fn from(route: &Route) -> Self {
        pb::Route {
            name: route.name.clone(),
            service: route.service.clone(),
            hosts: route.hosts.clone(),
            paths: route.paths.clone(),
            methods: route.methods.clone(),
            headers: route
                .headers
                .iter()
                .map(|h| pb::HeaderMatch {
                    name: h.name.clone(),
                    value: h.value.clone().unwrap_or_default(),
                    present: h.value.is_none(),
                })
                .collect(),
            strip_path: route.strip_path,
            priority: route.priority,
            plugins: route.plugins.iter().map(plugin_to_pb).collect(),
            max_body_bytes: route.max_body_bytes,
            metrics: (!route.metrics.is_default()).then_some(pb::RouteMetricsOptions {
                consumer_labels: route.metrics.consumer_labels,
            }),
            https_only: route.https_only,
            https_redirect: route.https_redirect,
        }
    }
}

impl From<&Consumer> for pb::Consumer {
    fn from(consumer: &Consumer) -> Self {
        pb::Consumer {
            name: consumer.name.clone(),
            groups: consumer.groups.clone(),
            credentials: consumer.credentials.iter().map(credential_to_pb).collect(),
        }
    }
}

fn credential_to_pb(credential: &Credential) -> pb::Credential {
    let kind = if let Some(jwt) = &credential.jwt {
        Some(pb::credential::Kind::Jwt(pb::JwtCredential {
            key: jwt.key.clone(),
            key_claim: match jwt.key_claim {
                JwtKeyClaim::Iss => "iss".into(),
                JwtKeyClaim::Kid => "kid".into(),
            },
            algorithm: jwt.algorithm.clone(),
            secret: jwt.secret.clone().unwrap_or_default(),
            secret_fingerprint: jwt.secret_fingerprint.clone().unwrap_or_default(),
            public_key: jwt.public_key.clone().unwrap_or_default(),
        }))
    } else if credential.api_key.is_some() || credential.api_key_hash.is_some() {
        Some(pb::credential::Kind::ApiKey(pb::ApiKeyCredential {
            key: credential.api_key.clone().unwrap_or_default(),
            key_hash: credential.api_key_hash.clone().unwrap_or_default(),
        }))
    } else {
        None
    };
    pb::Credential { kind }
}

impl From<&GlobalPlugin> for pb::GlobalPlugin {
    fn from(plugin: &GlobalPlugin) -> Self {
        pb::GlobalPlugin {
            instance: plugin.instance.clone().unwrap_or_default(),
            plugin: Some(plugin_to_pb(&plugin.as_instance())),
        }
    }
}

impl From<&Certificate> for pb::Certificate {
    fn from(certificate: &Certificate) -> Self {
        pb::Certificate {
            name: certificate.name.clone(),
            cert_pem: certificate.cert_pem.clone(),
            key_pem: certificate.key_pem.clone().unwrap_or_default(),
            key_fingerprint: certificate.key_fingerprint.clone().unwrap_or_default(),
            snis: certificate.snis.clone(),
            default: certificate.default,
            info: certificate.info.as_ref().map(|info| pb::CertificateInfo {
                subject: info.subject.clone(),
                issuer: info.issuer.clone(),
                sans: info.sans.clone(),
                not_before: info.not_before.clone(),
                not_after: info.not_after.clone(),
                not_after_unix: info.not_after_unix,
                fingerprint: info.fingerprint.clone(),
            }),
        }
    }
}

// ---------------------------------------------------------------- proto -> model

fn non_empty(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| text.to_string())
}

fn parse_enum<T: Copy>(table: &[(&'static str, T)], text: &str, default: T) -> Result<T, String> {
    if text.is_empty() {
        return Ok(default);
    }
    table
        .iter()
        .find(|(name, _)| *name == text)
        .map(|(_, value)| *value)
        .ok_or_else(|| {
            let names: Vec<_> = table.iter().map(|(n, _)| *n).collect();
            format!("{text:?} is not one of {}", names.join(", "))
        })
}

fn plugin_from_pb(plugin: &pb::Plugin) -> Result<PluginInstance, String> {
    let config = if plugin.config_json.trim().is_empty() {
        serde_json::Value::Object(serde_json::Map::new())
    } else {
        serde_json::from_str(&plugin.config_json)
            .map_err(|e| format!("config: not valid JSON: {e}"))?
    };
    Ok(PluginInstance {
        name: plugin.name.clone(),
        config,
        enabled: plugin.enabled.unwrap_or(true),
    })
}

fn plugins_from_pb(plugins: &[pb::Plugin]) -> Result<Vec<PluginInstance>, String> {
    plugins
        .iter()
        .enumerate()
        .map(|(i, p)| plugin_from_pb(p).map_err(|m| format!("plugins[{i}].{m}")))
        .collect()
}

impl TryFrom<&pb::GatewayConfig> for GatewayConfig {
    type Error = ConfigError;
    fn try_from(config: &pb::GatewayConfig) -> Result<Self, ConfigError> {
        Ok(GatewayConfig {
            services: config
                .services
                .iter()
                .map(TryInto::try_into)
                .collect::<Result<_, _>>()?,
            routes: config
                .routes
                .iter()
                .map(TryInto::try_into)
                .collect::<Result<_, _>>()?,
            consumers: config
                .consumers
                .iter()
                .map(TryInto::try_into)
                .collect::<Result<_, _>>()?,
            plugins: config
                .plugins
                .iter()
                .map(TryInto::try_into)
                .collect::<Result<_, _>>()?,
            certificates: config.certificates.iter().map(Into::into).collect(),
        })
    }
}

impl TryFrom<&pb::Service> for Service {
    type Error = ConfigError;
    fn try_from(service: &pb::Service) -> Result<Self, ConfigError> {
        let err = |m: String| ConfigError::new("service", &service.name, m);
        let upstream = service.upstream.clone().unwrap_or_default();
        Ok(Service {
            name: service.name.clone(),
            upstream: Upstream {
                targets: upstream
                    .targets
                    .iter()
                    .map(|t| Target {
                        address: t.address.clone(),
                        weight: t.weight.unwrap_or(DEFAULT_WEIGHT),
                    })
                    .collect(),
                load_balancing: parse_enum(
                    &LoadBalancing::ALL,
                    &upstream.load_balancing,
                    LoadBalancing::default(),
                )
                .map_err(|m| err(format!("upstream.load_balancing: {m}")))?,
            },
            timeouts: service
                .timeouts
                .map(|t| Timeouts {
                    connect_ms: t.connect_ms,
                    request_ms: t.request_ms,
                })
                .unwrap_or_default(),
            protocol: parse_enum(&Protocol::ALL, &service.protocol, Protocol::default())
                .map_err(|m| err(format!("protocol: {m}")))?,
            host_header: non_empty(&service.host_header),
            plugins: plugins_from_pb(&service.plugins).map_err(err)?,
            tls: service.tls.as_ref().map(|tls| UpstreamTls {
                ca_pem: non_empty(&tls.ca_pem),
                ca_certificate: non_empty(&tls.ca_certificate),
                sni: non_empty(&tls.sni),
                verify: tls.verify,
            }),
        })
    }
}

impl TryFrom<&pb::Route> for Route {
    type Error = ConfigError;
    fn try_from(route: &pb::Route) -> Result<Self, ConfigError> {
        let err = |m: String| ConfigError::new("route", &route.name, m);
        Ok(Route {
            name: route.name.clone(),
            service: route.service.clone(),
            hosts: route.hosts.clone(),
            paths: route.paths.clone(),
            methods: route.methods.clone(),
            headers: route
                .headers
                .iter()
                .map(|h| HeaderMatch {
                    name: h.name.clone(),
                    value: if h.present && h.value.is_empty() {
                        None
                    } else {
                        Some(h.value.clone())
                    },
                })
                .collect(),
            strip_path: route.strip_path,
            priority: route.priority,
            plugins: plugins_from_pb(&route.plugins).map_err(err)?,
            max_body_bytes: route.max_body_bytes,
            metrics: route
                .metrics
                .map(|m| RouteMetricsOptions {
                    consumer_labels: m.consumer_labels,
                })
                .unwrap_or_default(),
            https_only: route.https_only,
            https_redirect: route.https_redirect,
        })
    }
}

impl TryFrom<&pb::Consumer> for Consumer {
    type Error = ConfigError;
    fn try_from(consumer: &pb::Consumer) -> Result<Self, ConfigError> {
        let err = |m: String| ConfigError::new("consumer", &consumer.name, m);
        let mut credentials = Vec::with_capacity(consumer.credentials.len());
        for (i, credential) in consumer.credentials.iter().enumerate() {
            let converted = match &credential.kind {
                Some(pb::credential::Kind::ApiKey(key)) => Credential {
                    api_key: non_empty(&key.key),
                    api_key_hash: non_empty(&key.key_hash),
                    jwt: None,
                },
                Some(pb::credential::Kind::Jwt(jwt)) => Credential {
                    jwt: Some(JwtCredential {
                        key: jwt.key.clone(),
                        key_claim: match jwt.key_claim.as_str() {
                            "" | "iss" => JwtKeyClaim::Iss,
                            "kid" => JwtKeyClaim::Kid,
                            other => {
                                return Err(err(format!(
                                "credentials[{i}].jwt.key_claim: {other:?} is not one of iss, kid"
                            )))
                            }
                        },
                        algorithm: jwt.algorithm.clone(),
                        secret: non_empty(&jwt.secret),
                        secret_fingerprint: non_empty(&jwt.secret_fingerprint),
                        public_key: non_empty(&jwt.public_key),
                    }),
                    ..Credential::default()
                },
                None => return Err(err(format!("credentials[{i}]: no credential kind set"))),
            };
            credentials.push(converted);
        }
        Ok(Consumer {
            name: consumer.name.clone(),
            groups: consumer.groups.clone(),
            credentials,
        })
    }
}

impl TryFrom<&pb::GlobalPlugin> for GlobalPlugin {
    type Error = ConfigError;
    fn try_from(plugin: &pb::GlobalPlugin) -> Result<Self, ConfigError> {
        let inner = plugin.plugin.clone().unwrap_or_default();
        let instance = non_empty(&plugin.instance);
        let label = instance.clone().unwrap_or_else(|| inner.name.clone());
        let parsed = plugin_from_pb(&inner).map_err(|m| ConfigError::new("plugin", &label, m))?;
        Ok(GlobalPlugin {
            instance,
            name: parsed.name,
            config: parsed.config,
            enabled: parsed.enabled,
        })
    }
}

impl From<&pb::Certificate> for Certificate {
    fn from(certificate: &pb::Certificate) -> Self {
        Certificate {
            name: certificate.name.clone(),
            cert_pem: certificate.cert_pem.clone(),
            key_pem: non_empty(&certificate.key_pem),
            key_fingerprint: non_empty(&certificate.key_fingerprint),
            snis: certificate.snis.clone(),
            default: certificate.default,
            info: certificate.info.as_ref().map(|info| CertificateInfo {
                subject: info.subject.clone(),
                issuer: info.issuer.clone(),
                sans: info.sans.clone(),
                not_before: info.not_before.clone(),
                not_after: info.not_after.clone(),
                not_after_unix: info.not_after_unix,
                fingerprint: info.fingerprint.clone(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_through_proto() {
        let config = GatewayConfig::from_yaml(
            r#"
services:
  - name: s
    upstream: { targets: [{ address: "127.0.0.1:1", weight: 3 }], load_balancing: least_request }
    host_header: upstream.local
  - name: tls
    upstream: { targets: [{ address: "127.0.0.1:2" }] }
    protocol: https
    tls: { ca_certificate: ca, sni: up.internal, verify: false }
routes:
  - name: r
    service: s
    paths: ["/a"]
    headers: [{ name: x-v, value: "2" }, { name: x-present }]
    plugins: [{ name: acl, config: { allow: [g] } }, { name: key-auth, enabled: false }]
    metrics: { consumer_labels: true }
    https_only: true
    https_redirect: true
  - name: plain
    service: s
    paths: ["/p"]
consumers:
  - name: c
    credentials: [{ api_key_hash: "sha256:0000000000000000000000000000000000000000000000000000000000000000" }]
plugins:
  - { name: request-transformer, instance: tag, config: { add: { headers: { x-a: b } } } }
"#,
        )
        .expect("parses");
        let wire = pb::GatewayConfig::from(&config);
        let back = GatewayConfig::try_from(&wire).expect("converts back");
        assert_eq!(back, config);
    }

    #[test]
    fn bad_enum_names_the_field() {
        let wire = pb::Service {
            name: "s".into(),
            protocol: "ftp".into(),
            ..Default::default()
        };
        let err = Service::try_from(&wire).unwrap_err();
        assert!(
            err.to_string().starts_with("service \"s\": protocol:"),
            "{err}"
        );
    }
}
