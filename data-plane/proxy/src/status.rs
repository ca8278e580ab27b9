//! The status port (`--status-listen`, loopback by default): for orchestrators
//! and operators, never for proxied traffic.
//!
//! - `GET /healthz`: 200 while the process is alive.
//! - `GET /readyz`: 200 once a config is in service; 503 before that and
//!   while draining (so a load balancer stops sending traffic first).
//! - `GET /status`: JSON `{node_id, config_version: {store_id, revision} | null,
//!   control_plane: connected|connecting|disconnected, ready, draining,
//!   upstreams: {SERVICE: {load_balancing, active_checks, targets: [{address,
//!   weight, state: healthy|ejected|unhealthy, ejections, ejected_for_ms?}]}}}`
//!   (what `tollgatectl health SERVICE` reads).
//! - `GET /metrics`: Prometheus text exposition (see [`tollgate_telemetry::metrics`]).
//!
//! Served on its own listener and tasks so it stays answerable when the proxy
//! listener is saturated.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::body::ResponseBody;
use crate::snapshot::subscribe::{Connection, ConnectionState, LastRejection};
use crate::snapshot::SnapshotStore;
use tollgate_telemetry::metrics;

/// What the status endpoints report.
#[derive(Debug)]
pub struct NodeStatus {
    pub node_id: String,
    pub store: Arc<SnapshotStore>,
    pub control_plane: Arc<ConnectionState>,
    pub draining: AtomicBool,
    /// The latest NACK, while no later version serves.
    pub last_rejection: Arc<LastRejection>,
}

impl NodeStatus {
    pub fn ready(&self) -> bool {
        self.store.is_ready() && !self.draining.load(Ordering::Relaxed)
    }

    pub fn to_json(&self) -> serde_json::Value {
        let version = self
            .store
            .version()
            .map(|v| serde_json::json!({"store_id": v.store_id, "revision": v.revision}));
        let mut upstreams = serde_json::Map::new();
        if let Some(snapshot) = self.store.load() {
            for (name, service) in snapshot.services.iter() {
                upstreams.insert(name.clone(), service.upstream.health_report());
            }
        }
        serde_json::json!({
            "node_id": self.node_id,
            "config_version": version,
            "control_plane": self.control_plane.get().as_str(),
            "ready": self.ready(),
            "draining": self.draining.load(Ordering::Relaxed),
            "upstreams": upstreams,
            "last_rejection": self.last_rejection.get().map(|r| serde_json::json!({
                "version": {"store_id": r.version.store_id, "revision": r.version.revision},
                "reason": r.reason,
                "at_ms": r.at_ms,
            })),
        })
    }

    /// Sets the target-state gauges from the snapshot in service.
    fn update_target_states(&self) {
        let Some(snapshot) = self.store.load() else {
            return;
        };
        metrics::global().set_target_states(snapshot.services.iter().flat_map(
            |(name, service)| {
                service
                    .upstream
                    .target_states()
                    .map(move |(target, state)| (name.as_str(), target, state))
            },
        ));
    }
}

fn json(status: StatusCode, body: serde_json::Value) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Answers one status request.
pub fn respond(status: &NodeStatus, request: &Request<Incoming>) -> Response<ResponseBody> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return json(
            StatusCode::METHOD_NOT_ALLOWED,
            serde_json::json!({"error": "method_not_allowed"}),
        );
    }
    match request.uri().path() {
        "/healthz" => json(StatusCode::OK, serde_json::json!({"status": "alive"})),
        "/readyz" => {
            if status.ready() {
                json(StatusCode::OK, serde_json::json!({"status": "ready"}))
            } else {
                let reason = if status.draining.load(Ordering::Relaxed) {
                    "draining"
                } else {
                    "no config in service"
                };
                json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    serde_json::json!({"status": "not_ready", "reason": reason}),
                )
            }
        }
        "/status" => json(StatusCode::OK, status.to_json()),
        "/metrics" => {
            let metrics = metrics::global();
            metrics
                .set_control_plane_connected(status.control_plane.get() == Connection::Connected);
            status.update_target_states();
            let mut response = Response::new(ResponseBody::full(Bytes::from(metrics.render())));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(metrics::CONTENT_TYPE),
            );
            response
        }
        _ => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "not_found", "endpoints": ["/healthz", "/readyz", "/status", "/metrics"]}),
        ),
    }
}

/// Serves the status endpoints until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    status: Arc<NodeStatus>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(5));
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "status accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let status = status.clone();
        let service = service_fn(move |request: Request<Incoming>| {
            let response = respond(&status, &request);
            async move { Ok::<_, Infallible>(response) }
        });
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
}
