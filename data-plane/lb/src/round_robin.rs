//! Smooth weighted round robin (nginx's algorithm), exact to its weights.
//!
//! Every pick raises each target's "current" weight by its configured weight,
//! takes the target with the highest current weight and lowers it by the total.
//! Over a cycle of `sum(weights)` picks each target is chosen exactly `weight`
//! times, interleaved (weights 5:1:1 give `a a b a c a a`, not `a a a a a b c`).
//!
//! The hot path takes no lock: the cycle is precomputed once when the snapshot
//! compiles (after dividing the weights by their gcd) and a pick is one atomic
//! `fetch_add` into it. Concurrent picks each get a distinct slot, so the
//! shares stay exact under concurrency too. Only a pathological pool whose
//! reduced cycle is longer than [`MAX_PRECOMPUTED_CYCLE`] falls back to running
//! the algorithm under a tiny per-pool mutex.
//!
//! Targets with weight 0 are out of rotation; a pool with none left picks
//! nothing (answered 503 by the proxy).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Longest cycle stored as a table (4 bytes a slot: 256 KiB at most).
pub const MAX_PRECOMPUTED_CYCLE: u64 = 65_536;

#[derive(Debug)]
pub struct RoundRobin {
    schedule: Schedule,
    weights: Box<[u32]>,
}

#[derive(Debug)]
enum Schedule {
    /// No target with a non-zero weight.
    Empty,
    Single(usize),
    Table {
        order: Box<[u32]>,
        next: AtomicUsize,
    },
    Live(Mutex<Smooth>),
}

/// The running state of smooth weighted round robin.
#[derive(Debug, Clone)]
struct Smooth {
    /// (target index, weight, current weight); weight-0 targets are left out.
    entries: Vec<(usize, i64, i64)>,
    total: i64,
}

impl Smooth {
    fn new(weights: &[u64]) -> Smooth {
        let entries: Vec<(usize, i64, i64)> = weights
            .iter()
            .enumerate()
            .filter(|(_, w)| **w > 0)
            .map(|(i, w)| (i, i64::try_from(*w).unwrap_or(i64::MAX / 2048), 0))
            .collect();
        let total = entries.iter().map(|e| e.1).sum();
        Smooth { entries, total }
    }

    fn pick(&mut self) -> Option<usize> {
        let mut best_slot: Option<usize> = None;
        let mut best_current = i64::MIN;
        for (slot, entry) in self.entries.iter_mut().enumerate() {
            entry.2 += entry.1;
            // Strictly greater: ties go to the earlier target, deterministically.
            if entry.2 > best_current {
                best_current = entry.2;
                best_slot = Some(slot);
            }
        }
        let entry = self.entries.get_mut(best_slot?)?;
        entry.2 -= self.total;
        Some(entry.0)
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl RoundRobin {
    /// Builds the schedule for targets with these weights (index = target).
    pub fn new(weights: &[u32]) -> RoundRobin {
        let live: Vec<usize> = (0..weights.len()).filter(|i| weights[*i] > 0).collect();
        let schedule = match live.as_slice() {
            [] => Schedule::Empty,
            [only] => Schedule::Single(*only),
            _ => {
                let divisor = weights
                    .iter()
                    .filter(|w| **w > 0)
                    .fold(0u64, |acc, w| gcd(acc, u64::from(*w)));
                let reduced: Vec<u64> = weights
                    .iter()
                    .map(|w| u64::from(*w) / divisor.max(1))
                    .collect();
                let cycle: u64 = reduced.iter().sum();
                let mut smooth = Smooth::new(&reduced);
                if cycle <= MAX_PRECOMPUTED_CYCLE {
                    let order: Box<[u32]> = (0..cycle)
                        .filter_map(|_| smooth.pick())
                        .map(|i| u32::try_from(i).unwrap_or(0))
                        .collect();
                    Schedule::Table {
                        order,
                        next: AtomicUsize::new(0),
                    }
                } else {
                    Schedule::Live(Mutex::new(smooth))
                }
            }
        };
        RoundRobin {
            schedule,
            weights: weights.into(),
        }
    }

    /// The number of targets (with weight or not).
    pub fn len(&self) -> usize {
        self.weights.len()
    }

    pub fn is_empty(&self) -> bool {
        self.weights.is_empty()
    }

    /// Target `index`'s weight (0 when out of range).
    pub fn weight(&self, index: usize) -> u32 {
        self.weights.get(index).copied().unwrap_or(0)
    }

    /// The index of the next target, or `None` when no target has weight.
    #[inline]
    pub fn pick(&self) -> Option<usize> {
        match &self.schedule {
            Schedule::Empty => None,
            Schedule::Single(index) => Some(*index),
            Schedule::Table { order, next } => {
                let slot = next.fetch_add(1, Ordering::Relaxed) % order.len();
                order.get(slot).map(|i| *i as usize)
            }
            Schedule::Live(state) => match state.lock() {
                Ok(mut smooth) => smooth.pick(),
                Err(poisoned) => poisoned.into_inner().pick(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(rr: &RoundRobin, targets: usize, picks: usize) -> Vec<usize> {
        let mut counts = vec![0; targets];
        for _ in 0..picks {
            counts[rr.pick().expect("a target")] += 1;
        }
        counts
    }

    #[test]
    fn weights_one_to_two_are_exact_over_600_picks() {
        let rr = RoundRobin::new(&[1, 2]);
        assert_eq!(counts(&rr, 2, 600), vec![200, 400]);
    }

    #[test]
    fn smooth_interleaving_like_nginx() {
        let rr = RoundRobin::new(&[5, 1, 1]);
        let picks: Vec<usize> = (0..7).filter_map(|_| rr.pick()).collect();
        assert_eq!(picks, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn zero_weight_targets_are_excluded_and_empty_pools_pick_nothing() {
        let rr = RoundRobin::new(&[0, 3, 0, 1]);
        assert_eq!(counts(&rr, 4, 400), vec![0, 300, 0, 100]);
        assert_eq!(RoundRobin::new(&[0, 0]).pick(), None);
        assert_eq!(RoundRobin::new(&[]).pick(), None);
        assert_eq!(RoundRobin::new(&[0, 7]).pick(), Some(1));
    }

    #[test]
    fn large_cycles_fall_back_to_the_live_algorithm_and_stay_exact() {
        let rr = RoundRobin::new(&[10_000, 9_999, 9_998, 9_997, 9_996, 9_995, 9_994, 1]);
        assert!(matches!(rr.schedule, Schedule::Live(_)));
        let total = 10_000 + 9_999 + 9_998 + 9_997 + 9_996 + 9_995 + 9_994 + 1;
        assert_eq!(
            counts(&rr, 8, total),
            vec![10_000, 9_999, 9_998, 9_997, 9_996, 9_995, 9_994, 1]
        );
    }

    #[test]
    fn concurrent_picks_keep_exact_shares() {
        let rr = std::sync::Arc::new(RoundRobin::new(&[1, 2, 3]));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let rr = rr.clone();
                std::thread::spawn(move || counts(&rr, 3, 1_200))
            })
            .collect();
        let mut total = vec![0; 3];
        for handle in handles {
            for (i, c) in handle.join().expect("thread").into_iter().enumerate() {
                total[i] += c;
            }
        }
        assert_eq!(total, vec![800, 1_600, 2_400]);
    }
}
