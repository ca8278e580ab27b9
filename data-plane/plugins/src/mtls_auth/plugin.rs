//! `mtls-auth` as a plugin: its factory and its authentication method.

use std::sync::Arc;

use http::header::{HeaderName, HeaderValue};
use http::request;
use tollgate_plugin_api::{
    AuthAttempt, Authenticator, BuildCtx, Identity, Phase, Plugin, PluginFactory,
};
use tollgate_shared::plugins::MtlsAuthConfig;

use super::{anonymous_identity, MtlsAuth, NO_CHALLENGE};

pub struct MtlsAuthFactory;

impl PluginFactory for MtlsAuthFactory {
    fn name(&self) -> &'static str {
        "mtls-auth"
    }

    fn phase(&self) -> Phase {
        Phase::Authenticate
    }

    fn prepare(&self, ctx: &BuildCtx<'_>) -> Result<(), String> {
        crate::consumers::consumer_index(ctx).map(drop)
    }

    fn build(
        &self,
        config: &serde_json::Value,
        ctx: &BuildCtx<'_>,
    ) -> Result<Arc<dyn Plugin>, String> {
        let config = tollgate_shared::plugins::parse::<MtlsAuthConfig>(config)?;
        let index = crate::consumers::consumer_index(ctx)?;
        Ok(Arc::new(MtlsAuth::new(&config, ctx.config, &index)?))
    }
}

impl Plugin for MtlsAuth {
    fn name(&self) -> &'static str {
        "mtls-auth"
    }

    fn phase(&self) -> Phase {
        Phase::Authenticate
    }

    fn authenticator(&self) -> Option<&dyn Authenticator> {
        Some(self)
    }

    fn client_ca_certificates(&self) -> &[Vec<u8>] {
        self.ca_certificates()
    }
}

impl Authenticator for MtlsAuth {
    fn authenticate(&self, request: &mut request::Parts) -> AuthAttempt {
        self.attempt(request)
    }

    fn challenge(&self) -> HeaderValue {
        NO_CHALLENGE
    }

    fn anonymous(&self, request: &mut request::Parts) -> Option<Identity> {
        anonymous_identity(self, request)
    }

    fn has_anonymous(&self) -> bool {
        MtlsAuth::anonymous(self).is_some()
    }

    fn owned_headers(&self) -> &[HeaderName] {
        MtlsAuth::owned_headers(self)
    }

    fn client_ca_certificates(&self) -> &[Vec<u8>] {
        self.ca_certificates()
    }
}
