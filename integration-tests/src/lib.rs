//! End-to-end test fixtures for Tollgate.
//!
//! Tests start the real binaries (`tollgate-cp`, `tollgatectl`, `tollgate-dp`),
//! real upstream HTTP servers and a real `redis-server`, all on 127.0.0.1, and
//! drive them through the real gRPC API and real HTTP clients.
//!
//! - [`process`]: child processes killed by PID on drop, free ports, bounded polls.
//! - [`redis`]: a `redis-server` of the test's own, killed by PID, restartable on its port.
//! - [`python`]: real WebSocket and gRPC clients and servers (Python scripts in `python/`).
//! - [`tls`]: a private CA (rcgen), an HTTPS upstream counting handshakes, a Python TLS client.
//!
//! Binaries are found in the cargo target directory; run `cargo build --bins`
//! first (the README's test command does).

pub mod cp;
pub mod dp;
pub mod process;
pub mod python;
pub mod redis;
pub mod tls;
pub mod upstream;
