//! Request collapsing: of N concurrent misses of one key, one (the leader)
//! goes upstream; the others wait until it is done and read the cache.
//!
//! In-flight keys sit in a map sharded by key hash, each shard behind a
//! mutex held only to insert or remove one key (never across an await), and
//! only on misses: hits never touch it. The leader holds a [`Leader`]
//! guard; dropping it (the response stored, or found not cacheable, or the
//! request abandoned) removes the key and wakes every follower.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::key::CacheKey;

const SHARDS: usize = 16;

/// The keys being fetched right now.
#[derive(Debug, Default)]
pub struct Inflight {
    shards: [Mutex<HashMap<CacheKey, watch::Receiver<bool>>>; SHARDS],
    hasher: std::collections::hash_map::RandomState,
}

/// What a miss becomes.
#[derive(Debug)]
pub enum Join {
    /// Fetch it; others wait for this guard to drop.
    Leader(Leader),
    /// Someone is fetching it: wait on this, then read the cache.
    Follower(watch::Receiver<bool>),
}

/// The fetching request's claim on a key.
#[derive(Debug)]
pub struct Leader {
    inflight: Arc<Inflight>,
    key: CacheKey,
    done: watch::Sender<bool>,
}

impl Inflight {
    fn shard(&self, key: &CacheKey) -> &Mutex<HashMap<CacheKey, watch::Receiver<bool>>> {
        &self.shards[self.hasher.hash_one(key) as usize % SHARDS]
    }

    /// Leads the fetch of `key`, or follows the one already under way.
    pub fn join(self: &Arc<Self>, key: &CacheKey) -> Join {
        let mut shard = self
            .shard(key)
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(waiting) = shard.get(key) {
            return Join::Follower(waiting.clone());
        }
        let (done, waiting) = watch::channel(false);
        shard.insert(key.clone(), waiting);
        Join::Leader(Leader {
            inflight: self.clone(),
            key: key.clone(),
            done,
        })
    }

    /// How many keys are being fetched (tests).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map_or(0, |m| m.len()))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        self.inflight
            .shard(&self.key)
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&self.key);
        let _ = self.done.send(true);
    }
}

/// Waits until the leader is done (or gone), at most `timeout`.
pub async fn wait(mut waiting: watch::Receiver<bool>, timeout: std::time::Duration) {
    // An error means the leader's sender is gone: done as well.
    let _ = tokio::time::timeout(timeout, waiting.wait_for(|done| *done)).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn one_leader_and_followers_wake_when_it_finishes() {
        let inflight = Arc::new(Inflight::default());
        let key = CacheKey {
            route: "r".into(),
            digest: [7; 16],
        };
        let Join::Leader(leader) = inflight.join(&key) else {
            panic!("first is the leader");
        };
        let Join::Follower(waiting) = inflight.join(&key) else {
            panic!("second follows");
        };
        assert_eq!(inflight.len(), 1);
        let follower = tokio::spawn(wait(waiting, Duration::from_secs(30)));
        drop(leader);
        tokio::time::timeout(Duration::from_secs(5), follower)
            .await
            .expect("woken")
            .expect("joined");
        assert!(inflight.is_empty());
        assert!(matches!(inflight.join(&key), Join::Leader(_)));
    }
}
