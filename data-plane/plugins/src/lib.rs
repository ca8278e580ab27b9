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
pub mod consumers;
pub mod cors;
pub mod ip_restriction;
pub mod jwt;
pub mod key_auth;
pub mod rate_limit;
pub mod request_transformer;

use std::sync::Arc;

use tollgate_plugin_api::Registry;
use tollgate_shared::plugins::PluginConfig;

pub use rate_limit::{RateLimiters, RedisStore};

/// What plugins need from the data plane's startup (process-lifetime state).
#[derive(Debug, Clone, Default)]
pub struct PluginOptions {
    /// Rate-limit state every snapshot's plugins share (Redis, counters).
    pub rate_limiters: Arc<RateLimiters>,
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
}

/// Parses a plugin's config with its schema and takes the typed config out.
pub(crate) fn config_of<T>(
    name: &str,
    config: &serde_json::Value,
    pick: impl FnOnce(PluginConfig) -> Option<T>,
) -> Result<T, String> {
    pick(PluginConfig::parse(name, config)?)
        .ok_or_else(|| format!("name: {name:?} has no schema of its own"))
}
