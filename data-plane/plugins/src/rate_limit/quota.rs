//! The quota a response reports in its `RateLimit-Limit`, `RateLimit-Remaining`
//! and `RateLimit-Reset` headers.
//!
//! Why a type of its own: these headers go on every response of a limited
//! route, so building them is on the hot path. A rate-limit phase records the
//! numbers ([`Quota::merge`], keeping the most restrictive of stacked limits
//! without formatting anything), and the headers are written once, when the
//! response is final ([`Quota::write`]). The limit's header value is built
//! once per plugin instance; the other two come from a static table for the
//! numbers quotas usually have (below [`SMALL_NUMBERS`]), so a typical
//! response costs no allocation for them.

use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::algorithm::Decision;

pub const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
pub const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
pub const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// Numbers below this have a static header value.
pub const SMALL_NUMBERS: u64 = 10_000;

/// Bytes of the decimal digits of 0..=9999, concatenated.
const TABLE_LEN: usize = 10 + 90 * 2 + 900 * 3 + 9_000 * 4;

/// "0123456789101112…9999": every small number's digits, in order
/// (checked as UTF-8 once, at compile time).
static DIGITS: &str = match std::str::from_utf8(&digits_table()) {
    Ok(text) => text,
    Err(_) => panic!("digits are ASCII"),
};

const fn digits_table() -> [u8; TABLE_LEN] {
    let mut out = [0u8; TABLE_LEN];
    let mut n = 0usize;
    let mut at = 0usize;
    while n < SMALL_NUMBERS as usize {
        let width = if n < 10 {
            1
        } else if n < 100 {
            2
        } else if n < 1_000 {
            3
        } else {
            4
        };
        let mut value = n;
        let mut i = width;
        while i > 0 {
            i -= 1;
            out[at + i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
        at += width;
        n += 1;
    }
    out
}

/// `n` as a header value; static (no allocation) below [`SMALL_NUMBERS`].
pub fn number_value(n: u64) -> HeaderValue {
    let (start, width) = match n {
        0..=9 => (n, 1),
        10..=99 => (10 + (n - 10) * 2, 2),
        100..=999 => (190 + (n - 100) * 3, 3),
        1_000..=9_999 => (2_890 + (n - 1_000) * 4, 4),
        _ => return HeaderValue::from(n),
    };
    // Both fit in usize: they index a table of TABLE_LEN bytes.
    let (start, width) = (start as usize, width as usize);
    match DIGITS.get(start..start + width) {
        Some(text) => HeaderValue::from_static(text),
        None => HeaderValue::from(n),
    }
}

/// One limit's quota as reported to the client.
#[derive(Debug, Clone)]
pub struct Quota {
    pub decision: Decision,
    /// `decision.limit` as a header value, built once per plugin instance.
    pub limit_value: HeaderValue,
}

impl Quota {
    /// Records `next` in `slot`, keeping the most restrictive quota of the
    /// limits stacked on a route (`force`: `next` wins regardless, e.g. the
    /// limit that rejected the request).
    pub fn merge(slot: &mut Option<Quota>, next: Quota, force: bool) {
        match slot {
            Some(current)
                if !force
                    && most_restrictive(Some(current.decision), next.decision)
                        == current.decision => {}
            _ => *slot = Some(next),
        }
    }

    /// [`Quota::merge`] into a quota already recorded.
    pub fn merge_with(&mut self, next: Quota, force: bool) {
        if force || most_restrictive(Some(self.decision), next.decision) != self.decision {
            *self = next;
        }
    }

    /// Sets the three `RateLimit-*` headers (replacing any the upstream sent).
    pub fn write(self, headers: &mut HeaderMap) {
        headers.insert(RATELIMIT_LIMIT, self.limit_value);
        headers.insert(RATELIMIT_REMAINING, number_value(self.decision.remaining));
        headers.insert(RATELIMIT_RESET, number_value(self.decision.reset_s));
    }
}

/// Of two quotas, the one to report: the fewer remaining, then the later reset.
pub fn most_restrictive(current: Option<Decision>, next: Decision) -> Decision {
    match current {
        Some(current)
            if (current.remaining, std::cmp::Reverse(current.reset_s))
                <= (next.remaining, std::cmp::Reverse(next.reset_s)) =>
        {
            current
        }
        _ => next,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_render_as_decimal() {
        for n in (0..SMALL_NUMBERS + 20).chain([u64::MAX, 1_000_000_000_000]) {
            assert_eq!(number_value(n).as_bytes(), n.to_string().as_bytes(), "{n}");
        }
    }

    fn quota(limit: u64, remaining: u64, reset_s: u64) -> Quota {
        Quota {
            decision: Decision {
                allowed: true,
                limit,
                remaining,
                reset_s,
                retry_after_s: 0,
            },
            limit_value: number_value(limit),
        }
    }

    #[test]
    fn stacked_limits_report_the_most_restrictive_quota() {
        let mut slot = None;
        Quota::merge(&mut slot, quota(100, 90, 3_000), false);
        Quota::merge(&mut slot, quota(4, 3, 3_000), false);
        Quota::merge(&mut slot, quota(1_000, 500, 10), false);
        let mut headers = HeaderMap::new();
        headers.insert(RATELIMIT_LIMIT, HeaderValue::from_static("upstream's"));
        if let Some(quota) = slot.clone() {
            quota.write(&mut headers);
        }
        assert_eq!(
            headers.get(RATELIMIT_LIMIT).map(|v| v.as_bytes()),
            Some(&b"4"[..])
        );
        assert_eq!(
            headers.get(RATELIMIT_REMAINING).map(|v| v.as_bytes()),
            Some(&b"3"[..])
        );
        assert_eq!(
            headers.get(RATELIMIT_RESET).map(|v| v.as_bytes()),
            Some(&b"3000"[..])
        );
        assert_eq!(headers.len(), 3);
        Quota::merge(&mut slot, quota(1_000, 0, 50), true);
        assert_eq!(slot.map(|quota| quota.decision.limit), Some(1_000));
    }

    #[test]
    fn most_restrictive_prefers_fewer_remaining() {
        let d = |remaining, reset_s| Decision {
            allowed: true,
            limit: 10,
            remaining,
            reset_s,
            retry_after_s: 0,
        };
        assert_eq!(most_restrictive(Some(d(5, 10)), d(3, 1)), d(3, 1));
        assert_eq!(most_restrictive(Some(d(3, 1)), d(5, 10)), d(3, 1));
        assert_eq!(most_restrictive(Some(d(3, 1)), d(3, 9)), d(3, 9));
        assert_eq!(most_restrictive(None, d(7, 2)), d(7, 2));
    }
}
