//! Child processes for end-to-end tests.
//!
//! Every process a test starts is a [`ChildProcess`]: its stdout and stderr go
//! to a log file (read back with [`ChildProcess::logs`] and printed when a test
//! fails), and it is killed by its own PID when dropped, so a failing test never
//! leaves a server behind and never touches processes it did not start.

use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The path of a binary of this workspace, built by `cargo build --bins`.
///
/// Cargo sets `CARGO_BIN_EXE_*` only inside the binary's own package, so this
/// looks next to the test executable (`target/<profile>/deps/..`).
pub fn bin_path(name: &str) -> PathBuf {
    if let Ok(dir) = std::env::var("TOLLGATE_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable lives in target/<profile>/deps");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} not found: run `cargo build --bins` before the integration tests",
        path.display()
    );
    path
}

/// A TCP port that was free on 127.0.0.1 a moment ago.
///
/// Taken below the kernel's ephemeral range when there is room: ports there
/// are what every outgoing `connect` draws from, so a port found free by
/// binding `:0` can be taken by some other connection (a data plane's Redis
/// connection, an upstream pool) before the process the test starts binds
/// it. Below the range only listeners compete; ports handed out are never
/// handed out again by this process.
pub fn free_port() -> u16 {
    const LOWEST: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let span = ephemeral_low.saturating_sub(LOWEST);
    if span >= 1_000 {
        // Test binaries run one after another; a per-process offset keeps two
        // of them from walking the same ports when they do overlap.
        let offset = std::process::id() % span;
        for _ in 0..span {
            let step = NEXT.fetch_add(1, Ordering::Relaxed);
            let port = LOWEST + (offset + step) % span;
            if let Ok(port) = u16::try_from(port) {
                if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                    return port;
                }
            }
        }
    }
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

/// A child process owned by a test.
pub struct ChildProcess {
    name: String,
    child: Child,
    log_path: PathBuf,
    _log_dir: tempfile::TempDir,
    exited: Option<ExitStatus>,
}

impl ChildProcess {
    /// Starts `bin` with `args` and extra environment `envs`; output goes to a log file.
    pub fn spawn(
        name: &str,
        bin: &Path,
        args: &[String],
        envs: &[(String, String)],
    ) -> ChildProcess {
        let log_dir = tempfile::tempdir().expect("log dir");
        let log_path = log_dir.path().join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path).expect("create log file");
        let log_err = log.try_clone().expect("clone log file");
        let mut command = Command::new(bin);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        for (key, value) in envs {
            command.env(key, value);
        }
        let child = command
            .spawn()
            .unwrap_or_else(|err| panic!("start {name} ({}): {err}", bin.display()));
        ChildProcess {
            name: name.to_string(),
            child,
            log_path,
            _log_dir: log_dir,
            exited: None,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process wrote to stdout and stderr so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    fn signal(&self, signal: &str) {
        if self.exited.is_some() {
            return;
        }
        let _ = Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status();
    }

    /// SIGKILL, and reap it.
    pub fn kill_9(&mut self) {
        self.signal("-KILL");
        let _ = self.wait_exit(Duration::from_secs(10));
    }

    /// SIGTERM (graceful shutdown); use [`ChildProcess::wait_exit`] to see how it ended.
    pub fn sigterm(&self) {
        self.signal("-TERM");
    }

    /// SIGSTOP: the process freezes, its sockets stay open.
    pub fn sigstop(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`ChildProcess::sigstop`].
    pub fn sigcont(&self) {
        self.signal("-CONT");
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.try_exit().is_none()
    }

    fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// Waits (bounded) for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.try_exit() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if self.try_exit().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- {} log ({}) ----\n{}",
                self.name,
                self.log_path.display(),
                self.logs()
            );
        }
    }
}

/// Polls `check` every 50 ms until it returns `Some`, for at most `timeout`;
/// panics naming `what` when time runs out.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
