//! One request's access-log line: the record and its JSON formatting.
//!
//! Written by hand rather than through `serde_json`: this runs once per
//! request on the request's own thread, where the generic serializer's
//! byte-by-byte escaping and `fmt` machinery cost several times more than
//! the request's own handling. What keeps it cheap:
//! - a line is measured before it is written (client-supplied strings are
//!   checked for characters to escape once, outside the buffer's lock), so
//!   it is written straight into the free tail of the worker's buffer with
//!   bounds-checked copies, never a reallocation;
//! - constant keys are merged with their neighbours into a few copies, and
//!   what changes once a second (the date) or once per config (a route's
//!   name and service, [`RouteFields`]) is rendered ahead of time.

use std::io::Write as _;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::clock::CachedClock;
use tollgate_plugin_api::request_id::KeptRequestId;

/// What is known about one request when it ends, borrowed from wherever it
/// lives; formatted at once into the worker's buffer.
#[derive(Debug, Clone, Copy)]
pub struct AccessLogRecord<'a> {
    /// When the request was received (turned into wall-clock time by the
    /// worker's clock when the line is formatted, so the request path reads
    /// no wall clock).
    pub time: Instant,
    /// Needs no escaping (see [`tollgate_plugin_api::request_id::RequestId`]):
    /// copied as it is.
    pub request_id: Option<&'a KeptRequestId>,
    /// The request's trace id (its span's, or its `traceparent`'s).
    pub trace_id: Option<u128>,
    pub client_ip: Option<IpAddr>,
    pub method: &'a http::Method,
    /// The `Host` header (or the URI authority for HTTP/2), as received.
    pub host: Option<&'a [u8]>,
    /// The request path, never its query string.
    pub path: Option<&'a str>,
    /// The matched route's name and service (`None`: nothing matched).
    pub route: Option<&'a RouteFields>,
    pub consumer: Option<&'a str>,
    pub status: u16,
    /// The `error` code of the gateway's own answer (a refusal), from its
    /// kind: `None` when the upstream answered.
    pub error: Option<&'static str>,
    /// `TLSv1.3`/`TLSv1.2` for a request that arrived over TLS, else `None`.
    pub tls_version: Option<&'static str>,
    /// The ALPN protocol of that TLS connection (`h2`, `http/1.1`).
    pub alpn: Option<&'static str>,
    pub upstream_addr: Option<&'a str>,
    pub upstream_latency: Option<Duration>,
    /// Upstream tries (1 + retries); 0 when no target was tried.
    pub tries: u32,
    pub total_latency: Duration,
    /// Request body bytes received from the client.
    pub bytes_in: u64,
    /// Response body bytes sent to the client.
    pub bytes_out: u64,
    /// How long the WebSocket tunnel this request opened stayed open
    /// (`None`: no tunnel); `bytes_in`/`bytes_out` then count the tunnel's
    /// bytes from and to the client.
    pub tunnel: Option<Duration>,
}

impl<'a> AccessLogRecord<'a> {
    /// A record with the request's identity and everything else empty.
    pub fn new(time: Instant, method: &'a http::Method) -> Self {
        Self {
            time,
            request_id: None,
            trace_id: None,
            client_ip: None,
            method,
            host: None,
            path: None,
            route: None,
            consumer: None,
            status: 0,
            error: None,
            tls_version: None,
            alpn: None,
            upstream_addr: None,
            upstream_latency: None,
            tries: 0,
            total_latency: Duration::ZERO,
            bytes_in: 0,
            bytes_out: 0,
            tunnel: None,
        }
    }
}

/// A route's `,"route":…,"service":…` fields, rendered once per route (when
/// the snapshot compiles) instead of once per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteFields(Box<[u8]>);

impl RouteFields {
    pub fn new(route: &str, service: &str) -> Self {
        let (route, service) = (Text::of_str(Some(route)), Text::of_str(Some(service)));
        Self(
            render(32 + route.max_len() + service.max_len(), |line| {
                route.write(line, b",\"route\":");
                service.write(line, b",\"service\":");
            })
            .into_boxed_slice(),
        )
    }
}

/// The fields of a request no route matched.
const NO_ROUTE: &[u8] = b",\"route\":null,\"service\":null";

