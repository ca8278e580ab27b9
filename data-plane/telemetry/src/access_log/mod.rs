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
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::Thread;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;

mod clock;
mod line;

use clock::CachedClock;
use line::Line;
pub use line::{AccessLogRecord, RouteFields};

/// Bytes of lines one worker's buffer holds while the writer is behind
/// (past that, lines are dropped and counted).
pub const DEFAULT_CAPACITY: usize = 4 * 1024 * 1024;

/// Number of line buffers; a power of two. Worker threads get one each (in
/// the order they first log) until there are more workers than buffers.
pub const SHARDS: usize = 16;

/// A buffer this full wakes the writer before its interval is up.
const WAKE_BYTES: usize = 256 * 1024;

/// Size every buffer gets up front and keeps: buffers are swapped, never
/// freed or cleared, so the allocator never hands their pages back to the
/// kernel and the request path never faults them in again.
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

/// One worker's lines not yet written: the first `used` bytes of `buf`.
/// The rest of `buf` is initialized but free (lines are written straight
/// into it; it is never cleared).
#[derive(Default)]
struct Lines {
    buf: Vec<u8>,
    used: usize,
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
        // Checked and measured before the lock is taken.
        let line = Line::new(record);
        let shard = &shared.shards[shard_index()];
        let mut lines = lock(&shard.0);
        let Lines {
            buf,
            used,
            count,
            clock,
        } = &mut *lines;
        let before = *used;
        if before >= shared.capacity {
            drop(lines);
            self.dropped.inc();
            return;
        }
        let needed = before + line.max_len;
        if needed > buf.len() {
            // Once per buffer, or for a burst past it (or a huge line).
            buf.resize(needed.max(BUFFER_BYTES).max(buf.len() * 2), 0);
        }
        let Some(written) = buf
            .get_mut(before..)
            .and_then(|free| line.write(clock, free))
        else {
            drop(lines);
            self.dropped.inc();
            return;
        };
        *used += written;
        *count += 1;
        let wake = before < WAKE_BYTES && *used >= WAKE_BYTES;
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
    let mut spare: Vec<u8> = Vec::new();
    let mut warned = false;
    loop {
        let closing = shared.closed.load(Ordering::Acquire);
        // Taken before the buffers: every line logged before a flush call
        // is in a buffer by now.
        let acks = std::mem::take(&mut *lock(&shared.flushes));
        let mut wrote = false;
        for shard in shared.shards.iter() {
            let (used, count) = {
                let mut lines = lock(&shard.0);
                if lines.used == 0 {
                    continue;
                }
                std::mem::swap(&mut lines.buf, &mut spare);
                (
                    std::mem::take(&mut lines.used),
                    std::mem::take(&mut lines.count),
                )
            };
            if let Err(err) = writer.write_all(spare.get(..used).unwrap_or_default()) {
                dropped.inc_by(count);
                warn_once(&mut warned, &err);
            }
            wrote = true;
            // Keep a buffer's worth, not a burst's.
            if spare.len() > 4 * BUFFER_BYTES {
                spare = Vec::new();
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

#[cfg(test)]
mod tests {
    use super::line::tests::record;
    use super::*;
    use std::sync::Condvar;
    use std::time::Instant;

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
