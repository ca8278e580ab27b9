//! The config stream client: `tollgate.stream.v1.ConfigStream/Subscribe`.
//!
//! One session: connect, send `Hello` (node id, hostname, build, the version
//! held from the cache or a previous session with its checksum, and that it
//! accepts deltas), then for every `Snapshot` (whole, or joined from its
//! `SnapshotChunk`s) or `Delta`: apply it (convert, validate, compile, swap)
//! and answer `Ack` once it is in service, or `Nack` with the reason while
//! the old config keeps serving. A delta whose base is not the held version
//! or whose checksum does not match the state it leads to is not applied:
//! the data plane sends `ResyncRequest` and gets a full snapshot.
//!
//! When the stream breaks, the data plane keeps serving its last good config
//! and reconnects with exponential backoff (100 ms doubling, full jitter,
//! capped at 5 s; reset once a session delivers a message). HTTP/2 keepalive
//! notices a control plane that vanished without closing the connection.
//! With `--cluster-token`, every session carries `authorization: Bearer ...`.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tollgate_shared::proto::stream::config_stream_client::ConfigStreamClient;
use tollgate_shared::proto::stream::{
    control_plane_message, data_plane_message, Ack, DataPlaneMessage, Delta, Hello, Nack,
    ResyncRequest, Snapshot,
};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Endpoint;

use super::held::DeltaRefused;
use super::reassembly::Reassembly;
use super::{version_label, Applier};
use crate::error::DpError;

const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(5);
/// Largest snapshot accepted from the control plane.
const MAX_SNAPSHOT_BYTES: usize = 64 * 1024 * 1024;

/// The control-plane connection as `/status` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connection {
    Connecting,
    Connected,
    Disconnected,
}

impl Connection {
    pub fn as_str(self) -> &'static str {
        match self {
            Connection::Connecting => "connecting",
            Connection::Connected => "connected",
            Connection::Disconnected => "disconnected",
        }
    }
}

/// Shared, lock-free view of [`Connection`].
#[derive(Debug)]
pub struct ConnectionState(AtomicU8);

impl Default for ConnectionState {
    fn default() -> Self {
        ConnectionState(AtomicU8::new(Connection::Connecting as u8))
    }
}

impl ConnectionState {
    pub fn get(&self) -> Connection {
        match self.0.load(Ordering::Relaxed) {
            x if x == Connection::Connected as u8 => Connection::Connected,
            x if x == Connection::Disconnected as u8 => Connection::Disconnected,
            _ => Connection::Connecting,
        }
    }

    pub fn set(&self, state: Connection) {
        self.0.store(state as u8, Ordering::Relaxed);
    }
}

/// Exponential backoff with full jitter.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
    /// Whether [`Backoff::reset`] ran since the last delay was taken.
    reset: bool,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: BACKOFF_START,
            reset: true,
        }
    }
}

impl Backoff {
    /// The delay before the next attempt: uniformly in [ceiling/2, ceiling].
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.next;
        self.next = (self.next * 2).min(BACKOFF_CAP);
        self.reset = false;
        let millis = ceiling.as_millis().max(2) as u64;
        Duration::from_millis(rand::thread_rng().gen_range(millis / 2..=millis))
    }

    pub fn reset(&mut self) {
        self.next = BACKOFF_START;
        self.reset = true;
    }

    /// True when no delay was taken since the last reset (or ever): the
    /// failure about to be retried is the first of an outage.
    pub fn was_reset(&self) -> bool {
        self.reset
    }
}

/// Everything a subscription needs.
#[derive(Debug)]
pub struct Subscriber {
    endpoint: Endpoint,
    node_id: String,
    hostname: String,
    authorization: Option<MetadataValue<Ascii>>,
    applier: Arc<Applier>,
    state: Arc<ConnectionState>,
}

