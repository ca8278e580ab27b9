//! `jwt` as a plugin: its factory and its authentication method.

use std::sync::Arc;

use http::header::HeaderName;
use http::{request, HeaderValue};
use tollgate_plugin_api::{
    AuthAttempt, Authenticator, BuildCtx, Identity, Phase, Plugin, PluginFactory,
};

use super::JwtAuth;
use crate::auth::{anonymous_identity, to_api, BEARER_CHALLENGE};
use crate::consumers::consumer_index;
use tollgate_shared::plugins::{parse, JwtConfig};

pub struct JwtFactory;

impl PluginFactory for JwtFactory {
    fn name(&self) -> &'static str {
        "jwt"
    }

    fn phase(&self) -> Phase {
        Phase::Authenticate
    }

    fn prepare(&self, ctx: &BuildCtx<'_>) -> Result<(), String> {
        consumer_index(ctx).map(drop)
    }

    fn build(
        &self,
        config: &serde_json::Value,
        ctx: &BuildCtx<'_>,
    ) -> Result<Arc<dyn Plugin>, String> {
        let config = parse::<JwtConfig>(config)?;
        Ok(Arc::new(JwtAuth::new(&config, &consumer_index(ctx)?)?))
    }
}

impl Plugin for JwtAuth {
    fn name(&self) -> &'static str {
        "jwt"
    }

    fn phase(&self) -> Phase {
        Phase::Authenticate
    }

    fn authenticator(&self) -> Option<&dyn Authenticator> {
        Some(self)
    }
}

impl Authenticator for JwtAuth {
    fn authenticate(&self, request: &mut request::Parts) -> AuthAttempt {
        let attempt = JwtAuth::authenticate(self, request);
        to_api(attempt, request)
    }

    fn challenge(&self) -> HeaderValue {
        BEARER_CHALLENGE
    }

    fn anonymous(&self, request: &mut request::Parts) -> Option<Identity> {
        anonymous_identity(JwtAuth::anonymous(self), request)
    }

    fn has_anonymous(&self) -> bool {
        JwtAuth::anonymous(self).is_some()
    }

    fn owned_headers(&self) -> &[HeaderName] {
        self.forwarded_headers()
    }
}
