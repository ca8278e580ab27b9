//! Structured access log: one JSON object per line per request.
//!
//! Why per-thread buffers and a writer thread: writing to stdout or a file
//! can block (a full pipe, a slow disk), and the request path must never wait
//! for it. Each request formats its line straight into a buffer owned by its
//! proxy worker thread ([`SHARDS`] buffers, each behind its own lock, which
//! only that worker and the writer ever take: no lock shared by all requests,
//! no per-request allocation, no record copied between threads). A writer
//! thread swaps each buffer for an empty one every few milliseconds, or sooner
//! when one fills up, and writes it out in one call. When a buffer reaches its
//! cap because the sink is stalled, new lines are dropped and counted
//! (`tollgate_access_log_dropped_total`), so a stalled log sink costs log
//! lines, never latency. Lines of different workers may interleave in time
//! order by up to one interval; each line carries its own timestamp.
//!
//! No credential ever appears: the path is logged without its query string
//! (where `key-auth` may read an API key), and no header other than `Host`
//! and `X-Request-Id` is recorded.

use std::cell::Cell;
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::Thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::HeaderValue;
use prometheus_client::metrics::counter::Counter;

/// Bytes of lines one worker's buffer holds while the writer is behind
/// (past that, lines are dropped and counted).
pub const DEFAULT_CAPACITY: usize = 4 * 1024 * 1024;

/// Number of line buffers; a power of two. Worker threads get one each (in
/// the order they first log) until there are more workers than buffers.
pub const SHARDS: usize = 16;

/// A buffer this full wakes the writer before its interval is up.
const WAKE_BYTES: usize = 256 * 1024;

/// Capacity every buffer gets up front and keeps: buffers are swapped, never
/// freed, so the allocator never hands their pages back to the kernel and the
/// request path never faults them in again.
const BUFFER_BYTES: usize = 2 * WAKE_BYTES;

/// How long the writer sleeps between passes.
const IDLE_POLL: Duration = Duration::from_millis(10);

/// Where access-log lines go (`--access-log stdout|off|PATH`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AccessLogTarget {
    /// Standard output (the default; logs go to stderr, so they never mix).
    #[default]
    Stdout,
    /// No access log.
    Off,
    /// Appended to this file (created with mode 0640 when missing).
    File(PathBuf),
}

impl FromStr for AccessLogTarget {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "stdout" | "-" => Ok(Self::Stdout),
            "off" => Ok(Self::Off),
            "" => Err("expected stdout, off or a file path".to_owned()),
            path => Ok(Self::File(PathBuf::from(path))),
        }
    }
}

/// What is known about one request when it ends, borrowed from wherever it
/// lives; formatted at once into the worker's buffer.
#[derive(Debug, Clone, Copy)]
pub struct AccessLogRecord<'a> {
    /// When the request was received (turned into wall-clock time by the
    /// worker's clock when the line is formatted, so the request path reads
    /// no wall clock).
    pub time: Instant,
    pub request_id: Option<&'a HeaderValue>,
    /// The request's trace id (its span's, or its `traceparent`'s).
    pub trace_id: Option<u128>,
    pub client_ip: Option<IpAddr>,
    pub method: &'a http::Method,
    /// The `Host` header (or the URI authority for HTTP/2), as received.
    pub host: Option<&'a [u8]>,
    /// The request path, never its query string.
    pub path: Option<&'a str>,
    pub route: Option<&'a str>,
    pub service: Option<&'a str>,
    pub consumer: Option<&'a str>,
    pub status: u16,
    pub upstream_addr: Option<&'a str>,
    pub upstream_latency: Option<Duration>,
    pub total_latency: Duration,
    /// Request body bytes received from the client.
    pub bytes_in: u64,
    /// Response body bytes sent to the client.
    pub bytes_out: u64,
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
            service: None,
            consumer: None,
            status: 0,
            upstream_addr: None,
            upstream_latency: None,
            total_latency: Duration::ZERO,
            bytes_in: 0,
            bytes_out: 0,
        }
    }
}

