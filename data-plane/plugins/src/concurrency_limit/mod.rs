//! The `concurrency-limit` plugin: at most `limit` requests in flight per
//! scope value (route, service, consumer, credential, client IP, header).
//!
//! Why beside `rate-limit`: a rate bounds how many requests start per
//! window, not how many an upstream holds at once; slow responses pile up
//! under any rate. A request takes a slot in the rate-limit phase (after
//! authentication, so `consumer` scopes work) and gives it back when its
//! [`Slot`] drops. The proxy keeps the request's plugin state until the
//! response body is finished or abandoned, so the slot comes back when the
//! response completes, when the client goes away mid-response, or (the
//! request future dropped) when the client goes away before the head.
//!
//! Slots are counted per data plane, in [`SHARDS`] independently locked
//! maps keyed by the same per-process keyed hash of the scope value as the
//! local rate limiter; a slot count that drops to zero is removed, so memory
//! follows the requests in flight. Counters outlive snapshots (a config
//! change does not forget requests in flight). With `policy: redis` the
//! slots are the fleet's, held as leases in Redis ([`leases`]); while Redis
//! cannot answer, `on_redis_failure` applies (`local`: these per-process
//! slots).

mod leases;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use http::request;
use tollgate_plugin_api::{
    BuildCtx, Outcome, Phase, Plugin, PluginFactory, Refusal, RefusalKind, RequestCtx, Step,
};
use tollgate_shared::plugins::{
    parse, ConcurrencyLimitConfig, OnRedisFailure, RateLimitPolicy, Scope,
};

pub use leases::{Lease, Leases};

use crate::rate_limit::{
    push_redis_key_part, scope_key, scope_redis_key, subject, unavailable, RedisStore,
};

/// Independently locked maps of slot counts.
const SHARDS: usize = 64;

#[repr(align(64))]
#[derive(Default)]
struct Shard(Mutex<HashMap<u64, u64>>);

/// The slot counts of one plugin instance.
struct Slots {
    shards: Box<[Shard]>,
}

impl Slots {
    fn new() -> Slots {
        Slots {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
        }
    }

    fn shard(&self, key: u64) -> std::sync::MutexGuard<'_, HashMap<u64, u64>> {
        self.shards[(key >> 58) as usize % SHARDS]
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes a slot of `key` when fewer than `limit` are taken.
    fn acquire(&self, key: u64, limit: u64) -> bool {
        let mut shard = self.shard(key);
        let taken = shard.entry(key).or_insert(0);
        if *taken >= limit {
            return false;
        }
        *taken += 1;
        true
    }

    fn release(&self, key: u64) {
        let mut shard = self.shard(key);
        if let Some(taken) = shard.get_mut(&key) {
            *taken = taken.saturating_sub(1);
            if *taken == 0 {
                shard.remove(&key);
            }
        }
    }

    /// Slots taken over every key (tests, diagnostics).
    fn in_flight(&self) -> u64 {
        self.shards
            .iter()
            .map(|shard| {
                shard
                    .0
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .values()
                    .sum::<u64>()
            })
            .sum()
    }
}

/// One request's slot; given back when dropped.
pub struct Slot {
    slots: Arc<Slots>,
    key: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.release(self.key);
    }
}

/// A slot a request holds (given back when dropped): in this process or a
/// lease in Redis.
enum Held {
    Local { _slot: Slot },
    Lease { _lease: Lease },
}

/// The slots a request holds (one per concurrency-limit on its route).
#[derive(Default)]
struct HeldSlots(Vec<Held>);

fn hold(ctx: &mut RequestCtx<'_>, held: Held) {
    match ctx.ext.get_mut::<HeldSlots>() {
        Some(slots) => slots.0.push(held),
        None => {
            ctx.ext.insert(HeldSlots(vec![held]));
        }
    }
}

/// Builds `concurrency-limit` instances; owns the slot counts and lease
/// sets, which outlive snapshots.
#[derive(Default)]
pub struct ConcurrencyLimitFactory {
    slots: Mutex<HashMap<String, Weak<Slots>>>,
    /// `--redis-url`'s store, for `policy: redis`.
    redis: Option<RedisStore>,
    leases: Mutex<HashMap<String, Weak<Leases>>>,
}

impl ConcurrencyLimitFactory {
    /// A factory whose `policy: redis` instances hold leases in `redis`.
    pub fn new(redis: Option<RedisStore>) -> ConcurrencyLimitFactory {
        ConcurrencyLimitFactory {
            redis,
            ..ConcurrencyLimitFactory::default()
        }
    }

    fn leases(&self, id: &str, config: &ConcurrencyLimitConfig) -> Option<Arc<Leases>> {
        let store = self.redis.as_ref()?;
        let mut map = self
            .leases
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(existing) = map.get(id).and_then(Weak::upgrade) {
            return Some(existing);
        }
        map.retain(|_, leases| leases.strong_count() > 0);
        let leases = Leases::start(
            store.clone(),
            config.limit,
            Duration::from_millis(config.lease_ttl_ms),
            Duration::from_millis(config.redis_timeout_ms.max(1)),
        );
        map.insert(id.to_string(), Arc::downgrade(&leases));
        Some(leases)
    }

    fn slots(&self, instance: &str) -> Arc<Slots> {
        let mut map = self
            .slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(existing) = map.get(instance).and_then(Weak::upgrade) {
            return existing;
        }
        map.retain(|_, slots| slots.strong_count() > 0);
        let slots = Arc::new(Slots::new());
        map.insert(instance.to_string(), Arc::downgrade(&slots));
        slots
    }
}

