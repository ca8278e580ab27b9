//! The config stream (`tollgate.stream.v1.ConfigStream/Subscribe`): how data
//! planes learn the desired state.
//!
//! - [`session`]: one data plane's stream (hello, snapshots, ACK/NACK,
//!   coalescing of write bursts).
//! - [`registry`]: every data plane seen, for `ListDataPlanes`.
//! - [`rollout`]: waiting until the fleet serves a version (`WaitForVersion`).
//! - usage reports are handed to [`crate::usage`].
//! - [`builds`]: each version built once (entity hashes, full snapshot
//!   encoded once, deltas once per base), shared by every session.
//! - [`delivery`] and [`chunks`]: what a session sends next (a delta, the
//!   chunks of a full snapshot, or a whole snapshot to older data planes).
//! - [`distribution_metrics`]: bytes sent full vs delta, commit to ACK.
//!
//! Snapshots carry secrets (JWT HMAC secrets, private keys, API-key hashes), so
//! beyond loopback (or with `--stream-tls`) the stream is mutually
//! authenticated TLS: `Subscribe` and `Renew` need a data-plane certificate
//! of the cluster CA, `Join` trades a one-time token for one
//! ([`crate::pki`]). A plaintext stream (loopback, or the explicit
//! `--insecure-plaintext-stream`) is guarded by the cluster token when one is
//! configured (see [`crate::auth`]).

pub mod builds;
pub mod chunks;
pub mod delivery;
pub mod distribution_metrics;
pub mod registry;
pub mod rollout;
pub mod session;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tollgate_shared::proto::stream::config_stream_server::ConfigStream;
use tollgate_shared::proto::stream::{
    CertificateResponse, ControlPlaneMessage, DataPlaneMessage, JoinRequest, RenewRequest,
};
use tonic::service::Interceptor;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::BearerAuth;
use crate::error::CpError;

use crate::metrics::CpMetrics;
use crate::model::Model;
use crate::pki::enroll::Enrollment;
use crate::usage::Usage;
use builds::Builds;
use registry::Registry;
use session::Session;

pub struct StreamService {
    model: Arc<Model>,
    builds: Arc<Builds>,
    registry: Arc<Registry>,
    usage: Arc<Usage>,
    metrics: Arc<CpMetrics>,
    shutdown: watch::Receiver<bool>,
    max_lag: Duration,
    /// Join, renewal and who may subscribe (cluster PKI).
    enrollment: Option<Arc<Enrollment>>,
}

impl StreamService {
    /// Serves `Join`/`Renew` and checks subscribers' certificates.
    pub fn with_enrollment(mut self, enrollment: Arc<Enrollment>) -> StreamService {
        self.enrollment = Some(enrollment);
        self
    }

    fn enrollment(&self) -> Result<&Enrollment, CpError> {
        self.enrollment
            .as_deref()
            .ok_or_else(|| CpError::FailedPrecondition("no cluster PKI on this server".into()))
    }

    pub fn new(
        model: Arc<Model>,
        registry: Arc<Registry>,
        usage: Arc<Usage>,
        metrics: Arc<CpMetrics>,
        shutdown: watch::Receiver<bool>,
        max_lag: Duration,
    ) -> StreamService {
        StreamService {
            builds: Builds::start(&model, metrics.clone()),
            model,
            registry,
            usage,
            metrics,
            shutdown,
            max_lag,
            enrollment: None,
        }
    }
}

/// The cluster-token check of the stream: a refusal is logged with the
/// peer's address and counted (`tollgate_cp_stream_refusals_total`), so a
/// data plane with a wrong token is visible from the control plane's side.
#[derive(Clone)]
pub struct StreamAuth {
    auth: BearerAuth,
    metrics: Arc<CpMetrics>,
}

impl StreamAuth {
    pub fn new(cluster_token: Option<&str>, metrics: Arc<CpMetrics>) -> StreamAuth {
        StreamAuth {
            auth: BearerAuth::new(cluster_token),
            metrics,
        }
    }
}

impl Interceptor for StreamAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        match self.auth.check(&request) {
            Ok(()) => Ok(request),
            Err(err) => {
                let peer = request
                    .remote_addr()
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "unknown".into());
                tracing::warn!(%peer, reason = %err, "config stream refused");
                self.metrics.stream_refused("unauthenticated");
                Err(err.into())
            }
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
        let certified = match &self.enrollment {
            Some(enrollment) => enrollment.subscriber(&request)?,
            None => None,
        };
        let session = Session {
            model: self.model.clone(),
            builds: self.builds.clone(),
            registry: self.registry.clone(),
            usage: self.usage.clone(),
            metrics: self.metrics.clone(),
            shutdown: self.shutdown.clone(),
            peer: request.remote_addr(),
            max_lag: self.max_lag,
            certified,
            revocations: self
                .enrollment
                .as_ref()
                .map(|e| (e.joins.clone(), e.joins.revocations())),
        };
        // One message queued at most: a snapshot is built only once there is
        // room for it, so a slow reader holds at most this one plus what is
        // in flight, and is always sent the newest version.
        let (outbound, receiver) = mpsc::channel(1);
        tokio::spawn(session.run(request.into_inner(), outbound));
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn join(
        &self,
        request: Request<JoinRequest>,
    ) -> Result<Response<CertificateResponse>, Status> {
        self.enrollment()?.join(request).await.map(Response::new)
    }

    async fn renew(
        &self,
        request: Request<RenewRequest>,
    ) -> Result<Response<CertificateResponse>, Status> {
        self.enrollment()?.renew(request).await.map(Response::new)
    }
}