/// One worker's lines not yet written.
#[derive(Default)]
struct Lines {
    buf: Vec<u8>,
    count: u64,
    clock: CachedClock,
}

/// A buffer on its own cache line, so neighbouring workers do not contend.
#[repr(align(64))]
#[derive(Default)]
struct Shard(Mutex<Lines>);

/// What the request path and the writer thread share.
struct Shared {
    shards: Box<[Shard]>,
    /// Bytes a shard may hold before lines are dropped.
    capacity: usize,
    /// Callers of [`AccessLog::flush`] waiting for the next pass.
    flushes: Mutex<Vec<SyncSender<()>>>,
    /// Set when the [`AccessLog`] is dropped: one last pass, then exit.
    closed: AtomicBool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means a thread panicked mid-append; the buffer is
    // still bytes (at worst one partial line).
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// This thread's shard, assigned on its first line.
fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: Cell<Option<usize>> = const { Cell::new(None) };
    }
    INDEX.with(|index| match index.get() {
        Some(index) => index,
        None => {
            let assigned = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
            index.set(Some(assigned));
            assigned
        }
    })
}

/// The access-log handle the proxy holds; cheap to share behind an `Arc`.
pub struct AccessLog {
    shared: Option<Arc<Shared>>,
    writer: Option<Thread>,
    dropped: Counter,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog")
            .field("enabled", &self.is_enabled())
            .finish_non_exhaustive()
    }
}

impl AccessLog {
    /// Opens the target and starts the writer thread (nothing for `Off`).
    pub fn start(target: &AccessLogTarget, dropped: Counter) -> io::Result<Self> {
        let writer: Box<dyn Write + Send> = match target {
            AccessLogTarget::Off => return Ok(Self::disabled(dropped)),
            AccessLogTarget::Stdout => Box::new(io::stdout()),
            AccessLogTarget::File(path) => {
                let mut options = std::fs::OpenOptions::new();
                options.create(true).append(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o640);
                Box::new(options.open(path).map_err(|err| {
                    io::Error::new(
                        err.kind(),
                        format!("cannot open access log {}: {err}", path.display()),
                    )
                })?)
            }
        };
        Self::with_writer(writer, DEFAULT_CAPACITY, dropped)
    }

    /// An access log that records nothing.
    pub fn disabled(dropped: Counter) -> Self {
        Self {
            shared: None,
            writer: None,
            dropped,
        }
    }

    /// Starts a writer thread on any sink; each worker buffers up to
    /// `capacity` bytes of lines while the sink is behind.
    pub fn with_writer(
        writer: Box<dyn Write + Send>,
        capacity: usize,
        dropped: Counter,
    ) -> io::Result<Self> {
        let shared = Arc::new(Shared {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            capacity: capacity.max(1),
            flushes: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
        });
        let worker_shared = Arc::clone(&shared);
        let worker_dropped = dropped.clone();
        // Detached: dropping the handle ends it after one last pass, and a
        // wedged sink must not hold up process exit (call `flush` at
        // shutdown to wait, boundedly, for the lines so far).
        let handle = std::thread::Builder::new()
            .name("access-log".to_owned())
            .spawn(move || write_lines(&worker_shared, writer, &worker_dropped))?;
        Ok(Self {
            shared: Some(shared),
            writer: Some(handle.thread().clone()),
            dropped,
        })
    }

    /// Whether records are written (callers may skip building them if not).
    #[inline]
    pub fn is_enabled(&self) -> bool {
        self.shared.is_some()
    }

    /// Formats one line into this worker's buffer; never blocks on the sink:
    /// when the writer is behind and the buffer is full, the line is dropped
    /// and counted.
    pub fn log(&self, record: &AccessLogRecord<'_>) {
        let Some(shared) = &self.shared else {
            return;
        };
        let shard = &shared.shards[shard_index()];
        let mut lines = lock(&shard.0);
        let before = lines.buf.len();
        if before >= shared.capacity {
            drop(lines);
            self.dropped.inc();
            return;
        }
        let Lines { buf, count, clock } = &mut *lines;
        if buf.capacity() == 0 {
            buf.reserve(BUFFER_BYTES);
        }
        format_line(record, clock, buf);
        *count += 1;
        let wake = before < WAKE_BYTES && buf.len() >= WAKE_BYTES;
        drop(lines);
        if wake {
            if let Some(writer) = &self.writer {
                writer.unpark();
            }
        }
    }

