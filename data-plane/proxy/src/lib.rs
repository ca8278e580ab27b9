//! The proxy core of the data plane, in the order a request meets it:
//!
//! - [`server`]: the listener: accept loop, connection cap, HTTP/1.1 and h2c
//!   (prior knowledge) on one port, header-read timeout, HTTP/2 limits,
//!   graceful drain.
//! - [`parse_errors`]: the answers hyper's parser makes itself, replaced by
//!   the gateway's own (JSON, counted, logged).
//! - [`observe`]: wraps the handler: the request span, metrics and the
//!   access-log line of each request.
//! - [`handler`]: one request from bounds checks to relayed response: route
//!   ([`router`]), plugin chain (through `tollgate_plugin_api` only: the core
//!   never names a plugin), target pick (`tollgate_lb`), upstream call.
//! - [`respond`]: the one place a refusal becomes a response.
//! - [`request_body`]: client bodies buffered (declared length, under a cap)
//!   for the plugins that asked to edit them.
//! - [`response_body`]: upstream bodies buffered (under a cap) for the
//!   plugins that asked to read or replace them.
//! - [`forward`]: hop-by-hop headers out, `X-Forwarded-*` and `X-Request-Id` in;
//!   [`untrusted`]: identity headers an untrusted client may not set.
//! - [`upstream`]: a service's targets, balancer and connector; timeouts,
//!   response checks.
//! - [`connector`]: how a request reaches a target (the seam where TLS and
//!   HTTP/2 upstreams plug in beside the HTTP/1.1 pool).
//! - [`pool`]: keep-alive HTTP/1.1 upstream connections (plain or TLS),
//!   pooled per target and worker thread; [`h2`]: multiplexed HTTP/2
//!   (`h2c`) upstream connections, one per target and worker thread.
//! - [`websocket`]: WebSocket upgrades on opted-in routes, and their tunnels.
//! - [`tls`]: TLS termination (per-snapshot server config, SNI resolver,
//!   handshake results) and TLS to upstreams.
//! - [`body`]: the streamed body types and their size/idle guards.
//! - [`snapshot`]: configs received, validated, compiled (with the plugin
//!   [`tollgate_plugin_api::Registry`] the binary hands in), swapped, cached.
//! - [`status`], [`shutdown`], [`error`]: the status port, signals and
//!   draining, startup errors.
//!
//! Layers (enforced by crate dependencies): this crate uses the plugin API,
//! the balancers and telemetry; none of them uses it.

pub mod body;
pub mod connector;
pub mod error;
pub mod forward;
pub mod h2;
pub mod handler;
pub mod health;
pub mod http1_client;
pub mod observe;
pub mod parse_errors;
pub mod pool;
pub mod probe;
pub mod request_body;
pub mod respond;
pub mod response_body;
pub mod router;
pub mod send_timeout;
pub mod server;
pub mod shutdown;
pub mod snapshot;
pub mod status;
pub mod tls;
pub mod untrusted;
pub mod upstream;
pub mod websocket;

pub use error::DpError;
