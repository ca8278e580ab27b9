//! The HTTP proxy, in the order a request meets it:
//!
//! - [`server`]: the listener: accept loop, connection cap, HTTP/1.1 and h2c
//!   (prior knowledge) on one port, header-read timeout, HTTP/2 limits,
//!   graceful drain.
//! - [`handler`]: one request from bounds checks to relayed response.
//! - [`forward`]: hop-by-hop headers out, `X-Forwarded-*` and `X-Request-Id` in.
//! - [`upstream`]: a service's targets and balancer, timeouts, response
//!   checks.
//! - [`pool`]: keep-alive upstream connections, pooled per target and worker
//!   thread.
//! - [`body`]: the streamed body types and their size/idle guards.

pub mod body;
pub mod forward;
pub mod handler;
pub mod pool;
pub mod server;
pub mod upstream;
