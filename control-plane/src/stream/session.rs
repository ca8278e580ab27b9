//! One data plane's stream, from hello to disconnect.
//!
//! 1. Wait (bounded) for the `Hello`; register the data plane.
//! 2. If the version it holds is not the current one (another revision, or
//!    another store altogether), send the full snapshot at once.
//! 3. Then loop: read ACK/NACK and heartbeats into the registry, usage reports into
//!    [`crate::usage`]; on each new version, wait
//!    until writes pause for [`QUIET`] but never more than [`MAX_DELAY`] after
//!    the first unsent change, and send the latest snapshot. A burst of writes
//!    thus costs one snapshot, and no change waits longer than 100 ms.
//! 4. A snapshot is built only once the outbound queue (one message) has room,
//!    and it is always the newest version: a data plane that reads slowly
//!    skips the versions it missed instead of queueing them. One that cannot
//!    take a pending newer version for `max_lag` (it stopped reading) is
//!    disconnected, so a stuck reader holds memory for a bounded time.
//! 5. The stream ends when the data plane goes away (HTTP/2 keepalive notices
//!    a dead peer), when the server shuts down, when it falls behind, or on a
//!    protocol error; the registry entry stays, marked disconnected.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tollgate_shared::proto::stream::{
    control_plane_message, data_plane_message, ControlPlaneMessage, DataPlaneMessage, Hello,
};
use tonic::{Status, Streaming};

use super::builds::Builds;
use super::delivery::Delivery;
use super::distribution_metrics::Sent;
use super::registry::{truncate, Identity, Registry};
use crate::metrics::CpMetrics;
use crate::model::{ConfigVersion, Model};
use crate::pki::joins::JoinBook;
use crate::usage::Usage;

/// How long a new stream may take to say hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// A burst is over once no write came for this long...
pub const QUIET: Duration = Duration::from_millis(20);
/// ...or at the latest this long after its first write.
pub const MAX_DELAY: Duration = Duration::from_millis(100);

const MAX_ID_BYTES: usize = 256;

pub type Outbound = mpsc::Sender<Result<ControlPlaneMessage, Status>>;

pub struct Session {
    pub model: Arc<Model>,
    pub builds: Arc<Builds>,
    pub registry: Arc<Registry>,
    pub usage: Arc<Usage>,
    pub metrics: Arc<CpMetrics>,
    pub shutdown: watch::Receiver<bool>,
    pub peer: Option<SocketAddr>,
    /// How long a pending newer version may wait for room on the stream.
    pub max_lag: Duration,
    /// The node id of the data plane's verified certificate (TLS stream):
    /// recorded instead of the hello's.
    pub certified: Option<String>,
    /// Revoked nodes and a receiver that wakes on each revocation: a session
    /// whose node is revoked ends at once.
    pub revocations: Option<(Arc<JoinBook>, watch::Receiver<u64>)>,
}

