//! The plugin API: what the proxy core and the plugins agree on, and nothing
//! else. The core depends on this crate and never on a concrete plugin; a
//! plugin depends on this crate and never on the core.
//!
//! - [`Plugin`] ([`plugin`]): the request phases, each a no-op by default,
//!   returning an explicit [`Outcome`]: continue, refuse with a typed
//!   [`Refusal`], or reply (a CORS preflight).
//! - [`RequestCtx`] ([`context`]): the per-request context every phase sees,
//!   with typed [`Extensions`] where a plugin keeps its own request state.
//! - [`Refusal`] / [`RefusalKind`] ([`refusal`]): every answer the gateway
//!   makes itself, with its status, `error` code and message in ONE table.
//!   Metrics and the access log read the kind, never the body.
//! - [`Authenticator`] ([`auth`]): authentication methods of a route run as
//!   one any-of set, whatever plugins provide them.
//! - [`PluginFactory`] / [`Registry`] ([`registry`]): how a plugin is found
//!   by name and built from its config when a snapshot compiles.
//! - [`PluginChain`] ([`chain`]): a route's plugins in phase order, assembled
//!   once per snapshot and run per request.
//! - [`ClientCertificate`] ([`client_cert`]): the TLS client certificate of
//!   the request's connection, which the core puts in the request's
//!   extensions for authentication plugins (`mtls-auth`).
//! - [`request_id`] and [`identity`]: the request id and the identity
//!   headers, which every layer reads.
//! - [`commands`]: what the control plane asks of plugin state outside any
//!   request (a cache purge), delivered by the core's config stream.
//!
//! Dispatch is through `dyn Plugin`: a virtual call per hook, measured with
//! callgrind against the previous enum dispatch (see `docs/architecture.md`).
//! Hooks are synchronous; a plugin that must wait (a Redis round trip)
//! returns [`Step::Wait`] with a boxed future, so only waiting costs an
//! allocation.

pub mod auth;
pub mod chain;
pub mod client_cert;
pub mod commands;
pub mod context;
pub mod extensions;
pub mod identity;
pub mod plugin;
pub mod refusal;
pub mod registry;
pub mod request_id;

pub use auth::{AuthAttempt, AuthSet, Authenticator};
pub use chain::{CompiledInstance, PhaseObserver, PluginChain};
pub use client_cert::ClientCertificate;
pub use commands::CachePurger;
pub use context::{Identity, RequestCtx};
pub use extensions::Extensions;
pub use plugin::{Outcome, Phase, Plugin, Reply, Step};
pub use refusal::{AuthFailureReason, Refusal, RefusalKind};
pub use registry::{BuildCtx, PluginFactory, Registry, SnapshotScope};
pub use request_id::{RequestId, X_REQUEST_ID};