    /// Waits (blocking, at most `timeout`) until every line logged before
    /// the call is written and flushed. For shutdown and tests; call it from
    /// a blocking context (e.g. `spawn_blocking`), never the request path.
    pub fn flush(&self, timeout: Duration) -> bool {
        let (Some(shared), Some(writer)) = (&self.shared, &self.writer) else {
            return true;
        };
        let (ack_tx, ack_rx) = mpsc::sync_channel(1);
        lock(&shared.flushes).push(ack_tx);
        writer.unpark();
        ack_rx.recv_timeout(timeout).is_ok()
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        if let (Some(shared), Some(writer)) = (&self.shared, &self.writer) {
            shared.closed.store(true, Ordering::Release);
            writer.unpark();
        }
    }
}

/// The writer thread: every interval (or when woken), takes each worker's
/// buffer and writes it in one call.
fn write_lines(shared: &Shared, mut writer: Box<dyn Write + Send>, dropped: &Counter) {
    let mut spare: Vec<u8> = Vec::with_capacity(BUFFER_BYTES);
    let mut warned = false;
    loop {
        let closing = shared.closed.load(Ordering::Acquire);
        // Taken before the buffers: every line logged before a flush call
        // is in a buffer by now.
        let acks = std::mem::take(&mut *lock(&shared.flushes));
        let mut wrote = false;
        for shard in shared.shards.iter() {
            let count = {
                let mut lines = lock(&shard.0);
                if lines.buf.is_empty() {
                    continue;
                }
                std::mem::swap(&mut lines.buf, &mut spare);
                std::mem::take(&mut lines.count)
            };
            if let Err(err) = writer.write_all(&spare) {
                dropped.inc_by(count);
                warn_once(&mut warned, &err);
            }
            wrote = true;
            spare.clear();
            // Keep a buffer's worth, not a burst's.
            if spare.capacity() > 4 * BUFFER_BYTES {
                spare = Vec::with_capacity(BUFFER_BYTES);
            }
        }
        if wrote || !acks.is_empty() {
            if let Err(err) = writer.flush() {
                warn_once(&mut warned, &err);
            }
        }
        for ack in acks {
            let _ = ack.try_send(());
        }
        if closing {
            return;
        }
        std::thread::park_timeout(IDLE_POLL);
    }
}

fn warn_once(warned: &mut bool, err: &io::Error) {
    if !*warned {
        *warned = true;
        tracing::warn!(error = %err, "cannot write the access log; lost lines are counted in tollgate_access_log_dropped_total");
    }
}

