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
//! While the stream is up, a `Heartbeat` with the version in service goes out
//! every `--heartbeat-interval-ms`, so the control plane's "last seen" moves
//! while no config changes. The last NACK (version, reason, when) is kept for
//! `/status` until a later version is in service.
//!
//! When the stream breaks, the data plane keeps serving its last good config
//! and reconnects: first quickly ([`QUICK_ATTEMPTS`] tries 50 to 250 ms
//! apart, jittered, so a restarted control plane has its fleet back within a
//! second), then with exponential backoff (500 ms doubling, jitter, capped at
//! 5 s); reset once a session delivers a message. HTTP/2 keepalive pings
//! (every 1 s without incoming data, answer due within 3 s) notice a control
//! plane that vanished or froze without closing the connection in at most
//! about 4 s. With `--cluster-token`, every session carries
//! `authorization: Bearer ...`.
//!
//! Usage reports (issue 20) ride on the same stream: once connected, and then
//! every `--usage-report-interval-ms`, the session sends a `UsageReport` read
//! from the metrics' counters ([`tollgate_telemetry::usage`]); counts are
//! cumulative, so a report lost with a broken stream is made up by the first
//! one of the next session. On shutdown the subscriber is stopped after the
//! proxy drained, and sends a last report before it closes the stream.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tollgate_shared::proto::stream::config_stream_client::ConfigStreamClient;
use tollgate_shared::proto::stream::{
    control_plane_message, data_plane_message, Ack, DataPlaneMessage, Delta, Heartbeat, Hello,
    Nack, ResyncRequest, Snapshot,
};
use tollgate_shared::telemetry::TRACE_TARGET;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Endpoint;
use tracing::Instrument;

use super::cluster_identity::ClusterIdentity;
use super::held::DeltaRefused;
use super::reassembly::Reassembly;
use super::{version_label, Applier};
use crate::error::DpError;

/// Reconnect attempts made quickly after a stream breaks...
pub const QUICK_ATTEMPTS: u32 = 40;
/// ...each this far apart, jittered between the two bounds...
const QUICK_DELAY_MIN: Duration = Duration::from_millis(50);
const QUICK_DELAY_MAX: Duration = Duration::from_millis(250);
/// ...then exponential backoff from here, with jitter, capped.
const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_CAP: Duration = Duration::from_secs(5);
/// HTTP/2 ping after this long without incoming data...
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// ...whose answer is due within this: a frozen control plane is noticed in
/// at most the sum.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3);
/// Default `--heartbeat-interval-ms`.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);
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

/// Reconnect delays: [`QUICK_ATTEMPTS`] quick jittered tries, then
/// exponential backoff with jitter.
#[derive(Debug)]
pub struct Backoff {
    quick_left: u32,
    next: Duration,
    /// Whether [`Backoff::reset`] ran since the last delay was taken.
    reset: bool,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            quick_left: QUICK_ATTEMPTS,
            next: BACKOFF_START,
            reset: true,
        }
    }
}

impl Backoff {
    /// The delay before the next attempt: in the quick phase uniformly in
    /// [50 ms, 250 ms]; then uniformly in [ceiling/2, ceiling], the ceiling
    /// doubling up to 5 s.
    pub fn next_delay(&mut self) -> Duration {
        self.reset = false;
        let (low, high) = if self.quick_left > 0 {
            self.quick_left -= 1;
            (QUICK_DELAY_MIN, QUICK_DELAY_MAX)
        } else {
            let ceiling = self.next;
            self.next = (self.next * 2).min(BACKOFF_CAP);
            (ceiling / 2, ceiling)
        };
        let (low, high) = (low.as_millis() as u64, high.as_millis() as u64);
        Duration::from_millis(rand::thread_rng().gen_range(low..=high.max(low)))
    }

    pub fn reset(&mut self) {
        *self = Backoff::default();
    }

    /// True when no delay was taken since the last reset (or ever): the
    /// failure about to be retried is the first of an outage.
    pub fn was_reset(&self) -> bool {
        self.reset
    }
}

/// The data plane's latest rejection, while no later version is in service
/// (shown on `/status`). Written on the config path only.
#[derive(Debug, Default)]
pub struct LastRejection(Mutex<Option<Rejection>>);