/// The most bytes of a line other than its variable-length strings (keys,
/// punctuation, the time, a trace id, the longest IPv6 address, six numbers
/// of at most 24 characters, and the padding a fixed-size write may leave
/// past the end, [`Cursor::put_padded`]); `a_line_fits_its_measure` checks it.
const FIXED_MAX_LEN: usize = 560;

/// A record whose client-supplied strings were checked and whose longest
/// form was measured, ready to be written.
pub(super) struct Line<'r, 'a> {
    record: &'r AccessLogRecord<'a>,
    host: Text<'a>,
    path: Text<'a>,
    /// No more bytes than this are written.
    pub(super) max_len: usize,
}

impl<'r, 'a> Line<'r, 'a> {
    pub(super) fn new(record: &'r AccessLogRecord<'a>) -> Self {
        let host = Text::of_header(record.host);
        let path = Text::of_str(record.path);
        let max_len = FIXED_MAX_LEN
            + record.request_id.map_or(0, |id| id.as_bytes().len())
            + host.max_len()
            + path.max_len()
            + record.method.as_str().len()
            + record.route.map_or(0, |fields| fields.0.len())
            + record.consumer.map_or(0, str::len)
            + record.error.map_or(0, str::len)
            + record.tls_version.map_or(0, str::len)
            + record.alpn.map_or(0, str::len)
            + record.upstream_addr.map_or(0, str::len);
        Self {
            record,
            host,
            path,
            max_len,
        }
    }

    /// Writes the line (ending in `\n`) at the start of `free`; the bytes
    /// written, or `None` when `free` is shorter than the line (never, when
    /// it holds `max_len` bytes).
    pub(super) fn write(&self, clock: &mut CachedClock, free: &mut [u8]) -> Option<usize> {
        let mut line = Cursor {
            buf: free,
            len: 0,
            overflow: false,
        };
        self.write_to(clock, &mut line);
        (!line.overflow).then_some(line.len)
    }

    /// Every field is always present (`null` when unknown) so consumers see
    /// one schema.
    fn write_to(&self, clock: &mut CachedClock, line: &mut Cursor<'_>) {
        let record = self.record;
        let micros = clock.wall(record.time);
        let (prefix, millis) = clock.stamp(micros);
        line.put(prefix);
        let mut time_end = *b"000Z\"";
        time_end[..3].copy_from_slice(&three_digits(millis));
        line.put(&time_end);
        match record.request_id {
            Some(id) => line.put_quoted(b",\"request_id\":", id.as_bytes()),
            None => line.put(b",\"request_id\":null"),
        }
        match record.trace_id {
            Some(id) => {
                line.put(b",\"trace_id\":\"");
                let mut hex = [0u8; 32];
                for (pair, byte) in hex.chunks_exact_mut(2).zip(id.to_be_bytes()) {
                    pair.copy_from_slice(&[
                        HEX[usize::from(byte >> 4)],
                        HEX[usize::from(byte & 0xf)],
                    ]);
                }
                line.put(&hex);
                line.put(b"\",\"client_ip\":");
            }
            None => line.put(b",\"trace_id\":null,\"client_ip\":"),
        }
        match record.client_ip {
            Some(IpAddr::V4(ip)) => put_ipv4(line, ip.octets()),
            Some(ip @ IpAddr::V6(_)) => {
                // Hex digits, colons and dots only: nothing to escape.
                let mut text = [0u8; 48];
                let mut free = &mut text[..];
                let _ = write!(free, "\"{ip}\"");
                let len = 48 - free.len();
                line.put(&text[..len]);
            }
            None => line.put(b"null"),
        }
        put_method(line, record.method);
        self.host.write(line, b",\"host\":");
        self.path.write(line, b",\"path\":");
        line.put(record.route.map_or(NO_ROUTE, |fields| &fields.0));
        put_plain_or_null(line, b",\"consumer\":", record.consumer);
        if (100..=999).contains(&record.status) {
            let mut status = *b",\"status\":000";
            status[10..13].copy_from_slice(&three_digits(u32::from(record.status)));
            line.put(&status);
        } else {
            line.put(b",\"status\":");
            put_u64(line, u64::from(record.status));
        }
        put_plain_or_null(line, b",\"error\":", record.error);
        put_plain_or_null(line, b",\"tls_version\":", record.tls_version);
        put_plain_or_null(line, b",\"alpn\":", record.alpn);
        put_plain_or_null(line, b",\"upstream_addr\":", record.upstream_addr);
        line.put(b",\"upstream_latency_ms\":");
        match record.upstream_latency {
            Some(latency) => put_millis(line, latency),
            None => line.put(b"null"),
        }
        line.put(b",\"tries\":");
        put_u64(line, u64::from(record.tries));
        line.put(b",\"total_latency_ms\":");
        put_millis(line, record.total_latency);
        line.put(b",\"bytes_in\":");
        put_u64(line, record.bytes_in);
        line.put(b",\"bytes_out\":");
        put_u64(line, record.bytes_out);
        line.put(b",\"tunnel_ms\":");
        match record.tunnel {
            Some(open) => put_millis(line, open),
            None => line.put(b"null"),
        }
        line.put(b"}\n");
    }
}

