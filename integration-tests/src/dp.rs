//! The `DataPlane` fixture: the real `tollgate-dp` binary, subscribed to a
//! control plane, listening on free 127.0.0.1 ports of its own.
//!
//! Tests run in parallel, so every data plane gets its own proxy and status
//! ports and its own node id; everything it needs is passed as flags, the way
//! an operator would. All waits here are bounded polls (several seconds), never
//! fixed sleeps, so a slow machine makes a test slower, not flaky.
//!
//! Two clients are offered:
//! - [`DataPlane::request`]: reqwest with a `Host` override, for ordinary traffic
//!   (reqwest keeps an explicit `Host` header instead of deriving it from the URL);
//! - [`raw_http`]: bytes written on a TCP socket, for requests no well-behaved
//!   client would send (`/v1/../admin`, `%2e%2e`, backslashes, malformed heads),
//!   since reqwest's URL parser would normalize or refuse them before sending.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::process::{bin_path, free_port, wait_until, ChildProcess};

/// How long fixture waits poll before giving up.
pub const WAIT: Duration = Duration::from_secs(15);

/// A running `tollgate-dp`.
pub struct DataPlane {
    process: ChildProcess,
    node_id: String,
    listen: SocketAddr,
    status_listen: SocketAddr,
    client: reqwest::Client,
}

impl DataPlane {
    /// Starts a data plane subscribed to the control plane on `cp_port`.
    pub fn start(cp_port: u16, node_id: &str, extra_args: &[String]) -> DataPlane {
        Self::start_with_url(&format!("http://127.0.0.1:{cp_port}"), node_id, extra_args)
    }

    /// Starts a data plane subscribed to the control plane at `control_plane` (a URL).
    pub fn start_with_url(control_plane: &str, node_id: &str, extra_args: &[String]) -> DataPlane {
        let listen: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let status_listen: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let mut args = vec![
            "--control-plane".to_string(),
            control_plane.to_string(),
            "--listen".to_string(),
            listen.to_string(),
            "--status-listen".to_string(),
            status_listen.to_string(),
            "--node-id".to_string(),
            node_id.to_string(),
        ];
        args.extend_from_slice(extra_args);
        let envs = vec![(
            "RUST_LOG".to_string(),
            std::env::var("TOLLGATE_TEST_LOG").unwrap_or_else(|_| "info".to_string()),
        )];
        let process = ChildProcess::spawn(
            &format!("tollgate-dp[{node_id}]"),
            &bin_path("tollgate-dp"),
            &args,
            &envs,
        );
        DataPlane {
            process,
            node_id: node_id.to_string(),
            listen,
            status_listen,
            client: client(),
        }
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The proxy listener.
    pub fn addr(&self) -> SocketAddr {
        self.listen
    }

    /// The status listener (`/healthz`, `/readyz`, `/status`).
    pub fn status_addr(&self) -> SocketAddr {
        self.status_listen
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// `http://127.0.0.1:<proxy port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.listen, path)
    }

    /// `http://127.0.0.1:<status port><path>`.
    pub fn status_url(&self, path: &str) -> String {
        format!("http://{}{}", self.status_listen, path)
    }

    /// The shared HTTP client (no proxy, no TLS, keep-alive).
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// A request to the proxy port with the `Host` header set to `host`.
    pub fn request(
        &self,
        method: reqwest::Method,
        host: &str,
        path: &str,
    ) -> reqwest::RequestBuilder {
        self.client
            .request(method, self.url(path))
            .header(reqwest::header::HOST, host)
    }

    /// `GET path` with `Host: host`.
    pub fn get(&self, host: &str, path: &str) -> reqwest::RequestBuilder {
        self.request(reqwest::Method::GET, host, path)
    }

    /// Sends `GET path` with `Host: host`; returns the status and the body as JSON
    /// (`Value::Null` when it is not JSON).
    pub async fn get_json(&self, host: &str, path: &str) -> (u16, serde_json::Value) {
        let response = self
            .get(host, path)
            .send()
            .await
            .unwrap_or_else(|err| panic!("GET {path} (Host {host}) failed: {err}"));
        response_json(response).await
    }

    /// The status code of a status-port endpoint, if it answers.
    pub async fn status_code(&self, path: &str) -> Option<u16> {
        let response = self.client.get(self.status_url(path)).send().await.ok()?;
        Some(response.status().as_u16())
    }

    /// `/status` as JSON, if the status port answers.
    pub async fn status_json(&self) -> Option<serde_json::Value> {
        let response = self
            .client
            .get(self.status_url("/status"))
            .send()
            .await
            .ok()?;
        response.json().await.ok()
    }

    /// The config revision `/status` reports, if any.
    pub async fn revision(&self) -> Option<u64> {
        status_revision(&self.status_json().await?)
    }

    /// The config version `/status` reports: `(store_id, revision)`.
    pub async fn config_version(&self) -> Option<(String, u64)> {
        let status = self.status_json().await?;
        let version = &status["config_version"];
        Some((
            version["store_id"].as_str()?.to_string(),
            version["revision"].as_u64()?,
        ))
    }

    /// The control-plane connection state `/status` reports
    /// (`connected`, `connecting`, `disconnected`).
    pub async fn control_plane_state(&self) -> Option<String> {
        let status = self.status_json().await?;
        status["control_plane"].as_str().map(str::to_string)
    }

    /// Waits (bounded) for the status port to answer `/healthz`.
    pub async fn wait_alive(&self) {
        wait_until(
            &format!("{} /healthz to answer 200", self.node_id),
            WAIT,
            || async { (self.status_code("/healthz").await == Some(200)).then_some(()) },
        )
        .await
    }

    /// Waits (bounded) for `/readyz` to answer 200 (a config is in service).
    pub async fn wait_ready(&self) {
        wait_until(
            &format!("{} /readyz to answer 200", self.node_id),
            WAIT,
            || async { (self.status_code("/readyz").await == Some(200)).then_some(()) },
        )
        .await
    }

    /// Waits (bounded) until `/status` reports config revision `revision` or later.
    pub async fn wait_version(&self, revision: u64) {
        wait_until(
            &format!("{} /status to report revision >= {revision}", self.node_id),
            WAIT,
            || async { self.revision().await.filter(|r| *r >= revision).map(|_| ()) },
        )
        .await
    }

    /// The data plane's resident set size in KiB (`VmRSS` of /proc/<pid>/status).
    pub fn rss_kib(&self) -> Option<u64> {
        rss_kib(self.pid())
    }

    pub fn sigterm(&self) {
        self.process.sigterm();
    }

    pub fn kill_9(&mut self) {
        self.process.kill_9();
    }

    /// Freezes the process (SIGSTOP); [`DataPlane::sigcont`] resumes it.
    pub fn sigstop(&self) {
        self.process.sigstop();
    }

    pub fn sigcont(&self) {
        self.process.sigcont();
    }

    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// Waits (bounded) for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.process.wait_exit(timeout)
    }

