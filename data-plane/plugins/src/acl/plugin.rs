//! `acl` as a plugin: its factory and its hook.

use std::sync::Arc;

use http::request;
use tollgate_plugin_api::{BuildCtx, Phase, Plugin, PluginFactory, RequestCtx, Step};

use super::Acl;
use tollgate_shared::plugins::{parse, AclConfig};

pub struct AclFactory;

impl PluginFactory for AclFactory {
    fn name(&self) -> &'static str {
        "acl"
    }

    fn phase(&self) -> Phase {
        Phase::Authorize
    }

    fn build(
        &self,
        config: &serde_json::Value,
        _ctx: &BuildCtx<'_>,
    ) -> Result<Arc<dyn Plugin>, String> {
        let config = parse::<AclConfig>(config)?;
        Ok(Arc::new(Acl::new(&config)?))
    }
}

impl Plugin for Acl {
    fn name(&self) -> &'static str {
        "acl"
    }

    fn phase(&self) -> Phase {
        Phase::Authorize
    }

    fn on_request<'a>(
        &'a self,
        ctx: &'a mut RequestCtx<'_>,
        _request: &'a mut request::Parts,
    ) -> Step<'a> {
        self.authorize(ctx.consumer.as_ref())
            .map_err(|error| error.refusal())
            .into()
    }
}
