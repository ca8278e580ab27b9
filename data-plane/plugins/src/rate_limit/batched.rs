//! `sync: batched`: fleet-wide limits without a Redis round trip per request.
//!
//! Why: a `strict` limit makes every request wait for Redis, which halves the
//! gateway's throughput. Here each data plane decides from what it knows (the
//! fleet's counts as of its last sync, plus what it admitted since) and a
//! background task per limit pushes this data plane's increments of the last
//! interval to Redis in one pipelined call ([`RedisStore::sync`], `sync.lua`:
//! one `EVALSHA` per counter) and reads back the fleet's totals.
//!
//! # The bound
//!
//! A data plane's view misses what the others admitted since their last push
//! that it has read: another data plane's admission is pushed within one
//! interval `T` and read by this one within another `T` plus the round trip
//! `d`, so it is unseen for at most `2T + d`. Each data plane stops admitting
//! once its view reaches the limit, so over any window the fleet admits at most
//!
//! ```text
//! limit + (N - 1) x r x (2T + d)
//! ```
//!
//! where `N` is the number of data planes and `r` the rate (requests per
//! second) one data plane admits for that counter. A counter a data plane has
//! not synced yet (its first interval there, or back after it sat idle past
//! two windows) is decided on that data plane's own count alone until its
//! first sync: at most `min(limit, r x (T + d))` more for that data plane.
//! A failed sync keeps its increments for the next one (a push that timed out
//! after Redis applied it is counted twice: the error is on the strict side).
//!
//! The overshoot actually seen (the fleet's estimate over the limit, read back
//! at each sync) is the `tollgate_rate_limit_sync_overshoot` and
//! `..._overshoot_max` gauges.
//!
//! # Algorithms
//!
//! - Sliding window: the counts live in the same Redis hash `check.lua` uses
//!   (window index, current and previous count), so `strict` and `batched`
//!   data planes share a counter. Increments are tagged with the window they
//!   were admitted in (on Redis's clock, tracked through the offset the store
//!   keeps), so a push landing just after a window turned still counts in the
//!   right one.
//! - GCRA, approximated: between syncs a data plane moves its own copy of the
//!   theoretical arrival time (TAT) forward per admitted request; a sync adds
//!   `n x emission interval` to the fleet's TAT, counted from when the first of
//!   the `n` was admitted (as if they had come in one burst then), and the
//!   data plane takes the fleet's TAT plus what it admitted during the round
//!   trip. It is exact when one data plane sees the traffic; with several, the
//!   bound above applies in requests.
//!
//! Every scope works alike: the counter is keyed by the scope value as for
//! `strict`. While Redis is unavailable (breaker open, or not answered yet),
//! requests follow `on_redis_failure`, as with `strict`.
//!
//! The request path takes one of [`SHARDS`] locks for a few arithmetic steps
//! (as the in-process limiter does) and allocates only the first time a data
//! plane sees a counter (its Redis key).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tollgate_shared::plugins::RateLimitAlgorithm;
use tollgate_telemetry::RateLimitSyncMetrics;

use super::algorithm::{
    gcra_check, gcra_decision, sliding_check, sliding_decision, weighted_previous, Decision,
    Params, SlidingState,
};
use super::local::SHARDS;
use super::redis::{RedisStore, SyncItem, SyncReply};

/// Most counters one shard holds (as the in-process limiter).
const MAX_PER_SHARD: usize = super::local::MAX_PER_SHARD;

/// One counter as this data plane knows it.
#[derive(Debug)]
struct Entry {
    redis_key: Box<str>,
    /// Sliding window: this data plane's unsynced admissions in window
    /// `own_index` and the one before it.
    own_index: u64,
    own_current: u64,
    own_previous: u64,
    /// Sliding window: the fleet's counts as of the last sync.
    fleet_index: u64,
    fleet_current: u64,
    fleet_previous: u64,
    /// GCRA: this data plane's view of the theoretical arrival time, its
    /// unsynced admissions and when the first of them was admitted.
    tat_us: u64,
    own_count: u64,
    own_since_us: u64,
}

impl Entry {
    fn new(redis_key: String) -> Entry {
        Entry {
            redis_key: redis_key.into_boxed_str(),
            own_index: 0,
            own_current: 0,
            own_previous: 0,
            fleet_index: 0,
            fleet_current: 0,
            fleet_previous: 0,
            tat_us: 0,
            own_count: 0,
            own_since_us: 0,
        }
    }

