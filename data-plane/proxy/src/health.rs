//! Target health: passive ejection, active probe state, and the retry budget
//! of one service ([`ServiceHealth`], owned by its [`crate::upstream::UpstreamPool`]
//! and carried over to the next snapshot with it).
//!
//! Passive (outlier ejection, after Envoy's): every answer from a target is
//! recorded; `consecutive_failures` failures in a row (connect failure,
//! reset, timeout, malformed answer, or a 5xx status) eject it for
//! `base_ejection_ms x times ejected` (capped at `max_ejection_ms`), unless
//! `max_ejected_percent` of the service's targets are out already (at least
//! one may always go when the service has two or more; never the last one).
//! An ejected target comes back when its time is up; its next failure streak
//! ejects it for longer.
//!
//! Active: the probe task ([`crate::probe`]) sets `probe_down` after
//! `unhealthy_threshold` failed probes and clears it (and any passive
//! ejection) after `healthy_threshold` good ones.
//!
//! The request path reads two atomics per candidate target and reads the
//! clock only while the target is ejected; recording takes no lock. Ejecting
//! scans the service's targets (rare: once per failure streak).
//!
//! The retry budget keeps retries below 20% of first tries plus a small
//! reserve ([`RETRY_RESERVE`]), so when a service fails everywhere, retries
//! cannot multiply the load on it.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tollgate_shared::model::PassiveHealth;

/// Milliseconds since the first call (monotonic); never 0, so 0 can mean
/// "not ejected".
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX) + 1
}

/// One target's health.
#[derive(Debug, Default)]
pub struct TargetHealth {
    consecutive_failures: AtomicU32,
    /// [`now_ms`] until which the target is ejected; 0 when it is not.
    ejected_until: AtomicU64,
    /// Times ejected so far (the ejection time's multiplier).
    ejections: AtomicU32,
    /// Set by failed active probes.
    probe_down: AtomicBool,
}

/// What a target's state looks like from outside (`/status`, metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetState {
    Healthy,
    /// Passively ejected, for this many more milliseconds.
    Ejected(u64),
    /// Failing its active probes.
    ProbeFailing,
}

impl TargetState {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetState::Healthy => "healthy",
            TargetState::Ejected(_) => "ejected",
            TargetState::ProbeFailing => "unhealthy",
        }
    }
}

impl TargetHealth {
    /// Whether the target may take requests now.
    #[inline]
    pub fn usable(&self) -> bool {
        if self.probe_down.load(Ordering::Relaxed) {
            return false;
        }
        let until = self.ejected_until.load(Ordering::Relaxed);
        until == 0 || now_ms() >= until
    }

    pub fn state(&self) -> TargetState {
        if self.probe_down.load(Ordering::Relaxed) {
            return TargetState::ProbeFailing;
        }
        let until = self.ejected_until.load(Ordering::Relaxed);
        let now = now_ms();
        if until != 0 && now < until {
            TargetState::Ejected(until - now)
        } else {
            TargetState::Healthy
        }
    }

    pub fn ejections(&self) -> u32 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// Marks the result of active probing; returns whether it changed.
    pub fn set_probe_down(&self, down: bool) -> bool {
        let was = self.probe_down.swap(down, Ordering::Relaxed);
        if !down {
            // A target its probes call healthy again is back at once.
            self.ejected_until.store(0, Ordering::Relaxed);
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
        was != down
    }

    fn currently_ejected(&self, now: u64) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && now < until
    }
}

/// The health of a service's targets (index = target) and its retry budget.
#[derive(Debug)]
pub struct ServiceHealth {
    targets: Box<[TargetHealth]>,
    /// 0: passive ejection off.
    threshold: u32,
    base_ejection_ms: u64,
    max_ejection_ms: u64,
    /// Targets that may be ejected at once.
    max_ejected: usize,
    pub budget: RetryBudget,
}

impl ServiceHealth {
    pub fn new(targets: usize, passive: &PassiveHealth) -> ServiceHealth {
        let share = targets * passive.max_ejected_percent() as usize / 100;
        let max_ejected = if targets < 2 {
            0
        } else {
            share.max(1).min(targets - 1)
        };
        ServiceHealth {
            targets: (0..targets).map(|_| TargetHealth::default()).collect(),
            threshold: passive.consecutive_failures(),
            base_ejection_ms: passive.base_ejection_ms(),
            max_ejection_ms: passive.max_ejection_ms(),
            max_ejected,
            budget: RetryBudget::new(),
        }
    }

    #[inline]
    pub fn target(&self, index: usize) -> Option<&TargetHealth> {
        self.targets.get(index)
    }

    #[inline]
    pub fn usable(&self, index: usize) -> bool {
        self.targets.get(index).is_some_and(TargetHealth::usable)
    }