/// Bytes written into a slice sized for them: each write is one bounds
/// check and one copy (no capacity check, no reallocation). A write past
/// the end marks the line as overflowed instead of writing.
struct Cursor<'b> {
    buf: &'b mut [u8],
    len: usize,
    overflow: bool,
}

impl Cursor<'_> {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        let end = self.len + bytes.len();
        match self.buf.get_mut(self.len..end) {
            Some(slot) => {
                slot.copy_from_slice(bytes);
                self.len = end;
            }
            None => self.overflow = true,
        }
    }

    /// The first `len` bytes of `bytes`, written as all `N` (a fixed-size
    /// copy the compiler inlines, where a slice of unknown length would be a
    /// call to `memcpy`); the bytes past `len` are overwritten by whatever
    /// comes next or lie past the line's end. `len` is at most `N`.
    #[inline]
    fn put_padded<const N: usize>(&mut self, bytes: &[u8; N], len: usize) {
        debug_assert!(len <= N);
        match self.buf.get_mut(self.len..self.len + N) {
            Some(slot) => {
                slot.copy_from_slice(bytes);
                self.len += len.min(N);
            }
            None => self.overflow = true,
        }
    }

    /// `key` and `value` between quotes, with one bounds check.
    #[inline]
    fn put_quoted(&mut self, key: &[u8], value: &[u8]) {
        let end = self.len + key.len() + value.len() + 2;
        let Some(slot) = self.buf.get_mut(self.len..end) else {
            self.overflow = true;
            return;
        };
        if let Some((key_slot, rest)) = slot.split_at_mut_checked(key.len()) {
            key_slot.copy_from_slice(key);
            if let Some((open, rest)) = rest.split_first_mut() {
                *open = b'"';
                if let Some((close, value_slot)) = rest.split_last_mut() {
                    *close = b'"';
                    value_slot.copy_from_slice(value);
                }
            }
        }
        self.len = end;
    }
}

