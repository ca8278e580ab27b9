//! The `strategy: redis` backend: entries shared by every data plane of the
//! fleet, in the Redis of `--redis-url`, through the rate limiter's
//! connections and breaker (an unreachable Redis makes every request a
//! miss that goes upstream, never an error).
//!
//! Keys are `tollgate:cache:{route}:{X-Cache-Key}` with a TTL of the
//! entry's whole lifetime (fresh plus stale), so Redis drops them itself.
//! Values are a small binary encoding of [`Entry`] ([`encode`]/[`decode`]);
//! a value that does not decode (another version's, or damaged) is a miss.

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;

use super::key::CacheKey;
use super::store::Entry;
use crate::RedisStore;

const VERSION: u8 = 1;

/// The Redis key of a cache entry.
pub fn redis_key(key: &CacheKey) -> String {
    format!("tollgate:cache:{{{}}}:{}", key.route, key.hex())
}

/// The pattern of a route's keys (for a purge).
pub fn route_pattern(route: &str) -> String {
    let escaped: String = route
        .chars()
        .flat_map(|c| match c {
            '*' | '?' | '[' | ']' | '\\' => vec!['\\', c],
            c => vec![c],
        })
        .collect();
    format!("tollgate:cache:{{{escaped}}}:*")
}

pub async fn get(redis: &RedisStore, key: &CacheKey, timeout: Duration) -> Option<Entry> {
    let mut command = redis::cmd("GET");
    command.arg(redis_key(key));
    let value: Option<Vec<u8>> = redis.query(&command, timeout).await?;
    decode(&value?)
}

pub async fn set(redis: &RedisStore, key: &CacheKey, entry: &Entry, timeout: Duration) {
    let ttl_ms = entry.lifetime().as_millis().max(1) as u64;
    let mut command = redis::cmd("SET");
    command
        .arg(redis_key(key))
        .arg(encode(entry).as_ref())
        .arg("PX")
        .arg(ttl_ms);
    let _: Option<()> = redis.query(&command, timeout).await;
}

/// Deletes one entry, or every entry of `route` (SCAN in batches).
pub async fn purge(redis: &RedisStore, route: &str, key: Option<CacheKey>, timeout: Duration) {
    if let Some(key) = key {
        let mut command = redis::cmd("DEL");
        command.arg(redis_key(&key));
        let _: Option<i64> = redis.query(&command, timeout).await;
        return;
    }
    let pattern = route_pattern(route);
    let mut cursor: u64 = 0;
    // Bounded: at most 10,000 SCAN batches.
    for _ in 0..10_000 {
        let mut command = redis::cmd("SCAN");
        command
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(500);
        let Some((next, keys)): Option<(u64, Vec<String>)> = redis.query(&command, timeout).await
        else {
            return;
        };
        if !keys.is_empty() {
            let mut delete = redis::cmd("DEL");
            for key in &keys {
                delete.arg(key);
            }
            let _: Option<i64> = redis.query(&delete, timeout).await;
        }
        if next == 0 {
            return;
        }
        cursor = next;
    }
}

fn put_bytes(out: &mut BytesMut, bytes: &[u8]) {
    out.put_u32(bytes.len() as u32);
    out.put_slice(bytes);
}

pub fn encode(entry: &Entry) -> Bytes {
    let mut out = BytesMut::with_capacity(entry.body.len() + 256);
    out.put_u8(VERSION);
    out.put_u16(entry.status.as_u16());
    out.put_u64(entry.stored_ms);
    out.put_u64(entry.initial_age_s);
    out.put_u64(entry.fresh_ms);
    out.put_u64(entry.stale_ms);
    out.put_u32(entry.headers.len() as u32);
    for (name, value) in &entry.headers {
        put_bytes(&mut out, name.as_str().as_bytes());
        put_bytes(&mut out, value.as_bytes());
    }
    out.put_u32(entry.vary.len() as u32);
    for (name, value) in &entry.vary {
        put_bytes(&mut out, name.as_str().as_bytes());
        match value {
            Some(value) => {
                out.put_u8(1);
                put_bytes(&mut out, value.as_bytes());
            }
            None => out.put_u8(0),
        }
    }
    put_bytes(&mut out, &entry.body);
    out.freeze()
}

/// Reads what [`encode`] wrote; `None` for anything else.
pub fn decode(bytes: &[u8]) -> Option<Entry> {
    let mut input = bytes;
    fn take<'a>(input: &mut &'a [u8]) -> Option<&'a [u8]> {
        if input.remaining() < 4 {
            return None;
        }
        let len = input.get_u32() as usize;
        if input.remaining() < len {
            return None;
        }
        let (head, rest) = input.split_at(len);
        *input = rest;
        Some(head)
    }
    if input.remaining() < 1 + 2 + 8 * 4 + 4 || input.get_u8() != VERSION {
        return None;
    }
    let status = StatusCode::from_u16(input.get_u16()).ok()?;
    let stored_ms = input.get_u64();
    let initial_age_s = input.get_u64();
    let fresh_ms = input.get_u64();
    let stale_ms = input.get_u64();
    let count = input.get_u32() as usize;
    let mut headers = HeaderMap::with_capacity(count.min(256));
    for _ in 0..count {
        let name = HeaderName::from_bytes(take(&mut input)?).ok()?;
        let value = HeaderValue::from_bytes(take(&mut input)?).ok()?;
        headers.append(name, value);
    }
    if input.remaining() < 4 {
        return None;
    }
    let count = input.get_u32() as usize;
    let mut vary = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let name = HeaderName::from_bytes(take(&mut input)?).ok()?;
        if input.remaining() < 1 {
            return None;
        }
        let value = match input.get_u8() {
            0 => None,
            1 => Some(HeaderValue::from_bytes(take(&mut input)?).ok()?),
            _ => return None,
        };
        vary.push((name, value));
    }
    let body = Bytes::copy_from_slice(take(&mut input)?);
    if !input.is_empty() {
        return None;
    }
    Some(Entry {
        status,
        headers,
        body,
        stored_ms,
        initial_age_s,
        fresh_ms,
        stale_ms,
        vary,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_garbage_is_refused() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.append("x-a", HeaderValue::from_static("1"));
        headers.append("x-a", HeaderValue::from_static("2"));
        let entry = Entry {
            status: StatusCode::NOT_FOUND,
            headers,
            body: Bytes::from_static(b"{\"a\":1}"),
            stored_ms: 123,
            initial_age_s: 4,
            fresh_ms: 5_000,
            stale_ms: 6_000,
            vary: vec![
                (HeaderName::from_static("accept"), None),
                (
                    HeaderName::from_static("accept-language"),
                    Some(HeaderValue::from_static("en")),
                ),
            ],
        };
        let bytes = encode(&entry);
        assert_eq!(decode(&bytes), Some(entry));
        for cut in 0..bytes.len() {
            assert_eq!(decode(&bytes[..cut]), None, "cut at {cut}");
        }
        assert_eq!(decode(b"\x02garbage"), None);
        let key = CacheKey {
            route: "r*1".into(),
            digest: [0xab; 16],
        };
        assert_eq!(
            redis_key(&key),
            format!("tollgate:cache:{{r*1}}:{}", "ab".repeat(16))
        );
        assert_eq!(route_pattern("r*1"), "tollgate:cache:{r\\*1}:*");
    }
}
