//! The two rate-limiting algorithms, as pure functions of a state and a clock.
//!
//! Both the in-process limiter ([`super::local`]) and the Redis Lua script
//! (`check.lua`) run the same steps; the script only does the part that must be
//! atomic (read, decide, write) and hands back the raw state, from which
//! [`sliding_decision`] and [`gcra_decision`] derive the numbers clients see.
//! Keeping that arithmetic in one place is what keeps `local` and `redis`
//! answering alike.
//!
//! Times are microseconds. Neither algorithm is a fixed window: a fixed window
//! admits twice the limit around its edge.
//!
//! - **Sliding window** (weighted two-window approximation): the count of the
//!   previous window, weighted by how much of it still overlaps the sliding
//!   window, plus the count of the current one. A request is admitted while that
//!   estimate stays within the limit; rejected requests are not counted.
//! - **GCRA** (generic cell rate algorithm): a "theoretical arrival time" moves
//!   forward by one emission interval (`window / limit`) per admitted request; a
//!   request is admitted while it is no further ahead of now than the burst
//!   tolerance allows. It gives a smooth rate with `burst` extra requests at once.

use tollgate_shared::plugins::RateLimitAlgorithm;

/// A limit in the units the algorithms work with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    pub algorithm: RateLimitAlgorithm,
    pub limit: u64,
    pub window_us: u64,
    /// Extra requests admitted at once (GCRA only; 0 for sliding windows).
    pub burst: u64,
}

impl Params {
    /// GCRA's emission interval: the time one request "costs".
    pub fn emission_us(&self) -> u64 {
        (self.window_us / self.limit.max(1)).max(1)
    }

    /// GCRA's burst tolerance.
    pub fn tolerance_us(&self) -> u64 {
        self.emission_us().saturating_mul(self.burst)
    }
}

/// The answer of one check: whether the request is admitted and what to tell
/// the client about its quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u64,
    pub remaining: u64,
    /// Seconds until the quota is available again (`RateLimit-Reset`).
    pub reset_s: u64,
    /// Seconds to wait before retrying (`Retry-After`); 0 when admitted.
    pub retry_after_s: u64,
}

/// Whole seconds, rounded up, at least 1 when there is anything to wait for.
fn ceil_secs(us: u64) -> u64 {
    us.div_ceil(1_000_000)
}

// ------------------------------------------------------------ sliding window

/// The state of one sliding-window counter: the index of the current window
/// and the counts of the current and previous windows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SlidingState {
    pub index: u64,
    pub current: u64,
    pub previous: u64,
}

/// What a sliding-window check saw, in the shape the Lua script returns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlidingOutcome {
    pub allowed: bool,
    pub previous: u64,
    /// The current window's count, including this request when admitted.
    pub current: u64,
    /// Microseconds since the current window started.
    pub elapsed_us: u64,
}

/// The previous window's weight at `elapsed_us` into the current one, rounded
/// down (the script computes the same expression in doubles).
pub fn weighted_previous(previous: u64, elapsed_us: u64, window_us: u64) -> u64 {
    let remaining = window_us.saturating_sub(elapsed_us) as f64;
    (previous as f64 * remaining / window_us as f64).floor() as u64
}

/// Checks and (when admitted) counts one request at `now_us`.
pub fn sliding_check(params: &Params, state: &mut SlidingState, now_us: u64) -> SlidingOutcome {
    let window = params.window_us.max(1);
    let index = now_us / window;
    let elapsed_us = now_us - index * window;
    let (mut current, previous) = if state.index == index {
        (state.current, state.previous)
    } else if state.index + 1 == index {
        (0, state.current)
    } else {
        (0, 0)
    };
    let used = weighted_previous(previous, elapsed_us, window) + current;
    let allowed = used < params.limit;
    if allowed {
        current += 1;
        *state = SlidingState {
            index,
            current,
            previous,
        };
    }
    SlidingOutcome {
        allowed,
        previous,
        current,
        elapsed_us,
    }
}

/// When the state may be forgotten: once both windows it knows are past.
pub fn sliding_expiry_us(params: &Params, state: &SlidingState) -> u64 {
    (state.index + 2).saturating_mul(params.window_us)
}

