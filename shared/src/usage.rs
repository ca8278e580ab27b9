//! The latency buckets of usage reports (issue 20), shared by the data plane
//! that fills them and the control plane that merges them.
//!
//! Why log-linear buckets and not a sketch with a state: the data plane
//! records into a fixed array of atomic counters (no allocation, no lock, one
//! `fetch_add`), and two histograms merge by adding counts index by index, so
//! data planes and time windows combine without losing accuracy. A value `v`
//! in microseconds lands in bucket `v` when below 16; above, the bucket is
//! its power of two split into 16 equal parts (the 4 bits after the leading
//! one). A bucket spans at most 1/16 of its lower bound, so the value it
//! stands for ([`bucket_value`]) is within [`RELATIVE_ERROR`] (1/33, about
//! 3%) of every value in it: each
//! quantile read from these buckets is within 3% (or 1 µs) of the exact one.
//! Values of 2^32 µs (71 minutes) and more share the last bucket.

use std::collections::BTreeMap;

/// Sub-buckets per power of two, as bits.
const SUB_BITS: u32 = 4;
const SUB: u64 = 1 << SUB_BITS;
/// Values from 2^MAX_EXP microseconds on share the last bucket.
const MAX_EXP: u32 = 32;

/// Number of buckets: 16 exact ones, then 16 per power of two from 2^4 to 2^31.
pub const BUCKETS: usize = (SUB + (MAX_EXP - SUB_BITS) as u64 * SUB) as usize;

/// Largest relative error of a quantile read from these buckets (above 16 µs).
pub const RELATIVE_ERROR: f64 = 1.0 / 33.0;

/// The bucket of a value in microseconds.
#[inline]
pub fn bucket_of(micros: u64) -> usize {
    if micros < SUB {
        return micros as usize;
    }
    let micros = micros.min((1 << MAX_EXP) - 1);
    let exp = 63 - micros.leading_zeros();
    let mantissa = (micros >> (exp - SUB_BITS)) & (SUB - 1);
    (SUB + u64::from(exp - SUB_BITS) * SUB + mantissa) as usize
}

/// The bucket's range in microseconds: `[low, high)`.
pub fn bucket_range(index: usize) -> (u64, u64) {
    let index = index.min(BUCKETS - 1) as u64;
    if index < SUB {
        return (index, index + 1);
    }
    let shift = (index - SUB) / SUB;
    let mantissa = (index - SUB) % SUB;
    ((SUB + mantissa) << shift, (SUB + mantissa + 1) << shift)
}

/// The value a bucket stands for: `2·low·high / (low + high)`, the point
/// whose relative distance to both ends is the same (`(high - low) /
/// (high + low)`, at most 1/33); buckets one microsecond wide are exact.
pub fn bucket_value(index: usize) -> f64 {
    let (low, high) = bucket_range(index);
    if high - low == 1 {
        return low as f64;
    }
    let (low, high) = (low as f64, high as f64);
    2.0 * low * high / (low + high)
}

/// A sparse histogram: bucket index -> count, plus the sum in microseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Histogram {
    pub buckets: BTreeMap<u16, u64>,
    pub sum_micros: u64,
}

impl Histogram {
    pub fn count(&self) -> u64 {
        self.buckets.values().sum()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.values().all(|c| *c == 0)
    }

    /// Adds `other` into `self` (the merge of two histograms).
    pub fn merge(&mut self, other: &Histogram) {
        for (index, count) in &other.buckets {
            *self.buckets.entry(*index).or_default() += count;
        }
        self.sum_micros = self.sum_micros.saturating_add(other.sum_micros);
    }

    /// Adds `count` observations to bucket `index`.
    pub fn add(&mut self, index: u16, count: u64) {
        if count > 0 && usize::from(index) < BUCKETS {
            *self.buckets.entry(index).or_default() += count;
        }
    }

    /// The `q` quantile (0..=1) in microseconds; `None` when empty. Nearest
    /// rank: the value of the bucket holding observation `ceil(q * count)`.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (index, count) in &self.buckets {
            seen += count;
            if seen >= rank {
                return Some(bucket_value(usize::from(*index)));
            }
        }
        self.buckets
            .keys()
            .next_back()
            .map(|i| bucket_value(usize::from(*i)))
    }

    /// Mean in microseconds.
    pub fn mean(&self) -> Option<f64> {
        let total = self.count();
        (total > 0).then(|| self.sum_micros as f64 / total as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_the_range_without_gaps() {
        let mut expected_low = 0;
        for index in 0..BUCKETS {
            let (low, high) = bucket_range(index);
            assert_eq!(low, expected_low, "bucket {index}");
            assert!(high > low);
            assert_eq!(bucket_of(low), index);
            assert_eq!(bucket_of(high - 1), index);
            expected_low = high;
        }
        assert_eq!(expected_low, 1 << MAX_EXP);
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn bucket_values_are_within_the_stated_error() {
        for index in 16..BUCKETS {
            let (low, high) = bucket_range(index);
            let mid = bucket_value(index);
            for v in [low, high - 1] {
                let error = (mid - v as f64).abs() / v as f64;
                assert!(error <= RELATIVE_ERROR + 1e-12, "{index} {v} {error}");
            }
        }
    }

    #[test]
    fn quantiles_of_a_known_distribution_and_merge() {
        let mut a = Histogram::default();
        let mut b = Histogram::default();
        // 1..=1000 ms, split over two histograms.
        for ms in 1..=1000u64 {
            let target = if ms % 2 == 0 { &mut a } else { &mut b };
            target.add(bucket_of(ms * 1000) as u16, 1);
            target.sum_micros += ms * 1000;
        }
        a.merge(&b);
        assert_eq!(a.count(), 1000);
        for (q, exact) in [(0.5, 500_000.0), (0.95, 950_000.0), (0.99, 990_000.0)] {
            let got = a.quantile(q).unwrap_or_default();
            assert!(
                (got - exact).abs() / exact <= RELATIVE_ERROR,
                "q{q}: {got} vs {exact}"
            );
        }
        assert_eq!(a.mean(), Some(500_500.0));
        assert_eq!(Histogram::default().quantile(0.5), None);
    }
}
