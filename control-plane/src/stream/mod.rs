//! The config stream (`tollgate.stream.v1.ConfigStream/Subscribe`): how data
//! planes learn the desired state.
//!
//! - [`session`]: one data plane's stream (hello, snapshots, ACK/NACK,
//!   coalescing of write bursts).
//! - [`registry`]: every data plane seen, for `ListDataPlanes`.
//! - usage reports are handed to [`crate::usage`].
//!
//! Snapshots carry secrets (JWT HMAC secrets, private keys, API-key hashes), so
//! the stream is guarded by the cluster token when one is configured (see
//! [`crate::auth`]), and required to be when it listens beyond loopback.

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
use crate::usage::Usage;
use registry::Registry;
use session::Session;

pub struct StreamService {
    model: Arc<Model>,
    registry: Arc<Registry>,
    usage: Arc<Usage>,
    metrics: Arc<CpMetrics>,
    shutdown: watch::Receiver<bool>,
    max_lag: Duration,
}

impl StreamService {
    pub fn new(
        model: Arc<Model>,
        registry: Arc<Registry>,
        usage: Arc<Usage>,
        metrics: Arc<CpMetrics>,
        shutdown: watch::Receiver<bool>,
        max_lag: Duration,
    ) -> StreamService {
        StreamService {
            model,
            registry,
            usage,
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
            registry: self.registry.clone(),
            usage: self.usage.clone(),
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