#[derive(Debug, Clone)]
pub struct Rejection {
    pub version: tollgate_shared::proto::config::ConfigVersion,
    pub reason: String,
    /// Unix milliseconds.
    pub at_ms: u64,
}

impl LastRejection {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Rejection>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn get(&self) -> Option<Rejection> {
        self.lock().clone()
    }

    fn set(&self, version: tollgate_shared::proto::config::ConfigVersion, reason: &str) {
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        *self.lock() = Some(Rejection {
            version,
            reason: reason.to_string(),
            at_ms,
        });
    }

    /// `version` is in service: a rejection of it or of an older one is over.
    fn served(&self, version: &tollgate_shared::proto::config::ConfigVersion) {
        let mut last = self.lock();
        if last.as_ref().is_some_and(|r| {
            r.version.store_id != version.store_id || r.version.revision <= version.revision
        }) {
            *last = None;
        }
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
    heartbeat: Duration,
    rejection: Arc<LastRejection>,
    usage: Option<UsageReports>,
    /// Where `CachePurge` messages go (the plugins' cache stores).
    purger: Option<Arc<dyn tollgate_plugin_api::CachePurger>>,
    /// The cluster certificate every stream connection presents (TLS
    /// stream); `None` for a plaintext (loopback) stream.
    identity: Option<Arc<ClusterIdentity>>,
}

/// How long the last report may take to leave on shutdown.
const LAST_REPORT_TIMEOUT: Duration = Duration::from_secs(2);

/// This process's usage reports: every `interval`, one per connected session.
#[derive(Debug)]
pub struct UsageReports {
    interval: Duration,
    instance_id: String,
    sequence: AtomicU64,
}

impl UsageReports {
    /// Reports every `interval` under a new random instance id.
    pub fn new(interval: Duration) -> UsageReports {
        UsageReports {
            interval: interval.max(Duration::from_millis(100)),
            instance_id: tollgate_telemetry::usage::new_instance_id(),
            sequence: AtomicU64::new(0),
        }
    }

    /// The next report (read from the process's metrics).
    fn next(&self) -> DataPlaneMessage {
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed) + 1;
        let report =
            tollgate_telemetry::metrics::global().usage_report(&self.instance_id, sequence);
        DataPlaneMessage {
            kind: Some(data_plane_message::Kind::Usage(report)),
        }
    }
}

impl Subscriber {
    /// Hands cache purges from the control plane to `purger`.
    pub fn with_cache_purger(mut self, purger: Arc<dyn tollgate_plugin_api::CachePurger>) -> Self {
        self.purger = Some(purger);
        self
    }