/// Microseconds from now until one more request would be admitted.
fn sliding_wait_us(params: &Params, previous: u64, current: u64, elapsed_us: u64) -> u64 {
    let window = params.window_us as f64;
    let limit = params.limit as f64;
    if current < params.limit {
        // Only the previous window's weight must shrink: find the first moment
        // `floor(previous * (W - e) / W) <= limit - 1 - current`.
        if previous == 0 {
            return 0;
        }
        let slack = (params.limit - current) as f64; // (limit - 1 - current) + 1
        let target = window - slack * window / previous as f64;
        let wait = target - elapsed_us as f64;
        if wait < 0.0 {
            0
        } else {
            wait.floor() as u64 + 1
        }
    } else {
        // The current window is full: wait for it to become the previous one
        // and for its weight to drop below the limit.
        let to_next = params.window_us - elapsed_us;
        let into_next = (window - limit * window / current as f64).max(0.0);
        to_next + into_next.floor() as u64 + 1
    }
}

/// The client-facing numbers of a sliding-window check.
pub fn sliding_decision(params: &Params, outcome: &SlidingOutcome) -> Decision {
    let used =
        weighted_previous(outcome.previous, outcome.elapsed_us, params.window_us) + outcome.current;
    let remaining = params.limit.saturating_sub(used);
    let wait = if outcome.allowed && remaining > 0 {
        0
    } else {
        sliding_wait_us(
            params,
            outcome.previous,
            outcome.current,
            outcome.elapsed_us,
        )
    };
    let reset_us = if remaining > 0 {
        params.window_us - outcome.elapsed_us
    } else {
        wait
    };
    Decision {
        allowed: outcome.allowed,
        limit: params.limit,
        remaining: if outcome.allowed { remaining } else { 0 },
        reset_s: ceil_secs(reset_us).max(1),
        retry_after_s: if outcome.allowed {
            0
        } else {
            ceil_secs(wait).max(1)
        },
    }
}

// ------------------------------------------------------------ GCRA

/// What a GCRA check saw, in the shape the Lua script returns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcraOutcome {
    pub allowed: bool,
    /// The theoretical arrival time after this check.
    pub tat_us: u64,
    pub now_us: u64,
}

/// Checks and (when admitted) counts one request at `now_us`; `tat_us` is the
/// stored theoretical arrival time (0 when none).
pub fn gcra_check(params: &Params, tat_us: &mut u64, now_us: u64) -> GcraOutcome {
    let tat = (*tat_us).max(now_us);
    let allowed = now_us >= tat.saturating_sub(params.tolerance_us());
    if allowed {
        *tat_us = tat + params.emission_us();
    }
    GcraOutcome {
        allowed,
        tat_us: if allowed { *tat_us } else { tat },
        now_us,
    }
}

