//! What the data plane tells operators about itself: Prometheus metrics
//! ([`metrics`], served as `GET /metrics` on the status port), per-request
//! JSON access-log lines ([`access_log`]), the lock-free latency histogram
//! they rest on ([`histogram`]), and the usage reports streamed to the
//! control plane ([`usage`]). The proxy core's `observe` module is the
//! per-request glue that opens the request span and records both. Traces
//! are set up in `tollgate_shared::telemetry`.
//!
//! A sibling of the plugins and the balancers: it reads the plugin API's
//! [`tollgate_plugin_api::RefusalKind`] to label refusals, and nothing here
//! knows a concrete plugin.
//!
//! Everything here is built for the request path's budget: per-route metric
//! handles are resolved when a snapshot compiles, recording is atomic
//! increments, and access-log lines are formatted off the request path.

pub mod access_log;
pub mod histogram;
pub mod metrics;
pub mod usage;

pub use access_log::{AccessLog, AccessLogRecord, AccessLogTarget};
pub use metrics::{AuthFailure, Metrics, RateLimitResult, RateLimitSyncMetrics, RouteMetrics};
