//! `response-transformer` as a plugin: its factory and its hooks.

use std::sync::Arc;

use bytes::Bytes;
use http::response;
use tollgate_plugin_api::{BuildCtx, Phase, Plugin, PluginFactory, RequestCtx};
use tollgate_shared::plugins::{parse, ResponseTransformerConfig};

use super::ResponseTransformer;

pub struct ResponseTransformerFactory;

impl PluginFactory for ResponseTransformerFactory {
    fn name(&self) -> &'static str {
        "response-transformer"
    }

    fn phase(&self) -> Phase {
        Phase::TransformResponse
    }

    fn build(
        &self,
        config: &serde_json::Value,
        _ctx: &BuildCtx<'_>,
    ) -> Result<Arc<dyn Plugin>, String> {
        let config = parse::<ResponseTransformerConfig>(config)?;
        Ok(Arc::new(ResponseTransformer::new(&config)?))
    }
}

impl Plugin for ResponseTransformer {
    fn name(&self) -> &'static str {
        "response-transformer"
    }

    fn phase(&self) -> Phase {
        Phase::TransformResponse
    }

    fn response_body_limit(
        &self,
        _ctx: &RequestCtx<'_>,
        response: &response::Parts,
    ) -> Option<usize> {
        self.wants_body(&response.headers)
    }

    fn on_response_body(
        &self,
        _ctx: &mut RequestCtx<'_>,
        _response: &mut response::Parts,
        body: &mut Bytes,
    ) {
        self.edit_body(body);
    }

    fn has_response_body_hook(&self) -> bool {
        self.json.is_some()
    }

    fn on_response(&self, _ctx: &mut RequestCtx<'_>, response: &mut response::Parts) {
        self.edit_headers(&mut response.headers);
    }

    fn has_response_hook(&self) -> bool {
        true
    }
}