    pub fn new(
        control_plane: &str,
        node_id: String,
        cluster_token: Option<&str>,
        applier: Arc<Applier>,
        state: Arc<ConnectionState>,
        usage: Option<UsageReports>,
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
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
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
            heartbeat: DEFAULT_HEARTBEAT,
            rejection: Arc::default(),
            usage,
            purger: None,
            identity: None,
        })
    }

    /// Connects over TLS with `identity`'s certificate.
    pub fn with_identity(mut self, identity: Arc<ClusterIdentity>) -> Self {
        self.identity = Some(identity);
        self
    }

    /// The endpoint sessions connect to (for renewal's own connections).
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Sends a heartbeat every `interval` while connected (at least 100 ms).
    pub fn with_heartbeat(mut self, interval: Duration) -> Subscriber {
        self.heartbeat = interval.max(Duration::from_millis(100));
        self
    }

    /// The latest rejection, for `/status`.
    pub fn last_rejection(&self) -> Arc<LastRejection> {
        self.rejection.clone()
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
            let outcome = self.session(&mut backoff, shutdown.clone()).await;
            let stop = *shutdown.borrow();
            if stop {
                return;
            }
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

    /// One stream session; returns at once when `shutdown` turns true (after
    /// a last usage report once connected).
    async fn session(
        &self,
        backoff: &mut Backoff,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), String> {
        let channel = tokio::select! {
            channel = async {
                match &self.identity {
                    Some(identity) => self.endpoint.connect_with_connector(identity.connector()).await,
                    None => self.endpoint.connect().await,
                }
            } => channel
                .map_err(|e| format!("connect: {}", crate::upstream::DisplayChain(&e)))?,
            _ = stopped(&mut shutdown) => return Ok(()),
        };
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
        let subscribed = tokio::select! {
            subscribed = client.subscribe(request) => subscribed,
            _ = stopped(&mut shutdown) => return Ok(()),
        };
        let mut inbound = subscribed
            .map_err(|status| format!("subscribe: {}: {}", status.code(), status.message()))?
            .into_inner();
        self.state.set(Connection::Connected);
        tracing::info!(control_plane = %self.endpoint.uri(), node_id = %self.node_id, "config stream connected");

        let mut heartbeat =
            tokio::time::interval_at(tokio::time::Instant::now() + self.heartbeat, self.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate: a new session starts with a report.
        let mut reports = self
            .usage
            .as_ref()
            .map(|usage| (usage, tokio::time::interval(usage.interval)));
        if let Some((_, ticker)) = &mut reports {
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        let mut chunks = Reassembly::default();
        loop {
            let message = tokio::select! {
                message = inbound.message() => message,
                _ = next_tick(&mut reports) => {
                    if let Some((usage, _)) = &reports {
                        // A full queue skips this report: the next one is
                        // cumulative and covers it.
                        if let Err(mpsc::error::TrySendError::Closed(_)) = outbound.try_send(usage.next()) {
                            return Err("stream closed while reporting usage".to_string());
                        }
                    }
                    continue;
                }
                _ = heartbeat.tick() => {
                    // Skipped when answers are queued: they say as much.
                    let _ = outbound.try_send(DataPlaneMessage {
                        kind: Some(data_plane_message::Kind::Heartbeat(Heartbeat {
                            serving_version: self.applier.store().version(),
                        })),
                    });
                    continue;
                }
                _ = stopped(&mut shutdown) => {
                    self.last_report(outbound, inbound).await;
                    return Ok(());
                }
            };
            let message = message
                .map_err(|status| format!("stream: {}: {}", status.code(), status.message()))?;
            let Some(message) = message else {
                return Ok(());
            };
            backoff.reset();
            // One `config_receive` span per version received, a child of the
            // control plane's trace of the write when it sent its context.
            let trace_context = message.trace_context;
            let receive = |what: &'static str| {
                let span = tracing::info_span!(
                    target: TRACE_TARGET,
                    "config_receive",
                    otel.kind = "consumer",
                    tollgate.message = what,
                    tollgate.node_id = %self.node_id,
                );
                tollgate_shared::telemetry::set_parent_from_fields(&span, &trace_context);
                span
            };
            let (reply, span) = match message.kind {
                Some(control_plane_message::Kind::Snapshot(snapshot)) => {
                    let span = receive("snapshot");
                    let reply = self
                        .handle_snapshot(snapshot, None)
                        .instrument(span.clone())
                        .await;
                    (reply, span)
                }
                Some(control_plane_message::Kind::SnapshotChunk(chunk)) => {
                    match chunks.push(chunk, MAX_SNAPSHOT_BYTES) {
                        Ok(None) => continue,
                        Ok(Some(whole)) => {
                            let span = receive("snapshot");
                            let reply = self
                                .handle_snapshot(whole.snapshot, Some(whole.checksum))
                                .instrument(span.clone())
                                .await;
                            (reply, span)
                        }
                        Err(error) => (self.resync(error), receive("snapshot")),
                    }
                }
                Some(control_plane_message::Kind::Delta(delta)) => {
                    let span = receive("delta");
                    let reply = self.handle_delta(delta).instrument(span.clone()).await;
                    (reply, span)
                }
                Some(control_plane_message::Kind::CachePurge(purge)) => {
                    self.purge_cache(purge).await;
                    continue;
                }
                _ => continue,
            };
            let answer = match &reply.kind {
                Some(data_plane_message::Kind::Ack(_)) => "config_ack",
                Some(data_plane_message::Kind::Nack(_)) => "config_nack",
                _ => "config_resync",
            };
            outbound
                .send(reply)
                .instrument(tracing::info_span!(target: TRACE_TARGET, parent: &span, "config_answer", otel.name = answer))
                .await
                .map_err(|_| "stream closed while answering".to_string())?;
        }
    }

    /// On shutdown: sends a last usage report, closes our side of the stream
    /// and waits (bounded) for the control plane to close its side, so the
    /// report is read before the connection goes.
    async fn last_report(
        &self,
        outbound: mpsc::Sender<DataPlaneMessage>,
        mut inbound: tonic::Streaming<tollgate_shared::proto::stream::ControlPlaneMessage>,
    ) {
        let Some(usage) = &self.usage else {
            return;
        };
        let _ = tokio::time::timeout(LAST_REPORT_TIMEOUT, async {
            if outbound.send(usage.next()).await.is_err() {
                return;
            }
            drop(outbound);
            while let Ok(Some(_)) = inbound.message().await {}
        })
        .await;
    }

    /// Drops cached responses as the control plane asked.
    async fn purge_cache(&self, purge: tollgate_shared::proto::stream::CachePurge) {
        let Some(purger) = &self.purger else {
            return;
        };
        let key = (!purge.key.is_empty()).then_some(purge.key.as_str());
        match purger.purge(&purge.route, key).await {
            Ok(()) => tracing::info!(route = %purge.route, key = key.unwrap_or(""), "cache purged"),
            Err(error) => tracing::warn!(route = %purge.route, %error, "cache purge refused"),
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
        let started = std::time::Instant::now();
        let span = tracing::Span::current();
        let result = tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            let result = applier.apply_delta(&delta);
            let in_service = started.elapsed();
            if let Ok((_, Some(snapshot))) = &result {
                applier.write_cache(snapshot);
            }
            result.map(|(version, _)| (version, in_service))
        })
        .await
        .unwrap_or_else(|e| {
            Err(DeltaRefused::Invalid(format!(
                "applying the delta failed: {e}"
            )))
        });
        match result {
            Ok((applied, in_service)) => {
                tracing::info!(
                    version = %version_label(&applied),
                    apply_ms = in_service.as_secs_f64() * 1000.0,
                    "config delta applied"
                );
                self.rejection.served(&applied);
                ack(applied)
            }
            Err(DeltaRefused::Drift(reason)) => self.resync(reason),
            Err(DeltaRefused::Invalid(error)) => {
                tracing::warn!(version = %version_label(&target), %error, "config delta rejected (NACK); the previous config stays in service");
                self.rejection.set(target.clone(), &error);
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
        let span = tracing::Span::current();
        let result = tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
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
                self.rejection.served(&applied);
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
                self.rejection.set(version.clone(), &error);
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

/// Resolves once `shutdown` is true (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// The next report tick; never resolves when reports are off.
async fn next_tick(reports: &mut Option<(&UsageReports, tokio::time::Interval)>) {
    match reports {
        Some((_, ticker)) => {
            ticker.tick().await;
        }
        None => std::future::pending().await,
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
    fn backoff_is_quick_first_then_grows_with_jitter_and_is_capped() {
        let mut backoff = Backoff::default();
        let quick: Vec<Duration> = (0..QUICK_ATTEMPTS).map(|_| backoff.next_delay()).collect();
        assert!(quick
            .iter()
            .all(|d| *d >= QUICK_DELAY_MIN && *d <= QUICK_DELAY_MAX));
        // Jittered: forty draws are not all the same.
        assert!(quick.iter().any(|d| *d != quick[0]), "{quick:?}");
        let first_slow = backoff.next_delay();
        assert!(first_slow >= BACKOFF_START / 2 && first_slow <= BACKOFF_START);
        for _ in 0..20 {
            assert!(backoff.next_delay() <= BACKOFF_CAP);
        }
        let late = backoff.next_delay();
        assert!(late >= BACKOFF_CAP / 2, "{late:?}");
        backoff.reset();
        assert!(backoff.was_reset());
        assert!(backoff.next_delay() <= QUICK_DELAY_MAX);
    }

    #[test]
    fn a_rejection_lasts_until_a_later_version_serves() {
        let version = |revision| tollgate_shared::proto::config::ConfigVersion {
            store_id: "s".into(),
            revision,
        };
        let last = LastRejection::default();
        last.set(version(5), "plugin \"cors\" is not loaded");
        last.served(&version(4));
        assert_eq!(
            last.get().map(|r| r.reason).as_deref(),
            Some("plugin \"cors\" is not loaded")
        );
        last.served(&version(6));
        assert!(last.get().is_none());
    }
}
