//! The in-process limiter: the `local` policy, and the fallback of the `redis`
//! policy while Redis is unreachable.
//!
//! It sits on the hot path of every limited request, so it takes no global
//! lock: counters live in [`SHARDS`] independently locked maps, a counter's
//! shard chosen by the top bits of its (already hashed) key, and a lock is held
//! only for a few arithmetic steps. Keys are 64-bit SipHash values under a
//! per-process random key, so a client cannot aim two scope values at one
//! counter and no key string is allocated per request.
//!
//! Memory stays bounded: an idle counter is dropped once both windows it knows
//! are past (or its GCRA arrival time is), by a sweep each shard runs on itself
//! every few seconds, and a shard never holds more than [`MAX_PER_SHARD`]
//! counters (past that, an arbitrary counter is forgotten, which can only make
//! the limit more lenient for that one client, never unbounded memory).

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use tollgate_shared::plugins::RateLimitAlgorithm;

use super::algorithm::{
    gcra_check, gcra_decision, sliding_check, sliding_decision, sliding_expiry_us, Decision,
    Params, SlidingState,
};

/// Number of independently locked maps; a power of two.
pub const SHARDS: usize = 64;
/// Most counters one shard holds.
pub const MAX_PER_SHARD: usize = 4_096;
/// How often a shard drops its expired counters.
const SWEEP_EVERY_US: u64 = 5_000_000;

/// One counter: a sliding-window state, or a GCRA arrival time in `index`.
#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    state: SlidingState,
    expires_us: u64,
}

/// Keys are already uniformly distributed hashes: use them as they are.
#[derive(Default)]
struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 << 8) | u64::from(*byte);
        }
    }
    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

type CounterMap = HashMap<u64, Entry, BuildHasherDefault<IdentityHasher>>;

#[derive(Default)]
struct Shard {
    counters: CounterMap,
    next_sweep_us: u64,
}

/// A shard on its own cache line, so neighbouring locks do not contend.
#[repr(align(64))]
#[derive(Default)]
struct PaddedShard(Mutex<Shard>);

/// The in-process counters of one rate-limit plugin instance.
pub struct LocalLimiter {
    params: Params,
    shards: Box<[PaddedShard]>,
}

/// The process-wide random SipHash key for scope values.
pub fn key_hasher() -> &'static std::collections::hash_map::RandomState {
    static HASHER: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    HASHER.get_or_init(std::collections::hash_map::RandomState::new)
}

/// Hashes a scope value (a tag byte telling kinds of values apart, then the
/// value) into a counter key.
pub fn counter_key(tag: u8, value: &[u8]) -> u64 {
    let mut hasher = key_hasher().build_hasher();
    hasher.write_u8(tag);
    hasher.write(value);
    hasher.finish()
}

/// Microseconds on a monotonic clock private to this process.
pub fn now_us() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    // Start well past zero so window arithmetic never sees "before the epoch".
    let epoch = EPOCH.get_or_init(Instant::now);
    epoch.elapsed().as_micros() as u64 + 1_000_000_000
}

impl LocalLimiter {
    pub fn new(params: Params) -> LocalLimiter {
        LocalLimiter {
            params,
            shards: (0..SHARDS).map(|_| PaddedShard::default()).collect(),
        }
    }

    pub fn params(&self) -> &Params {
        &self.params
    }

    /// Checks and counts one request of counter `key` now.
    pub fn check(&self, key: u64) -> Decision {
        self.check_at(key, now_us())
    }

