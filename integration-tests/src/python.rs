//! Real Python clients and servers for the protocols our Rust test stack does
//! not speak: WebSocket (Debian's `python3-websockets`) and gRPC without
//! generated code (`python3-grpcio`). The scripts live in
//! `integration-tests/python/`; `scripts/test.sh` installs the packages.
//!
//! The interpreter is the first of `python3`, `/usr/bin/python3` that imports
//! the modules a test needs (a pyenv `python3` on `PATH` does not see Debian's
//! packages). None found is a test failure naming the package, never a skip.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::process::{wait_until, ChildProcess};

/// A script of `integration-tests/python/`.
pub fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join(name)
}

/// The interpreter that imports every one of `modules`.
pub fn interpreter(modules: &[&str]) -> PathBuf {
    let check = format!("import {}", modules.join(", "));
    for candidate in ["python3", "/usr/bin/python3"] {
        let ok = Command::new(candidate)
            .args(["-c", &check])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if ok {
            return PathBuf::from(candidate);
        }
    }
    panic!(
        "no python3 imports {modules:?}: install python3-websockets and python3-grpcio \
         (scripts/test.sh does)"
    );
}

/// A Python server script on `port`, started and waited for (it prints a
/// `{"ready": port}` line); killed by PID when dropped.
pub async fn server(name: &str, modules: &[&str], port: u16, extra: &[&str]) -> ChildProcess {
    let mut args = vec![
        script(name).to_string_lossy().into_owned(),
        port.to_string(),
    ];
    args.extend(extra.iter().map(|s| (*s).to_string()));
    let process = ChildProcess::spawn(name, &interpreter(modules), &args, &[]);
    let ready = format!("{{\"ready\": {port}}}");
    wait_until(&format!("{name} ready"), Duration::from_secs(20), || {
        let logs = process.logs();
        let ready = ready.clone();
        async move { logs.contains(&ready).then_some(()) }
    })
    .await;
    process
}

/// Runs a Python client script with one JSON argument, bounded by `timeout`
/// (killed by its PID after it); one JSON value per line of its output.
pub fn client(
    name: &str,
    modules: &[&str],
    spec: &serde_json::Value,
    timeout: Duration,
) -> Vec<serde_json::Value> {
    let output = crate::tls::run_bounded(
        Command::new(interpreter(modules))
            .arg(script(name))
            .arg(spec.to_string()),
        timeout,
    );
    let values: Vec<serde_json::Value> = output
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    assert!(!values.is_empty(), "{name} printed no result: {output}");
    values
}

/// The JSON lines a Python server printed so far.
pub fn server_lines(process: &ChildProcess) -> Vec<serde_json::Value> {
    process
        .logs()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}
