//! The config stream (`tollgate.stream.v1.ConfigStream/Subscribe`): how data
//! planes learn the desired state.
//!
//! - [`session`]: one data plane's stream (hello, snapshots, ACK/NACK,
//!   coalescing of write bursts).
//! - [`registry`]: every data plane seen, for `ListDataPlanes`.
//! - [`builds`]: each version built once (entity hashes, full snapshot
//!   encoded once, deltas once per base), shared by every session.
//! - [`delivery`] and [`chunks`]: what a session sends next (a delta, the
//!   chunks of a full snapshot, or a whole snapshot to older data planes).
//! - [`distribution_metrics`]: bytes sent full vs delta, commit to ACK.
//!
//! Snapshots carry secrets (JWT HMAC secrets, private keys, API-key hashes), so
//! the stream is guarded by the cluster token when one is configured (see
//! [`crate::auth`]), and required to be when it listens beyond loopback.

pub mod builds;
pub mod chunks;
pub mod delivery;
pub mod distribution_metrics;
pub mod registry;
pub mod session;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tollgate_shared::proto::stream::config_stream_server::ConfigStream;
use tollgate_shared::proto::stream::{ControlPlaneMessage, DataPlaneMessage};
use tonic::{Request, Response, Status, Streaming};

use crate::metrics::CpMetrics;
use crate::model::Model;
use builds::Builds;
use registry::Registry;
use session::Session;

pub struct StreamService {
    model: Arc<Model>,
    builds: Arc<Builds>,
    registry: Arc<Registry>,
    metrics: Arc<CpMetrics>,
    shutdown: watch::Receiver<bool>,
    max_lag: Duration,
}

impl StreamService {
    pub fn new(
        model: Arc<Model>,
        registry: Arc<Registry>,
        metrics: Arc<CpMetrics>,
        shutdown: watch::Receiver<bool>,
        max_lag: Duration,
    ) -> StreamService {
        StreamService {
            builds: Builds::start(&model, metrics.clone()),
            model,
            registry,
            metrics,
            shutdown,
            max_lag,
        }
    }
}

#[tonic::async_trait]
impl ConfigStream for StreamService {
    type SubscribeStream = ReceiverStream<Result<ControlPlaneMessage, Status>>;

    async fn subscribe(
        &self,
        request: Request<Streaming<DataPlaneMessage>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let session = Session {
            model: self.model.clone(),
            builds: self.builds.clone(),
            registry: self.registry.clone(),
            metrics: self.metrics.clone(),
            shutdown: self.shutdown.clone(),
            peer: request.remote_addr(),
            max_lag: self.max_lag,
        };
        // One message queued at most: a snapshot is built only once there is
        // room for it, so a slow reader holds at most this one plus what is
        // in flight, and is always sent the newest version.
        let (outbound, receiver) = mpsc::channel(1);
        tokio::spawn(session.run(request.into_inner(), outbound));
        Ok(Response::new(ReceiverStream::new(receiver)))
    }
}
