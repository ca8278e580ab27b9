//! `proxy-cache` as a plugin: its factory and its hooks.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http::{request, response};
use tollgate_plugin_api::{BuildCtx, Phase, Plugin, PluginFactory, RequestCtx, Step};
use tollgate_shared::plugins::{parse, ProxyCacheConfig};

use super::{CacheStores, ProxyCache};

/// Builds `proxy-cache` instances; its [`CacheStores`] outlive snapshots.
pub struct ProxyCacheFactory {
    stores: Arc<CacheStores>,
}

impl ProxyCacheFactory {
    pub fn new(stores: Arc<CacheStores>) -> Self {
        ProxyCacheFactory { stores }
    }
}

impl PluginFactory for ProxyCacheFactory {
    fn name(&self) -> &'static str {
        "proxy-cache"
    }

    fn phase(&self) -> Phase {
        Phase::Cache
    }

    /// Path templates (request-transformer) and route names (proxy-cache)
    /// come from the config's routes.
    fn reads_routes(&self) -> bool {
        true
    }

    fn build(
        &self,
        config: &serde_json::Value,
        ctx: &BuildCtx<'_>,
    ) -> Result<Arc<dyn Plugin>, String> {
        let config = parse::<ProxyCacheConfig>(config)?;
        // Every route's name once, so keys share it instead of copying.
        let routes: HashMap<String, Arc<str>> = ctx
            .config
            .routes
            .iter()
            .map(|route| (route.name.clone(), Arc::from(route.name.as_str())))
            .collect();
        Ok(Arc::new(ProxyCache::new(
            &config,
            &self.stores,
            ctx.instance,
            routes,
        )?))
    }
}

impl Plugin for ProxyCache {
    fn name(&self) -> &'static str {
        "proxy-cache"
    }

    fn phase(&self) -> Phase {
        Phase::Cache
    }

    fn on_request<'a>(
        &'a self,
        ctx: &'a mut RequestCtx<'_>,
        request: &'a mut request::Parts,
    ) -> Step<'a> {
        self.lookup(ctx, request)
    }

    fn response_body_limit(
        &self,
        ctx: &RequestCtx<'_>,
        response: &response::Parts,
    ) -> Option<usize> {
        self.storable(ctx, response).map(|_| self.max_body_bytes)
    }

    fn on_response_body(
        &self,
        ctx: &mut RequestCtx<'_>,
        response: &mut response::Parts,
        body: &mut Bytes,
    ) {
        self.store(ctx, response, body);
    }

    fn has_response_body_hook(&self) -> bool {
        true
    }

    fn on_response(&self, ctx: &mut RequestCtx<'_>, response: &mut response::Parts) {
        self.mark(ctx, response);
    }

    fn has_response_hook(&self) -> bool {
        true
    }
}
