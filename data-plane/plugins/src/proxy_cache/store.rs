//! Cached responses and where they are kept.
//!
//! [`Entry`] is one stored response with the times that decide whether it
//! is fresh, stale-but-servable or expired. [`MemoryStore`] keeps entries
//! in this process in a `moka` cache bounded by bytes (each entry weighs its
//! body and headers) with TinyLFU admission and eviction, so a burst of
//! one-off responses cannot push out the popular ones. Stores outlive
//! snapshots (the factory keeps them per plugin instance), so a config
//! change does not empty the cache.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;

use super::key::CacheKey;

/// Milliseconds since the Unix epoch (entries may travel to other data
/// planes through Redis, so not an `Instant`).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One stored response.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub status: StatusCode,
    /// The upstream's headers (hop-by-hop, `Age` and cache-status headers
    /// removed).
    pub headers: HeaderMap,
    pub body: Bytes,
    /// When it was stored, in ms since the epoch.
    pub stored_ms: u64,
    /// The `Age` it arrived with, in seconds.
    pub initial_age_s: u64,
    /// Fresh for this long after `stored_ms`.
    pub fresh_ms: u64,
    /// Then servable stale for this long while one request refreshes it.
    pub stale_ms: u64,
    /// The request header values it was chosen by (its `Vary`): a request
    /// with other values does not get it.
    pub vary: Vec<(HeaderName, Option<HeaderValue>)>,
}

/// How an entry may be used now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    Fresh,
    Stale,
    Expired,
}

impl Entry {
    pub fn freshness(&self, now_ms: u64) -> Freshness {
        let elapsed = now_ms.saturating_sub(self.stored_ms);
        if elapsed < self.fresh_ms {
            Freshness::Fresh
        } else if elapsed < self.fresh_ms.saturating_add(self.stale_ms) {
            Freshness::Stale
        } else {
            Freshness::Expired
        }
    }

    /// The `Age` to send, in seconds (RFC 9111 §4.2.3).
    pub fn age_s(&self, now_ms: u64) -> u64 {
        self.initial_age_s + now_ms.saturating_sub(self.stored_ms) / 1000
    }

    /// Whether `request` selects this entry under its `Vary`.
    pub fn matches(&self, request: &HeaderMap) -> bool {
        self.vary
            .iter()
            .all(|(name, value)| request.get(name) == value.as_ref())
    }

    /// How long the entry is worth keeping at all.
    pub fn lifetime(&self) -> Duration {
        Duration::from_millis(self.fresh_ms.saturating_add(self.stale_ms))
    }

    /// Approximate bytes held, for the memory bound.
    pub fn weight(&self) -> u32 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 32)
            .sum();
        (self.body.len() + headers + 128).min(u32::MAX as usize) as u32
    }
}

/// Entries in this process, bounded by bytes.
#[derive(Debug)]
pub struct MemoryStore {
    cache: moka::sync::Cache<CacheKey, Arc<Entry>>,
    max_bytes: u64,
    lifetime: Duration,
}

impl MemoryStore {
    /// A store of at most `max_bytes`; no entry outlives `max_lifetime`.
    pub fn new(max_bytes: u64, max_lifetime: Duration) -> MemoryStore {
        let cache = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_key: &CacheKey, entry: &Arc<Entry>| entry.weight())
            .time_to_live(max_lifetime.max(Duration::from_secs(1)))
            .support_invalidation_closures()
            .build();
        MemoryStore {
            cache,
            max_bytes,
            lifetime: max_lifetime,
        }
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    pub fn get(&self, key: &CacheKey) -> Option<Arc<Entry>> {
        self.cache.get(key)
    }

    pub fn insert(&self, key: CacheKey, entry: Entry) {
        self.cache.insert(key, Arc::new(entry));
    }

    /// Drops one route's entries, or only the one whose digest is `digest`.
    pub fn purge(&self, route: &str, digest: Option<[u8; 16]>) {
        if let Some(digest) = digest {
            self.cache.invalidate(&CacheKey {
                route: route.into(),
                digest,
            });
            return;
        }
        let route: Arc<str> = route.into();
        // Only fails when closures are not enabled, which they are.
        let _ = self
            .cache
            .invalidate_entries_if(move |key, _| key.route == route);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(body: &'static [u8], fresh_ms: u64, stale_ms: u64) -> Entry {
        Entry {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::from_static(body),
            stored_ms: 1_000_000,
            initial_age_s: 3,
            fresh_ms,
            stale_ms,
            vary: vec![(
                HeaderName::from_static("accept-language"),
                Some(HeaderValue::from_static("en")),
            )],
        }
    }

    #[test]
    fn freshness_age_and_vary() {
        let e = entry(b"x", 10_000, 5_000);
        assert_eq!(e.freshness(1_000_000), Freshness::Fresh);
        assert_eq!(e.freshness(1_011_000), Freshness::Stale);
        assert_eq!(e.freshness(1_015_000), Freshness::Expired);
        assert_eq!(e.age_s(1_004_500), 7);
        let mut request = HeaderMap::new();
        assert!(!e.matches(&request));
        request.insert("accept-language", HeaderValue::from_static("en"));
        assert!(e.matches(&request));
        request.insert("accept-language", HeaderValue::from_static("fr"));
        assert!(!e.matches(&request));
    }

    #[test]
    fn purge_by_route_or_key() {
        let store = MemoryStore::new(1 << 20, Duration::from_secs(60));
        let key = |route: &str, n: u8| CacheKey {
            route: route.into(),
            digest: [n; 16],
        };
        store.insert(key("a", 1), entry(b"1", 1, 1));
        store.insert(key("a", 2), entry(b"2", 1, 1));
        store.insert(key("b", 1), entry(b"3", 1, 1));
        store.purge("a", Some([1; 16]));
        assert!(store.get(&key("a", 1)).is_none());
        assert!(store.get(&key("a", 2)).is_some());
        store.purge("a", None);
        store.cache.run_pending_tasks();
        assert!(store.get(&key("a", 2)).is_none());
        assert!(store.get(&key("b", 1)).is_some());
    }
}
