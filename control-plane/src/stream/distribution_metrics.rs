//! Metrics of the config path from commit to data plane: what each version
//! cost to build, what was sent (full snapshots against deltas), how long a
//! session's newest version waited to go out, and commit-to-ACK times.
//! Registered with the other control-plane metrics (`tollgate_cp_` prefix).

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// What a message sent on the stream carried.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Sent {
    /// A full snapshot, in chunks (data planes that speak deltas).
    Full,
    /// A delta.
    Delta,
    /// A whole `Snapshot` message (data planes that do not speak deltas).
    Legacy,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

impl Sent {
    fn label(self) -> KindLabels {
        KindLabels {
            kind: match self {
                Sent::Full => "full",
                Sent::Delta => "delta",
                Sent::Legacy => "legacy_full",
            },
        }
    }
}

fn seconds() -> Histogram {
    // 0.1 ms .. ~3 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 15))
}

#[derive(Debug)]
pub struct DistributionMetrics {
    bytes_sent: Family<KindLabels, Counter>,
    messages_sent: Family<KindLabels, Counter>,
    full_encode: Histogram,
    full_bytes: Gauge,
    delta_build: Histogram,
    send_lag: Histogram,
    ack_delay: Histogram,
    last_ack_delay: Gauge<f64, AtomicU64>,
    resyncs: Counter,
}

impl DistributionMetrics {
    pub fn register(registry: &mut Registry) -> DistributionMetrics {
        let metrics = DistributionMetrics {
            bytes_sent: Family::default(),
            messages_sent: Family::default(),
            full_encode: seconds(),
            full_bytes: Gauge::default(),
            delta_build: seconds(),
            send_lag: seconds(),
            ack_delay: seconds(),
            last_ack_delay: Gauge::default(),
            resyncs: Counter::default(),
        };
        registry.register(
            "config_bytes_sent",
            "Config bytes sent to data planes, by kind (full, delta, legacy_full)",
            metrics.bytes_sent.clone(),
        );
        registry.register(
            "config_messages_sent",
            "Config messages sent to data planes, by kind (a full snapshot is several chunks)",
            metrics.messages_sent.clone(),
        );
        registry.register(
            "full_snapshot_encode_seconds",
            "Time to encode a version's full snapshot (once per version, on first use)",
            metrics.full_encode.clone(),
        );
        registry.register(
            "full_snapshot_bytes",
            "Size of the newest encoded full snapshot",
            metrics.full_bytes.clone(),
        );
        registry.register(
            "delta_build_seconds",
            "Time to build a delta (once per base and target version)",
            metrics.delta_build.clone(),
        );
        registry.register(
            "config_send_lag_seconds",
            "Per session: time from a version's publication to its send on that stream",
            metrics.send_lag.clone(),
        );
        registry.register(
            "config_ack_seconds",
            "Time from a version's publication to each data plane's ACK of it",
            metrics.ack_delay.clone(),
        );
        registry.register(
            "config_last_ack_seconds",
            "For the newest version: time from its publication to the latest ACK so far",
            metrics.last_ack_delay.clone(),
        );
        registry.register(
            "config_resyncs",
            "Full snapshots data planes asked for because their state did not match (drift)",
            metrics.resyncs.clone(),
        );
        metrics
    }

    pub fn sent(&self, kind: Sent, bytes: usize) {
        self.bytes_sent
            .get_or_create(&kind.label())
            .inc_by(bytes as u64);
        self.messages_sent.get_or_create(&kind.label()).inc();
    }

    pub fn full_encoded(&self, elapsed: Duration, bytes: usize) {
        self.full_encode.observe(elapsed.as_secs_f64());
        self.full_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    pub fn delta_built(&self, elapsed: Duration) {
        self.delta_build.observe(elapsed.as_secs_f64());
    }

    pub fn send_lag(&self, lag: Duration) {
        self.send_lag.observe(lag.as_secs_f64());
    }

    /// An ACK of the newest version, `delay` after its publication.
    pub fn acked_newest(&self, delay: Duration) {
        self.ack_delay.observe(delay.as_secs_f64());
        let seconds = delay.as_secs_f64();
        if seconds > self.last_ack_delay.get() {
            self.last_ack_delay.set(seconds);
        }
    }

    /// A new version is out: its last-ACK time starts over.
    pub fn new_version(&self) {
        self.last_ack_delay.set(0.0);
    }

    pub fn resync(&self) {
        self.resyncs.inc();
    }
}