    fn has_pending(&self) -> bool {
        self.own_current > 0 || self.own_previous > 0 || self.own_count > 0
    }
}

/// Moves a (index, current, previous) triple to window `to`.
fn roll(index: &mut u64, current: &mut u64, previous: &mut u64, to: u64) {
    if *index == to || to < *index {
        return;
    }
    if *index + 1 == to {
        *previous = *current;
    } else {
        *previous = 0;
    }
    *current = 0;
    *index = to;
}

/// What one sync pushed for one counter, to take off once Redis has it.
#[derive(Debug, Clone, Copy)]
struct Pushed {
    local_key: u64,
    index: u64,
    current: u64,
    previous: u64,
    count: u64,
}

#[repr(align(64))]
#[derive(Default)]
struct PaddedShard(Mutex<HashMap<u64, Entry>>);

/// The counters of one `sync: batched` rate-limit instance on this data plane.
pub struct BatchedLimiter {
    params: Params,
    shards: Box<[PaddedShard]>,
    metrics: RateLimitSyncMetrics,
}

impl BatchedLimiter {
    pub fn new(params: Params, metrics: RateLimitSyncMetrics) -> BatchedLimiter {
        BatchedLimiter {
            params,
            shards: (0..SHARDS).map(|_| PaddedShard::default()).collect(),
            metrics,
        }
    }

    fn shard(&self, key: u64) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.shards[(key >> 58) as usize % SHARDS]
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Checks and counts one request of counter `key` at `now_us` (Redis's
    /// clock); `redis_key` names the counter the first time it is seen.
    pub fn check_at(&self, key: u64, now_us: u64, redis_key: impl FnOnce() -> String) -> Decision {
        let params = &self.params;
        let mut shard = self.shard(key);
        if shard.len() >= MAX_PER_SHARD && !shard.contains_key(&key) {
            // Forgetting a counter only makes its limit more lenient for a
            // while, never the memory unbounded.
            if let Some(victim) = shard.keys().next().copied() {
                shard.remove(&victim);
            }
        }
        let entry = shard.entry(key).or_insert_with(|| Entry::new(redis_key()));
        match params.algorithm {
            RateLimitAlgorithm::SlidingWindow => {
                let index = now_us / params.window_us.max(1);
                roll(
                    &mut entry.own_index,
                    &mut entry.own_current,
                    &mut entry.own_previous,
                    index,
                );
                roll(
                    &mut entry.fleet_index,
                    &mut entry.fleet_current,
                    &mut entry.fleet_previous,
                    index,
                );
                let mut state = SlidingState {
                    index,
                    current: entry.fleet_current + entry.own_current,
                    previous: entry.fleet_previous + entry.own_previous,
                };
                let outcome = sliding_check(params, &mut state, now_us);
                if outcome.allowed {
                    entry.own_current += 1;
                }
                sliding_decision(params, &outcome)
            }
            RateLimitAlgorithm::Gcra => {
                let outcome = gcra_check(params, &mut entry.tat_us, now_us);
                if outcome.allowed {
                    if entry.own_count == 0 {
                        entry.own_since_us = now_us;
                    }
                    entry.own_count += 1;
                }
                gcra_decision(params, &outcome)
            }
        }
    }

    /// Every live counter's increments since the last sync (idle, expired
    /// counters are dropped here).
    fn collect(&self, now_us: u64) -> (Vec<SyncItem>, Vec<Pushed>) {
        let params = &self.params;
        let index = now_us / params.window_us.max(1);
        let mut items = Vec::new();
        let mut pushed = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = shard.0.lock().unwrap_or_else(|p| p.into_inner());
            shard.retain(|_, entry| {
                entry.has_pending()
                    || match params.algorithm {
                        RateLimitAlgorithm::SlidingWindow => {
                            entry.fleet_index.max(entry.own_index) + 2 > index
                        }
                        RateLimitAlgorithm::Gcra => entry.tat_us > now_us,
                    }
            });
            for (local_key, entry) in shard.iter() {
                let (from, added, added_before) = match params.algorithm {
                    RateLimitAlgorithm::SlidingWindow => {
                        (entry.own_index, entry.own_current, entry.own_previous)
                    }
                    RateLimitAlgorithm::Gcra => (entry.own_since_us, entry.own_count, 0),
                };
                items.push(SyncItem {
                    key: entry.redis_key.to_string(),
                    from,
                    added,
                    added_before,
                });
                pushed.push(Pushed {
                    local_key: *local_key,
                    index: entry.own_index,
                    current: entry.own_current,
                    previous: entry.own_previous,
                    count: entry.own_count,
                });
            }
        }
        (items, pushed)
    }

