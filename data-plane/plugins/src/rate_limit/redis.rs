//! The fleet-wide counters in Redis (`policy: redis`, `sync: strict`).
//!
//! One check is one round trip: `EVALSHA` of `check.lua`, which reads the
//! counter, decides, counts an admitted request and sets the key's expiry
//! atomically, on Redis's clock. The script is loaded once per connection
//! (`SCRIPT LOAD` when the connection is made) and called by its SHA; a Redis
//! that lost its script cache (restart, `SCRIPT FLUSH`) answers `NOSCRIPT`,
//! and the call loads it again and retries once. The script answers one bulk
//! string of four numbers, parsed in place ([`check_reply`]): decoding one
//! RESP value costs a fraction of decoding an array of four.
//!
//! Connections are [`ConnectionManager`]s (multiplexed, reconnecting by
//! themselves): the checks of requests in flight together are queued to the
//! connection's driver task, which writes them in one pipelined write and
//! reads the answers in order, so the round trip is the only wait. Each proxy worker thread makes its own on first use and calls
//! through it: a connection's driver task runs on the runtime that made it, so
//! a worker calling through another thread's connection would pay two
//! cross-thread wake-ups per call, in latency and CPU. Until a worker's own
//! connection is up (and whenever making it fails) its calls go through the
//! shared connection made at start-up, which the probe also uses. Every call has a
//! timeout; failures feed a [`Breaker`]. While the breaker is open no request
//! calls Redis (the caller applies `on_redis_failure` at once) and a single
//! background probe pings Redis, reloads the script and closes the breaker
//! when Redis answers. A data plane whose Redis URL is wrong or unreachable at
//! start-up still starts: the breaker starts open, the log says why, and the
//! probe keeps trying.
//!
//! `sync: batched` limits call Redis off the request path: one pipeline of
//! `sync.lua` calls per limit and interval ([`RedisStore::sync`], through the
//! shared connection), feeding the same breaker. Their windows follow Redis's
//! clock too: every (re)connection reads `TIME` and keeps the offset from this
//! process's clock ([`RedisStore::redis_now_us`]), refreshed by every sync.
//!
//! Passwords in the URL never reach the log: only [`redact_url`]'s form does.

use std::cell::RefCell;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use redis::{ErrorKind, Script};
use tollgate_shared::plugins::RateLimitAlgorithm;

use super::algorithm::{
    gcra_decision, sliding_decision, Decision, GcraOutcome, Params, SlidingOutcome,
};
use super::breaker::{Breaker, DEFAULT_THRESHOLD};
use super::local::now_us;
use super::redis_target::{ConnectOptions, Connection, RedisOptions, Target};

/// The check script, loaded into Redis once and called by SHA.
pub const CHECK_SCRIPT: &str = include_str!("check.lua");
/// The batched sync script (`sync: batched`), loaded and called alike.
pub const SYNC_SCRIPT: &str = include_str!("sync.lua");

/// How long start-up waits for the first connection before serving without it.
const INITIAL_CONNECT: Duration = Duration::from_secs(2);
/// Timeout of one connection attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Timeout of the probe's PING and SCRIPT LOAD.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Probe back-off while Redis stays down.
const PROBE_MIN: Duration = Duration::from_millis(200);
const PROBE_MAX: Duration = Duration::from_secs(1);
/// How often a continuing outage is logged again.
const OUTAGE_LOG_EVERY: Duration = Duration::from_secs(60);
/// How long a worker waits before trying again to make its own connection
/// (and how long a connection attempt may stay pending before it is retried).
const LOCAL_RETRY: Duration = Duration::from_secs(5);

/// A worker thread's own connection to one store.
enum LocalConnection {
    Connecting { since: Instant },
    Ready(Connection),
    Failed { retry_at: Instant },
}

