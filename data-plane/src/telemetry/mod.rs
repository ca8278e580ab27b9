//! What the data plane tells operators about itself: Prometheus metrics
//! ([`metrics`], served as `GET /metrics` on the status port), per-request
//! JSON access-log lines ([`access_log`]), the lock-free latency histogram
//! they rest on ([`histogram`]), and the per-request glue that opens the
//! request span and records both ([`request`]). Traces are set up in
//! `tollgate_shared::telemetry`; the request path opens its spans there.
//!
//! Everything here is built for the request path's budget: per-route metric
//! handles are resolved when a snapshot compiles, recording is atomic
//! increments, and access-log lines are formatted off the request path.

pub mod access_log;
pub mod histogram;
pub mod metrics;
pub mod request;

pub use access_log::{AccessLog, AccessLogRecord, AccessLogTarget};
pub use metrics::{AuthFailure, Metrics, RateLimitResult, RouteMetrics};
