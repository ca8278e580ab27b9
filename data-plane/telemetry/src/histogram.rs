//! A lock-free latency histogram for the request path.
//!
//! `prometheus-client`'s own histogram takes a write lock on every
//! observation; on a gateway every request of a route would contend on it.
//! This one is a fixed array of atomic bucket counters plus an atomic sum in
//! nanoseconds: an observation is a short linear scan over the bounds and two
//! relaxed `fetch_add`s. It plugs into a `prometheus-client` registry through
//! [`EncodeMetric`], so exposition stays the crate's job.
//!
//! Buckets are stored non-cumulatively and summed at scrape time; the count is
//! the sum of the buckets read in the same pass, so `_count` and the `+Inf`
//! bucket always agree.
//!
//! With usage reports on ([`enable_report_buckets`], before the first
//! histogram is made), each histogram also keeps the fine log-linear buckets
//! of [`tollgate_shared::usage`] (3% relative error, mergeable across data
//! planes): one more relaxed `fetch_add` per observation, read by the usage
//! reporter off the request path.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Upper bounds in seconds for request and upstream latencies: 0.5 ms to 30 s.
pub const LATENCY_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A latency histogram; clones share the same counters.
#[derive(Debug, Clone)]
pub struct LatencyHistogram {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Bucket upper bounds in nanoseconds, ascending.
    bounds_nanos: Box<[u64]>,
    /// The same bounds in seconds, for exposition.
    bounds_secs: Box<[f64]>,
    /// One counter per bound plus the `+Inf` overflow bucket (non-cumulative).
    counts: Box<[AtomicU64]>,
    /// Sum of all observations in nanoseconds.
    sum_nanos: AtomicU64,
    /// The usage report's buckets (`tollgate_shared::usage`), when enabled.
    report: Option<Box<[AtomicU64]>>,
}

static REPORT_BUCKETS: AtomicBool = AtomicBool::new(false);

/// Histograms made from now on also keep the usage report's fine buckets.
pub fn enable_report_buckets() {
    REPORT_BUCKETS.store(true, Ordering::Relaxed);
}

/// Whether usage reports are on (histograms keep report buckets).
pub fn report_buckets_enabled() -> bool {
    REPORT_BUCKETS.load(Ordering::Relaxed)
}

/// A histogram's report buckets read at one moment: sparse `(index, count)`
/// pairs (cumulative since the process started) and the sum in microseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReportBuckets {
    pub buckets: Vec<(u32, u64)>,
    pub sum_micros: u64,
}

impl LatencyHistogram {
    /// A histogram with the given upper bounds in seconds (sorted, finite,
    /// positive values are kept; anything else is dropped).
    pub fn with_buckets(bounds: &[f64]) -> Self {
        let mut secs: Vec<f64> = bounds
            .iter()
            .copied()
            .filter(|b| b.is_finite() && *b > 0.0)
            .collect();
        secs.sort_by(f64::total_cmp);
        secs.dedup();
        let nanos = secs.iter().map(|s| (s * 1e9) as u64).collect();
        let counts = (0..=secs.len()).map(|_| AtomicU64::new(0)).collect();
        let report = report_buckets_enabled().then(|| {
            (0..tollgate_shared::usage::BUCKETS)
                .map(|_| AtomicU64::new(0))
                .collect()
        });
        Self {
            inner: Arc::new(Inner {
                bounds_nanos: nanos,
                bounds_secs: secs.into_boxed_slice(),
                counts,
                sum_nanos: AtomicU64::new(0),
                report,
            }),
        }
    }

    /// Records one observation.
    #[inline]
    pub fn observe(&self, value: Duration) {
        let nanos = u64::try_from(value.as_nanos()).unwrap_or(u64::MAX);
        let inner = &*self.inner;
        let index = inner
            .bounds_nanos
            .iter()
            .position(|bound| nanos <= *bound)
            .unwrap_or(inner.bounds_nanos.len());
        if let Some(bucket) = inner.counts.get(index) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        inner.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        if let Some(report) = &inner.report {
            if let Some(bucket) = report.get(tollgate_shared::usage::bucket_of(nanos / 1000)) {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The report buckets, if this histogram keeps them.
    pub fn report_buckets(&self) -> Option<ReportBuckets> {
        let report = self.inner.report.as_ref()?;
        let buckets = report
            .iter()
            .enumerate()
            .filter_map(|(index, count)| {
                let count = count.load(Ordering::Relaxed);
                (count > 0).then_some((index as u32, count))
            })
            .collect();
        Some(ReportBuckets {
            buckets,
            sum_micros: self.inner.sum_nanos.load(Ordering::Relaxed) / 1000,
        })
    }

    /// Number of observations so far.
    pub fn count(&self) -> u64 {
        self.inner
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// Sum of the observations in seconds.
    pub fn sum_seconds(&self) -> f64 {
        self.inner.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9
    }
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::with_buckets(&LATENCY_BUCKETS)
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        // The encoder accumulates the per-bucket counts itself; `f64::MAX`
        // is its marker for the `+Inf` bucket.
        let inner = &*self.inner;
        let mut total = 0u64;
        let mut buckets = Vec::with_capacity(inner.counts.len());
        for (i, count) in inner.counts.iter().enumerate() {
            let count = count.load(Ordering::Relaxed);
            total += count;
            let bound = inner.bounds_secs.get(i).copied().unwrap_or(f64::MAX);
            buckets.push((bound, count));
        }
        encoder.encode_histogram::<()>(self.sum_seconds(), total, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    #[test]
    fn observations_land_in_the_right_bucket() {
        let h = LatencyHistogram::with_buckets(&[0.01, 0.1, 1.0]);
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_millis(10));
        h.observe(Duration::from_millis(50));
        h.observe(Duration::from_secs(3));
        assert_eq!(h.count(), 4);
        assert!((h.sum_seconds() - 3.065).abs() < 1e-9);
        let mut registry = Registry::default();
        registry.register("lat", "latency", h.clone());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap_or_default();
        assert!(text.contains("lat_bucket{le=\"0.01\"} 2\n"), "{text}");
        assert!(text.contains("lat_bucket{le=\"0.1\"} 3\n"), "{text}");
        assert!(text.contains("lat_bucket{le=\"1.0\"} 3\n"), "{text}");
        assert!(text.contains("lat_bucket{le=\"+Inf\"} 4\n"), "{text}");
        assert!(text.contains("lat_count 4\n"), "{text}");
    }

    #[test]
    fn report_buckets_follow_observations() {
        enable_report_buckets();
        let h = LatencyHistogram::default();
        h.observe(Duration::from_micros(5));
        h.observe(Duration::from_millis(20));
        h.observe(Duration::from_millis(20));
        let report = h.report_buckets().unwrap_or_default();
        let twenty = tollgate_shared::usage::bucket_of(20_000) as u32;
        assert_eq!(report.buckets, vec![(5, 1), (twenty, 2)]);
        assert_eq!(report.sum_micros, 40_005);
    }

    #[test]
    fn bad_bounds_are_dropped_and_clones_share_counts() {
        let h = LatencyHistogram::with_buckets(&[f64::NAN, -1.0, 0.5, 0.5, f64::INFINITY]);
        let clone = h.clone();
        clone.observe(Duration::from_secs(10));
        h.observe(Duration::ZERO);
        assert_eq!(h.count(), 2);
        assert_eq!(h.inner.bounds_secs.len(), 1);
    }
}