thread_local! {
    /// This thread's own connections, by store id (one store per process in
    /// practice; tests make several).
    static LOCAL: RefCell<Vec<(u64, Option<LocalConnection>)>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's connection slot for store `id` (empty at first).
fn with_local<R>(id: u64, f: impl FnOnce(&mut Option<LocalConnection>) -> R) -> R {
    LOCAL.with(|local| {
        let mut local = local.borrow_mut();
        let index = match local.iter().position(|(slot_id, _)| *slot_id == id) {
            Some(index) => index,
            None => {
                local.push((id, None));
                local.len() - 1
            }
        };
        f(&mut local[index].1)
    })
}

/// A shared handle on the Redis that holds the fleet's counters.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// Tells this store's per-thread connections from another store's.
    id: u64,
    /// The URL with any password masked, for logs.
    target: String,
    client: Option<Target>,
    connection: OnceLock<Connection>,
    breaker: Arc<Breaker>,
    script: Script,
    sync_script: Script,
    /// Redis's clock minus this process's ([`now_us`]), in microseconds;
    /// `i64::MIN` until Redis first answered `TIME`.
    clock_offset_us: AtomicI64,
}

/// One counter's increments in a batched sync (see `sync.lua` for the fields).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncItem {
    pub key: String,
    pub from: u64,
    pub added: u64,
    pub added_before: u64,
}

/// The fleet's view of one counter after a batched sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncReply {
    /// Sliding window: Redis's current window index and its two counts.
    pub index: u64,
    pub previous: u64,
    pub current: u64,
    /// GCRA: the fleet's theoretical arrival time.
    pub tat_us: u64,
    /// Redis's clock when the script ran.
    pub now_us: u64,
}

/// Why a call did not get an answer from Redis.
#[derive(Debug)]
enum CallError {
    Timeout(Duration),
    Redis(redis::RedisError),
    Reply(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Timeout(after) => write!(f, "no answer within {} ms", after.as_millis()),
            CallError::Redis(err) => write!(f, "{err}"),
            CallError::Reply(what) => write!(f, "unexpected reply: {what}"),
        }
    }
}

impl From<redis::RedisError> for CallError {
    fn from(err: redis::RedisError) -> Self {
        CallError::Redis(err)
    }
}