    pub fn len(&self) -> usize {
        self.targets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// A good answer from `index`: its failure streak ends.
    #[inline]
    pub fn record_success(&self, index: usize) {
        if let Some(target) = self.targets.get(index) {
            // Only write when there is a streak: no cache-line ping-pong
            // between workers on the happy path.
            if target.consecutive_failures.load(Ordering::Relaxed) != 0 {
                target.consecutive_failures.store(0, Ordering::Relaxed);
            }
        }
    }

    /// A failure from `index`; returns the ejection time when this failure
    /// ejected it.
    pub fn record_failure(&self, index: usize) -> Option<Duration> {
        let target = self.targets.get(index)?;
        if self.threshold == 0 {
            return None;
        }
        let streak = target.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if streak < self.threshold {
            return None;
        }
        let now = now_ms();
        if target.currently_ejected(now) {
            return None;
        }
        let ejected = self
            .targets
            .iter()
            .filter(|t| t.currently_ejected(now))
            .count();
        if ejected >= self.max_ejected {
            return None;
        }
        let times = target.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let ms = self
            .base_ejection_ms
            .saturating_mul(u64::from(times))
            .min(self.max_ejection_ms);
        target.ejected_until.store(now + ms, Ordering::Relaxed);
        target.consecutive_failures.store(0, Ordering::Relaxed);
        Some(Duration::from_millis(ms))
    }
}

/// Retries allowed per first try, in thousandths (20%).
pub const RETRY_RATIO_MILLI: i64 = 200;
/// Retries a service may always make (and at most save up): enough for a
/// quiet service to ride out one bad target.
pub const RETRY_RESERVE: i64 = 10;

/// A token bucket in thousandths of a retry: each first try deposits
/// [`RETRY_RATIO_MILLI`], each retry withdraws 1,000, and the balance never
/// exceeds [`RETRY_RESERVE`] retries. Over any stretch of traffic, retries
/// are at most 20% of first tries plus the reserve.
#[derive(Debug)]
pub struct RetryBudget {
    milli: AtomicI64,
}

impl RetryBudget {
    pub fn new() -> RetryBudget {
        RetryBudget {
            milli: AtomicI64::new(RETRY_RESERVE * 1_000),
        }
    }

    /// A first try was made.
    #[inline]
    pub fn deposit(&self) {
        let cap = RETRY_RESERVE * 1_000;
        // A racy read is fine: the cap is soft by at most one deposit per worker.
        if self.milli.load(Ordering::Relaxed) < cap {
            self.milli.fetch_add(RETRY_RATIO_MILLI, Ordering::Relaxed);
        }
    }

    /// Takes one retry's worth; `false` when the budget is spent.
    pub fn withdraw(&self) -> bool {
        self.milli
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |balance| {
                (balance >= 1_000).then_some(balance - 1_000)
            })
            .is_ok()
    }

    /// Whether a retry would be allowed now (without taking it).
    #[inline]
    pub fn available(&self) -> bool {
        self.milli.load(Ordering::Relaxed) >= 1_000
    }
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passive(threshold: u32, percent: u32) -> PassiveHealth {
        PassiveHealth {
            consecutive_failures: Some(threshold),
            base_ejection_ms: Some(60_000),
            max_ejection_ms: Some(120_000),
            max_ejected_percent: Some(percent),
        }
    }

    #[test]
    fn a_failure_streak_ejects_and_a_success_resets_it() {
        let health = ServiceHealth::new(3, &passive(3, 50));
        assert_eq!(health.record_failure(0), None);
        assert_eq!(health.record_failure(0), None);
        health.record_success(0);
        assert_eq!(health.record_failure(0), None);
        assert_eq!(health.record_failure(0), None);
        assert_eq!(health.record_failure(0), Some(Duration::from_secs(60)));
        assert!(!health.usable(0));
        assert!(health.usable(1));
        assert!(matches!(
            health.target(0).map(TargetHealth::state),
            Some(TargetState::Ejected(_))
        ));
    }

    #[test]
    fn never_more_than_the_share_and_never_all() {
        let health = ServiceHealth::new(3, &passive(1, 100));
        assert!(health.record_failure(0).is_some());
        assert!(health.record_failure(1).is_some());
        // 100% of 3 is capped at 2: the last one stays.
        assert!(health.record_failure(2).is_none());
        assert!(health.usable(2));

        let health = ServiceHealth::new(4, &passive(1, 10));
        // 10% of 4 rounds to 0, but one may always go.
        assert!(health.record_failure(0).is_some());
        assert!(health.record_failure(1).is_none());

        let single = ServiceHealth::new(1, &passive(1, 100));
        assert!(single.record_failure(0).is_none());
        assert!(single.usable(0));
    }

    #[test]
    fn repeated_ejections_last_longer_up_to_the_cap() {
        let health = ServiceHealth::new(2, &passive(1, 50));
        assert_eq!(health.record_failure(0), Some(Duration::from_secs(60)));
        // Pretend its time is up.
        health.targets[0].ejected_until.store(1, Ordering::Relaxed);
        assert!(health.usable(0));
        assert_eq!(health.record_failure(0), Some(Duration::from_secs(120)));
        health.targets[0].ejected_until.store(1, Ordering::Relaxed);
        assert_eq!(health.record_failure(0), Some(Duration::from_secs(120)));
        assert_eq!(health.targets[0].ejections(), 3);
    }

    #[test]
    fn probes_take_a_target_out_and_bring_it_back_whole() {
        let health = ServiceHealth::new(2, &passive(1, 50));
        assert!(health.record_failure(0).is_some());
        let target = health.target(0).expect("target");
        assert!(target.set_probe_down(true));
        assert_eq!(target.state(), TargetState::ProbeFailing);
        assert!(target.set_probe_down(false));
        assert!(target.usable(), "a good probe ends the ejection too");
    }

    #[test]
    fn the_budget_allows_a_fifth_of_first_tries_plus_the_reserve() {
        let budget = RetryBudget::new();
        let mut retries = 0;
        for _ in 0..1_000 {
            budget.deposit();
            if budget.withdraw() {
                retries += 1;
            }
        }
        assert!((200..=210).contains(&retries), "{retries}");
        assert!(!budget.withdraw() || budget.available() || retries > 0);
    }

    #[test]
    fn passive_ejection_can_be_turned_off() {
        let health = ServiceHealth::new(3, &passive(0, 50));
        for _ in 0..100 {
            assert!(health.record_failure(0).is_none());
        }
        assert!(health.usable(0));
    }
}