/// Appends `record` as one JSON line to `out`. Every field is always
/// present (`null` when unknown) so consumers see one schema.
///
/// Written by hand rather than through `serde_json`: this runs once per
/// request on the request's own thread, and the generic serializer's
/// byte-by-byte escaping and `fmt` machinery cost several times more than
/// the request's own handling.
fn format_line(record: &AccessLogRecord<'_>, clock: &mut CachedClock, out: &mut Vec<u8>) {
    out.reserve(512);
    out.extend_from_slice(b"{\"time\":\"");
    let time = clock.wall(record.time);
    clock.write(out, time);
    out.extend_from_slice(b"\",\"request_id\":");
    or_null(
        out,
        record.request_id.map(HeaderValue::as_bytes),
        json_header,
    );
    out.extend_from_slice(b",\"trace_id\":");
    match record.trace_id {
        Some(id) => {
            let mut hex = [0u8; 34];
            hex[0] = b'"';
            hex[33] = b'"';
            for (i, slot) in hex[1..33].iter_mut().enumerate() {
                *slot = HEX[((id >> ((31 - i) * 4)) & 0xf) as usize];
            }
            out.extend_from_slice(&hex);
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"client_ip\":");
    match record.client_ip {
        Some(IpAddr::V4(ip)) => {
            // `"255.255.255.255"` at most, built on the stack, copied once.
            let mut text = [b'"'; 17];
            let mut len = 1;
            for (i, octet) in ip.octets().into_iter().enumerate() {
                if i > 0 {
                    text[len] = b'.';
                    len += 1;
                }
                if octet >= 100 {
                    text[len] = b'0' + octet / 100;
                    len += 1;
                }
                if octet >= 10 {
                    text[len] = b'0' + octet / 10 % 10;
                    len += 1;
                }
                text[len] = b'0' + octet % 10;
                len += 1;
            }
            out.extend_from_slice(&text[..=len]);
        }
        Some(ip @ IpAddr::V6(_)) => {
            // Hex digits and colons only: nothing to escape.
            let _ = write!(out, "\"{ip}\"");
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"method\":");
    json_plain_str(out, record.method.as_str());
    out.extend_from_slice(b",\"host\":");
    or_null(out, record.host, json_header);
    out.extend_from_slice(b",\"path\":");
    or_null(out, record.path, json_str);
    out.extend_from_slice(b",\"route\":");
    or_null(out, record.route, json_plain_str);
    out.extend_from_slice(b",\"service\":");
    or_null(out, record.service, json_plain_str);
    out.extend_from_slice(b",\"consumer\":");
    or_null(out, record.consumer, json_plain_str);
    out.extend_from_slice(b",\"status\":");
    write_u64(out, u64::from(record.status));
    out.extend_from_slice(b",\"upstream_addr\":");
    or_null(out, record.upstream_addr, json_plain_str);
    out.extend_from_slice(b",\"upstream_latency_ms\":");
    or_null(out, record.upstream_latency, write_millis);
    out.extend_from_slice(b",\"total_latency_ms\":");
    write_millis(out, record.total_latency);
    out.extend_from_slice(b",\"bytes_in\":");
    write_u64(out, record.bytes_in);
    out.extend_from_slice(b",\"bytes_out\":");
    write_u64(out, record.bytes_out);
    out.extend_from_slice(b"}\n");
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// `write`s the value, or `null` when there is none.
fn or_null<T>(out: &mut Vec<u8>, value: Option<T>, write: impl FnOnce(&mut Vec<u8>, T)) {
    match value {
        Some(value) => write(out, value),
        None => out.extend_from_slice(b"null"),
    }
}

/// Header bytes as a JSON string: checked in one pass when they are plain
/// ASCII (the usual case), escaped when they are other UTF-8, `null` when
/// they are not text at all (rather than guessed at).
fn json_header(out: &mut Vec<u8>, bytes: &[u8]) {
    if is_plain_ascii(bytes) {
        json_plain_bytes(out, bytes);
    } else {
        or_null(out, std::str::from_utf8(bytes).ok(), json_str);
    }
}

/// A JSON string of text that cannot need escaping, unchecked: the method
/// (an HTTP token), the upstream address (an `Authority`, which `http`
/// validated) and route, service and consumer names (the control plane and
/// the data plane both validate them to letters, digits, `-`, `_`, `.`).
/// Client-supplied text (host, path, request id) goes through [`json_str`].
fn json_plain_str(out: &mut Vec<u8>, text: &str) {
    debug_assert!(text.bytes().all(|b| PLAIN[usize::from(b)]), "{text:?}");
    json_plain_bytes(out, text.as_bytes());
}

fn json_plain_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'"');
    out.extend_from_slice(bytes);
    out.push(b'"');
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
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // Exact "some byte of v is below n" for n <= 0x80 (bytes >= 0x80 never match).
    let below = |v: u64, n: u8| v.wrapping_sub(ONES * u64::from(n)) & !v & HIGH != 0;
    let has_zero = |v: u64| below(v, 1);
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let Ok(word) = <[u8; 8]>::try_from(chunk) else {
            return false;
        };
        let v = u64::from_le_bytes(word);
        if (ASCII && v & HIGH != 0)
            || below(v, 0x20)
            || has_zero(v ^ (ONES * u64::from(b'"')))
            || has_zero(v ^ (ONES * u64::from(b'\\')))
        {
            return false;
        }
    }
    chunks
        .remainder()
        .iter()
        .all(|&b| PLAIN[usize::from(b)] && (!ASCII || b.is_ascii()))
}