    /// Takes what Redis now counts off the pending increments and keeps the
    /// fleet's totals; returns the largest overshoot seen.
    fn apply(&self, pushed: &[Pushed], replies: &[SyncReply]) -> u64 {
        let params = &self.params;
        let mut overshoot = 0;
        for (pushed, reply) in pushed.iter().zip(replies) {
            let mut shard = self.shard(pushed.local_key);
            let Some(entry) = shard.get_mut(&pushed.local_key) else {
                continue;
            };
            match params.algorithm {
                RateLimitAlgorithm::SlidingWindow => {
                    if entry.own_index == pushed.index {
                        entry.own_current = entry.own_current.saturating_sub(pushed.current);
                        entry.own_previous = entry.own_previous.saturating_sub(pushed.previous);
                    } else if entry.own_index == pushed.index + 1 {
                        entry.own_previous = entry.own_previous.saturating_sub(pushed.current);
                    }
                    entry.fleet_index = reply.index;
                    entry.fleet_current = reply.current;
                    entry.fleet_previous = reply.previous;
                    let elapsed = reply
                        .now_us
                        .saturating_sub(reply.index.saturating_mul(params.window_us))
                        .min(params.window_us);
                    let used = weighted_previous(reply.previous, elapsed, params.window_us)
                        + reply.current;
                    overshoot = overshoot.max(used.saturating_sub(params.limit));
                }
                RateLimitAlgorithm::Gcra => {
                    entry.own_count = entry.own_count.saturating_sub(pushed.count);
                    let emission = params.emission_us();
                    entry.tat_us = reply.tat_us + entry.own_count * emission;
                    // Requests the fleet admitted beyond `burst + 1` at once.
                    let ahead = reply.tat_us.saturating_sub(reply.now_us).div_ceil(emission);
                    overshoot = overshoot.max(ahead.saturating_sub(params.burst + 1));
                }
            }
        }
        overshoot
    }

    /// How many counters are held (tests, diagnostics).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.0.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One sync round: push, read back, account. `false` when Redis did not answer.
    pub async fn sync_once(&self, store: &RedisStore, timeout: Duration) -> bool {
        let Some(now) = store.redis_now_us() else {
            return false;
        };
        let (items, pushed) = self.collect(now);
        if items.is_empty() {
            return true;
        }
        match store.sync(&items, &self.params, timeout).await {
            Some(replies) => {
                let overshoot = self.apply(&pushed, &replies);
                self.metrics.observe_overshoot(overshoot);
                self.metrics.syncs_ok.inc();
                true
            }
            None => {
                self.metrics.syncs_failed.inc();
                false
            }
        }
    }
}

/// The sync loop of one limiter: one round per `interval` while Redis is
/// available; ends when the limiter is dropped (its last snapshot retired).
pub async fn run(
    limiter: Weak<BatchedLimiter>,
    store: RedisStore,
    interval: Duration,
    timeout: Duration,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(limiter) = limiter.upgrade() else {
            return;
        };
        if store.is_available() {
            limiter.sync_once(&store, timeout).await;
        }
    }
}

