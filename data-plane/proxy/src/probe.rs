//! Active health checks: one task per service with `health_checks.active`,
//! per data plane (not per worker thread), probing each target in turn
//! every `interval_ms`.
//!
//! A probe is `GET path` through the target's own connector, so it speaks
//! the service's protocol (TLS included) and reuses a keep-alive connection
//! like Envoy's checker does; a refused connect, a timeout or an unexpected
//! status is a failure. `unhealthy_threshold` failures in a row take the
//! target out of rotation, `healthy_threshold` successes bring it back
//! (see [`crate::health`]).
//!
//! The task holds the service's health weakly and ends once the pool that
//! owns it is gone (a snapshot without the service, or with its targets
//! changed, builds a new pool and a new task).

use std::sync::{Arc, Weak};
use std::time::Duration;

use http::header::HOST;
use http::{HeaderValue, Method, Request};
use tollgate_shared::model::ActiveHealth;

use crate::body::UpstreamBody;
use crate::connector::Connector;
use crate::health::ServiceHealth;

/// What one probe needs about a target.
#[derive(Debug, Clone)]
pub struct ProbeTarget {
    pub address: String,
    pub connector: Connector,
    pub host: HeaderValue,
}

/// Starts the probe task on the current runtime; a no-op outside one (unit
/// tests compile snapshots without a runtime).
pub fn spawn(
    service: Arc<str>,
    config: ActiveHealth,
    targets: Vec<ProbeTarget>,
    health: &Arc<ServiceHealth>,
) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let health = Arc::downgrade(health);
    runtime.spawn(run(service, config, targets, health));
}

async fn run(
    service: Arc<str>,
    config: ActiveHealth,
    targets: Vec<ProbeTarget>,
    health: Weak<ServiceHealth>,
) {
    let mut successes = vec![0u32; targets.len()];
    let mut failures = vec![0u32; targets.len()];
    let mut ticker = tokio::time::interval(Duration::from_millis(config.interval_ms));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if health.strong_count() == 0 {
            return;
        }
        let probes = targets.iter().map(|target| probe(&config, target));
        let results = futures::future::join_all(probes).await;
        let Some(health) = health.upgrade() else {
            return;
        };
        for (index, ok) in results.into_iter().enumerate() {
            let Some(state) = health.target(index) else {
                continue;
            };
            if ok {
                failures[index] = 0;
                successes[index] = successes[index].saturating_add(1);
                if successes[index] >= config.healthy_threshold && state.set_probe_down(false) {
                    tracing::info!(service = %service, upstream = %targets[index].address, "upstream target passes its health probes again");
                }
            } else {
                successes[index] = 0;
                failures[index] = failures[index].saturating_add(1);
                if failures[index] >= config.unhealthy_threshold && state.set_probe_down(true) {
                    tracing::warn!(service = %service, upstream = %targets[index].address, "upstream target fails its health probes; out of rotation");
                }
            }
        }
    }
}

/// One probe: whether the target answered an expected status in time.
async fn probe(config: &ActiveHealth, target: &ProbeTarget) -> bool {
    let mut request = Request::new(UpstreamBody::Empty);
    *request.method_mut() = Method::GET;
    let Ok(uri) = config.path.parse() else {
        return false;
    };
    *request.uri_mut() = uri;
    request.headers_mut().insert(HOST, target.host.clone());
    request.headers_mut().insert(
        http::header::USER_AGENT,
        HeaderValue::from_static("tollgate-health-check"),
    );
    let timeout = Duration::from_millis(config.timeout_ms);
    match tokio::time::timeout(timeout, target.connector.send(request)).await {
        Ok(Ok(response)) => {
            let status = response.status().as_u16();
            // Read the (small) body to its end so the connection is reused.
            let body = response.into_body();
            let _ = tokio::time::timeout(timeout, http_body_util::BodyExt::collect(body)).await;
            config.expects(status)
        }
        _ => false,
    }
}
