//! `key-auth` as a plugin: its factory and its authentication method.

use tollgate_shared::plugins::KeyAuthConfig;

use super::KeyAuth;
use crate::auth::{credential_plugin, KEY_CHALLENGE};

credential_plugin!(
    KeyAuthFactory,
    KeyAuth,
    KeyAuthConfig,
    "key-auth",
    KEY_CHALLENGE
);
