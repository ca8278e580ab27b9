//! The `RedisServer` fixture: a real `redis-server` of the test's own on a
//! free 127.0.0.1 port, with no persistence, killed by its PID when dropped.
//!
//! Rate-limit tests need a Redis they can kill and restart on the same port
//! (the data planes keep their `--redis-url`), so the fixture remembers its
//! port across [`RedisServer::kill`] and [`RedisServer::restart`]. Commands
//! for assertions go through the real `redis-cli`.
//!
//! `redis-server` must be installed (`apt-get install redis-server`; the
//! project's test script installs it when missing).

use std::process::Command;
use std::time::{Duration, Instant};

use crate::process::{free_port, ChildProcess};

/// How long a start may take until `PING` answers.
pub const START_TIMEOUT: Duration = Duration::from_secs(15);

/// A running (or deliberately stopped) `redis-server`.
pub struct RedisServer {
    port: u16,
    process: Option<ChildProcess>,
}

impl RedisServer {
    /// Starts a server on a free port; returns once it answers `PING`.
    pub fn start() -> RedisServer {
        let mut server = RedisServer {
            port: free_port(),
            process: None,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let which = Command::new("redis-server").arg("--version").output();
        assert!(
            which.is_ok_and(|output| output.status.success()),
            "redis-server is not installed (apt-get install -y redis-server)"
        );
        let args: Vec<String> = [
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let process = ChildProcess::spawn(
            &format!("redis-server[{}]", self.port),
            std::path::Path::new("redis-server"),
            &args,
            &[],
        );
        self.process = Some(process);
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if self.cli(&["PING"]).as_deref() == Some("PONG") {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "redis-server on port {} did not answer PING within {START_TIMEOUT:?}:\n{}",
            self.port,
            self.logs()
        );
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(ChildProcess::pid)
    }

    /// SIGKILL the server (the port stays reserved for [`RedisServer::restart`]).
    pub fn kill(&mut self) {
        if let Some(process) = self.process.as_mut() {
            process.kill_9();
        }
    }

    /// Starts a fresh (empty) server on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Runs `redis-cli -p <port> ARGS...`; the trimmed output, `None` on failure.
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        let output = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&output.stdout).trim().to_string();
        (output.status.success() && !text.starts_with("Could not connect")).then_some(text)
    }

    /// Keys matching `pattern` (`KEYS`; test data sets are tiny).
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        self.cli(&["KEYS", pattern])
            .map(|text| {
                text.lines()
                    .filter(|line| !line.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn logs(&self) -> String {
        self.process
            .as_ref()
            .map(ChildProcess::logs)
            .unwrap_or_default()
    }
}
