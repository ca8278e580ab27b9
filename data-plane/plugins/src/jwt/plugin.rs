//! `jwt` as a plugin: its factory and its authentication method (it owns
//! the headers it forwards claims in).

use tollgate_shared::plugins::JwtConfig;

use super::JwtAuth;
use crate::auth::{credential_plugin, BEARER_CHALLENGE};

credential_plugin!(
    JwtFactory,
    JwtAuth,
    JwtConfig,
    "jwt",
    BEARER_CHALLENGE,
    owned_headers: JwtAuth::forwarded_headers
);