/// The client-facing numbers of a GCRA check.
pub fn gcra_decision(params: &Params, outcome: &GcraOutcome) -> Decision {
    let emission = params.emission_us();
    let tolerance = params.tolerance_us();
    let now = outcome.now_us;
    // The next request is admitted once now >= tat - tolerance.
    let next_at = outcome.tat_us.saturating_sub(tolerance);
    let (remaining, wait) = if now >= next_at {
        ((now - next_at) / emission + 1, 0)
    } else {
        (0, next_at - now)
    };
    let remaining = if outcome.allowed { remaining } else { 0 };
    let reset_us = if remaining > 0 {
        outcome.tat_us.saturating_sub(now)
    } else {
        wait
    };
    Decision {
        allowed: outcome.allowed,
        limit: params.limit,
        remaining,
        reset_s: ceil_secs(reset_us).max(1),
        retry_after_s: if outcome.allowed {
            0
        } else {
            ceil_secs(wait).max(1)
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000;

    fn sliding(limit: u64, window_s: u64) -> Params {
        Params {
            algorithm: RateLimitAlgorithm::SlidingWindow,
            limit,
            window_us: window_s * SEC,
            burst: 0,
        }
    }

    fn gcra(limit: u64, window_s: u64, burst: u64) -> Params {
        Params {
            algorithm: RateLimitAlgorithm::Gcra,
            limit,
            window_us: window_s * SEC,
            burst,
        }
    }

    #[test]
    fn sliding_admits_the_limit_then_rejects_without_counting() {
        let params = sliding(5, 60);
        let mut state = SlidingState::default();
        let now = 1_000 * 60 * SEC + 7 * SEC;
        let mut remaining = Vec::new();
        for _ in 0..5 {
            let outcome = sliding_check(&params, &mut state, now);
            let decision = sliding_decision(&params, &outcome);
            assert!(decision.allowed);
            remaining.push(decision.remaining);
        }
        assert_eq!(remaining, vec![4, 3, 2, 1, 0]);
        for _ in 0..10 {
            let outcome = sliding_check(&params, &mut state, now);
            let decision = sliding_decision(&params, &outcome);
            assert!(!decision.allowed);
            assert_eq!(decision.remaining, 0);
            // The current window (53 s left) must end first.
            assert!((53..=54).contains(&decision.retry_after_s), "{decision:?}");
        }
        assert_eq!(state.current, 5, "rejected requests consumed quota");
    }

    #[test]
    fn sliding_weights_the_previous_window() {
        let params = sliding(10, 10);
        let mut state = SlidingState::default();
        let start = 100 * 10 * SEC;
        for _ in 0..10 {
            assert!(sliding_check(&params, &mut state, start).allowed);
        }
        // 2.5 s into the next window 75% of the previous 10 still count: 7, so 3 more.
        let later = start + 12_500_000;
        let mut admitted = 0;
        for _ in 0..10 {
            if sliding_check(&params, &mut state, later).allowed {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 3);
        let outcome = sliding_check(&params, &mut state, later);
        let decision = sliding_decision(&params, &outcome);
        assert!(!decision.allowed);
        // One more is admitted when floor(10 * (W - e) / W) <= 6, i.e. e > 3 s: 0.5 s away.
        assert_eq!(decision.retry_after_s, 1);
        assert!(!sliding_check(&params, &mut state, later + 500_000).allowed);
        let retry_at = later + 500_001;
        assert!(sliding_check(&params, &mut state, retry_at).allowed);
    }

    #[test]
    fn sliding_never_admits_twice_the_limit_at_an_edge() {
        let params = sliding(100, 60);
        let mut state = SlidingState::default();
        let edge = 50 * 60 * SEC;
        let mut admitted = 0;
        // Hammer from 1 s before the edge to 1 s after it.
        let mut t = edge - SEC;
        while t < edge + SEC {
            for _ in 0..50 {
                if sliding_check(&params, &mut state, t).allowed {
                    admitted += 1;
                }
            }
            t += 100_000;
        }
        assert!(admitted <= 102, "admitted {admitted} around the edge");
    }

    #[test]
    fn sliding_forgets_old_windows() {
        let params = sliding(2, 1);
        let mut state = SlidingState::default();
        assert!(sliding_check(&params, &mut state, 10 * SEC).allowed);
        assert!(sliding_check(&params, &mut state, 10 * SEC).allowed);
        assert!(!sliding_check(&params, &mut state, 10 * SEC + 999_999).allowed);
        assert_eq!(sliding_expiry_us(&params, &state), 12 * SEC);
        // Two windows later nothing is remembered.
        let outcome = sliding_check(&params, &mut state, 12 * SEC);
        assert!(outcome.allowed);
        assert_eq!((outcome.previous, outcome.current), (0, 1));
    }

    #[test]
    fn gcra_admits_burst_then_the_rate() {
        // 10 per second (one per 100 ms) with 4 extra at once.
        let params = gcra(10, 1, 4);
        let mut tat = 0;
        let now = 1_000 * SEC;
        let mut remaining = Vec::new();
        for _ in 0..5 {
            let outcome = gcra_check(&params, &mut tat, now);
            let decision = gcra_decision(&params, &outcome);
            assert!(decision.allowed);
            remaining.push(decision.remaining);
        }
        assert_eq!(remaining, vec![4, 3, 2, 1, 0]);
        let outcome = gcra_check(&params, &mut tat, now);
        let decision = gcra_decision(&params, &outcome);
        assert!(!decision.allowed);
        assert_eq!(decision.retry_after_s, 1);
        // Then exactly one per 100 ms.
        let mut admitted = 0;
        let mut t = now;
        for _ in 0..100 {
            t += 10_000;
            if gcra_check(&params, &mut tat, t).allowed {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 10);
    }

    #[test]
    fn gcra_without_burst_is_smooth() {
        let params = gcra(2, 1, 0);
        let mut tat = 0;
        let now = 5 * SEC;
        assert!(gcra_check(&params, &mut tat, now).allowed);
        let outcome = gcra_check(&params, &mut tat, now + 499_999);
        assert!(!outcome.allowed);
        assert_eq!(gcra_decision(&params, &outcome).retry_after_s, 1);
        assert!(gcra_check(&params, &mut tat, now + 500_000).allowed);
    }

    #[test]
    fn gcra_rejections_do_not_move_the_clock() {
        let params = gcra(1, 1, 0);
        let mut tat = 0;
        assert!(gcra_check(&params, &mut tat, SEC).allowed);
        let before = tat;
        for i in 0..100 {
            assert!(!gcra_check(&params, &mut tat, SEC + i).allowed);
        }
        assert_eq!(tat, before);
    }
}
