//! `key-auth` as a plugin: its factory and its authentication method.

use std::sync::Arc;

use http::{request, HeaderValue};
use tollgate_plugin_api::{
    AuthAttempt, Authenticator, BuildCtx, Identity, Phase, Plugin, PluginFactory,
};

use super::KeyAuth;
use crate::auth::{anonymous_identity, to_api, KEY_CHALLENGE};
use crate::consumers::consumer_index;
use tollgate_shared::plugins::{parse, KeyAuthConfig};

pub struct KeyAuthFactory;

impl PluginFactory for KeyAuthFactory {
    fn name(&self) -> &'static str {
        "key-auth"
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
        let config = parse::<KeyAuthConfig>(config)?;
        Ok(Arc::new(KeyAuth::new(&config, &consumer_index(ctx)?)?))
    }
}

impl Plugin for KeyAuth {
    fn name(&self) -> &'static str {
        "key-auth"
    }

    fn phase(&self) -> Phase {
        Phase::Authenticate
    }

    fn authenticator(&self) -> Option<&dyn Authenticator> {
        Some(self)
    }
}

impl Authenticator for KeyAuth {
    fn authenticate(&self, request: &mut request::Parts) -> AuthAttempt {
        let attempt = KeyAuth::authenticate(self, request);
        to_api(attempt, request)
    }

    fn challenge(&self) -> HeaderValue {
        KEY_CHALLENGE
    }

    fn anonymous(&self, request: &mut request::Parts) -> Option<Identity> {
        anonymous_identity(KeyAuth::anonymous(self), request)
    }

    fn has_anonymous(&self) -> bool {
        KeyAuth::anonymous(self).is_some()
    }
}