/// A JSON string (RFC 8259): `"`, `\\` and control characters escaped;
/// other text (valid UTF-8, since it is a `str`) copied as is.
fn json_str(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    let bytes = text.as_bytes();
    if is_plain(bytes) {
        out.extend_from_slice(bytes);
    } else {
        for &b in bytes {
            match b {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' => out.extend_from_slice(b"\\t"),
                0x08 => out.extend_from_slice(b"\\b"),
                0x0c => out.extend_from_slice(b"\\f"),
                0x00..=0x1f => {
                    out.extend_from_slice(b"\\u00");
                    out.push(HEX[usize::from(b >> 4)]);
                    out.push(HEX[usize::from(b & 0xf)]);
                }
                _ => out.push(b),
            }
        }
    }
    out.push(b'"');
}

fn write_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// `n` as exactly `width` digits (zero-padded; `n` must fit).
fn write_padded(out: &mut Vec<u8>, n: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut n = n;
    for slot in digits[..width].iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend_from_slice(&digits[..width]);
}

/// Milliseconds with microsecond precision, as the shortest JSON number
/// (`1.5`, `2.25`, `3.0`).
fn write_millis(out: &mut Vec<u8>, duration: Duration) {
    let micros = duration
        .as_secs()
        .saturating_mul(1_000_000)
        .saturating_add(u64::from(duration.subsec_micros()));
    write_u64(out, micros / 1000);
    let fraction = micros % 1000;
    let digits = [
        b'.',
        b'0' + (fraction / 100) as u8,
        b'0' + (fraction / 10 % 10) as u8,
        b'0' + (fraction % 10) as u8,
    ];
    let len = if fraction % 100 == 0 {
        2
    } else if fraction % 10 == 0 {
        3
    } else {
        4
    };
    out.extend_from_slice(&digits[..len]);
}

/// How long a worker's clock trusts its anchor before reading the wall clock
/// again: the monotonic and the wall clock drift apart by at most NTP's slew
/// (0.5 ms per second), and a step of the wall clock shows within a second.
const REANCHOR_AFTER: Duration = Duration::from_secs(1);

/// Wall-clock time for the log, `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC), without a
/// date-time dependency. Requests are timed with `Instant`s, which they read
/// anyway; each worker turns them into wall-clock time from an anchor (an
/// `Instant` and the `SystemTime` read with it) renewed once a second, so the
/// request path makes no wall-clock read of its own. The part up to the
/// seconds is formatted once per second.
#[derive(Debug, Clone, Copy)]
struct CachedClock {
    anchor: Option<(Instant, SystemTime)>,
    second: u64,
    /// `YYYY-MM-DDTHH:MM:SS.` of `second`.
    prefix: [u8; 20],
}

impl Default for CachedClock {
    fn default() -> Self {
        Self {
            anchor: None,
            second: u64::MAX,
            prefix: [0; 20],
        }
    }
}

impl CachedClock {
    /// The wall-clock time of `at`. One `Instant` subtraction in the usual
    /// case (an instant within a second after the anchor).
    fn wall(&mut self, at: Instant) -> SystemTime {
        let (instant, wall) = match self.anchor {
            Some((instant, wall)) => match at.checked_duration_since(instant) {
                Some(after) if after < REANCHOR_AFTER => {
                    return wall.checked_add(after).unwrap_or(wall);
                }
                // Received before the anchor was taken (a request that
                // outlived a renewal): counted back from it below.
                None => (instant, wall),
                Some(_) => self.renew(),
            },
            None => self.renew(),
        };
        wall.checked_sub(instant.saturating_duration_since(at))
            .unwrap_or(wall)
    }

    /// Reads the wall clock once and anchors to it.
    fn renew(&mut self) -> (Instant, SystemTime) {
        let anchor = (Instant::now(), SystemTime::now());
        self.anchor = Some(anchor);
        anchor
    }

