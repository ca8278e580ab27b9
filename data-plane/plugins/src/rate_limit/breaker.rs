//! A circuit breaker in front of Redis.
//!
//! Without it, every request during a Redis outage would wait out its Redis
//! timeout before falling back. After [`Breaker::threshold`] consecutive
//! failures the breaker opens: requests stop calling Redis at all (one atomic
//! load each) and go straight to the `on_redis_failure` policy, while a single
//! background probe (see [`super::redis`]) checks Redis and closes the breaker
//! when it answers again. There is no half-open trickle of live requests: the
//! probe is the only thing that talks to a Redis that is down.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use tokio::sync::Notify;

/// Consecutive failures that open the breaker.
pub const DEFAULT_THRESHOLD: u32 = 3;

pub struct Breaker {
    threshold: u32,
    failures: AtomicU32,
    open: AtomicBool,
    /// Wakes the probe when the breaker opens.
    opened: Notify,
}

impl Breaker {
    /// A breaker that starts open (nothing is known to work yet) or closed.
    pub fn new(threshold: u32, open: bool) -> Breaker {
        Breaker {
            threshold: threshold.max(1),
            failures: AtomicU32::new(0),
            open: AtomicBool::new(open),
            opened: Notify::new(),
        }
    }

    pub fn threshold(&self) -> u32 {
        self.threshold
    }

    /// Whether calls to Redis are suspended.
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    /// A call succeeded.
    pub fn record_success(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    /// A call failed; returns true when this failure opened the breaker.
    pub fn record_failure(&self) -> bool {
        let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if failures >= self.threshold && !self.open.swap(true, Ordering::AcqRel) {
            self.opened.notify_one();
            return true;
        }
        false
    }

    /// Opens the breaker at once (e.g. the connection cannot even be made).
    pub fn trip(&self) -> bool {
        if !self.open.swap(true, Ordering::AcqRel) {
            self.opened.notify_one();
            return true;
        }
        false
    }

    /// The probe saw Redis healthy: resume calling it.
    pub fn close(&self) {
        self.failures.store(0, Ordering::Relaxed);
        self.open.store(false, Ordering::Release);
    }

    /// Resolves once the breaker is open (at once if it already is).
    pub async fn wait_open(&self) {
        loop {
            let notified = self.opened.notified();
            if self.is_open() {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn opens_after_consecutive_failures_only() {
        let breaker = Breaker::new(3, false);
        assert!(!breaker.record_failure());
        assert!(!breaker.record_failure());
        breaker.record_success();
        assert!(!breaker.record_failure());
        assert!(!breaker.record_failure());
        assert!(!breaker.is_open());
        assert!(breaker.record_failure(), "third consecutive failure opens");
        assert!(breaker.is_open());
        assert!(!breaker.record_failure(), "opens once");
        breaker.close();
        assert!(!breaker.is_open());
        assert!(!breaker.record_failure(), "close resets the count");
    }

    #[tokio::test]
    async fn wakes_the_probe_when_it_opens() {
        let breaker = Arc::new(Breaker::new(1, false));
        let waiter = {
            let breaker = breaker.clone();
            tokio::spawn(async move { breaker.wait_open().await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        breaker.record_failure();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("probe woken")
            .expect("probe task");
    }
}