impl Subscriber {
    pub fn new(
        control_plane: &str,
        node_id: String,
        cluster_token: Option<&str>,
        applier: Arc<Applier>,
        state: Arc<ConnectionState>,
    ) -> Result<Subscriber, DpError> {
        let address = if control_plane.contains("://") {
            control_plane.to_string()
        } else {
            format!("http://{control_plane}")
        };
        let endpoint = Endpoint::from_shared(address.clone())
            .map_err(|e| DpError::ControlPlaneAddress {
                address: control_plane.to_string(),
                message: e.to_string(),
            })?
            .connect_timeout(Duration::from_secs(3))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        let authorization = cluster_token
            .map(|token| {
                MetadataValue::try_from(format!("Bearer {token}"))
                    .map_err(|_| DpError::ClusterToken("must be printable ASCII".into()))
            })
            .transpose()?;
        Ok(Subscriber {
            endpoint,
            node_id,
            hostname: hostname(),
            authorization,
            applier,
            state,
        })
    }

    /// Runs sessions until `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Backoff::default();
        let mut failures: u64 = 0;
        loop {
            if *shutdown.borrow() {
                return;
            }
            self.state.set(Connection::Connecting);
            let outcome = tokio::select! {
                outcome = self.session(&mut backoff) => outcome,
                _ = shutdown.changed() => return,
            };
            self.state.set(Connection::Disconnected);
            let outage_began = backoff.was_reset();
            let delay = backoff.next_delay();
            failures = if outage_began { 1 } else { failures + 1 };
            let uri = self.endpoint.uri().to_string();
            let serving = match self.applier.store().version() {
                Some(version) => format!("serving config {}", version_label(&version)),
                None => "no config in service yet".to_string(),
            };
            let error = match outcome {
                Ok(()) => "the control plane closed the stream".to_string(),
                Err(err) => err,
            };
            // The first failure of an outage is a warning; the retries that
            // follow are logged every 10th time so an outage does not flood logs.
            if failures == 1 || failures.is_multiple_of(10) {
                tracing::warn!(control_plane = %uri, %error, failures, retry_in = ?delay, "config stream down; {serving}");
            } else {
                tracing::debug!(control_plane = %uri, %error, failures, retry_in = ?delay, "config stream retry");
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    async fn session(&self, backoff: &mut Backoff) -> Result<(), String> {
        let channel = self
            .endpoint
            .connect()
            .await
            .map_err(|e| format!("connect: {}", crate::upstream::DisplayChain(&e)))?;
        let mut client =
            ConfigStreamClient::new(channel).max_decoding_message_size(MAX_SNAPSHOT_BYTES);
        let (outbound, outbound_rx) = mpsc::channel::<DataPlaneMessage>(8);
        let hello = DataPlaneMessage {
            kind: Some(data_plane_message::Kind::Hello(Hello {
                node_id: self.node_id.clone(),
                hostname: self.hostname.clone(),
                build_version: tollgate_shared::BUILD_VERSION.to_string(),
                held_version: self.applier.store().version(),
                accepts_deltas: true,
                held_checksum: self.applier.held_checksum(),
            })),
        };
        outbound
            .send(hello)
            .await
            .map_err(|_| "stream closed before hello".to_string())?;
        let mut request = tonic::Request::new(ReceiverStream::new(outbound_rx));
        if let Some(value) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        let mut inbound = client
            .subscribe(request)
            .await
            .map_err(|status| format!("subscribe: {}: {}", status.code(), status.message()))?
            .into_inner();
        self.state.set(Connection::Connected);
        tracing::info!(control_plane = %self.endpoint.uri(), node_id = %self.node_id, "config stream connected");

        let mut chunks = Reassembly::default();
        loop {
            let message = inbound
                .message()
                .await
                .map_err(|status| format!("stream: {}: {}", status.code(), status.message()))?;
            let Some(message) = message else {
                return Ok(());
            };
            backoff.reset();
            let reply = match message.kind {
                Some(control_plane_message::Kind::Snapshot(snapshot)) => {
                    self.handle_snapshot(snapshot, None).await
                }
                Some(control_plane_message::Kind::SnapshotChunk(chunk)) => {
                    match chunks.push(chunk, MAX_SNAPSHOT_BYTES) {
                        Ok(None) => continue,
                        Ok(Some(whole)) => {
                            self.handle_snapshot(whole.snapshot, Some(whole.checksum))
                                .await
                        }
                        Err(error) => self.resync(error),
                    }
                }
                Some(control_plane_message::Kind::Delta(delta)) => self.handle_delta(delta).await,
                _ => continue,
            };
            outbound
                .send(reply)
                .await
                .map_err(|_| "stream closed while answering".to_string())?;
        }
    }

    /// Asks for a full snapshot; the config in service stays.
    fn resync(&self, reason: String) -> DataPlaneMessage {
        tracing::warn!(%reason, "config state out of step with the control plane; asking for a full snapshot");
        DataPlaneMessage {
            kind: Some(data_plane_message::Kind::Resync(ResyncRequest {
                held_version: self.applier.store().version(),
                reason,
            })),
        }
    }

    /// Applies one delta and builds the ACK, NACK or resync request.
    async fn handle_delta(&self, delta: Delta) -> DataPlaneMessage {
        let target = delta.target.clone().unwrap_or_default();
        let applier = self.applier.clone();
        let result = tokio::task::spawn_blocking(move || {
            let result = applier.apply_delta(&delta);
            if let Ok((_, snapshot)) = &result {
                applier.write_cache(snapshot);
            }
            result.map(|(version, _)| version)
        })
        .await
        .unwrap_or_else(|e| {
            Err(DeltaRefused::Invalid(format!(
                "applying the delta failed: {e}"
            )))
        });
        match result {
            Ok(applied) => {
                tracing::info!(version = %version_label(&applied), "config delta applied");
                ack(applied)
            }
            Err(DeltaRefused::Drift(reason)) => self.resync(reason),
            Err(DeltaRefused::Invalid(error)) => {
                tracing::warn!(version = %version_label(&target), %error, "config delta rejected (NACK); the previous config stays in service");
                DataPlaneMessage {
                    kind: Some(data_plane_message::Kind::Nack(Nack {
                        version: Some(target),
                        error,
                    })),
                }
            }
        }
    }

    /// Applies one snapshot and builds the ACK/NACK. The cache is written
    /// after the swap, on a blocking thread. `checksum` is the control
    /// plane's for that state (chunked snapshots carry it).
    async fn handle_snapshot(
        &self,
        snapshot: Snapshot,
        checksum: Option<Vec<u8>>,
    ) -> DataPlaneMessage {
        let version = snapshot.version.clone().unwrap_or_default();
        if self.applier.store().version().as_ref() == Some(&version)
            && checksum
                .as_ref()
                .is_none_or(|expected| *expected == self.applier.held_checksum())
        {
            tracing::debug!(version = %version_label(&version), "snapshot already in service");
            return ack(version);
        }
        let applier = self.applier.clone();
        let result = tokio::task::spawn_blocking(move || {
            let result = applier.apply(&snapshot);
            if result.is_ok() {
                applier.write_cache(&snapshot);
            }
            result
        })
        .await
        .unwrap_or_else(|e| Err(format!("compiling the snapshot failed: {e}")));
        match result {
            Ok(applied) => {
                tracing::info!(version = %version_label(&applied), "config applied");
                if checksum.is_some_and(|expected| expected != self.applier.held_checksum()) {
                    // Both sides hash the model's JSON: a difference means
                    // builds that serialize an entity differently. Deltas
                    // will then ask for full snapshots; serving stays right.
                    tracing::warn!(version = %version_label(&applied), "this data plane's checksum of the snapshot differs from the control plane's");
                }
                ack(applied)
            }
            Err(error) => {
                tracing::warn!(version = %version_label(&version), %error, "config rejected (NACK); the previous config stays in service");
                DataPlaneMessage {
                    kind: Some(data_plane_message::Kind::Nack(Nack {
                        version: Some(version),
                        error,
                    })),
                }
            }
        }
    }
}

fn ack(version: tollgate_shared::proto::config::ConfigVersion) -> DataPlaneMessage {
    DataPlaneMessage {
        kind: Some(data_plane_message::Kind::Ack(Ack {
            version: Some(version),
        })),
    }
}

/// This machine's host name (no extra dependency: Linux exposes it in /proc).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| "tollgate-dp".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let mut backoff = Backoff::default();
        let first = backoff.next_delay();
        assert!(first >= Duration::from_millis(50) && first <= BACKOFF_START);
        for _ in 0..20 {
            assert!(backoff.next_delay() <= BACKOFF_CAP);
        }
        let late = backoff.next_delay();
        assert!(late >= BACKOFF_CAP / 2, "{late:?}");
        backoff.reset();
        assert!(backoff.next_delay() <= BACKOFF_START);
    }
}