impl Session {
    pub async fn run(self, mut inbound: Streaming<DataPlaneMessage>, outbound: Outbound) {
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(DataPlaneMessage {
                kind: Some(data_plane_message::Kind::Hello(hello)),
            }))) => hello,
            Ok(Ok(Some(_))) => {
                self.refused("the first message was not a Hello");
                let _ = outbound
                    .send(Err(Status::invalid_argument(
                        "the first message on the stream must be a Hello",
                    )))
                    .await;
                return;
            }
            Ok(Ok(None)) => return,
            Ok(Err(status)) => {
                tracing::debug!(peer = ?self.peer, %status, "stream ended before hello");
                return;
            }
            Err(_) => {
                let _ = outbound
                    .send(Err(Status::deadline_exceeded("no Hello within 10 s")))
                    .await;
                return;
            }
        };
        let identity = match self.identity(&hello) {
            Ok(identity) => identity,
            Err(message) => {
                self.refused(message);
                let _ = outbound.send(Err(Status::invalid_argument(message))).await;
                return;
            }
        };
        let node_id = identity.node_id.clone();
        // The version it serves is shown from the first moment, so a
        // control-plane restart never blanks a serving data plane.
        let session = self
            .registry
            .connect(identity.clone(), hello.held_version.clone());
        tracing::info!(
            node_id = %identity.node_id,
            hostname = %identity.hostname,
            address = %identity.address,
            build_version = %identity.build_version,
            held_revision = hello.held_version.as_ref().map(|v| v.revision),
            "data plane connected"
        );
        let _mark_disconnected = DisconnectGuard {
            registry: self.registry.clone(),
            node_id: node_id.clone(),
            session,
        };
        self.serve(&node_id, session, &hello, inbound, outbound)
            .await;
        tracing::info!(node_id = %node_id, "data plane disconnected");
    }

    /// Logs (with the peer's address) and counts a refused stream.
    fn refused(&self, reason: &str) {
        let peer = self
            .peer
            .map(|p| p.to_string())
            .unwrap_or_else(|| "unknown".into());
        tracing::warn!(%peer, reason, "config stream refused");
        self.metrics.stream_refused("bad_hello");
    }

    fn identity(&self, hello: &Hello) -> Result<Identity, &'static str> {
        let node_id = self.certified.as_deref().unwrap_or(hello.node_id.trim());
        if node_id.is_empty()
            || node_id.len() > MAX_ID_BYTES
            || node_id.chars().any(char::is_control)
        {
            return Err("hello.node_id: must be 1 to 256 printable characters");
        }
        let clean = |text: &str| truncate(&text.replace(char::is_control, " "), MAX_ID_BYTES);
        Ok(Identity {
            node_id: node_id.to_string(),
            hostname: clean(&hello.hostname),
            build_version: clean(&hello.build_version),
            address: self.peer.map(|p| p.to_string()).unwrap_or_default(),
        })
    }

    async fn serve(
        self,
        node_id: &str,
        session: u64,
        hello: &Hello,
        mut inbound: Streaming<DataPlaneMessage>,
        outbound: Outbound,
    ) {
        let mut updates = self.builds.subscribe_current(&self.model).await;
        let current = updates.borrow_and_update().clone();
        let mut state = Delivery::new(&self.builds, &current, hello);
        let mut purges = self.registry.cache_purges();
        let mut shutdown = self.shutdown.clone();
        let mut revocations = self.revocations.clone();
        // (first unsent change, latest unsent change) while a burst is open.
        let mut pending: Option<(Instant, Instant)> = None;
        // Since when a message has waited for room on the stream (a newer
        // version, or the rest of a chunked snapshot).
        let mut waiting: Option<Instant> = state.behind(&current).then(Instant::now);
        loop {
            let flush_at = pending.map(|(first, last)| (first + MAX_DELAY).min(last + QUIET));
            let cut_off_at = waiting.map(|since| since + self.max_lag);
            tokio::select! {
                () = stopped(&mut shutdown) => {
                    if let Ok(permit) = outbound.try_reserve() {
                        permit.send(Err(Status::unavailable("control plane shutting down")));
                    }
                    return;
                }
                () = revoked(&mut revocations, node_id) => {
                    tracing::warn!(node_id, "data plane revoked: closing its stream");
                    self.metrics.stream_refused("revoked");
                    if let Ok(permit) = outbound.try_reserve() {
                        permit.send(Err(Status::permission_denied(format!(
                            "data plane {node_id:?} is revoked"
                        ))));
                    }
                    return;
                }
                message = inbound.message() => match message {
                    Ok(Some(message)) => {
                        if self.handle(node_id, session, message) {
                            state.resync();
                            waiting.get_or_insert_with(Instant::now);
                        }
                    }
                    Ok(None) => return,
                    Err(status) => {
                        tracing::debug!(node_id, %status, "stream from data plane failed");
                        return;
                    }
                },
                purge = purges.recv() => match purge {
                    Ok(purge) => {
                        let message = ControlPlaneMessage {
                            kind: Some(control_plane_message::Kind::CachePurge(purge)),
                            trace_context: Default::default(),
                        };
                        if outbound.send(Ok(message)).await.is_err() {
                            return;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(node_id, missed, "cache purges dropped for a slow data plane");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {}
                },
                changed = updates.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let now = Instant::now();
                    pending = Some(match pending {
                        Some((first, _)) => (first, now),
                        None => (now, now),
                    });
                }
                _ = tokio::time::sleep_until(flush_at.unwrap_or_else(Instant::now)), if flush_at.is_some() => {
                    pending = None;
                    let latest = updates.borrow().clone();
                    if state.behind(&latest) && waiting.is_none() {
                        waiting = Some(Instant::now());
                    }
                }
                permit = outbound.reserve(), if waiting.is_some() => {
                    let Ok(permit) = permit else { return };
                    waiting = None;
                    let latest = updates.borrow_and_update().clone();
                    if let Some((message, kind)) = state.next(&self.builds, &latest, &self.metrics).await {
                        self.metrics.distribution.sent(kind, message.encoded_len());
                        if kind != Sent::Full || state.chunk_started() {
                            self.metrics.snapshot_pushed();
                            self.metrics.distribution.send_lag(latest.published_at.elapsed());
                        }
                        permit.send(Ok(message));
                    }
                    if state.sending() || state.behind(&latest) && pending.is_none() {
                        waiting = Some(Instant::now());
                    }
                }
                _ = tokio::time::sleep_until(cut_off_at.unwrap_or_else(Instant::now)), if cut_off_at.is_some() => {
                    tracing::warn!(
                        node_id,
                        max_lag_ms = self.max_lag.as_millis() as u64,
                        "data plane fell behind (it does not read its stream); disconnecting it"
                    );
                    return;
                }
            }
        }
    }

    /// Records an ACK/NACK; true when the data plane asked for a full
    /// snapshot (its state drifted from what it was sent).
    fn handle(&self, node_id: &str, session: u64, message: DataPlaneMessage) -> bool {
        match message.kind {
            Some(data_plane_message::Kind::Ack(ack)) => {
                let version = ack.version.unwrap_or_default();
                tracing::debug!(node_id, revision = version.revision, "data plane acked");
                self.metrics.acked();
                let newest = self.builds.subscribe().borrow().clone();
                if newest.version == ConfigVersion::from_pb(&version) {
                    self.metrics
                        .distribution
                        .acked_newest(newest.published_at.elapsed());
                }
                self.registry.ack(node_id, session, version);
                false
            }
            Some(data_plane_message::Kind::Nack(nack)) => {
                let version = nack.version.unwrap_or_default();
                tracing::warn!(
                    node_id,
                    revision = version.revision,
                    error = %truncate(&nack.error, 1024),
                    "data plane rejected a snapshot"
                );
                self.metrics.nacked();
                self.registry.nack(node_id, session, version, &nack.error);
                false
            }
            Some(data_plane_message::Kind::Resync(resync)) => {
                tracing::warn!(
                    node_id,
                    held_revision = resync.held_version.as_ref().map(|v| v.revision),
                    reason = %truncate(&resync.reason, 1024),
                    "data plane asked for a full snapshot"
                );
                self.metrics.distribution.resync();
                self.registry.seen(node_id, session);
                true
            }
            Some(data_plane_message::Kind::Heartbeat(heartbeat)) => {
                self.registry
                    .heartbeat(node_id, session, heartbeat.serving_version);
                false
            }
            Some(data_plane_message::Kind::Usage(report)) => {
                self.usage.ingest(node_id, &report);
                self.registry.seen(node_id, session);
                false
            }
            Some(data_plane_message::Kind::Hello(_)) | None => {
                self.registry.seen(node_id, session);
                false
            }
        }
    }
}

/// Resolves once `node_id` is revoked; never without revocations (plaintext
/// stream) or once the book is gone.
async fn revoked(revocations: &mut Option<(Arc<JoinBook>, watch::Receiver<u64>)>, node_id: &str) {
    let Some((book, changes)) = revocations else {
        return std::future::pending().await;
    };
    loop {
        if book.is_revoked(node_id) {
            return;
        }
        if changes.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// Resolves once the server shuts down (or is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Marks the session's entry disconnected however the session task ends.
struct DisconnectGuard {
    registry: Arc<Registry>,
    node_id: String,
    session: u64,
}

impl Drop for DisconnectGuard {
    fn drop(&mut self) {
        self.registry.disconnect(&self.node_id, self.session);
    }
}
