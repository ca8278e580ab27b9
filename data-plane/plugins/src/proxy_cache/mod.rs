//! `proxy-cache`: answers repeated requests from stored responses, so they
//! do not reach the service.
//!
//! - Where: the `cache` phase, after authentication, authorization and rate
//!   limits (a hit is still a counted, checked request), before the request
//!   is edited for the upstream.
//! - Key ([`key`]): method, host, path, query (all or listed, any order),
//!   the configured `vary_headers`, and the consumer unless the route is
//!   `public`: one consumer's answer never goes to another.
//! - What is stored ([`policy`], RFC 9111 for a shared cache): configured
//!   methods and statuses only; never `no-store`, `private`, `no-cache`, a
//!   response with `Set-Cookie` or `Vary: *`, nor (§3.5) a response to a
//!   request whose `Authorization` the gateway did not resolve to a
//!   consumer unless it says `public`/`s-maxage`/`must-revalidate`.
//!   Freshness: `s-maxage`, `max-age`, `Expires`, else `ttl`; capped by
//!   `max_ttl`; `Age` honoured. A response's `Vary` is respected: the entry
//!   records the request values it was chosen by and serves only requests
//!   with the same ones (another variant replaces it).
//! - Bodies come whole through the plugin API's response-body hook, up to
//!   `max_body_bytes`; larger ones stream through uncached.
//! - `X-Cache-Status`: `HIT`, `MISS`, `BYPASS` (not cacheable, or the client
//!   said `no-store`), `EXPIRED` (an entry was there but too old: this
//!   request refreshes it), `STALE` (served stale within
//!   `stale-while-revalidate` while one other request refreshes it); `Age`
//!   on every answer from the cache; `X-Cache-Key` names the entry.
//! - Collapsing ([`collapse`]): N concurrent misses of one key make one
//!   upstream request; the others wait (at most `lock_timeout_ms`) and are
//!   answered from the cache, or go upstream themselves if the response
//!   was not cacheable.
//! - Storage: in memory per data plane ([`store`]: moka, bounded by bytes,
//!   TinyLFU), or `strategy: redis` ([`redis`]), shared by the fleet through
//!   the rate limiter's Redis connections and breaker (collapsing then works
//!   per data plane: at most one upstream fetch per key per data plane).
//!   Purge by route or key through [`CacheStores::purge`].

mod collapse;
mod key;
mod plugin;
mod policy;
mod redis;
mod store;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue, AGE, AUTHORIZATION};
use http::{request, response, Method};
use tollgate_plugin_api::{Outcome, Reply, RequestCtx, Step};
use tollgate_shared::plugins::{CacheStrategy, ProxyCacheConfig};

use crate::RedisStore;

pub use collapse::{Inflight, Join, Leader};
pub use key::CacheKey;
pub use plugin::ProxyCacheFactory;
pub use policy::{Directives, Limits, Storable};
pub use store::{Entry, Freshness, MemoryStore};

pub const X_CACHE_STATUS: HeaderName = HeaderName::from_static("x-cache-status");
pub const X_CACHE_KEY: HeaderName = HeaderName::from_static("x-cache-key");

/// What the cache did for one request (`X-Cache-Status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    Hit,
    Miss,
    Bypass,
    Expired,
    Stale,
}

impl CacheStatus {
    pub const fn header(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
            CacheStatus::Bypass => "BYPASS",
            CacheStatus::Expired => "EXPIRED",
            CacheStatus::Stale => "STALE",
        })
    }
}

/// The cache's state of one request, in `ctx.ext`.
#[derive(Debug)]
struct CacheState {
    status: CacheStatus,
    key: Option<CacheKey>,
    /// Set when this request fetches the key for others.
    leader: Option<Leader>,
    /// The response may be stored (a miss or refresh of a cacheable request).
    store: bool,
    /// The request carried an `Authorization` no gateway plugin resolved.
    authorized: bool,
    /// The request's headers, for the `Vary` of the response (misses only).
    request_headers: HeaderMap,
}

impl CacheState {
    fn bypass() -> CacheState {
        CacheState {
            status: CacheStatus::Bypass,
            key: None,
            leader: None,
            store: false,
            authorized: false,
            request_headers: HeaderMap::new(),
        }
    }
}

/// A memory store and its in-flight map, held weakly (the instances of the
/// snapshots in service hold them).
type InstanceStore = (Weak<MemoryStore>, Weak<Inflight>);

/// Every memory store of this data plane, by plugin instance: kept across
/// snapshots, and where a purge reaches them all.
#[derive(Default)]
pub struct CacheStores {
    stores: Mutex<HashMap<String, InstanceStore>>,
    /// The `--redis-url` Redis, for `strategy: redis`.
    redis: Option<RedisStore>,
}

