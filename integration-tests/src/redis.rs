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
    /// Arguments after the fixture's own (TLS, cluster mode).
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts a server on a free port; returns once it answers `PING`.
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// Starts a server on a free port with `extra` arguments (e.g.
    /// `--tls-port`); the plain port stays open for the fixture's `PING`
    /// and [`RedisServer::cli`].
    pub fn start_with(extra: &[String]) -> RedisServer {
        let mut server = RedisServer {
            port: free_port(),
            process: None,
            extra: extra.to_vec(),
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
        .chain(self.extra.iter().cloned())
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

/// A Redis Cluster of the test's own: `primaries` primaries with one
/// replica each (`redis-server --cluster-enabled yes` on free ports, joined
/// by `redis-cli --cluster create`), with a short `cluster-node-timeout` so
/// that a killed primary's replica takes over in a few seconds. Its files
/// live in a temporary directory removed on drop.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
    _dir: tempfile::TempDir,
}

/// How long `cluster create` and a failover may take.
pub const CLUSTER_TIMEOUT: Duration = Duration::from_secs(60);

impl RedisCluster {
    pub fn start(primaries: usize) -> RedisCluster {
        let dir = tempfile::tempdir().expect("cluster dir");
        let nodes: Vec<RedisServer> = (0..primaries * 2)
            .map(|i| {
                let node_dir = dir.path().join(format!("node{i}"));
                std::fs::create_dir_all(&node_dir).expect("node dir");
                RedisServer::start_with(&[
                    "--cluster-enabled".into(),
                    "yes".into(),
                    "--cluster-node-timeout".into(),
                    "1000".into(),
                    "--dir".into(),
                    node_dir.display().to_string(),
                ])
            })
            .collect();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port()))
            .collect();
        let output = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let cluster = RedisCluster { nodes, _dir: dir };
        cluster.wait(
            |c| {
                c.nodes.iter().all(|node| {
                    let info = node.cli(&["CLUSTER", "INFO"]).unwrap_or_default();
                    info.contains("cluster_state:ok")
                        && info.contains(&format!("cluster_known_nodes:{}", primaries * 2))
                }) && c.primaries().len() == primaries
                    && c.nodes
                        .iter()
                        .filter(|node| !c.primaries().contains(&node.port()))
                        .all(|replica| {
                            replica
                                .cli(&["INFO", "replication"])
                                .unwrap_or_default()
                                .contains("master_link_status:up")
                        })
            },
            "the cluster to form",
        );
        cluster
    }

    /// `redis+cluster://127.0.0.1:<p1>,127.0.0.1:<p2>,...` (every node).
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port()))
            .collect();
        format!("redis+cluster://{}", nodes.join(","))
    }

    /// A live node, for cluster-wide questions.
    fn any(&self) -> &RedisServer {
        self.nodes
            .iter()
            .find(|node| node.cli(&["PING"]).as_deref() == Some("PONG"))
            .expect("no cluster node answers")
    }

    /// `CLUSTER NODES` lines of live primaries, as a live node sees them:
    /// (port, slot ranges).
    fn primary_slots(&self) -> Vec<(u16, Vec<(u16, u16)>)> {
        Self::primary_slots_seen_by(self.any())
    }

    fn primary_slots_seen_by(node: &RedisServer) -> Vec<(u16, Vec<(u16, u16)>)> {
        let text = node.cli(&["CLUSTER", "NODES"]).unwrap_or_default();
        text.lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let flags = fields.get(2)?;
                if !flags.contains("master") || flags.contains("fail") {
                    return None;
                }
                let port: u16 = fields
                    .get(1)?
                    .split('@')
                    .next()?
                    .rsplit(':')
                    .next()?
                    .parse()
                    .ok()?;
                let ranges = fields
                    .iter()
                    .skip(8)
                    .filter(|range| !range.starts_with('['))
                    .filter_map(|range| match range.split_once('-') {
                        Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                        None => range.parse().ok().map(|a| (a, a)),
                    })
                    .collect::<Vec<_>>();
                (!ranges.is_empty()).then_some((port, ranges))
            })
            .collect()
    }

    /// Ports of the live primaries that serve slots.
    pub fn primaries(&self) -> Vec<u16> {
        self.primary_slots()
            .into_iter()
            .map(|(port, _)| port)
            .collect()
    }

    /// The port of the primary serving `key`'s slot.
    pub fn primary_of(&self, key: &str) -> Option<u16> {
        let slot: u16 = self.any().cli(&["CLUSTER", "KEYSLOT", key])?.parse().ok()?;
        self.primary_slots()
            .into_iter()
            .find(|(_, ranges)| ranges.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
            .map(|(port, _)| port)
    }

    pub fn node(&self, port: u16) -> &RedisServer {
        self.nodes
            .iter()
            .find(|node| node.port() == port)
            .expect("no such node")
    }

    /// SIGKILLs the node on `port` (a process this test started).
    pub fn kill(&mut self, port: u16) {
        if let Some(node) = self.nodes.iter_mut().find(|node| node.port() == port) {
            node.kill();
        }
    }

    /// Whether every live node sees every slot served by a live primary
    /// (after a failover: a replica took over) and says the cluster is ok.
    pub fn is_healthy(&self) -> bool {
        let live: Vec<&RedisServer> = self
            .nodes
            .iter()
            .filter(|node| node.cli(&["PING"]).as_deref() == Some("PONG"))
            .collect();
        let live_ports: Vec<u16> = live.iter().map(|node| node.port()).collect();
        live.iter().all(|node| {
            let primaries = Self::primary_slots_seen_by(node);
            node.cli(&["CLUSTER", "INFO"])
                .is_some_and(|info| info.contains("cluster_state:ok"))
                && primaries
                    .iter()
                    .flat_map(|(_, ranges)| ranges)
                    .map(|(a, b)| u32::from(*b) - u32::from(*a) + 1)
                    .sum::<u32>()
                    == 16384
                && primaries.iter().all(|(port, _)| live_ports.contains(port))
        })
    }

    /// Keys matching `pattern` on every live primary.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        self.primaries()
            .into_iter()
            .flat_map(|port| self.node(port).keys(pattern))
            .collect()
    }

    /// Calls of `command` in `INFO commandstats`, summed over live nodes.
    pub fn command_calls(&self, command: &str) -> u64 {
        self.nodes
            .iter()
            .map(|node| node.command_calls(command))
            .sum()
    }

    fn wait(&self, done: impl Fn(&RedisCluster) -> bool, what: &str) {
        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        while Instant::now() < deadline {
            if done(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let logs: Vec<String> = self.nodes.iter().map(RedisServer::logs).collect();
        panic!("timed out waiting for {what}:\n{}", logs.join("\n"));
    }
}

impl RedisServer {
    /// Calls of `command` in this server's `INFO commandstats` (0 when down).
    pub fn command_calls(&self, command: &str) -> u64 {
        let info = self.cli(&["INFO", "commandstats"]).unwrap_or_default();
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .and_then(|calls| calls.parse().ok())
            .unwrap_or(0)
    }
}