impl PluginFactory for ConcurrencyLimitFactory {
    fn name(&self) -> &'static str {
        "concurrency-limit"
    }

    fn phase(&self) -> Phase {
        Phase::RateLimit
    }

    fn stackable(&self) -> bool {
        true
    }

    fn build(
        &self,
        config: &serde_json::Value,
        ctx: &BuildCtx<'_>,
    ) -> Result<Arc<dyn Plugin>, String> {
        let config = parse::<ConcurrencyLimitConfig>(config)?;
        let leases = match config.policy {
            RateLimitPolicy::Local => None,
            RateLimitPolicy::Redis => {
                let leases = self.leases(
                    &format!(
                        "{}:{}:{}:{}",
                        ctx.instance, config.limit, config.lease_ttl_ms, config.redis_timeout_ms
                    ),
                    &config,
                );
                if leases.is_none() {
                    tracing::warn!(
                        instance = ctx.instance,
                        on_redis_failure = ?config.on_redis_failure,
                        "concurrency limit has policy redis but this data plane has no --redis-url; it runs under on_redis_failure"
                    );
                }
                leases
            }
        };
        let mut redis_prefix = String::from("tollgate:cl:{");
        push_redis_key_part(&mut redis_prefix, ctx.instance);
        redis_prefix.push_str(&format!(":{}:", config.limit));
        Ok(Arc::new(ConcurrencyLimit {
            policy: config.policy,
            on_redis_failure: config.on_redis_failure,
            leases,
            redis_prefix,
            limit: config.limit,
            scope: config.scope,
            refusal: if config.status == 503 {
                RefusalKind::ConcurrencyBusy
            } else {
                RefusalKind::ConcurrencyLimited
            },
            slots: self.slots(&format!("{}:{}", ctx.instance, config.limit)),
        }))
    }
}

/// One compiled `concurrency-limit` instance.
pub struct ConcurrencyLimit {
    policy: RateLimitPolicy,
    on_redis_failure: OnRedisFailure,
    /// `policy: redis` with a Redis: the fleet's slots.
    leases: Option<Arc<Leases>>,
    /// `tollgate:cl:{<instance>:<limit>:` (the key ends with `}`).
    redis_prefix: String,
    limit: u64,
    scope: Scope,
    refusal: RefusalKind,
    slots: Arc<Slots>,
}

impl std::fmt::Debug for ConcurrencyLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConcurrencyLimit")
            .field("limit", &self.limit)
            .field("scope", &self.scope)
            .field("refusal", &self.refusal)
            .finish()
    }
}

impl ConcurrencyLimit {
    /// Requests holding a slot of this instance now.
    pub fn in_flight(&self) -> u64 {
        self.slots.in_flight()
    }

    fn refusal(&self) -> Outcome {
        Outcome::Refuse(Refusal::new(self.refusal).with_retry_after(1))
    }

    /// Takes one of this process's slots of `key`.
    fn acquire_local(&self, ctx: &mut RequestCtx<'_>, key: u64) -> Outcome {
        if !self.slots.acquire(key, self.limit) {
            return self.refusal();
        }
        let slot = Slot {
            slots: self.slots.clone(),
            key,
        };
        hold(ctx, Held::Local { _slot: slot });
        Outcome::Continue
    }
}

impl ConcurrencyLimit {
    /// `on_redis_failure` for a request Redis could not count.
    fn without_redis(&self, ctx: &mut RequestCtx<'_>, key: u64) -> Outcome {
        match self.on_redis_failure {
            OnRedisFailure::Local => self.acquire_local(ctx, key),
            OnRedisFailure::Allow => Outcome::Continue,
            OnRedisFailure::Deny => Outcome::Refuse(unavailable()),
        }
    }
}

impl Plugin for ConcurrencyLimit {
    fn name(&self) -> &'static str {
        "concurrency-limit"
    }

    fn phase(&self) -> Phase {
        Phase::RateLimit
    }

    fn on_request<'a>(
        &'a self,
        ctx: &'a mut RequestCtx<'_>,
        request: &'a mut request::Parts,
    ) -> Step<'a> {
        let subject = subject(ctx, request);
        let key = scope_key(&self.scope, &subject);
        let Some(leases) = &self.leases else {
            if self.policy == RateLimitPolicy::Redis {
                // policy redis without a --redis-url: on_redis_failure.
                return Step::Done(self.without_redis(ctx, key));
            }
            return Step::Done(self.acquire_local(ctx, key));
        };
        let redis_key = scope_redis_key(&self.redis_prefix, &self.scope, &subject);
        Step::Wait(Box::pin(async move {
            match leases.acquire(redis_key).await {
                Some(Some(lease)) => {
                    hold(ctx, Held::Lease { _lease: lease });
                    Outcome::Continue
                }
                Some(None) => self.refusal(),
                None => self.without_redis(ctx, key),
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_taken_up_to_the_limit_and_given_back() {
        let slots = Arc::new(Slots::new());
        assert!(slots.acquire(1, 2));
        assert!(slots.acquire(1, 2));
        assert!(!slots.acquire(1, 2));
        assert!(slots.acquire(2, 2), "another key has its own slots");
        let slot = Slot {
            slots: slots.clone(),
            key: 1,
        };
        drop(slot);
        assert!(slots.acquire(1, 2));
        assert_eq!(slots.in_flight(), 3);
        for key in [1, 1, 2] {
            slots.release(key);
        }
        assert_eq!(slots.in_flight(), 0);
        assert!(
            slots
                .shards
                .iter()
                .all(|s| s.0.lock().map(|m| m.is_empty()).unwrap_or(false)),
            "empty counts are removed"
        );
    }
}