/// `redis://user:secret@host:6379/0` -> `redis://user:***@host:6379/0`.
pub fn redact_url(url: &str) -> String {
    if url.matches("://").count() > 1 {
        // A list of node URLs (a cluster): each one masked.
        return url
            .split(',')
            .map(|node| redact_url(node.trim()))
            .collect::<Vec<_>>()
            .join(",");
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<not a redis:// URL>".to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}{path}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

impl RedisStore {
    /// Connects to `url` (waiting at most a couple of seconds) and starts the
    /// background probe. Never fails: a store that cannot reach Redis starts
    /// with its breaker open, logs why, and keeps trying in the background
    /// (unless the URL itself is invalid, which no retry can fix).
    pub async fn start(url: &str) -> RedisStore {
        RedisStore::start_with(&RedisOptions::new(url)).await
    }

    /// [`RedisStore::start`] with TLS files and any `--redis-url` form (a
    /// single Redis or a cluster, see [`RedisOptions`]).
    pub async fn start_with(options: &RedisOptions) -> RedisStore {
        let target = redact_url(&options.url);
        let client = match Target::open(options) {
            Ok(client) => Some(client),
            Err(err) => {
                tracing::error!(
                    redis = %target,
                    error = %err,
                    "invalid --redis-url (or its TLS files); rate limits with policy redis run under their on_redis_failure policy"
                );
                None
            }
        };
        let store = RedisStore {
            inner: Arc::new(Inner {
                id: {
                    static NEXT: AtomicU64 = AtomicU64::new(0);
                    NEXT.fetch_add(1, Ordering::Relaxed)
                },
                target,
                client,
                connection: OnceLock::new(),
                breaker: Arc::new(Breaker::new(DEFAULT_THRESHOLD, true)),
                script: Script::new(CHECK_SCRIPT),
                sync_script: Script::new(SYNC_SCRIPT),
                clock_offset_us: AtomicI64::new(i64::MIN),
            }),
        };
        if store.inner.client.is_some() {
            match tokio::time::timeout(INITIAL_CONNECT, store.inner.reconnect()).await {
                Ok(Ok(())) => {
                    store.inner.breaker.close();
                    tracing::info!(redis = %store.inner.target, "connected to redis");
                }
                Ok(Err(err)) => tracing::error!(
                    redis = %store.inner.target,
                    error = %err,
                    "cannot reach redis; rate limits with policy redis run under their on_redis_failure policy until it answers"
                ),
                Err(_) => tracing::error!(
                    redis = %store.inner.target,
                    "redis did not answer within {} s; rate limits with policy redis run under their on_redis_failure policy until it answers",
                    INITIAL_CONNECT.as_secs()
                ),
            }
            tokio::spawn(probe(
                Arc::downgrade(&store.inner),
                store.inner.breaker.clone(),
            ));
        }
        store
    }

    /// The Redis URL with any password masked.
    pub fn target(&self) -> &str {
        &self.inner.target
    }

    /// Whether requests currently call Redis (the breaker is closed).
    pub fn is_available(&self) -> bool {
        !self.inner.breaker.is_open()
    }

    /// Now on Redis's clock, from this process's clock and the offset seen at
    /// the last (re)connection or sync; `None` until Redis first answered.
    pub fn redis_now_us(&self) -> Option<u64> {
        let offset = self.inner.clock_offset_us.load(Ordering::Relaxed);
        (offset != i64::MIN).then(|| now_us().saturating_add_signed(offset))
    }

    /// One batched sync: adds each item's increments to its counter and
    /// reads back the fleet's totals, in one pipelined round trip (through
    /// the shared connection) bounded by `timeout`. `None`: Redis did not
    /// answer (the breaker counts it); the caller keeps its increments for
    /// the next sync.
    pub async fn sync(
        &self,
        items: &[SyncItem],
        params: &Params,
        timeout: Duration,
    ) -> Option<Vec<SyncReply>> {
        let inner = &self.inner;
        if inner.breaker.is_open() || items.is_empty() {
            return None;
        }
        let mut connection = inner.connection.get()?.clone();
        let sent_at = now_us();
        let result =
            match tokio::time::timeout(timeout, inner.sync(&mut connection, items, params)).await {
                Ok(result) => result,
                Err(_) => Err(CallError::Timeout(timeout)),
            };
        match result {
            Ok(replies) => {
                inner.breaker.record_success();
                if let Some(last) = replies.last() {
                    // Redis ran the scripts about half way through the round trip.
                    let local = sent_at + now_us().saturating_sub(sent_at) / 2;
                    inner.set_clock(last.now_us, local);
                }
                Some(replies)
            }
            Err(err) => {
                inner.record_failure(&err);
                None
            }
        }
    }

    /// Checks and counts one request against counter `key`, in one round trip
    /// bounded by `timeout`. `None` means Redis could not answer (breaker
    /// open, timeout, error): the caller applies `on_redis_failure`.
    pub async fn check(&self, key: &str, params: &Params, timeout: Duration) -> Option<Decision> {
        let inner = &self.inner;
        if inner.breaker.is_open() {
            return None;
        }
        let mut connection = match inner.local_connection() {
            Some(connection) => connection,
            None => inner.connection.get()?.clone(),
        };
        let result =
            match tokio::time::timeout(timeout, inner.eval(&mut connection, key, params)).await {
                Ok(result) => result,
                Err(_) => Err(CallError::Timeout(timeout)),
            };
        match result {
            Ok(decision) => {
                inner.breaker.record_success();
                Some(decision)
            }
            Err(err) => {
                inner.record_failure(&err);
                None
            }
        }
    }
}

impl RedisStore {
    /// Runs one command on the same connections and behind the same
    /// breaker as the rate-limit calls (the proxy cache's GET/SET/DEL),
    /// bounded by `timeout`. `None` means Redis could not answer.
    pub async fn query<T: redis::FromRedisValue>(
        &self,
        command: &redis::Cmd,
        timeout: Duration,
    ) -> Option<T> {
        self.run(timeout, |mut connection| async move {
            command.query_async(&mut connection).await
        })
        .await
    }

    /// Runs `call` on this thread's connection (or the shared one) behind
    /// the breaker, bounded by `timeout` (the concurrency limit's leases).
    /// `None` means Redis could not answer.
    pub(crate) async fn run<T, F, Fut>(&self, timeout: Duration, call: F) -> Option<T>
    where
        F: FnOnce(Connection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let inner = &self.inner;
        if inner.breaker.is_open() {
            return None;
        }
        let connection = match inner.local_connection() {
            Some(connection) => connection,
            None => inner.connection.get()?.clone(),
        };
        let result = match tokio::time::timeout(timeout, call(connection)).await {
            Ok(result) => result.map_err(CallError::from),
            Err(_) => Err(CallError::Timeout(timeout)),
        };
        match result {
            Ok(value) => {
                inner.breaker.record_success();
                Some(value)
            }
            Err(err) => {
                if inner.breaker.record_failure() {
                    tracing::warn!(
                        redis = %inner.target,
                        error = %err,
                        failures = inner.breaker.threshold(),
                        "redis failing; callers fall back until it answers again"
                    );
                } else {
                    tracing::debug!(redis = %inner.target, error = %err, "redis call failed");
                }
                None
            }
        }
    }
}

impl Inner {
    fn record_failure(&self, err: &CallError) {
        if self.breaker.record_failure() {
            tracing::warn!(
                redis = %self.target,
                error = %err,
                failures = self.breaker.threshold(),
                "redis failing; rate limits fall back to on_redis_failure until it answers again"
            );
        } else {
            tracing::debug!(redis = %self.target, error = %err, "redis rate-limit call failed");
        }
    }

    /// Keeps the offset between Redis's clock (`redis_us`) and ours (`local_us`).
    fn set_clock(&self, redis_us: u64, local_us: u64) {
        let offset = i64::try_from(redis_us)
            .unwrap_or(i64::MAX)
            .saturating_sub(i64::try_from(local_us).unwrap_or(i64::MAX));
        self.clock_offset_us
            .store(offset.max(i64::MIN + 1), Ordering::Relaxed);
    }

    fn connect_options() -> ConnectOptions {
        ConnectOptions {
            connect_timeout: CONNECT_TIMEOUT,
        }
    }

    /// This thread's own connection, once it is up; starts making it (in a
    /// task on this thread's runtime) on the first call. `None`: use the
    /// shared connection for now.
    fn local_connection(&self) -> Option<Connection> {
        let client = self.client.as_ref()?;
        let now = Instant::now();
        let mut start = false;
        let ready = with_local(self.id, |slot| {
            match slot {
                Some(LocalConnection::Ready(connection)) => return Some(connection.clone()),
                Some(LocalConnection::Connecting { since }) if now < *since + LOCAL_RETRY => {}
                Some(LocalConnection::Failed { retry_at }) if now < *retry_at => {}
                _ => {
                    *slot = Some(LocalConnection::Connecting { since: now });
                    start = true;
                }
            }
            None
        });
        if start {
            let (id, client) = (self.id, client.clone());
            tokio::spawn(async move {
                let made = client.connect(&Self::connect_options()).await;
                let state = match made {
                    Ok(connection) => LocalConnection::Ready(connection),
                    Err(err) => {
                        tracing::debug!(error = %err, "worker connection to redis failed; using the shared one");
                        LocalConnection::Failed {
                            retry_at: Instant::now() + LOCAL_RETRY,
                        }
                    }
                };
                // On a current-thread runtime (every proxy worker) this task
                // ran on the thread that asked.
                with_local(id, |slot| *slot = Some(state));
            });
        }
        ready
    }

    /// Makes the connection if there is none yet, then checks it with PING
    /// and (re)loads the script.
    async fn reconnect(&self) -> Result<(), CallError> {
        let mut connection = match self.connection.get() {
            Some(connection) => connection.clone(),
            None => {
                let Some(client) = &self.client else {
                    return Err(CallError::Reply("no valid redis URL".into()));
                };
                let connection = client.connect(&Self::connect_options()).await?;
                // Two probes never race here (one probe task, and start-up runs
                // before it), but if one did, keeping the first is still right.
                let _ = self.connection.set(connection);
                match self.connection.get() {
                    Some(connection) => connection.clone(),
                    None => return Err(CallError::Reply("connection not kept".into())),
                }
            }
        };
        let pong: String = redis::cmd("PING").query_async(&mut connection).await?;
        if pong != "PONG" {
            return Err(CallError::Reply(format!("PING answered {pong:?}")));
        }
        let sent_at = now_us();
        let (seconds, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut connection).await?;
        let local = sent_at + now_us().saturating_sub(sent_at) / 2;
        self.set_clock(
            seconds.saturating_mul(1_000_000).saturating_add(micros),
            local,
        );
        self.load_script(&mut connection).await?;
        self.load(&mut connection, SYNC_SCRIPT, &self.sync_script)
            .await
    }

    async fn load_script(&self, connection: &mut Connection) -> Result<(), CallError> {
        self.load(connection, CHECK_SCRIPT, &self.script).await
    }

    async fn load(
        &self,
        connection: &mut Connection,
        source: &str,
        script: &Script,
    ) -> Result<(), CallError> {
        let sha: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(source)
            .query_async(connection)
            .await?;
        if sha != script.get_hash() {
            return Err(CallError::Reply(format!(
                "SCRIPT LOAD returned SHA {sha}, expected {}",
                script.get_hash()
            )));
        }
        Ok(())
    }

    async fn sync(
        &self,
        connection: &mut Connection,
        items: &[SyncItem],
        params: &Params,
    ) -> Result<Vec<SyncReply>, CallError> {
        let algorithm: u8 = match params.algorithm {
            RateLimitAlgorithm::SlidingWindow => 1,
            RateLimitAlgorithm::Gcra => 2,
        };
        let command = |item: &SyncItem| {
            let mut command = redis::cmd("EVALSHA");
            command
                .arg(self.sync_script.get_hash())
                .arg(1)
                .arg(&item.key)
                .arg(algorithm)
                .arg(params.limit)
                .arg(params.window_us)
                .arg(item.from)
                .arg(item.added)
                .arg(item.added_before);
            command
        };
        let replies: Vec<Vec<i64>> = if connection.is_cluster() {
            // A cluster takes a pipeline only within one slot: one pipeline
            // per slot touched, all sent at once.
            let mut by_slot: Vec<(u16, Vec<usize>, redis::Pipeline)> = Vec::new();
            for (index, item) in items.iter().enumerate() {
                let command = command(item);
                let slot = key_slot(item.key.as_bytes());
                let at = match by_slot.iter().position(|(s, _, _)| *s == slot) {
                    Some(at) => at,
                    None => {
                        by_slot.push((slot, Vec::new(), redis::pipe()));
                        by_slot.len() - 1
                    }
                };
                by_slot[at].1.push(index);
                by_slot[at].2.add_command(command);
            }
            let answers = futures::future::join_all(by_slot.iter().map(|(_, _, pipe)| {
                let mut connection = connection.clone();
                async move { self.run_sync_pipeline(&mut connection, pipe).await }
            }))
            .await;
            let mut replies = vec![Vec::new(); items.len()];
            for ((_, indices, _), answer) in by_slot.iter().zip(answers) {
                for (index, reply) in indices.iter().zip(answer?) {
                    replies[*index] = reply;
                }
            }
            replies
        } else {
            let mut pipe = redis::pipe();
            for item in items {
                pipe.add_command(command(item));
            }
            self.run_sync_pipeline(connection, &pipe).await?
        };
        if replies.len() != items.len() {
            return Err(CallError::Reply(format!(
                "{} replies to {} sync calls",
                replies.len(),
                items.len()
            )));
        }
        let number = |value: i64| u64::try_from(value).unwrap_or(0);
        replies
            .into_iter()
            .map(|reply| match reply[..] {
                [index, a, b, now] => Ok(match params.algorithm {
                    RateLimitAlgorithm::SlidingWindow => SyncReply {
                        index: number(index),
                        previous: number(a),
                        current: number(b),
                        tat_us: 0,
                        now_us: number(now),
                    },
                    RateLimitAlgorithm::Gcra => SyncReply {
                        index: 0,
                        previous: 0,
                        current: 0,
                        tat_us: number(a),
                        now_us: number(now),
                    },
                }),
                _ => Err(CallError::Reply(format!(
                    "{} values, expected 4",
                    reply.len()
                ))),
            })
            .collect()
    }

    /// Runs a pipeline of `sync.lua` calls, loading the script again once
    /// if Redis lost it.
    async fn run_sync_pipeline(
        &self,
        connection: &mut Connection,
        pipe: &redis::Pipeline,
    ) -> Result<Vec<Vec<i64>>, CallError> {
        match pipe.query_async(connection).await {
            Ok(replies) => Ok(replies),
            Err(err) if err.kind() == ErrorKind::NoScriptError => {
                self.load(connection, SYNC_SCRIPT, &self.sync_script)
                    .await?;
                Ok(pipe.query_async(connection).await?)
            }
            Err(err) => Err(err.into()),
        }
    }

    async fn eval(
        &self,
        connection: &mut Connection,
        key: &str,
        params: &Params,
    ) -> Result<Decision, CallError> {
        let algorithm: u8 = match params.algorithm {
            RateLimitAlgorithm::SlidingWindow => 1,
            RateLimitAlgorithm::Gcra => 2,
        };
        // Eight arguments: the name, the 40-byte SHA, the key and five
        // numbers of at most 20 digits; sized once, so building the command
        // allocates twice (its bytes and its argument ends) and never grows.
        let mut command = redis::Cmd::with_capacity(8, 7 + 40 + 1 + key.len() + 4 * 20 + 1);
        command
            .arg("EVALSHA")
            .arg(self.script.get_hash())
            .arg(1)
            .arg(key)
            .arg(algorithm)
            .arg(params.limit)
            .arg(params.window_us)
            .arg(params.burst);
        // One bulk string (see check.lua), parsed here: decoding one RESP
        // value instead of an array of four halves the client's reply work.
        let reply: redis::Value = match command.query_async(connection).await {
            Ok(reply) => reply,
            Err(err) if err.kind() == ErrorKind::NoScriptError => {
                self.load_script(connection).await?;
                command.query_async(connection).await?
            }
            Err(err) => return Err(err.into()),
        };
        let Some([allowed, a, b, c]) = check_reply(&reply) else {
            return Err(CallError::Reply(format!("{reply:?}")));
        };
        Ok(match params.algorithm {
            RateLimitAlgorithm::SlidingWindow => sliding_decision(
                params,
                &SlidingOutcome {
                    allowed: allowed == 1,
                    previous: a,
                    current: b,
                    elapsed_us: c.min(params.window_us),
                },
            ),
            RateLimitAlgorithm::Gcra => gcra_decision(
                params,
                &GcraOutcome {
                    allowed: allowed == 1,
                    tat_us: a,
                    now_us: b,
                },
            ),
        })
    }
}

/// The four numbers of a `check.lua` answer (`"allowed a b c"`, decimal,
/// separated by one space); `None` for anything else.
fn check_reply(reply: &redis::Value) -> Option<[u64; 4]> {
    let redis::Value::BulkString(bytes) = reply else {
        return None;
    };
    let mut numbers = [0u64; 4];
    let mut fields = bytes.split(|&b| b == b' ');
    for number in &mut numbers {
        let field = fields.next()?;
        if field.is_empty() || field.len() > 19 || !field.iter().all(u8::is_ascii_digit) {
            return None;
        }
        *number = field
            .iter()
            .fold(0u64, |n, &digit| n * 10 + u64::from(digit - b'0'));
    }
    fields.next().is_none().then_some(numbers)
}

/// The Redis Cluster slot of `key`: CRC16 (XMODEM) of its hash tag (the
/// part between the first `{` and the next `}`, when not empty) or of the
/// whole key, modulo 16384, as Redis computes it.
fn key_slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    crc16_xmodem(tagged) % 16384
}

fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The background probe: sleeps until the breaker opens, then tries Redis
/// with back-off until it answers, and closes the breaker. Ends when the
/// store is dropped.
async fn probe(inner: Weak<Inner>, breaker: Arc<Breaker>) {
    loop {
        breaker.wait_open().await;
        let mut delay = PROBE_MIN;
        let mut last_logged: Option<tokio::time::Instant> = None;
        loop {
            let Some(store) = inner.upgrade() else {
                return;
            };
            match tokio::time::timeout(PROBE_TIMEOUT * 3, store.reconnect()).await {
                Ok(Ok(())) => {
                    breaker.close();
                    tracing::info!(redis = %store.target, "redis answers again; rate limits are shared again");
                    break;
                }
                Ok(Err(err)) => {
                    if last_logged.is_none_or(|at| at.elapsed() >= OUTAGE_LOG_EVERY) {
                        tracing::warn!(redis = %store.target, error = %err, "redis still unreachable");
                        last_logged = Some(tokio::time::Instant::now());
                    }
                }
                Err(_) => {
                    if last_logged.is_none_or(|at| at.elapsed() >= OUTAGE_LOG_EVERY) {
                        tracing::warn!(redis = %store.target, "redis still not answering");
                        last_logged = Some(tokio::time::Instant::now());
                    }
                }
            }
            drop(store);
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(PROBE_MAX);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("redis://:hunter2@127.0.0.1:6379/0"),
            "redis://:***@127.0.0.1:6379/0"
        );
        assert_eq!(
            redact_url("redis://app:hunter2@cache:6379"),
            "redis://app:***@cache:6379"
        );
        assert_eq!(
            redact_url("redis://127.0.0.1:6379/2"),
            "redis://127.0.0.1:6379/2"
        );
        assert_eq!(redact_url("hunter2"), "<not a redis:// URL>");
        assert_eq!(
            redact_url("redis+cluster://:hunter2@a:1,b:2"),
            "redis+cluster://:***@a:1,b:2"
        );
        assert_eq!(
            redact_url("redis://:hunter2@a:1,redis://:hunter2@b:2/"),
            "redis://:***@a:1,redis://:***@b:2/"
        );
    }

    #[test]
    fn check_replies_parse_only_the_scripts_shape() {
        let bulk = |text: &str| redis::Value::BulkString(text.as_bytes().to_vec());
        assert_eq!(check_reply(&bulk("1 0 5 123")), Some([1, 0, 5, 123]));
        assert_eq!(
            check_reply(&bulk("0 1765000000000000 1765000000000001 0")),
            Some([0, 1_765_000_000_000_000, 1_765_000_000_000_001, 0])
        );
        for bad in [
            "",
            "1 2 3",
            "1 2 3 4 5",
            "1  2 3 4",
            "1 -2 3 4",
            "1 2 3 4 ",
            "a 2 3 4",
            "1 99999999999999999999 3 4",
        ] {
            assert_eq!(check_reply(&bulk(bad)), None, "{bad:?}");
        }
        assert_eq!(check_reply(&redis::Value::Int(1)), None);
    }

    #[test]
    fn slots_follow_redis() {
        // CRC16/XMODEM's check value, and `CLUSTER KEYSLOT` answers.
        assert_eq!(crc16_xmodem(b"123456789"), 0x31c3);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{}{bar}"), key_slot(b"foo{}{bar}"));
        assert_eq!(key_slot(b"{}x"), crc16_xmodem(b"{}x") % 16384);
    }
}