impl std::fmt::Debug for CacheStores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheStores")
            .field("redis", &self.redis.as_ref().map(RedisStore::target))
            .finish_non_exhaustive()
    }
}

/// How long a purge's Redis calls may take, each.
const PURGE_REDIS_TIMEOUT: Duration = Duration::from_secs(2);

impl CacheStores {
    /// The stores of a data plane whose Redis (if any) is `redis`.
    pub fn new(redis: Option<RedisStore>) -> CacheStores {
        CacheStores {
            stores: Mutex::default(),
            redis,
        }
    }

    /// The store of `instance` if one of this size and lifetime exists,
    /// else a new one (and its in-flight map).
    fn get_or_create(
        &self,
        instance: &str,
        max_bytes: u64,
        lifetime: Duration,
    ) -> (Arc<MemoryStore>, Arc<Inflight>) {
        let mut stores = self
            .stores
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        stores.retain(|_, (store, _)| store.strong_count() > 0);
        if let Some((store, inflight)) = stores.get(instance) {
            if let (Some(store), Some(inflight)) = (store.upgrade(), inflight.upgrade()) {
                if store.max_bytes() == max_bytes && store.lifetime() == lifetime {
                    return (store, inflight);
                }
            }
        }
        let store = Arc::new(MemoryStore::new(max_bytes, lifetime));
        let inflight = Arc::new(Inflight::default());
        stores.insert(
            instance.to_string(),
            (Arc::downgrade(&store), Arc::downgrade(&inflight)),
        );
        (store, inflight)
    }

    /// Drops the cached responses of `route` (all, or the one whose
    /// `X-Cache-Key` is `key`) from every memory store of this data plane
    /// and from Redis when there is one. An error for a key that is not
    /// 32 hex digits.
    pub async fn purge(&self, route: &str, key: Option<&str>) -> Result<(), String> {
        let digest = match key {
            None => None,
            Some(key) => Some(parse_key(key)?),
        };
        let stores: Vec<Arc<MemoryStore>> = self
            .stores
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .values()
            .filter_map(|(store, _)| store.upgrade())
            .collect();
        for store in stores {
            store.purge(route, digest);
        }
        if let Some(redis) = &self.redis {
            let key = digest.map(|digest| CacheKey {
                route: route.into(),
                digest,
            });
            redis::purge(redis, route, key, PURGE_REDIS_TIMEOUT).await;
        }
        Ok(())
    }
}

impl tollgate_plugin_api::CachePurger for CacheStores {
    fn purge<'a>(
        &'a self,
        route: &'a str,
        key: Option<&'a str>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(CacheStores::purge(self, route, key))
    }
}

/// A key as `X-Cache-Key` shows it.
pub fn parse_key(key: &str) -> Result<[u8; 16], String> {
    let mut digest = [0u8; 16];
    hex::decode_to_slice(key, &mut digest)
        .map_err(|_| "key: must be the 32 hex digits of an X-Cache-Key".to_string())?;
    Ok(digest)
}

/// Where an instance keeps its entries.
enum Backend {
    Memory(Arc<MemoryStore>),
    Redis {
        redis: RedisStore,
        timeout: Duration,
    },
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Memory(store) => f.debug_tuple("Memory").field(&store.max_bytes()).finish(),
            Backend::Redis { redis, .. } => f.debug_tuple("Redis").field(&redis.target()).finish(),
        }
    }
}

impl Backend {
    async fn get(&self, key: &CacheKey) -> Option<Arc<Entry>> {
        match self {
            Backend::Memory(store) => store.get(key),
            Backend::Redis { redis, timeout } => {
                redis::get(redis, key, *timeout).await.map(Arc::new)
            }
        }
    }
}

/// One compiled instance.
#[derive(Debug)]
pub struct ProxyCache {
    methods: Box<[Method]>,
    statuses: Box<[u16]>,
    query_keys: Option<Box<[String]>>,
    vary_headers: Box<[HeaderName]>,
    public: bool,
    client_cache_control: bool,
    max_body_bytes: usize,
    limits: Limits,
    lock_timeout: Duration,
    backend: Backend,
    inflight: Arc<Inflight>,
    /// Route names by `ctx.route_name`, shared so keys do not allocate.
    routes: HashMap<String, Arc<str>>,
}

