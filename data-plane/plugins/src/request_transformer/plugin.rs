//! `request-transformer` as a plugin: its factory and its hook.

use std::sync::Arc;

use http::request;
use tollgate_plugin_api::{BuildCtx, Phase, Plugin, PluginFactory, RequestCtx, Step};

use super::RequestTransformer;
use tollgate_shared::plugins::{parse, RequestTransformerConfig};

pub struct RequestTransformerFactory;

impl PluginFactory for RequestTransformerFactory {
    fn name(&self) -> &'static str {
        "request-transformer"
    }

    fn phase(&self) -> Phase {
        Phase::TransformRequest
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
        let config = parse::<RequestTransformerConfig>(config)?;
        Ok(Arc::new(RequestTransformer::new(
            &config,
            ctx.config,
            ctx.instance,
        )?))
    }
}

impl Plugin for RequestTransformer {
    fn name(&self) -> &'static str {
        "request-transformer"
    }

    fn phase(&self) -> Phase {
        Phase::TransformRequest
    }

    fn on_request<'a>(
        &'a self,
        ctx: &'a mut RequestCtx<'_>,
        request: &'a mut request::Parts,
    ) -> Step<'a> {
        self.apply(ctx, request).into()
    }

    fn request_body_limit(&self, _ctx: &RequestCtx<'_>, request: &request::Parts) -> Option<usize> {
        self.wants_body(request)
    }

    fn on_request_body(
        &self,
        _ctx: &mut RequestCtx<'_>,
        _request: &mut request::Parts,
        body: &mut bytes::Bytes,
    ) {
        self.edit_body(body);
    }

    fn has_request_body_hook(&self) -> bool {
        self.edits_bodies()
    }
}
