//! Fleet-wide slots (`policy: redis`): each request in flight holds a lease
//! in Redis, so the limit counts every data plane's requests.
//!
//! A scope value's slots are one sorted set, `tollgate:cl:{<instance>:...}`
//! (a hash tag, so a cluster keeps it in one slot), whose members are lease
//! ids (`<data plane>:<n>`) scored by when they expire, on Redis's clock.
//! Taking a slot is one round trip (`acquire.lua`: drop the expired leases,
//! count, add one if under the limit); giving it back is a `ZREM` sent in the
//! background when the request's [`Lease`] drops. A data plane that dies
//! without giving its leases back loses them to expiry: its slots come back
//! within `lease_ttl_ms`. So that a request longer than the TTL keeps its
//! slot, a background task per instance renews this data plane's leases
//! every third of the TTL (`renew.lua`, one call per set, all at once).
//!
//! The leases a data plane holds are tracked in [`SHARDS`] independently
//! locked maps, touched once when a request takes a slot and once when it
//! gives it back.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use redis::Script;

use crate::rate_limit::RedisStore;

/// Takes a lease if fewer than the limit are live.
const ACQUIRE: &str = include_str!("acquire.lua");
/// Moves the expiry of some of a set's leases forward.
const RENEW: &str = include_str!("renew.lua");

const SHARDS: usize = 64;

#[repr(align(64))]
#[derive(Default)]
struct Shard(Mutex<HashMap<u64, Arc<str>>>);

/// The leases of one `concurrency-limit` instance on this data plane.
pub struct Leases {
    store: RedisStore,
    /// This process's part of every lease id.
    node: String,
    next: AtomicU64,
    limit: u64,
    ttl: Duration,
    timeout: Duration,
    acquire: Script,
    renew: Script,
    /// Leases held now: lease number -> set key.
    held: Box<[Shard]>,
    /// The renewal task starts with the first lease (on a runtime).
    renewing: std::sync::Once,
}

/// A lease a request holds; given back (in the background) when dropped.
pub struct Lease {
    leases: Arc<Leases>,
    number: u64,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(key) = self.leases.forget(self.number) else {
            return;
        };
        // No runtime (shutting down): the lease expires by itself.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (leases, member) = (self.leases.clone(), self.leases.member(self.number));
            runtime.spawn(async move {
                let mut command = redis::cmd("ZREM");
                command.arg(&*key).arg(member);
                let _: Option<i64> = leases.store.query(&command, leases.timeout).await;
            });
        }
    }
}

impl Leases {
    /// The leases of one instance (the renewal task starts with the first).
    pub fn start(store: RedisStore, limit: u64, ttl: Duration, timeout: Duration) -> Arc<Leases> {
        Arc::new(Leases {
            store,
            node: format!("{:016x}", rand::random::<u64>()),
            next: AtomicU64::new(0),
            limit,
            ttl,
            timeout,
            acquire: Script::new(ACQUIRE),
            renew: Script::new(RENEW),
            held: (0..SHARDS).map(|_| Shard::default()).collect(),
            renewing: std::sync::Once::new(),
        })
    }

    fn member(&self, number: u64) -> String {
        format!("{}:{number}", self.node)
    }

    fn shard(&self, number: u64) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<str>>> {
        self.held[number as usize % SHARDS]
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn forget(&self, number: u64) -> Option<Arc<str>> {
        self.shard(number).remove(&number)
    }

    /// Takes a slot of set `key`: `Some(Some(lease))` taken, `Some(None)`
    /// every slot is held, `None` Redis could not answer.
    pub async fn acquire(self: &Arc<Self>, key: String) -> Option<Option<Lease>> {
        self.renewing.call_once(|| {
            tokio::spawn(renew(Arc::downgrade(self), self.ttl / 3));
        });
        let number = self.next.fetch_add(1, Ordering::Relaxed);
        let member = self.member(number);
        let ttl_ms = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        let taken: i64 = self
            .store
            .run(self.timeout, |mut connection| {
                let mut invocation = self.acquire.key(&key);
                invocation.arg(self.limit).arg(ttl_ms).arg(&member);
                async move { invocation.invoke_async(&mut connection).await }
            })
            .await?;
        if taken != 1 {
            return Some(None);
        }
        self.shard(number).insert(number, Arc::from(key));
        Some(Some(Lease {
            leases: self.clone(),
            number,
        }))
    }

    /// Leases held now, by set.
    fn held_by_key(&self) -> HashMap<Arc<str>, Vec<String>> {
        let mut by_key: HashMap<Arc<str>, Vec<String>> = HashMap::new();
        for shard in self.held.iter() {
            let shard = shard.0.lock().unwrap_or_else(|p| p.into_inner());
            for (number, key) in shard.iter() {
                by_key
                    .entry(key.clone())
                    .or_default()
                    .push(self.member(*number));
            }
        }
        by_key
    }

    /// Leases held now (tests, diagnostics).
    pub fn held(&self) -> usize {
        self.held
            .iter()
            .map(|shard| shard.0.lock().map(|m| m.len()).unwrap_or(0))
            .sum()
    }
}

/// Renews the instance's leases every `every` until it is dropped.
async fn renew(leases: Weak<Leases>, every: Duration) {
    let mut ticks = tokio::time::interval(every.max(Duration::from_millis(100)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let Some(leases) = leases.upgrade() else {
            return;
        };
        let ttl_ms = u64::try_from(leases.ttl.as_millis()).unwrap_or(u64::MAX);
        let calls = leases.held_by_key().into_iter().map(|(key, members)| {
            let leases = &leases;
            async move {
                let _: Option<i64> = leases
                    .store
                    .run(
                        leases.timeout.max(Duration::from_secs(1)),
                        |mut connection| {
                            let mut invocation = leases.renew.key(&*key);
                            invocation.arg(ttl_ms).arg(&members);
                            async move { invocation.invoke_async(&mut connection).await }
                        },
                    )
                    .await;
            }
        });
        futures::future::join_all(calls).await;
    }
}
