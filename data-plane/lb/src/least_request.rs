//! Least request by the power of two random choices (P2C), weighted.
//!
//! Two targets are drawn at random (in proportion to their weights) and the
//! one with fewer requests in flight per unit of weight wins; ties go to
//! the first draw. Compared with scanning every target for the global
//! minimum, P2C costs the same for 3 or 1,000 targets, needs no lock, and
//! avoids the herd effect of every worker piling on the one least-loaded
//! target at the same moment (Mitzenmacher; Envoy and linkerd do the same).
//!
//! The in-flight counts are the balancer's own atomics: the proxy calls
//! [`crate::Balancer::started`] when a request is sent to a target and
//! [`crate::Balancer::finished`] when its response head arrived or it
//! failed.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::hash::below;
use crate::PickContext;

#[derive(Debug)]
pub struct LeastRequest {
    /// Per target.
    in_flight: Box<[AtomicU32]>,
    weights: Box<[u32]>,
    /// Running sums of the weights, for a weighted draw by binary search.
    cumulative: Box<[u64]>,
}

impl LeastRequest {
    pub fn new(weights: &[u32]) -> LeastRequest {
        let mut total = 0u64;
        let cumulative = weights
            .iter()
            .map(|w| {
                total += u64::from(*w);
                total
            })
            .collect();
        LeastRequest {
            in_flight: weights.iter().map(|_| AtomicU32::new(0)).collect(),
            weights: weights.into(),
            cumulative,
        }
    }

    /// Requests in flight to `target` now.
    pub fn in_flight(&self, target: usize) -> u32 {
        self.in_flight
            .get(target)
            .map_or(0, |n| n.load(Ordering::Relaxed))
    }

    fn total(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }

    /// A target drawn in proportion to its weight.
    #[inline]
    fn draw(&self) -> usize {
        let point = below(self.total());
        self.cumulative.partition_point(|sum| *sum <= point)
    }

    /// A usable target drawn by weight; after a few unlucky draws (most
    /// targets ejected), the first usable one from a random start.
    fn draw_usable(&self, context: &PickContext<'_>) -> Option<usize> {
        for _ in 0..4 {
            let index = self.draw();
            if context.usable(index) {
                return Some(index);
            }
        }
        let n = self.weights.len();
        let start = below(n as u64) as usize;
        (0..n)
            .map(|k| (start + k) % n)
            .find(|i| self.weights[*i] > 0 && context.usable(*i))
    }

    /// Load per unit of weight, compared without division:
    /// `a/wa < b/wb` as `a*wb < b*wa`, with one more request counted on
    /// each so idle targets still compare by weight.
    fn less_loaded(&self, a: usize, b: usize) -> bool {
        let load_a = u64::from(self.in_flight(a)) + 1;
        let load_b = u64::from(self.in_flight(b)) + 1;
        load_a * u64::from(self.weights[b]) <= load_b * u64::from(self.weights[a])
    }

    pub fn pick(&self, context: &PickContext<'_>) -> Option<usize> {
        if self.total() == 0 {
            return None;
        }
        let first = self.draw_usable(context)?;
        // Two different targets when there are: with few targets a repeat
        // draw would otherwise leave the choice to chance half the time.
        let mut second = first;
        for _ in 0..4 {
            match self.draw_usable(context) {
                Some(other) if other != first => {
                    second = other;
                    break;
                }
                Some(_) => {}
                None => break,
            }
        }
        Some(if self.less_loaded(first, second) {
            first
        } else {
            second
        })
    }

    pub fn started(&self, target: usize) {
        if let Some(n) = self.in_flight.get(target) {
            n.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn finished(&self, target: usize) {
        if let Some(n) = self.in_flight.get(target) {
            // Never below zero, even if a pool were swapped mid-request.
            let _ = n.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_less_loaded_target_wins_most_picks() {
        let lb = LeastRequest::new(&[1, 1]);
        for _ in 0..10 {
            lb.started(0);
        }
        let mut counts = [0; 2];
        for _ in 0..1_000 {
            counts[lb.pick(&PickContext::any()).expect("target")] += 1;
        }
        // The two draws differ (nearly always) and target 1 wins.
        assert!(counts[1] > 950, "{counts:?}");
        for _ in 0..10 {
            lb.finished(0);
        }
        lb.finished(0);
        assert_eq!(lb.in_flight(0), 0);
    }

    #[test]
    fn idle_targets_share_by_weight_and_zero_weights_get_nothing() {
        let lb = LeastRequest::new(&[1, 3, 0]);
        let mut counts = [0; 3];
        for _ in 0..4_000 {
            counts[lb.pick(&PickContext::any()).expect("target")] += 1;
        }
        assert_eq!(counts[2], 0);
        assert!(counts[1] > 2 * counts[0], "{counts:?}");
        assert_eq!(LeastRequest::new(&[0, 0]).pick(&PickContext::any()), None);
    }

    #[test]
    fn unusable_targets_are_skipped() {
        let lb = LeastRequest::new(&[1, 1, 1]);
        let only_two = |i: usize| i == 2;
        for _ in 0..100 {
            assert_eq!(lb.pick(&PickContext::new(None, &only_two)), Some(2));
        }
        let none = |_: usize| false;
        assert_eq!(lb.pick(&PickContext::new(None, &none)), None);
    }
}
