//! Structured access log: one JSON object per line per request.
//!
//! Why a thread and a bounded channel: writing to stdout or a file can block
//! (a full pipe, a slow disk), and the request path must never wait for it.
//! The request path only fills an [`AccessLogRecord`] with cheap clones
//! (reference-counted strings, the request's header values) and `try_send`s
//! it; the JSON formatting and the write happen on a dedicated writer thread
//! that wakes every few milliseconds and batches what queued into one write
//! (it never sleeps in a blocking receive, so senders never pay a wake-up). When the channel is full the line is
//! dropped and counted (`tollgate_access_log_dropped_total`), so a stalled log
//! sink costs log lines, never latency.
//!
//! No credential ever appears: the path is logged without its query string
//! (where `key-auth` may read an API key), and no header other than `Host`
//! and `X-Request-Id` is recorded.

use std::io::{self, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::uri::{Authority, PathAndQuery};
use http::HeaderValue;
use prometheus_client::metrics::counter::Counter;

/// Lines buffered between the request path and the writer thread.
pub const DEFAULT_CAPACITY: usize = 4096;

/// Bytes gathered before the writer issues a write mid-batch.
const WRITE_CHUNK: usize = 64 * 1024;

/// How long the writer sleeps when it found nothing to write.
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

/// What is known about one request when it ends; filled on the request path
/// with cheap clones only and formatted on the writer thread.
#[derive(Debug, Clone)]
pub struct AccessLogRecord {
    /// When the request was received.
    pub time: SystemTime,
    pub request_id: Option<HeaderValue>,
    /// The request's trace id (its span's, or its `traceparent`'s).
    pub trace_id: Option<u128>,
    pub client_ip: Option<IpAddr>,
    pub method: http::Method,
    /// The `Host` header (or the URI authority for HTTP/2).
    pub host: Option<HeaderValue>,
    /// The request target as received; only its path is ever logged.
    pub path: Option<PathAndQuery>,
    pub route: Option<Arc<str>>,
    pub service: Option<Arc<str>>,
    pub consumer: Option<Arc<str>>,
    pub status: u16,
    pub upstream_addr: Option<Authority>,
    pub upstream_latency: Option<Duration>,
    pub total_latency: Duration,
    /// Request body bytes received from the client.
    pub bytes_in: u64,
    /// Response body bytes sent to the client.
    pub bytes_out: u64,
}

impl AccessLogRecord {
    /// A record with the request's identity and everything else empty.
    pub fn new(time: SystemTime, method: http::Method) -> Self {
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

// Records travel unboxed: a boxed one would cost an allocation per request,
// and the channel's slots are allocated once up front anyway.
#[allow(clippy::large_enum_variant)]
enum Message {
    Record(AccessLogRecord),
    Flush(SyncSender<()>),
}

/// The access-log handle the proxy holds; cheap to share behind an `Arc`.
pub struct AccessLog {
    sender: Option<SyncSender<Message>>,
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
            sender: None,
            dropped,
        }
    }

    /// Starts a writer thread on any sink, with `capacity` lines of buffer.
    pub fn with_writer(
        writer: Box<dyn Write + Send>,
        capacity: usize,
        dropped: Counter,
    ) -> io::Result<Self> {
        let (sender, receiver) = mpsc::sync_channel(capacity.max(1));
        let worker_dropped = dropped.clone();
        // Detached: dropping the last sender ends it once the queue is
        // drained, and a wedged sink must not hold up process exit (call
        // `flush` at shutdown to wait, boundedly, for queued lines).
        std::thread::Builder::new()
            .name("access-log".to_owned())
            .spawn(move || write_lines(receiver, writer, worker_dropped))?;
        Ok(Self {
            sender: Some(sender),
            dropped,
        })
    }

    /// Whether records are written (callers may skip building them if not).
    #[inline]
    pub fn is_enabled(&self) -> bool {
        self.sender.is_some()
    }

    /// Queues one line; never blocks: when the writer is behind, the line is
    /// dropped and counted.
    #[inline]
    pub fn log(&self, record: AccessLogRecord) {
        if let Some(sender) = &self.sender {
            match sender.try_send(Message::Record(record)) {
                Ok(()) => {}
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                    self.dropped.inc();
                }
            }
        }
    }

    /// Waits (blocking, at most `timeout`) until every line queued before
    /// the call is written and flushed. For shutdown and tests; call it from
    /// a blocking context (e.g. `spawn_blocking`), never the request path.
    pub fn flush(&self, timeout: Duration) -> bool {
        let Some(sender) = &self.sender else {
            return true;
        };
        let deadline = Instant::now() + timeout;
        let (ack_tx, ack_rx) = mpsc::sync_channel(1);
        let mut message = Message::Flush(ack_tx);
        loop {
            match sender.try_send(message) {
                Ok(()) => break,
                Err(TrySendError::Disconnected(_)) => return false,
                Err(TrySendError::Full(back)) => {
                    if Instant::now() >= deadline {
                        return false;
                    }
                    message = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match ack_rx.recv_timeout(left) {
            Ok(()) => true,
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => false,
        }
    }
}

/// The writer thread: formats each record and writes batches of lines.
fn write_lines(receiver: Receiver<Message>, mut writer: Box<dyn Write + Send>, dropped: Counter) {
    let mut batch: Vec<u8> = Vec::with_capacity(WRITE_CHUNK * 2);
    let mut pending_lines = 0u64;
    let mut acks: Vec<SyncSender<()>> = Vec::new();
    let mut scratch = String::with_capacity(64);
    let mut warned = false;
    loop {
        let mut drained = false;
        let mut closed = false;
        loop {
            match receiver.try_recv() {
                Ok(Message::Record(record)) => {
                    drained = true;
                    if format_line(&record, &mut scratch, &mut batch).is_ok() {
                        pending_lines += 1;
                    }
                    if batch.len() >= WRITE_CHUNK {
                        write_batch(
                            &mut *writer,
                            &mut batch,
                            &mut pending_lines,
                            &dropped,
                            &mut warned,
                        );
                    }
                }
                Ok(Message::Flush(ack)) => {
                    drained = true;
                    acks.push(ack);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        if drained {
            write_batch(
                &mut *writer,
                &mut batch,
                &mut pending_lines,
                &dropped,
                &mut warned,
            );
            if let Err(err) = writer.flush() {
                warn_once(&mut warned, &err);
            }
            for ack in acks.drain(..) {
                let _ = ack.try_send(());
            }
        }
        if closed {
            return;
        }
        if !drained {
            // Polling instead of blocking in `recv`: a sleeping receiver
            // would make every `try_send` on the request path pay for a
            // wake-up; this way lines wait at most one interval.
            std::thread::sleep(IDLE_POLL);
        }
    }
}

fn write_batch(
    writer: &mut dyn Write,
    batch: &mut Vec<u8>,
    pending_lines: &mut u64,
    dropped: &Counter,
    warned: &mut bool,
) {
    if batch.is_empty() {
        return;
    }
    if let Err(err) = writer.write_all(batch) {
        dropped.inc_by(*pending_lines);
        warn_once(warned, &err);
    }
    batch.clear();
    *pending_lines = 0;
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
/// request (on the writer thread, but on the same CPUs), and the generic
/// serializer's byte-by-byte escaping and `fmt` machinery cost several times
/// more than the request's own handling. `scratch` is unused and kept for
/// the callers' signature.
fn format_line(
    record: &AccessLogRecord,
    _scratch: &mut String,
    out: &mut Vec<u8>,
) -> Result<(), std::convert::Infallible> {
    out.extend_from_slice(b"{\"time\":\"");
    write_rfc3339(out, record.time);
    out.extend_from_slice(b"\",\"request_id\":");
    json_opt_str(out, record.request_id.as_ref().and_then(header_text));
    out.extend_from_slice(b",\"trace_id\":");
    match record.trace_id {
        Some(id) => {
            out.push(b'"');
            for shift in (0..32).rev() {
                out.push(HEX[((id >> (shift * 4)) & 0xf) as usize]);
            }
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"client_ip\":");
    match record.client_ip {
        Some(IpAddr::V4(ip)) => {
            out.push(b'"');
            for (i, octet) in ip.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                write_u64(out, u64::from(octet));
            }
            out.push(b'"');
        }
        Some(ip @ IpAddr::V6(_)) => {
            // Hex digits and colons only: nothing to escape.
            let _ = write!(out, "\"{ip}\"");
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"method\":");
    json_str(out, record.method.as_str());
    out.extend_from_slice(b",\"host\":");
    json_opt_str(out, record.host.as_ref().and_then(header_text));
    out.extend_from_slice(b",\"path\":");
    json_opt_str(out, record.path.as_ref().map(PathAndQuery::path));
    out.extend_from_slice(b",\"route\":");
    json_opt_str(out, record.route.as_deref());
    out.extend_from_slice(b",\"service\":");
    json_opt_str(out, record.service.as_deref());
    out.extend_from_slice(b",\"consumer\":");
    json_opt_str(out, record.consumer.as_deref());
    out.extend_from_slice(b",\"status\":");
    write_u64(out, u64::from(record.status));
    out.extend_from_slice(b",\"upstream_addr\":");
    json_opt_str(out, record.upstream_addr.as_ref().map(Authority::as_str));
    out.extend_from_slice(b",\"upstream_latency_ms\":");
    match record.upstream_latency {
        Some(latency) => write_millis(out, latency),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"total_latency_ms\":");
    write_millis(out, record.total_latency);
    out.extend_from_slice(b",\"bytes_in\":");
    write_u64(out, record.bytes_in);
    out.extend_from_slice(b",\"bytes_out\":");
    write_u64(out, record.bytes_out);
    out.extend_from_slice(b"}\n");
    Ok(())
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Header values are visible ASCII in practice; anything else is logged as
/// absent rather than guessed at.
fn header_text(value: &HeaderValue) -> Option<&str> {
    value.to_str().ok()
}

fn json_opt_str(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        Some(text) => json_str(out, text),
        None => out.extend_from_slice(b"null"),
    }
}

/// A JSON string (RFC 8259): `"`, `\\` and control characters escaped;
/// other text (valid UTF-8, since it is a `str`) copied as is.
fn json_str(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    let bytes = text.as_bytes();
    // No short-circuit, so the check vectorizes; escaping is the rare path.
    let clean = bytes.iter().fold(true, |clean, &b| {
        clean & (b >= 0x20 && b != b'"' && b != b'\\')
    });
    if clean {
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

fn write_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
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
    let micros = duration.as_micros();
    let micros = u64::try_from(micros).unwrap_or(u64::MAX);
    write_u64(out, micros / 1000);
    out.push(b'.');
    let mut fraction = micros % 1000;
    let mut width = 3;
    while width > 1 && fraction % 10 == 0 {
        fraction /= 10;
        width -= 1;
    }
    write_padded(out, fraction, width);
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC), without a date-time dependency.
fn write_rfc3339(out: &mut Vec<u8>, time: SystemTime) {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = since_epoch.as_secs();
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
    write_padded(out, u64::from(since_epoch.subsec_millis()), 3);
    out.push(b'Z');
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
    use std::sync::{Condvar, Mutex};

    fn record(path: &'static str) -> AccessLogRecord {
        let mut record = AccessLogRecord::new(
            UNIX_EPOCH + Duration::from_millis(1_764_165_474_123),
            http::Method::POST,
        );
        record.request_id = Some(HeaderValue::from_static("req-1"));
        record.trace_id = Some(0x4bf92f3577b34da6a3ce929d0e0e4736);
        record.client_ip = "10.1.2.3".parse().ok();
        record.host = Some(HeaderValue::from_static("api.example.com"));
        record.path = PathAndQuery::from_maybe_shared(path).ok();
        record.route = Some(Arc::from("orders-api"));
        record.service = Some(Arc::from("orders"));
        record.consumer = Some(Arc::from("alice"));
        record.status = 201;
        record.upstream_addr = Authority::from_maybe_shared("127.0.0.1:9001").ok();
        record.upstream_latency = Some(Duration::from_micros(1500));
        record.total_latency = Duration::from_micros(2250);
        record.bytes_in = 10;
        record.bytes_out = 20;
        record
    }

    fn line_of(record: &AccessLogRecord) -> serde_json::Value {
        let mut out = Vec::new();
        let mut scratch = String::new();
        assert!(format_line(record, &mut scratch, &mut out).is_ok());
        assert_eq!(out.last(), Some(&b'\n'));
        assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 1);
        serde_json::from_slice(&out).unwrap_or_default()
    }

    #[test]
    fn a_line_has_every_field() {
        let line = line_of(&record("/v1/orders/42?apikey=alice-secret-key&x=1"));
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
        assert!(!line.to_string().contains("secret"));
    }

    #[test]
    fn unknown_fields_are_null() {
        let line = line_of(&AccessLogRecord::new(UNIX_EPOCH, http::Method::GET));
        assert_eq!(line["time"], "1970-01-01T00:00:00.000Z");
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
        let mut record = record("/a\"b\\c");
        record.host = HeaderValue::from_bytes(b"evil\"host\n").ok();
        record.request_id = HeaderValue::from_bytes(&[0xff, 0xfe]).ok();
        let line = line_of(&record);
        assert_eq!(line["path"], "/a\"b\\c");
        assert!(line["request_id"].is_null());
    }

    #[test]
    fn strings_and_numbers_match_json_semantics() {
        let mut record = record("/x");
        let nasty = "tab\there \"quoted\" back\\slash \u{1} \u{1f} é 漢";
        record.route = Some(Arc::from(nasty));
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
            assert!(format_line(&record, &mut String::new(), &mut out).is_ok());
            let text_line = String::from_utf8(out.clone()).unwrap_or_default();
            assert!(
                text_line.contains(&format!("\"total_latency_ms\":{text},")),
                "{text_line}"
            );
            let line: serde_json::Value = serde_json::from_slice(&out).unwrap_or_default();
            assert_eq!(line["route"], nasty);
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
            log.log(record("/x?token=abc"));
        }
        assert!(log.flush(Duration::from_secs(5)));
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(text.lines().count(), 100);
        for line in text.lines() {
            let value: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
            assert_eq!(value["path"], "/x");
        }
        assert!(!text.contains("token"));
        assert_eq!(dropped.get(), 0);
        drop(log);
    }

    #[test]
    fn disabled_log_records_nothing() {
        let dropped = Counter::default();
        let log = AccessLog::start(&AccessLogTarget::Off, dropped.clone())
            .unwrap_or_else(|err| panic!("start: {err}"));
        assert!(!log.is_enabled());
        log.log(record("/"));
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
        let capacity = 16;
        let log = AccessLog::with_writer(
            Box::new(Gate {
                state: Arc::clone(&state),
                written: Arc::clone(&written),
            }),
            capacity,
            dropped.clone(),
        )
        .unwrap_or_else(|err| panic!("start: {err}"));
        log.log(record("/first"));
        {
            let (lock, cvar) = &*state;
            let mut guard = lock.lock().unwrap_or_else(|p| p.into_inner());
            while !guard.0 {
                guard = cvar.wait(guard).unwrap_or_else(|p| p.into_inner());
            }
        }
        // The writer is stuck inside write(): the queue takes `capacity` more.
        let started = Instant::now();
        for _ in 0..capacity + 5 {
            log.log(record("/more"));
        }
        assert!(started.elapsed() < Duration::from_secs(1), "log() blocked");
        assert_eq!(dropped.get(), 5);
        {
            let (lock, cvar) = &*state;
            lock.lock().unwrap_or_else(|p| p.into_inner()).1 = true;
            cvar.notify_all();
        }
        assert!(log.flush(Duration::from_secs(5)));
        let text = String::from_utf8(written.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .unwrap_or_default();
        assert_eq!(text.lines().count(), 1 + capacity);
    }
}