    pub fn logs(&self) -> String {
        self.process.logs()
    }
}

/// A 127.0.0.1 port that refuses connections and stays reserved while the
/// returned socket lives (bound, never listening), so no other test's server
/// can take it: a control plane that is down, an upstream that refuses.
pub fn refusing_port() -> (tokio::net::TcpSocket, u16) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(([127, 0, 0, 1], 0).into())
        .expect("bind a port on 127.0.0.1");
    let port = socket.local_addr().expect("local addr").port();
    (socket, port)
}

/// An HTTP client for tests: no proxy from the environment, no TLS, bounded.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .connect_timeout(Duration::from_secs(5))
        .build()
        .expect("build reqwest client")
}

/// A response's status and its body parsed as JSON (`Null` if it is not JSON).
pub async fn response_json(response: reqwest::Response) -> (u16, serde_json::Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    (status, body)
}

/// The config revision in a `/status` document
/// (`{node_id, config_version: {store_id, revision} | null, control_plane, ready, draining}`).
pub fn status_revision(status: &serde_json::Value) -> Option<u64> {
    status["config_version"]["revision"].as_u64()
}

/// `VmRSS` of a process in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

/// Writes a YAML config to `dir/name` and returns its path (for `tollgatectl apply -f`).
pub fn write_config(dir: &Path, name: &str, yaml: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, yaml).expect("write config file");
    path
}

/// A parsed raw HTTP/1.1 response.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    /// Lower-case names, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (`Null` if it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// Sends `request` verbatim on a fresh TCP connection to `addr` and reads the
/// answer until the server closes the connection (callers send
/// `Connection: close`) or 10 s pass. Returns `None` when no parsable response
/// came back.
pub async fn raw_http(addr: SocketAddr, request: &[u8]) -> Option<RawResponse> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    // A server may answer (431, 400) and close before reading everything we
    // send; what it answered is still worth reading, so a failed write is not
    // the end.
    let _ = stream.write_all(request).await;
    let mut data = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => {
                data.extend_from_slice(&buf[..n]);
                if let Some(response) = parse_complete(&data) {
                    return Some(response);
                }
            }
        }
    }
    parse_response(&data, true)
}

/// `GET <target>` with `Host: host` and `Connection: close`, sent verbatim.
pub async fn raw_get(addr: SocketAddr, host: &str, target: &str) -> Option<RawResponse> {
    let request = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    raw_http(addr, request.as_bytes()).await
}

fn parse_complete(data: &[u8]) -> Option<RawResponse> {
    parse_response(data, false)
}

/// Parses one response; with `at_eof`, a body without framing ends at the data's end.
fn parse_response(data: &[u8], at_eof: bool) -> Option<RawResponse> {
    let head_end = data.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&data[..head_end]).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let status: u16 = status_line.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = &data[head_end + 4..];
    let find = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let body = if find("transfer-encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"))
    {
        decode_chunked(rest)?
    } else if let Some(length) = find("content-length").and_then(|v| v.parse::<usize>().ok()) {
        if rest.len() < length {
            return None;
        }
        rest[..length].to_vec()
    } else if status == 204 || status == 304 || (100..200).contains(&status) {
        Vec::new()
    } else if at_eof {
        rest.to_vec()
    } else {
        return None;
    };
    Some(RawResponse {
        status,
        headers,
        body,
    })
}

/// Decodes a complete chunked body; `None` while incomplete.
fn decode_chunked(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(body);
        }
        if data.len() < size + 2 {
            return None;
        }
        body.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}