/// Starts `limiter`'s sync loop on the current Tokio runtime (none in plain
/// unit tests: then nothing syncs and the store stays unused).
pub fn spawn(limiter: &Arc<BatchedLimiter>, store: RedisStore, interval: Duration) {
    let timeout = interval.clamp(Duration::from_millis(50), Duration::from_secs(1));
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(run(Arc::downgrade(limiter), store, interval, timeout));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000;

    fn limiter(algorithm: RateLimitAlgorithm, limit: u64, window_s: u64) -> BatchedLimiter {
        BatchedLimiter::new(
            Params {
                algorithm,
                limit,
                window_us: window_s * SEC,
                burst: 0,
            },
            tollgate_telemetry::Metrics::new().rate_limit_sync("test"),
        )
    }

    fn admitted(limiter: &BatchedLimiter, count: u64, now: u64) -> u64 {
        (0..count)
            .filter(|_| limiter.check_at(7, now, || "k".into()).allowed)
            .count() as u64
    }

    #[test]
    fn admits_the_local_view_and_pushes_it_once() {
        let limiter = limiter(RateLimitAlgorithm::SlidingWindow, 10, 60);
        let now = 100 * 60 * SEC + 5 * SEC;
        assert_eq!(admitted(&limiter, 4, now), 4);
        let (items, pushed) = limiter.collect(now);
        assert_eq!(items.len(), 1);
        assert_eq!((items[0].from, items[0].added), (100, 4));
        // While the push is in flight two more are admitted; the fleet (two
        // other data planes) has 3 besides our 4.
        assert_eq!(admitted(&limiter, 2, now), 2);
        let reply = SyncReply {
            index: 100,
            previous: 0,
            current: 7,
            tat_us: 0,
            now_us: now,
        };
        assert_eq!(limiter.apply(&pushed, &[reply]), 0);
        // Fleet 7 + own 2 unsynced = 9 of 10.
        assert_eq!(admitted(&limiter, 5, now), 1);
        let (items, _) = limiter.collect(now);
        assert_eq!(
            items[0].added, 3,
            "only what Redis has not seen is pushed again"
        );
    }

    #[test]
    fn overshoot_is_what_the_fleet_shows_over_the_limit() {
        let limiter = limiter(RateLimitAlgorithm::SlidingWindow, 10, 60);
        let now = 100 * 60 * SEC;
        assert_eq!(admitted(&limiter, 10, now), 10);
        let (_, pushed) = limiter.collect(now);
        let reply = SyncReply {
            index: 100,
            previous: 0,
            current: 13,
            tat_us: 0,
            now_us: now,
        };
        assert_eq!(limiter.apply(&pushed, &[reply]), 3);
        assert_eq!(admitted(&limiter, 1, now), 0);
    }

    #[test]
    fn pending_increments_follow_the_window_they_were_admitted_in() {
        let limiter = limiter(RateLimitAlgorithm::SlidingWindow, 100, 1);
        assert_eq!(admitted(&limiter, 3, 50 * SEC + 900_000), 3);
        // The window turns before the sync: the 3 are the previous window's.
        assert_eq!(admitted(&limiter, 2, 51 * SEC + 10), 2);
        let (items, _) = limiter.collect(51 * SEC + 20);
        assert_eq!(
            (items[0].from, items[0].added, items[0].added_before),
            (51, 2, 3)
        );
    }

    #[test]
    fn idle_counters_are_dropped_once_their_windows_are_past() {
        let limiter = limiter(RateLimitAlgorithm::SlidingWindow, 10, 1);
        admitted(&limiter, 1, 10 * SEC);
        let (_, pushed) = limiter.collect(10 * SEC);
        let reply = SyncReply {
            index: 10,
            previous: 0,
            current: 1,
            tat_us: 0,
            now_us: 10 * SEC,
        };
        limiter.apply(&pushed, &[reply]);
        assert_eq!(limiter.len(), 1);
        let (items, _) = limiter.collect(13 * SEC);
        assert!(items.is_empty());
        assert!(limiter.is_empty());
    }

    #[test]
    fn gcra_pushes_its_count_from_the_first_admission() {
        let limiter = limiter(RateLimitAlgorithm::Gcra, 10, 1);
        let start = 40 * SEC;
        // Emission 100 ms, no burst: one per 100 ms.
        assert_eq!(admitted(&limiter, 3, start), 1);
        assert_eq!(admitted(&limiter, 1, start + 100_000), 1);
        let (items, pushed) = limiter.collect(start + 150_000);
        assert_eq!((items[0].from, items[0].added), (start, 2));
        // Another data plane admitted 2 as well: the fleet TAT is 4 emissions on.
        let reply = SyncReply {
            index: 0,
            previous: 0,
            current: 0,
            tat_us: start + 400_000,
            now_us: start + 150_000,
        };
        let overshoot = limiter.apply(&pushed, &[reply]);
        assert_eq!(overshoot, 2, "3 intervals ahead, 1 allowed");
        assert_eq!(admitted(&limiter, 1, start + 250_000), 0);
        assert_eq!(admitted(&limiter, 1, start + 400_000), 1);
    }
}