    fn write(&mut self, out: &mut Vec<u8>, time: SystemTime) {
        let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        let secs = since_epoch.as_secs();
        if secs != self.second {
            let mut prefix = Vec::with_capacity(20);
            write_date_time(&mut prefix, secs);
            // Always 20 bytes: the year is clamped to four digits.
            if let Ok(prefix) = <[u8; 20]>::try_from(prefix.as_slice()) {
                self.prefix = prefix;
                self.second = secs;
            }
        }
        out.extend_from_slice(&self.prefix);
        write_padded(out, u64::from(since_epoch.subsec_millis()), 3);
        out.push(b'Z');
    }
}

/// `YYYY-MM-DDTHH:MM:SS.` of `secs` since the Unix epoch.
fn write_date_time(out: &mut Vec<u8>, secs: u64) {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    write_padded(out, u64::try_from(year).unwrap_or(0).min(9999), 4);
    out.push(b'-');
    write_padded(out, u64::from(month), 2);
    out.push(b'-');
    write_padded(out, u64::from(day), 2);
    out.push(b'T');
    write_padded(out, rem / 3600, 2);
    out.push(b':');
    write_padded(out, (rem % 3600) / 60, 2);
    out.push(b':');
    write_padded(out, rem % 60, 2);
    out.push(b'.');
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day)
/// (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Condvar;
    use std::time::Instant;

    static REQUEST_ID: HeaderValue = HeaderValue::from_static("req-1");
    static POST: http::Method = http::Method::POST;
    static GET: http::Method = http::Method::GET;

    /// The instant every test record is received at.
    fn received() -> Instant {
        static AT: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);
        *AT
    }

    /// A clock on which [`received`] is 2025-11-26T13:57:54.123Z.
    fn test_clock() -> CachedClock {
        CachedClock {
            anchor: Some((
                received(),
                UNIX_EPOCH + Duration::from_millis(1_764_165_474_123),
            )),
            ..CachedClock::default()
        }
    }

    fn record(path: &str) -> AccessLogRecord<'_> {
        let mut record = AccessLogRecord::new(received(), &POST);
        record.request_id = Some(&REQUEST_ID);
        record.trace_id = Some(0x4bf92f3577b34da6a3ce929d0e0e4736);
        record.client_ip = "10.1.2.3".parse().ok();
        record.host = Some(b"api.example.com");
        record.path = Some(path);
        record.route = Some("orders-api");
        record.service = Some("orders");
        record.consumer = Some("alice");
        record.status = 201;
        record.upstream_addr = Some("127.0.0.1:9001");
        record.upstream_latency = Some(Duration::from_micros(1500));
        record.total_latency = Duration::from_micros(2250);
        record.bytes_in = 10;
        record.bytes_out = 20;
        record
    }

    fn line_of(record: &AccessLogRecord) -> serde_json::Value {
        let mut out = Vec::new();
        format_line(record, &mut test_clock(), &mut out);
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
        for good in [b' ', b'!', b'#', b'[', b']', 0x7f, 0x80, 0xff] {
            assert!(is_plain(&[good; 19]), "{good:#x}");
            assert_eq!(is_plain_ascii(&[good; 19]), good < 0x80, "{good:#x}");
            assert_eq!(is_plain_ascii(&[good; 3]), good < 0x80, "{good:#x}");
        }
    }

    #[test]
    fn the_clock_cache_follows_the_second() {
        let mut clock = CachedClock::default();
        let mut out = Vec::new();
        for (millis, text) in [
            (1_764_165_474_123, "2025-11-26T13:57:54.123Z"),
            (1_764_165_474_999, "2025-11-26T13:57:54.999Z"),
            (1_764_165_475_000, "2025-11-26T13:57:55.000Z"),
            (1_764_201_599_001, "2025-11-26T23:59:59.001Z"),
            (1_764_201_600_002, "2025-11-27T00:00:00.002Z"),
        ] {
            out.clear();
            clock.write(&mut out, UNIX_EPOCH + Duration::from_millis(millis));
            assert_eq!(String::from_utf8_lossy(&out), text);
        }
    }

    #[test]
    fn instants_become_wall_clock_time() {
        let mut clock = CachedClock::default();
        let now = Instant::now();
        let wall = clock.wall(now);
        let off = |a: SystemTime, b: SystemTime| {
            a.duration_since(b)
                .or_else(|_| b.duration_since(a))
                .unwrap_or_default()
        };
        assert!(off(wall, SystemTime::now()) < Duration::from_millis(100));
        // Earlier and later instants are placed around the anchor.
        let later = now + Duration::from_millis(250);
        assert_eq!(off(clock.wall(later), wall), Duration::from_millis(250));
        let earlier = now.checked_sub(Duration::from_secs(3)).unwrap_or(now);
        assert_eq!(off(clock.wall(earlier), wall), now.duration_since(earlier));
        // Past the anchor's life, the wall clock is read again.
        let anchor = clock.anchor.map(|(instant, _)| instant);
        clock.wall(now + Duration::from_secs(2));
        assert_ne!(clock.anchor.map(|(instant, _)| instant), anchor);
    }

    #[test]
    fn ipv4_addresses_are_dotted_decimal() {
        for ip in ["0.9.10.255", "100.200.7.99", "255.255.255.255", "0.0.0.0"] {
            let mut record = record("/");
            record.client_ip = ip.parse().ok();
            assert_eq!(line_of(&record)["client_ip"], ip);
        }
    }

    #[test]
    fn unknown_fields_are_null() {
        let line = line_of(&AccessLogRecord::new(received(), &GET));
        assert_eq!(line["time"], "2025-11-26T13:57:54.123Z");
        for field in [
            "request_id",
            "trace_id",
            "client_ip",
            "host",
            "path",
            "route",
            "service",
            "consumer",
            "upstream_addr",
            "upstream_latency_ms",
        ] {
            assert!(line[field].is_null(), "{field}");
        }
    }

    #[test]
    fn hostile_values_stay_valid_json() {
        let invalid_id = HeaderValue::from_bytes(&[0xff, 0xfe]).ok();
        let mut record = record("/a\"b\\c");
        record.host = Some(b"evil\"host\n");
        record.request_id = invalid_id.as_ref();
        let line = line_of(&record);
        assert_eq!(line["path"], "/a\"b\\c");
        assert_eq!(line["host"], "evil\"host\n");
        assert!(line["request_id"].is_null());
    }

    #[test]
    fn strings_and_numbers_match_json_semantics() {
        let mut record = record("/x");
        let nasty = "tab\there \"quoted\" back\\slash \u{1} \u{1f} é 漢";
        record.path = Some(nasty);
        record.client_ip = "2001:db8::1".parse().ok();
        record.trace_id = Some(0xab);
        for (micros, text) in [
            (0, "0.0"),
            (1_500, "1.5"),
            (1_001, "1.001"),
            (1_010, "1.01"),
            (1_234_567, "1234.567"),
        ] {
            record.total_latency = Duration::from_micros(micros);
            let mut out = Vec::new();
            format_line(&record, &mut test_clock(), &mut out);
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
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(20_453), (2025, 12, 31));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
    }

    #[test]
    fn targets_parse() {
        assert_eq!("stdout".parse(), Ok(AccessLogTarget::Stdout));
        assert_eq!("off".parse(), Ok(AccessLogTarget::Off));
        assert_eq!(
            "/var/log/tg.log".parse(),
            Ok(AccessLogTarget::File(PathBuf::from("/var/log/tg.log")))
        );
        assert!("".parse::<AccessLogTarget>().is_err());
    }

    #[test]
    fn file_target_gets_one_json_line_per_record() {
        let dir = tempfile::tempdir().unwrap_or_else(|err| panic!("tempdir: {err}"));
        let path = dir.path().join("access.log");
        let dropped = Counter::default();
        let log = AccessLog::start(&AccessLogTarget::File(path.clone()), dropped.clone())
            .unwrap_or_else(|err| panic!("start: {err}"));
        for _ in 0..100 {
            log.log(&record("/x"));
        }
        assert!(log.flush(Duration::from_secs(5)));
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(text.lines().count(), 100);
        for line in text.lines() {
            let value: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
            assert_eq!(value["path"], "/x");
        }
        assert_eq!(dropped.get(), 0);
        drop(log);
    }

    #[test]
    fn disabled_log_records_nothing() {
        let dropped = Counter::default();
        let log = AccessLog::start(&AccessLogTarget::Off, dropped.clone())
            .unwrap_or_else(|err| panic!("start: {err}"));
        assert!(!log.is_enabled());
        log.log(&record("/"));
        assert!(log.flush(Duration::from_millis(10)));
        assert_eq!(dropped.get(), 0);
    }

    /// A sink whose first write blocks until released.
    struct Gate {
        state: Arc<(Mutex<(bool, bool)>, Condvar)>,
        written: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Gate {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let (lock, cvar) = &*self.state;
            let mut guard = lock.lock().unwrap_or_else(|p| p.into_inner());
            guard.0 = true; // entered
            cvar.notify_all();
            while !guard.1 {
                guard = cvar.wait(guard).unwrap_or_else(|p| p.into_inner());
            }
            self.written
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_sink_drops_and_counts_without_blocking() {
        let state = Arc::new((Mutex::new((false, false)), Condvar::new()));
        let written = Arc::new(Mutex::new(Vec::new()));
        let dropped = Counter::default();
        let capacity = 2_048;
        let log = AccessLog::with_writer(
            Box::new(Gate {
                state: Arc::clone(&state),
                written: Arc::clone(&written),
            }),
            capacity,
            dropped.clone(),
        )
        .unwrap_or_else(|err| panic!("start: {err}"));
        log.log(&record("/first"));
        {
            let (lock, cvar) = &*state;
            let mut guard = lock.lock().unwrap_or_else(|p| p.into_inner());
            while !guard.0 {
                guard = cvar.wait(guard).unwrap_or_else(|p| p.into_inner());
            }
        }
        // The writer is stuck inside write(): the buffer takes `capacity`
        // bytes more, then lines are dropped.
        let started = Instant::now();
        let more = 50;
        for _ in 0..more {
            log.log(&record("/more"));
        }
        assert!(started.elapsed() < Duration::from_secs(1), "log() blocked");
        let lost = dropped.get();
        assert!(lost > 0 && lost < more, "{lost}");
        {
            let (lock, cvar) = &*state;
            lock.lock().unwrap_or_else(|p| p.into_inner()).1 = true;
            cvar.notify_all();
        }
        assert!(log.flush(Duration::from_secs(5)));
        let text = String::from_utf8(written.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .unwrap_or_default();
        assert_eq!(text.lines().count() as u64, 1 + more - lost);
        for line in text.lines() {
            assert!(
                serde_json::from_str::<serde_json::Value>(line).is_ok(),
                "{line}"
            );
        }
    }

    #[test]
    fn lines_of_many_threads_all_arrive_whole() {
        let written = Arc::new(Mutex::new(Vec::new()));
        let state = Arc::new((Mutex::new((false, true)), Condvar::new()));
        let dropped = Counter::default();
        let log = Arc::new(
            AccessLog::with_writer(
                Box::new(Gate {
                    state,
                    written: Arc::clone(&written),
                }),
                DEFAULT_CAPACITY,
                dropped.clone(),
            )
            .unwrap_or_else(|err| panic!("start: {err}")),
        );
        let threads: Vec<_> = (0..SHARDS + 4)
            .map(|_| {
                let log = Arc::clone(&log);
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        log.log(&record("/many"));
                    }
                })
            })
            .collect();
        for thread in threads {
            assert!(thread.join().is_ok());
        }
        assert!(log.flush(Duration::from_secs(5)));
        let text = String::from_utf8(written.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .unwrap_or_default();
        assert_eq!(text.lines().count(), (SHARDS + 4) * 200);
        assert!(text
            .lines()
            .all(|line| serde_json::from_str::<serde_json::Value>(line).is_ok()));
        assert_eq!(dropped.get(), 0);
    }
}