impl ProxyCache {
    fn new(
        config: &ProxyCacheConfig,
        stores: &CacheStores,
        instance: &str,
        routes: HashMap<String, Arc<str>>,
    ) -> Result<ProxyCache, String> {
        let methods = config
            .methods
            .iter()
            .map(|m| Method::from_bytes(m.as_bytes()).map_err(|_| format!("config.methods: {m:?}")))
            .collect::<Result<_, _>>()?;
        let vary_headers = config
            .vary_headers
            .iter()
            .map(|h| {
                HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes())
                    .map_err(|_| format!("config.vary_headers: {h:?}"))
            })
            .collect::<Result<_, _>>()?;
        let limits = Limits {
            default_ttl: Duration::from_secs(config.ttl),
            max_ttl: Duration::from_secs(config.max_ttl),
            stale_while_revalidate: Duration::from_secs(config.stale_while_revalidate),
        };
        // An entry lives at most max_ttl fresh plus as long stale.
        let lifetime = limits.max_ttl * 2;
        let redis = match (config.strategy, &stores.redis) {
            (CacheStrategy::Redis, Some(redis)) => Some(redis.clone()),
            (CacheStrategy::Redis, None) => {
                // The control plane cannot know a data plane's flags: serve
                // from memory rather than refuse the whole snapshot.
                tracing::warn!(
                    instance,
                    "proxy-cache strategy redis without --redis-url: caching in this data plane's memory"
                );
                None
            }
            (CacheStrategy::Memory, _) => None,
        };
        let (backend, inflight) = match redis {
            None => {
                let (store, inflight) =
                    stores.get_or_create(instance, config.memory_max_bytes, lifetime);
                (Backend::Memory(store), inflight)
            }
            Some(redis) => {
                let timeout = Duration::from_millis(config.redis_timeout_ms);
                (
                    Backend::Redis { redis, timeout },
                    Arc::new(Inflight::default()),
                )
            }
        };
        Ok(ProxyCache {
            methods,
            statuses: config.statuses.clone().into_boxed_slice(),
            query_keys: config.query_keys.clone().map(Vec::into_boxed_slice),
            vary_headers,
            public: config.public,
            client_cache_control: config.client_cache_control,
            max_body_bytes: config.max_body_bytes,
            limits,
            lock_timeout: Duration::from_millis(config.lock_timeout_ms),
            backend,
            inflight,
            routes,
        })
    }

    /// The request side: a hit answers now, a miss leads or follows.
    fn lookup<'a>(&'a self, ctx: &'a mut RequestCtx<'_>, request: &'a request::Parts) -> Step<'a> {
        if !self.methods.contains(&request.method) {
            ctx.ext.insert(CacheState::bypass());
            return Step::CONTINUE;
        }
        let mut refresh = false;
        if self.client_cache_control {
            let cc = Directives::parse(&request.headers);
            if cc.no_store {
                ctx.ext.insert(CacheState::bypass());
                return Step::CONTINUE;
            }
            refresh = cc.no_cache || cc.max_age == Some(0);
        }
        let Some(route) = self.routes.get(ctx.route_name) else {
            ctx.ext.insert(CacheState::bypass());
            return Step::CONTINUE;
        };
        let consumer = match (&ctx.consumer, self.public) {
            (Some(identity), false) => Some(&*identity.consumer),
            _ => None,
        };
        let spec = key::KeySpec {
            query_keys: self.query_keys.as_deref(),
            vary_headers: &self.vary_headers,
            consumer,
        };
        let key = key::key(route, request, &spec);
        let authorized = ctx.consumer.is_none() && request.headers.contains_key(AUTHORIZATION);
        match &self.backend {
            Backend::Memory(store) => {
                let found = if refresh { None } else { store.get(&key) };
                self.decide(ctx, request, key, authorized, found)
            }
            Backend::Redis { .. } => Step::Wait(Box::pin(async move {
                let found = if refresh {
                    None
                } else {
                    self.backend.get(&key).await
                };
                match self.decide(ctx, request, key, authorized, found) {
                    Step::Done(outcome) => outcome,
                    Step::Wait(future) => future.await,
                }
            })),
        }
    }

    /// A hit answers; a miss leads the fetch or follows the one under way.
    fn decide<'a>(
        &'a self,
        ctx: &'a mut RequestCtx<'_>,
        request: &'a request::Parts,
        key: CacheKey,
        authorized: bool,
        found: Option<Arc<Entry>>,
    ) -> Step<'a> {
        let now = store::now_ms();
        let found = found.filter(|entry| entry.matches(&request.headers));
        let freshness = found.as_ref().map(|entry| entry.freshness(now));
        if let (Some(entry), Some(Freshness::Fresh)) = (&found, freshness) {
            return self.hit(ctx, key, entry, now, CacheStatus::Hit);
        }
        let status = match freshness {
            Some(Freshness::Stale | Freshness::Expired) => CacheStatus::Expired,
            _ => CacheStatus::Miss,
        };
        let state = |leader| CacheState {
            status,
            key: Some(key.clone()),
            leader,
            store: true,
            authorized,
            request_headers: request.headers.clone(),
        };
        match self.inflight.join(&key) {
            Join::Leader(leader) => {
                ctx.ext.insert(state(Some(leader)));
                Step::CONTINUE
            }
            Join::Follower(waiting) => {
                if let (Some(entry), Some(Freshness::Stale)) = (&found, freshness) {
                    // Someone is refreshing it: serve it stale meanwhile.
                    return self.hit(ctx, key, entry, now, CacheStatus::Stale);
                }
                let state = state(None);
                Step::Wait(Box::pin(async move {
                    collapse::wait(waiting, self.lock_timeout).await;
                    if let Some(entry) = self.backend.get(&key).await {
                        let now = store::now_ms();
                        if entry.matches(&request.headers)
                            && entry.freshness(now) == Freshness::Fresh
                        {
                            if let Step::Done(outcome) =
                                self.hit(ctx, key, &entry, now, CacheStatus::Hit)
                            {
                                return outcome;
                            }
                        }
                    }
                    // Not cacheable after all, or too slow: go upstream.
                    ctx.ext.insert(state);
                    Outcome::Continue
                }))
            }
        }
    }

    fn hit(
        &self,
        ctx: &mut RequestCtx<'_>,
        key: CacheKey,
        entry: &Entry,
        now: u64,
        status: CacheStatus,
    ) -> Step<'static> {
        let mut headers = entry.headers.clone();
        headers.insert(AGE, HeaderValue::from(entry.age_s(now)));
        let mut state = CacheState::bypass();
        state.status = status;
        state.key = Some(key);
        ctx.ext.insert(state);
        Step::Done(Outcome::Reply(Reply {
            status: entry.status,
            headers,
            body: entry.body.clone(),
        }))
    }

    /// Whether this upstream response will be stored, and for how long.
    fn storable(&self, ctx: &RequestCtx<'_>, response: &response::Parts) -> Option<Storable> {
        let state = ctx.ext.get::<CacheState>()?;
        if !state.store || !self.statuses.contains(&response.status.as_u16()) {
            return None;
        }
        match policy::storable(&response.headers, state.authorized, &self.limits) {
            yes @ Storable::Yes { .. } => Some(yes),
            Storable::No(_) => None,
        }
    }

    /// Stores a complete upstream response, then lets followers read it.
    fn store(&self, ctx: &mut RequestCtx<'_>, response: &response::Parts, body: &Bytes) {
        let Some(Storable::Yes { fresh, stale, age }) = self.storable(ctx, response) else {
            return;
        };
        let Some(state) = ctx.ext.get_mut::<CacheState>() else {
            return;
        };
        let Some(key) = state.key.clone() else {
            return;
        };
        let mut headers = response.headers.clone();
        for name in [AGE, X_CACHE_STATUS, X_CACHE_KEY] {
            headers.remove(name);
        }
        let vary = policy::vary_names(&response.headers)
            .into_iter()
            .map(|name| {
                let value = state.request_headers.get(&name).cloned();
                (name, value)
            })
            .collect();
        let entry = Entry {
            status: response.status,
            headers,
            body: body.clone(),
            stored_ms: store::now_ms(),
            initial_age_s: age.as_secs(),
            fresh_ms: fresh.as_millis() as u64,
            stale_ms: stale.as_millis() as u64,
            vary,
        };
        match &self.backend {
            Backend::Memory(store) => {
                store.insert(key, entry);
                // Stored: wake the followers now rather than when the request ends.
                state.leader = None;
            }
            Backend::Redis { redis, timeout } => {
                // Followers wake once the entry is in Redis.
                let leader = state.leader.take();
                let (redis, timeout) = (redis.clone(), *timeout);
                tokio::spawn(async move {
                    redis::set(&redis, &key, &entry, timeout).await;
                    drop(leader);
                });
            }
        }
    }

    /// `X-Cache-Status` and `X-Cache-Key` on the answer.
    fn mark(&self, ctx: &mut RequestCtx<'_>, response: &mut response::Parts) {
        let Some(state) = ctx.ext.get_mut::<CacheState>() else {
            return;
        };
        // The response is decided: followers need not wait any longer.
        state.leader = None;
        response
            .headers
            .insert(X_CACHE_STATUS, state.status.header());
        if let Some(key) = &state.key {
            if let Ok(value) = HeaderValue::from_str(&key.hex()) {
                response.headers.insert(X_CACHE_KEY, value);
            }
        }
    }
}