/// Writes through a [`Cursor`] into a vector of at most `max_len` bytes.
fn render(max_len: usize, write: impl FnOnce(&mut Cursor<'_>)) -> Vec<u8> {
    let mut out = vec![0; max_len];
    let mut line = Cursor {
        buf: &mut out,
        len: 0,
        overflow: false,
    };
    write(&mut line);
    let len = line.len;
    out.truncate(len);
    out
}

/// A string as it goes into a line.
#[derive(Debug, Clone, Copy)]
enum Text<'a> {
    /// Absent, or header bytes that are not text: `null` (rather than a
    /// guess at their meaning).
    Null,
    /// Nothing to escape: copied between quotes.
    Plain(&'a [u8]),
    /// Escaped as a JSON string (RFC 8259).
    Escaped(&'a str),
}

impl<'a> Text<'a> {
    /// Header bytes: checked in one pass when they are plain ASCII (the
    /// usual case), escaped when they are other UTF-8.
    fn of_header(bytes: Option<&'a [u8]>) -> Self {
        match bytes {
            None => Self::Null,
            Some(bytes) if is_plain_ascii(bytes) => Self::Plain(bytes),
            Some(bytes) => std::str::from_utf8(bytes).map_or(Self::Null, Self::Escaped),
        }
    }

    fn of_str(text: Option<&'a str>) -> Self {
        match text {
            None => Self::Null,
            Some(text) if is_plain(text.as_bytes()) => Self::Plain(text.as_bytes()),
            Some(text) => Self::Escaped(text),
        }
    }

    /// The most bytes it takes (`\u00XX` is the longest escape).
    fn max_len(self) -> usize {
        match self {
            Self::Null => 4,
            Self::Plain(bytes) => bytes.len() + 2,
            Self::Escaped(text) => 6 * text.len() + 2,
        }
    }

    /// The field: `key` (with its colon) and the value. Inlined (the usual
    /// plain text and `null` are one or two copies of a constant key); the
    /// rare escaping is out of line.
    #[inline]
    fn write(self, line: &mut Cursor<'_>, key: &[u8]) {
        match self {
            Self::Plain(bytes) => line.put_quoted(key, bytes),
            Self::Null => {
                line.put(key);
                line.put(b"null");
            }
            Self::Escaped(text) => write_escaped(line, key, text),
        }
    }
}

/// `key` and `text` as an escaped JSON string.
#[cold]
fn write_escaped(line: &mut Cursor<'_>, key: &[u8], text: &str) {
    line.put(key);
    line.put(b"\"");
    for &b in text.as_bytes() {
        match b {
            b'"' => line.put(b"\\\""),
            b'\\' => line.put(b"\\\\"),
            b'\n' => line.put(b"\\n"),
            b'\r' => line.put(b"\\r"),
            b'\t' => line.put(b"\\t"),
            0x08 => line.put(b"\\b"),
            0x0c => line.put(b"\\f"),
            0x00..=0x1f => line.put(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]),
            _ => line.put(&[b]),
        }
    }
    line.put(b"\"");
}

/// A JSON string of text that cannot need escaping, unchecked: the method
/// (an HTTP token), the upstream address (an `Authority`, which `http`
/// validated) and consumer names (the control plane and the data plane both
/// validate them to letters, digits, `-`, `_`, `.`). The request id needs
/// no check either (a `RequestId` is sane by construction); other
/// client-supplied text (host, path) goes through [`Text`].
fn put_plain(line: &mut Cursor<'_>, key: &[u8], text: &str) {
    debug_assert!(is_plain(text.as_bytes()), "{text:?}");
    line.put_quoted(key, text.as_bytes());
}

/// `,"method":"…"`, the common methods as one constant each.
#[inline]
fn put_method(line: &mut Cursor<'_>, method: &http::Method) {
    use http::Method;
    if *method == Method::GET {
        line.put(b",\"method\":\"GET\"");
    } else if *method == Method::POST {
        line.put(b",\"method\":\"POST\"");
    } else {
        put_plain(line, b",\"method\":", method.as_str());
    }
}

fn put_plain_or_null(line: &mut Cursor<'_>, key: &[u8], text: Option<&str>) {
    match text {
        Some(text) => put_plain(line, key, text),
        None => {
            line.put(key);
            line.put(b"null");
        }
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// `"a.b.c.d"`, built on the stack from a table of the 256 octets and
/// copied once.
fn put_ipv4(line: &mut Cursor<'_>, octets: [u8; 4]) {
    /// Each octet's digits (padded to four bytes with the next `.`) and
    /// their count.
    static OCTETS: [([u8; 4], u8); 256] = {
        let mut table = [([b'.'; 4], 0u8); 256];
        let mut n = 0;
        while n < 256 {
            let (hundreds, tens, ones) = (
                b'0' + (n / 100) as u8,
                b'0' + (n / 10 % 10) as u8,
                b'0' + (n % 10) as u8,
            );
            table[n] = if n >= 100 {
                ([hundreds, tens, ones, b'.'], 3)
            } else if n >= 10 {
                ([tens, ones, b'.', b'.'], 2)
            } else {
                ([ones, b'.', b'.', b'.'], 1)
            };
            n += 1;
        }
        table
    };
    // `"` + four octets of up to three digits with their dots + `"`.
    let mut text = [b'"'; 18];
    let mut len = 1;
    for octet in octets {
        let (digits, count) = OCTETS[usize::from(octet)];
        if let Some(slot) = text.get_mut(len..len + 4) {
            slot.copy_from_slice(&digits);
        }
        len += usize::from(count) + 1;
    }
    // The last octet's `.` becomes the closing quote.
    if let Some(last) = text.get_mut(len - 1) {
        *last = b'"';
    }
    line.put_padded(&text, len);
}

/// `n` (below 1000) as three digits, zero-padded: one table load (this
/// runs four times per line).
fn three_digits(n: u32) -> [u8; 3] {
    static TABLE: [[u8; 3]; 1000] = {
        let mut table = [[0u8; 3]; 1000];
        let mut n = 0;
        while n < 1000 {
            table[n] = [
                b'0' + (n / 100) as u8,
                b'0' + (n / 10 % 10) as u8,
                b'0' + (n % 10) as u8,
            ];
            n += 1;
        }
        table
    };
    TABLE.get(n as usize).copied().unwrap_or(*b"999")
}

/// `n` in decimal; below 1000 (most byte counts and latencies in
/// milliseconds) from the digit table, in one fixed-size write.
fn put_u64(line: &mut Cursor<'_>, n: u64) {
    if let Ok(small @ 0..1000) = u32::try_from(n) {
        let [hundreds, tens, ones] = three_digits(small);
        // Leading zeros shifted out: "007" becomes "7".
        let skip = usize::from(small < 100) + usize::from(small < 10);
        let digits = u32::from_le_bytes([hundreds, tens, ones, 0]) >> (8 * skip);
        line.put_padded(&digits.to_le_bytes(), 3 - skip);
    } else {
        line.put(itoa::Buffer::new().format(n).as_bytes());
    }
}

/// Milliseconds with microsecond precision, always three decimals
/// (`1.500`, `0.042`): a fixed-width fraction is one table load and one
/// constant-size copy.
fn put_millis(line: &mut Cursor<'_>, duration: Duration) {
    let millis = duration
        .as_secs()
        .saturating_mul(1000)
        .saturating_add(u64::from(duration.subsec_millis()));
    put_u64(line, millis);
    let [hundreds, tens, ones] = three_digits(duration.subsec_micros() % 1000);
    line.put(&[b'.', hundreds, tens, ones]);
}

/// Whether `bytes` can go into a JSON string as they are (no control
/// character, `"` or `\\`), checked eight bytes at a time: this runs on
/// every logged string of every request.
fn is_plain(bytes: &[u8]) -> bool {
    words_are_plain::<false>(bytes)
}

/// [`is_plain`] and ASCII in the same pass (for header bytes, which are
/// only known to be text when they are ASCII).
fn is_plain_ascii(bytes: &[u8]) -> bool {
    words_are_plain::<true>(bytes)
}

fn words_are_plain<const ASCII: bool>(bytes: &[u8]) -> bool {
    let word_at = |at: usize| {
        bytes
            .get(at..at + 8)
            .and_then(|word| <[u8; 8]>::try_from(word).ok())
            .map(u64::from_le_bytes)
    };
    if bytes.len() < 8 {
        return bytes
            .iter()
            .all(|&b| PLAIN[usize::from(b)] && (!ASCII || b.is_ascii()));
    }
    let mut at = 0;
    while at + 8 <= bytes.len() {
        if !word_at(at).is_some_and(word_is_plain::<ASCII>) {
            return false;
        }
        at += 8;
    }
    // The last bytes as the last eight (overlapping bytes already checked).
    at == bytes.len() || word_at(bytes.len() - 8).is_some_and(word_is_plain::<ASCII>)
}

/// Which bytes a JSON string holds as they are: all but `"`, `\\` and
/// control characters.
static PLAIN: [bool; 256] = {
    let mut table = [true; 256];
    let mut byte = 0;
    while byte < 0x20 {
        table[byte] = false;
        byte += 1;
    }
    table[b'"' as usize] = false;
    table[b'\\' as usize] = false;
    table
};

/// Whether none of the eight bytes of `v` needs escaping (and, with
/// `ASCII`, all are ASCII).
#[inline]
fn word_is_plain<const ASCII: bool>(v: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // Exact "some byte of v is below n" for n <= 0x80 (bytes >= 0x80 never match).
    let below = |v: u64, n: u8| v.wrapping_sub(ONES * u64::from(n)) & !v & HIGH != 0;
    let has_zero = |v: u64| below(v, 1);
    !((ASCII && v & HIGH != 0)
        || below(v, 0x20)
        || has_zero(v ^ (ONES * u64::from(b'"')))
        || has_zero(v ^ (ONES * u64::from(b'\\'))))
}

/// `record` as one line, on a clock anchored at its `time` (for tests).
#[cfg(test)]
pub(super) fn format(record: &AccessLogRecord<'_>, clock: &mut CachedClock) -> Vec<u8> {
    let line = Line::new(record);
    let mut out = vec![0; line.max_len];
    let len = line.write(clock, &mut out);
    assert!(len.is_some(), "the line overflowed its measure");
    out.truncate(len.unwrap_or(0));
    out
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use http::HeaderValue;
    use std::time::UNIX_EPOCH;
    use tollgate_plugin_api::request_id::RequestId;

    fn request_id() -> &'static KeptRequestId {
        static ID: std::sync::LazyLock<Option<KeptRequestId>> = std::sync::LazyLock::new(|| {
            RequestId::checked(&HeaderValue::from_static("req-1")).map(|id| KeptRequestId::new(&id))
        });
        ID.as_ref().expect("a sane request id")
    }
    static POST: http::Method = http::Method::POST;
    static GET: http::Method = http::Method::GET;

    /// The instant every test record is received at.
    fn received() -> Instant {
        static AT: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);
        *AT
    }

    /// A clock on which [`received`] is 2025-11-26T13:57:54.123Z.
    fn test_clock() -> CachedClock {
        CachedClock::anchored(
            received(),
            UNIX_EPOCH + Duration::from_millis(1_764_165_474_123),
        )
    }

    fn orders() -> &'static RouteFields {
        static FIELDS: std::sync::LazyLock<RouteFields> =
            std::sync::LazyLock::new(|| RouteFields::new("orders-api", "orders"));
        &FIELDS
    }

    /// A record with every field set.
    pub(in super::super) fn record(path: &str) -> AccessLogRecord<'_> {
        let mut record = AccessLogRecord::new(received(), &POST);
        record.request_id = Some(request_id());
        record.trace_id = Some(0x4bf92f3577b34da6a3ce929d0e0e4736);
        record.client_ip = "10.1.2.3".parse().ok();
        record.host = Some(b"api.example.com");
        record.path = Some(path);
        record.route = Some(orders());
        record.consumer = Some("alice");
        record.status = 201;
        record.upstream_addr = Some("127.0.0.1:9001");
        record.upstream_latency = Some(Duration::from_micros(1500));
        record.tries = 2;
        record.total_latency = Duration::from_micros(2250);
        record.bytes_in = 10;
        record.bytes_out = 20;
        record.tls_version = Some("TLSv1.3");
        record.alpn = Some("h2");
        record
    }

    fn line_of(record: &AccessLogRecord) -> serde_json::Value {
        let out = format(record, &mut test_clock());
        assert_eq!(out.last(), Some(&b'\n'));
        assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 1);
        serde_json::from_slice(&out).unwrap_or_default()
    }

    #[test]
    fn a_line_has_every_field() {
        let line = line_of(&record("/v1/orders/42"));
        assert_eq!(line["time"], "2025-11-26T13:57:54.123Z");
        assert_eq!(line["request_id"], "req-1");
        assert_eq!(line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(line["client_ip"], "10.1.2.3");
        assert_eq!(line["method"], "POST");
        assert_eq!(line["host"], "api.example.com");
        assert_eq!(line["path"], "/v1/orders/42");
        assert_eq!(line["route"], "orders-api");
        assert_eq!(line["service"], "orders");
        assert_eq!(line["consumer"], "alice");
        assert_eq!(line["status"], 201);
        assert_eq!(line["upstream_addr"], "127.0.0.1:9001");
        assert_eq!(line["upstream_latency_ms"], 1.5);
        assert_eq!(line["total_latency_ms"], 2.25);
        assert_eq!(line["bytes_in"], 10);
        assert_eq!(line["bytes_out"], 20);
        assert_eq!(line["tls_version"], "TLSv1.3");
        assert_eq!(line["alpn"], "h2");
        assert_eq!(line["tries"], 2);
        assert!(line["tunnel_ms"].is_null());
        assert_eq!(line.as_object().map(|fields| fields.len()), Some(21));
        let mut tunnel = record("/ws");
        tunnel.status = 101;
        tunnel.tunnel = Some(Duration::from_micros(2_500_250));
        assert_eq!(line_of(&tunnel)["tunnel_ms"], 2500.25);
    }

    #[test]
    fn plain_text_is_told_from_text_to_escape() {
        let base = "abcdefghijklmnopqrstuvwxyz0123456789-é漢/:.";
        assert!(is_plain(base.as_bytes()));
        assert!(is_plain(b""));
        for at in 0..base.len() {
            for bad in [b'"', b'\\', 0x00, 0x1f, b'\n', 0x01] {
                let mut bytes = base.as_bytes().to_vec();
                bytes[at] = bad;
                assert!(!is_plain(&bytes), "{bad:#x} at {at}");
            }
        }
        // Every length around the word size, the bad byte at each end.
        for len in 1..=17 {
            let mut bytes = vec![b'a'; len];
            assert!(is_plain_ascii(&bytes), "{len}");
            bytes[len - 1] = b'"';
            assert!(!is_plain(&bytes), "last of {len}");
            bytes[len - 1] = b'a';
            bytes[0] = 0x80;
            assert!(
                is_plain(&bytes) && !is_plain_ascii(&bytes),
                "first of {len}"
            );
        }
        for good in [b' ', b'!', b'#', b'[', b']', 0x7f, 0x80, 0xff] {
            assert!(is_plain(&[good; 19]), "{good:#x}");
            assert_eq!(is_plain_ascii(&[good; 19]), good < 0x80, "{good:#x}");
            assert_eq!(is_plain_ascii(&[good; 3]), good < 0x80, "{good:#x}");
        }
    }

    #[test]
    fn ipv4_addresses_are_dotted_decimal() {
        let every_octet = (0..=255).map(|n| format!("{n}.{}.{n}.{}", 255 - n, n / 2));
        for ip in ["0.9.10.255", "100.200.7.99", "255.255.255.255", "0.0.0.0"]
            .map(str::to_owned)
            .into_iter()
            .chain(every_octet)
        {
            let mut record = record("/");
            record.client_ip = ip.parse().ok();
            assert_eq!(line_of(&record)["client_ip"], ip.as_str());
        }
    }

    #[test]
    fn refusals_log_their_code() {
        let mut record = record("/v1/orders/42");
        assert!(line_of(&record)["error"].is_null(), "the upstream answered");
        record.status = 429;
        record.error = Some("rate_limited");
        assert_eq!(line_of(&record)["error"], "rate_limited");
    }

    #[test]
    fn unknown_fields_are_null() {
        let line = line_of(&AccessLogRecord::new(received(), &GET));
        assert_eq!(line["time"], "2025-11-26T13:57:54.123Z");
        assert_eq!(line["status"], 0);
        assert_eq!(line["tries"], 0);
        for field in [
            "request_id",
            "trace_id",
            "client_ip",
            "host",
            "path",
            "route",
            "service",
            "consumer",
            "error",
            "tls_version",
            "alpn",
            "upstream_addr",
            "upstream_latency_ms",
            "tunnel_ms",
        ] {
            assert!(line[field].is_null(), "{field}");
        }
    }

    #[test]
    fn hostile_values_stay_valid_json() {
        // Ids that would need escaping never become a `RequestId`.
        let invalid_id = HeaderValue::from_bytes(&[0xff, b'"'])
            .ok()
            .and_then(|value| RequestId::checked(&value))
            .map(|id| KeptRequestId::new(&id));
        let mut record = record("/a\"b\\c");
        record.host = Some(b"evil\"host\n");
        record.request_id = invalid_id.as_ref();
        let line = line_of(&record);
        assert_eq!(line["path"], "/a\"b\\c");
        assert_eq!(line["host"], "evil\"host\n");
        assert!(line["request_id"].is_null());
    }

    #[test]
    fn a_line_fits_its_measure() {
        // Every field at its longest: escapes that grow each byte sixfold,
        // the longest IPv6 address and numbers, an extension method.
        let escapes = "\u{1}".repeat(8 * 1024);
        let host = "\u{1f}".repeat(4 * 1024);
        let method = http::Method::from_bytes(&[b'X'; 64]).unwrap_or_default();
        let fields = RouteFields::new(&"r".repeat(200), &"s".repeat(200));
        let mut record = record(&escapes);
        record.method = &method;
        record.host = Some(host.as_bytes());
        record.route = Some(&fields);
        record.client_ip = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe".parse().ok();
        record.trace_id = Some(u128::MAX);
        record.status = u16::MAX;
        record.upstream_latency = Some(Duration::MAX);
        record.tunnel = Some(Duration::MAX);
        record.total_latency = Duration::MAX;
        record.bytes_in = u64::MAX;
        record.bytes_out = u64::MAX;
        let text = String::from_utf8(format(&record, &mut test_clock())).unwrap_or_default();
        assert!(
            text.contains("\"total_latency_ms\":18446744073709551615.999,"),
            "{text}"
        );
        let line = line_of(&record);
        assert_eq!(line["path"], escapes.as_str());
        assert_eq!(line["host"], host.as_str());
        assert_eq!(line["status"], u16::MAX);
        assert_eq!(line["bytes_out"], u64::MAX);
        // The fixed part alone stays within its allowance.
        record.path = None;
        record.host = None;
        record.request_id = None;
        record.method = &POST;
        record.route = None;
        record.consumer = None;
        record.upstream_addr = None;
        assert!(format(&record, &mut test_clock()).len() < FIXED_MAX_LEN);
    }

    #[test]
    fn numbers_are_decimal() {
        let mut record = record("/");
        for n in [
            0,
            7,
            10,
            42,
            99,
            100,
            999,
            1000,
            4096,
            123_456_789,
            u64::MAX,
        ] {
            record.bytes_in = n;
            record.bytes_out = n;
            record.upstream_latency = Some(Duration::from_millis(n.min(1 << 40)));
            let line = line_of(&record);
            assert_eq!(line["bytes_in"], n);
            assert_eq!(line["bytes_out"], n);
            let text = String::from_utf8(format(&record, &mut test_clock())).unwrap_or_default();
            assert!(text.contains(&format!(",\"bytes_in\":{n},")), "{text}");
            assert!(
                text.contains(&format!(",\"upstream_latency_ms\":{}.000,", n.min(1 << 40))),
                "{text}"
            );
        }
    }

    #[test]
    fn strings_and_numbers_match_json_semantics() {
        let mut record = record("/x");
        let nasty = "tab\there \"quoted\" back\\slash \u{1} \u{1f} é 漢";
        record.path = Some(nasty);
        record.client_ip = "2001:db8::1".parse().ok();
        record.trace_id = Some(0xab);
        for (micros, text) in [
            (0, "0.000"),
            (1_500, "1.500"),
            (1_001, "1.001"),
            (1_010, "1.010"),
            (42, "0.042"),
            (1_234_567, "1234.567"),
        ] {
            record.total_latency = Duration::from_micros(micros);
            let out = format(&record, &mut test_clock());
            let text_line = String::from_utf8(out.clone()).unwrap_or_default();
            assert!(
                text_line.contains(&format!("\"total_latency_ms\":{text},")),
                "{text_line}"
            );
            let line: serde_json::Value = serde_json::from_slice(&out).unwrap_or_default();
            assert_eq!(line["path"], nasty);
            assert_eq!(line["client_ip"], "2001:db8::1");
            assert_eq!(line["trace_id"], "000000000000000000000000000000ab");
        }
    }

    #[test]
    fn route_fields_are_rendered_once() {
        assert_eq!(
            &*RouteFields::new("a", "b-1").0,
            b",\"route\":\"a\",\"service\":\"b-1\""
        );
    }
}