    /// Checks and counts one request of counter `key` at `now_us` (tests inject the clock).
    pub fn check_at(&self, key: u64, now_us: u64) -> Decision {
        let shard = &self.shards[(key >> 58) as usize % SHARDS].0;
        // A poisoned lock only means another request panicked mid-update of
        // plain integers; the counters are still usable.
        let mut shard = shard
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if now_us >= shard.next_sweep_us {
            shard.counters.retain(|_, entry| entry.expires_us > now_us);
            shard.next_sweep_us = now_us + SWEEP_EVERY_US;
        }
        if shard.counters.len() >= MAX_PER_SHARD && !shard.counters.contains_key(&key) {
            if let Some(victim) = shard.counters.keys().next().copied() {
                shard.counters.remove(&victim);
            }
        }
        let entry = shard.counters.entry(key).or_default();
        if entry.expires_us <= now_us {
            *entry = Entry::default();
        }
        match self.params.algorithm {
            RateLimitAlgorithm::SlidingWindow => {
                let outcome = sliding_check(&self.params, &mut entry.state, now_us);
                if outcome.allowed {
                    entry.expires_us = sliding_expiry_us(&self.params, &entry.state);
                }
                sliding_decision(&self.params, &outcome)
            }
            RateLimitAlgorithm::Gcra => {
                let outcome = gcra_check(&self.params, &mut entry.state.index, now_us);
                if outcome.allowed {
                    entry.expires_us = entry.state.index;
                }
                gcra_decision(&self.params, &outcome)
            }
        }
    }

    /// How many counters are held (for tests and diagnostics).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| {
                shard
                    .0
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .counters
                    .len()
            })
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const SEC: u64 = 1_000_000;

    fn sliding(limit: u64, window_s: u64) -> LocalLimiter {
        LocalLimiter::new(Params {
            algorithm: RateLimitAlgorithm::SlidingWindow,
            limit,
            window_us: window_s * SEC,
            burst: 0,
        })
    }

    #[test]
    fn keys_have_separate_counters() {
        let limiter = sliding(3, 60);
        let now = 10 * SEC;
        let a = counter_key(1, b"alice");
        let b = counter_key(1, b"bob");
        let ip = counter_key(2, b"alice");
        assert_ne!(a, ip, "the tag separates kinds of values");
        for _ in 0..3 {
            assert!(limiter.check_at(a, now).allowed);
        }
        assert!(!limiter.check_at(a, now).allowed);
        assert!(limiter.check_at(b, now).allowed);
        assert!(limiter.check_at(ip, now).allowed);
    }

    #[test]
    fn idle_counters_are_swept() {
        let limiter = sliding(10, 1);
        let start = 100 * SEC;
        for i in 0..1_000u64 {
            limiter.check_at(counter_key(0, &i.to_le_bytes()), start);
        }
        assert_eq!(limiter.len(), 1_000);
        // Past both windows and past every shard's sweep time, requests
        // landing in every shard sweep the old counters away.
        let later = start + 10 * SEC;
        for i in 0..5_000u64 {
            limiter.check_at(counter_key(9, &i.to_le_bytes()), later);
        }
        assert_eq!(limiter.len(), 5_000, "expired counters were kept");
    }

    #[test]
    fn memory_is_bounded_under_key_churn() {
        let limiter = sliding(10, 3_600);
        let now = 50 * SEC;
        for i in 0..(SHARDS * MAX_PER_SHARD + 20_000) as u64 {
            limiter.check_at(counter_key(0, &i.to_le_bytes()), now);
        }
        assert!(limiter.len() <= SHARDS * MAX_PER_SHARD);
    }

    #[test]
    fn concurrent_checks_admit_exactly_the_limit() {
        let limiter = Arc::new(sliding(1_000, 3_600));
        let key = counter_key(0, b"shared");
        let now = 7 * SEC;
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let limiter = limiter.clone();
                std::thread::spawn(move || {
                    (0..500)
                        .filter(|_| limiter.check_at(key, now).allowed)
                        .count()
                })
            })
            .collect();
        let admitted: usize = handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .sum();
        assert_eq!(admitted, 1_000);
    }

    #[test]
    fn gcra_state_expires_with_its_arrival_time() {
        let limiter = LocalLimiter::new(Params {
            algorithm: RateLimitAlgorithm::Gcra,
            limit: 1,
            window_us: SEC,
            burst: 0,
        });
        let key = counter_key(0, b"k");
        assert!(limiter.check_at(key, 20 * SEC).allowed);
        assert!(!limiter.check_at(key, 20 * SEC + 10).allowed);
        assert!(limiter.check_at(key, 21 * SEC).allowed);
    }
}
