//! Tollgate's plugins, one folder each, and [`registry`], the one list of
//! them that the data plane hands to its proxy core.
//!
//! Each plugin folder holds its implementation and a `plugin.rs` with its
//! [`PluginFactory`] (name, phase, stackable, how to build an instance from
//! its config) and its [`tollgate_plugin_api::Plugin`] hooks. The proxy core
//! never names a plugin; adding one is a folder here and a line in
//! [`registry`] (see "How to add a plugin" in `docs/architecture.md`).
//!
//! [`consumers`] is the per-snapshot credential index the authentication
//! plugins share; [`auth`] what those plugins have in common.

pub mod acl;
pub mod auth;
pub mod concurrency_limit;
pub mod consumers;
pub mod cors;
pub mod ip_restriction;
pub mod json_body;
pub mod jwt;
pub mod key_auth;
pub mod mtls_auth;
pub mod proxy_cache;
pub mod rate_limit;
pub mod request_transformer;
pub mod response_transformer;

use std::sync::Arc;

use tollgate_plugin_api::Registry;

pub use proxy_cache::CacheStores;
pub use rate_limit::{RateLimiters, RedisOptions, RedisStore};

/// What plugins need from the data plane's startup (process-lifetime state).
#[derive(Debug, Clone, Default)]
pub struct PluginOptions {
    /// Rate-limit state every snapshot's plugins share (Redis, counters).
    pub rate_limiters: Arc<RateLimiters>,
    /// Cached responses every snapshot's `proxy-cache` instances share.
    pub cache_stores: Arc<CacheStores>,
}

/// Every plugin this data plane implements: one line each.
pub fn registry(options: &PluginOptions) -> Registry {
    Registry::new()
        .with(key_auth::KeyAuthFactory)
        .with(jwt::JwtFactory)
        .with(acl::AclFactory)
        .with(rate_limit::RateLimitFactory::new(
            options.rate_limiters.clone(),
        ))
        .with(request_transformer::RequestTransformerFactory)
        .with(ip_restriction::IpRestrictionFactory)
        .with(cors::CorsFactory)
        .with(mtls_auth::MtlsAuthFactory)
        .with(concurrency_limit::ConcurrencyLimitFactory::new(
            options.rate_limiters.redis().cloned(),
        ))
        .with(proxy_cache::ProxyCacheFactory::new(
            options.cache_stores.clone(),
        ))
        .with(response_transformer::ResponseTransformerFactory)
}

#[cfg(test)]
mod tests {
    /// The control plane validates with `tollgate_shared::plugins::SCHEMAS`;
    /// this registry must build exactly those plugins, each with the same
    /// stacking rule, so what the control plane accepts every data plane of
    /// this version serves.
    #[test]
    fn the_registry_and_the_schemas_name_the_same_plugins() {
        let registry = super::registry(&Default::default());
        let mut schemas: Vec<&str> = tollgate_shared::plugins::SCHEMAS
            .iter()
            .map(|schema| schema.name())
            .collect();
        schemas.sort_unstable();
        assert_eq!(registry.names(), schemas);
        for schema in tollgate_shared::plugins::SCHEMAS.iter() {
            let factory = registry.get(schema.name()).expect("registered");
            assert_eq!(factory.stackable(), schema.stackable(), "{}", schema.name());
        }
    }
}
