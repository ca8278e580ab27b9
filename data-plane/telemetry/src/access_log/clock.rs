//! The line's `time`: wall-clock time of a request's start `Instant`.
//!
//! Requests are timed with `Instant`s, which they read anyway; each worker
//! turns them into wall-clock time from an anchor (an `Instant` and the
//! `SystemTime` read with it) renewed once a second, so the request path
//! makes no wall-clock read of its own. The text up to the seconds is
//! formatted once per second, without a date-time dependency.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tollgate_shared::calendar::civil_from_days;

/// How long a worker's clock trusts its anchor before reading the wall clock
/// again: the monotonic and the wall clock drift apart by at most NTP's slew
/// (0.5 ms per second), and a step of the wall clock shows within a second.
const REANCHOR_AFTER: Duration = Duration::from_secs(1);

/// What every line starts with: `{"time":"YYYY-MM-DDTHH:MM:SS.`.
pub(super) const PREFIX_LEN: usize = 29;

/// One worker's clock (see the module docs).
#[derive(Debug, Clone, Copy)]
pub(super) struct CachedClock {
    /// An instant and the wall-clock time read with it, in microseconds
    /// since the Unix epoch.
    anchor: Option<(Instant, u64)>,
    second: u64,
    /// `{"time":"YYYY-MM-DDTHH:MM:SS.` of `second`.
    prefix: [u8; PREFIX_LEN],
}

impl Default for CachedClock {
    fn default() -> Self {
        Self {
            anchor: None,
            second: u64::MAX,
            prefix: [0; PREFIX_LEN],
        }
    }
}

impl CachedClock {
    /// A clock anchored at `instant` = `wall` (for tests).
    #[cfg(test)]
    pub(super) fn anchored(instant: Instant, wall: SystemTime) -> Self {
        Self {
            anchor: Some((instant, micros_since_epoch(wall))),
            ..Self::default()
        }
    }

    /// The wall-clock time of `at`, in microseconds since the Unix epoch.
    /// One `Instant` subtraction in the usual case (an instant within a
    /// second after the anchor).
    pub(super) fn wall(&mut self, at: Instant) -> u64 {
        let (instant, wall) = match self.anchor {
            Some((instant, wall)) => match at.checked_duration_since(instant) {
                Some(after) if after < REANCHOR_AFTER => {
                    return wall + u64::from(after.subsec_micros());
                }
                // Received before the anchor was taken (a request that
                // outlived a renewal): counted back from it below.
                None => (instant, wall),
                Some(_) => self.renew(),
            },
            None => self.renew(),
        };
        wall.saturating_sub(micros(instant.saturating_duration_since(at)))
    }

    /// Reads the wall clock once and anchors to it.
    fn renew(&mut self) -> (Instant, u64) {
        let anchor = (Instant::now(), micros_since_epoch(SystemTime::now()));
        self.anchor = Some(anchor);
        anchor
    }

    /// `{"time":"YYYY-MM-DDTHH:MM:SS.` and the milliseconds of `micros`
    /// since the Unix epoch (UTC); the prefix is formatted once per second.
    pub(super) fn stamp(&mut self, micros: u64) -> (&[u8; PREFIX_LEN], u32) {
        let secs = micros / 1_000_000;
        if secs != self.second {
            self.prefix = prefix_of(secs);
            self.second = secs;
        }
        (&self.prefix, (micros / 1000 % 1000) as u32)
    }
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

fn micros_since_epoch(time: SystemTime) -> u64 {
    micros(time.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO))
}

/// `{"time":"YYYY-MM-DDTHH:MM:SS.` of `secs` since the Unix epoch (the year
/// clamped to four digits).
fn prefix_of(secs: u64) -> [u8; PREFIX_LEN] {
    let mut text = *b"{\"time\":\"0000-00-00T00:00:00.";
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    let year = u64::try_from(year).unwrap_or(0).min(9999);
    let fields = [
        (9, 4, year),
        (14, 2, u64::from(month)),
        (17, 2, u64::from(day)),
        (20, 2, rem / 3600),
        (23, 2, rem % 3600 / 60),
        (26, 2, rem % 60),
    ];
    for (at, width, value) in fields {
        let mut value = value;
        for slot in text[at..at + width].iter_mut().rev() {
            *slot = b'0' + (value % 10) as u8;
            value /= 10;
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_follows_the_second() {
        let mut clock = CachedClock::default();
        for (millis, text, ms) in [
            (1_764_165_474_123, "2025-11-26T13:57:54.", 123),
            (1_764_165_474_999, "2025-11-26T13:57:54.", 999),
            (1_764_165_475_000, "2025-11-26T13:57:55.", 0),
            (1_764_201_599_001, "2025-11-26T23:59:59.", 1),
            (1_764_201_600_002, "2025-11-27T00:00:00.", 2),
        ] {
            let (prefix, got) = clock.stamp(millis * 1000 + 999);
            assert_eq!(
                String::from_utf8_lossy(prefix),
                format!("{{\"time\":\"{text}")
            );
            assert_eq!(got, ms);
        }
    }

    #[test]
    fn instants_become_wall_clock_time() {
        let mut clock = CachedClock::default();
        let now = Instant::now();
        let wall = clock.wall(now);
        assert!(micros_since_epoch(SystemTime::now()).abs_diff(wall) < 100_000);
        // Earlier and later instants are placed around the anchor.
        let later = now + Duration::from_millis(250);
        // (Within a microsecond: each instant's offset is truncated.)
        assert!((clock.wall(later) - wall).abs_diff(250_000) <= 1);
        let earlier = now.checked_sub(Duration::from_secs(3)).unwrap_or(now);
        let back = wall - clock.wall(earlier);
        assert!(back.abs_diff(micros(now.duration_since(earlier))) <= 1);
        // Past the anchor's life, the wall clock is read again.
        let anchor = clock.anchor.map(|(instant, _)| instant);
        clock.wall(now + Duration::from_secs(2));
        assert_ne!(clock.anchor.map(|(instant, _)| instant), anchor);
    }
}
