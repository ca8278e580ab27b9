//! Real upstream servers for end-to-end tests, running inside the test process.
//!
//! A data-plane test has to prove what actually *reached* the upstream (which
//! upstream, which path, which headers), so every [`Upstream`] is a real hyper 1
//! HTTP server on 127.0.0.1 that answers with a JSON echo of the request it got:
//!
//! ```json
//! {"name": "a", "method": "GET", "path": "/v1/x?q=1",
//!  "headers": {"host": "api.example.com", ...}, "body_bytes": 0}
//! ```
//!
//! `path` is the raw request-target exactly as received (including the query),
//! so path-normalization tests can assert the bytes the gateway forwarded.
//! Header names are lower case; repeated headers are joined with `", "`.
//!
//! Behaviours are chosen by the end of the path (so they work behind any route
//! prefix, with or without `strip_path`):
//! - `.../slow?ms=N`: sleeps N ms, then echoes;
//! - `.../status/NNN`: answers status NNN with the echo as body;
//! - `.../bytes?n=N`: streams N bytes in 64 KiB chunks, never held whole;
//! - `.../sink`: reads the request body frame by frame, counting bytes without
//!   keeping them, and answers `{"name", "received": N}`.
//!
//! - `.../echo-body`: answers with the request body itself (same
//!   `Content-Type`), and the `Content-Length` it was sent with in
//!   `x-received-length`.
//!
//! Every request is also delayed by [`Upstream::set_delay`] (0 by default),
//! for a target that is slower than its peers, and its `X-Request-Id` is
//! noted ([`Upstream::request_ids`]). [`Upstream::start_on`] binds a given
//! port, so a test can stop a target (drop it: its listener and open
//! connections close) and bring it back on the same address.
//!
//! Any query parameter `set-NAME=VALUE` (percent-decoded) becomes a response
//! header `NAME: VALUE` (`?set-cache-control=no-store`), for cache tests.
//!
//! [`RawUpstream`] covers upstreams that misbehave below HTTP: one answering
//! with both `Content-Length` and `Transfer-Encoding` (a response a gateway must
//! never forward), and one that closes every connection at once.
//!
//! Servers stop accepting when dropped; they live on the test's own runtime, so
//! everything ends with the test.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

type Body = BoxBody<Bytes, Infallible>;

/// Size of the chunks `/bytes` streams.
pub const CHUNK_SIZE: usize = 64 * 1024;
static CHUNK: [u8; CHUNK_SIZE] = [b'x'; CHUNK_SIZE];

/// `n` (at most [`CHUNK_SIZE`]) filler bytes without allocating, for streamed bodies.
pub fn filler(n: usize) -> Bytes {
    Bytes::from_static(&CHUNK[..n.min(CHUNK_SIZE)])
}

#[derive(Default)]
struct Stats {
    /// Request-targets received, in order (bounded, for assertions).
    targets: std::sync::Mutex<Vec<String>>,
    requests: AtomicU64,
    connections: AtomicU64,
    sink_bytes: AtomicU64,
    /// Added to every request's answer time, in milliseconds.
    delay_ms: AtomicU64,
    /// `X-Request-Id` of the requests received (the first 10,000).
    request_ids: std::sync::Mutex<Vec<String>>,
    /// The connection tasks, aborted when the upstream is dropped.
    tasks: std::sync::Mutex<Vec<tokio::task::AbortHandle>>,
}

/// A named HTTP echo server on 127.0.0.1 (HTTP/1.1 and h2c).
pub struct Upstream {
    name: Arc<str>,
    addr: SocketAddr,
    stats: Arc<Stats>,
    accept: JoinHandle<()>,
}

impl Upstream {
    /// Binds a free port on 127.0.0.1 and starts serving.
    pub async fn start(name: &str) -> Upstream {
        Self::start_on(name, 0).await
    }

    /// Like [`Upstream::start`], on 127.0.0.1:`port` (0: any free port).
    pub async fn start_on(name: &str, port: u16) -> Upstream {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind upstream on 127.0.0.1");
        let addr = listener.local_addr().expect("upstream local addr");
        let name: Arc<str> = Arc::from(name);
        let stats = Arc::new(Stats::default());
        let accept = tokio::spawn(accept_loop(listener, name.clone(), stats.clone()));
        Upstream {
            name,
            addr,
            stats,
            accept,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:<port>`, as a service target address.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// Requests received so far.
    pub fn requests(&self) -> u64 {
        self.stats.requests.load(Ordering::SeqCst)
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.stats.connections.load(Ordering::SeqCst)
    }

    /// The request-targets received so far, in order (the first 10,000).
    pub fn targets(&self) -> Vec<String> {
        self.stats
            .targets
            .lock()
            .map(|targets| targets.clone())
            .unwrap_or_default()
    }

    /// Delays every answer by `delay` from now on.
    pub fn set_delay(&self, delay: Duration) {
        self.stats
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// The `X-Request-Id` of each request received so far, in order.
    pub fn request_ids(&self) -> Vec<String> {
        self.stats
            .request_ids
            .lock()
            .map(|ids| ids.clone())
            .unwrap_or_default()
    }

    /// Request-body bytes received by `/sink` so far (all requests together).
    pub fn sink_bytes(&self) -> u64 {
        self.stats.sink_bytes.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.accept.abort();
        if let Ok(tasks) = self.stats.tasks.lock() {
            for task in tasks.iter() {
                task.abort();
            }
        }
    }
}

async fn accept_loop(listener: TcpListener, name: Arc<str>, stats: Arc<Stats>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(pair) => pair,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        stats.connections.fetch_add(1, Ordering::SeqCst);
        let name = name.clone();
        let task_stats = stats.clone();
        let task = tokio::spawn(async move {
            let stats = task_stats;
            let service = service_fn(move |req| handle(name.clone(), stats.clone(), req));
            // Generous limits, so a test upstream never rejects what the
            // gateway under test accepted and forwarded.
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder.http1().max_headers(1_000).max_buf_size(1024 * 1024);
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        if let Ok(mut tasks) = stats.tasks.lock() {
            tasks.retain(|task| !task.is_finished());
            tasks.push(task.abort_handle());
        }
    }
}

async fn handle(
    name: Arc<str>,
    stats: Arc<Stats>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    stats.requests.fetch_add(1, Ordering::SeqCst);
    if let Ok(mut targets) = stats.targets.lock() {
        if targets.len() < 10_000 {
            let target = req.uri().path_and_query().map_or("", |pq| pq.as_str());
            targets.push(target.to_string());
        }
    }
    if let Ok(mut ids) = stats.request_ids.lock() {
        if ids.len() < 10_000 {
            let id = req
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            ids.push(id.to_string());
        }
    }
    let delay = stats.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();

    if path.ends_with("/sink") {
        let received = drain(req.into_body()).await;
        stats.sink_bytes.fetch_add(received, Ordering::SeqCst);
        let body = serde_json::json!({"name": &*name, "received": received});
        return Ok(json_response(StatusCode::OK, &body));
    }
    if path.ends_with("/echo-body") {
        let content_type = req.headers().get(hyper::header::CONTENT_TYPE).cloned();
        let length = req.headers().get(hyper::header::CONTENT_LENGTH).cloned();
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let mut response = Response::new(Full::new(body).boxed());
        if let Some(content_type) = content_type {
            response
                .headers_mut()
                .insert(hyper::header::CONTENT_TYPE, content_type);
        }
        if let Some(length) = length {
            response.headers_mut().insert("x-received-length", length);
        }
        return Ok(response);
    }
    if path.ends_with("/bytes") {
        let total = query_u64(&query, "n").unwrap_or(0);
        return Ok(stream_bytes(total));
    }
    let mut status = StatusCode::OK;
    if let Some(code) = path.rsplit_once("/status/").map(|(_, code)| code) {
        if let Some(code) = code.parse().ok().and_then(|c| StatusCode::from_u16(c).ok()) {
            status = code;
        }
    }
    if path.ends_with("/slow") {
        let ms = query_u64(&query, "ms").unwrap_or(1_000);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let echo = echo_json(&name, &req);
    let mut echo = echo;
    echo["body_bytes"] = drain(req.into_body()).await.into();
    let mut response = json_response(status, &echo);
    set_headers_from_query(&query, response.headers_mut());
    Ok(response)
}

/// `set-NAME=VALUE` query parameters as response headers.
fn set_headers_from_query(query: &str, headers: &mut hyper::HeaderMap) {
    for (name, value) in query.split('&').filter_map(|pair| pair.split_once('=')) {
        let Some(name) = name.strip_prefix("set-") else {
            continue;
        };
        let value = percent_encoding::percent_decode_str(value).decode_utf8_lossy();
        if let (Ok(name), Ok(value)) = (
            hyper::header::HeaderName::from_bytes(name.as_bytes()),
            hyper::header::HeaderValue::from_str(&value),
        ) {
            headers.append(name, value);
        }
    }
}

/// The JSON echo of a request (without its body).
fn echo_json<B>(name: &str, req: &Request<B>) -> serde_json::Value {
    let mut headers = serde_json::Map::new();
    for (key, value) in req.headers() {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        match headers.get_mut(key.as_str()) {
            Some(serde_json::Value::String(existing)) => {
                existing.push_str(", ");
                existing.push_str(&value);
            }
            _ => {
                headers.insert(key.as_str().to_string(), value.into());
            }
        }
    }
    let target = req
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str().to_string())
        .unwrap_or_else(|| req.uri().to_string());
    serde_json::json!({
        "name": name,
        "method": req.method().as_str(),
        "path": target,
        "version": format!("{:?}", req.version()),
        "headers": headers,
    })
}

/// Reads a body to its end, keeping only the count.
async fn drain(mut body: Incoming) -> u64 {
    let mut received = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    received += data.len() as u64;
                }
            }
            Err(_) => break,
        }
    }
    received
}

fn stream_bytes(total: u64) -> Response<Body> {
    let chunks = futures::stream::unfold(total, |remaining| async move {
        if remaining == 0 {
            return None;
        }
        let n = remaining.min(CHUNK_SIZE as u64) as usize;
        let frame = Frame::data(Bytes::from_static(&CHUNK[..n]));
        Some((Ok::<_, Infallible>(frame), remaining - n as u64))
    });
    let mut response = Response::new(StreamBody::new(chunks).boxed());
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/octet-stream"),
    );
    response
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

fn query_u64(query: &str, key: &str) -> Option<u64> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse().ok())
}

/// How a [`RawUpstream`] misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawBehaviour {
    /// Reads the request head, then answers `200` with both `Content-Length`
    /// and `Transfer-Encoding: chunked` (request smuggling material).
    ConflictingLength,
    /// Closes every connection as soon as it is accepted.
    CloseImmediately,
    /// Reads the request head, answers `200` announcing 1,000 body bytes,
    /// sends 10 of them and closes: an upstream dying mid-body.
    TruncatedBody,
    /// Reads the request head, answers `200` chunked with an invalid chunk
    /// size, head and body in one write.
    BadChunk,
}

/// The response [`RawBehaviour::BadChunk`] sends.
pub const BAD_CHUNK_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\n\
Content-Type: text/plain\r\n\
Transfer-Encoding: chunked\r\n\
\r\n\
zz\r\nhello\r\n0\r\n\r\n";

/// The response [`RawBehaviour::TruncatedBody`] sends before it closes.
pub const TRUNCATED_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\n\
Content-Type: text/plain\r\n\
Content-Length: 1000\r\n\
\r\n\
0123456789";

/// A TCP server on 127.0.0.1 that does not speak proper HTTP.
pub struct RawUpstream {
    addr: SocketAddr,
    connections: Arc<AtomicU64>,
    accept: JoinHandle<()>,
}

/// The response [`RawBehaviour::ConflictingLength`] sends.
pub const CONFLICTING_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\n\
Content-Type: text/plain\r\n\
Content-Length: 5\r\n\
Transfer-Encoding: chunked\r\n\
\r\n\
b\r\nhello world\r\n0\r\n\r\n";

impl RawUpstream {
    pub async fn start(behaviour: RawBehaviour) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind raw upstream on 127.0.0.1");
        let addr = listener.local_addr().expect("raw upstream local addr");
        let connections = Arc::new(AtomicU64::new(0));
        let counter = connections.clone();
        let accept = tokio::spawn(async move {
            loop {
                let (mut stream, _) = match listener.accept().await {
                    Ok(pair) => pair,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                counter.fetch_add(1, Ordering::SeqCst);
                match behaviour {
                    RawBehaviour::CloseImmediately => drop(stream),
                    RawBehaviour::ConflictingLength
                    | RawBehaviour::TruncatedBody
                    | RawBehaviour::BadChunk => {
                        tokio::spawn(async move {
                            let mut head = Vec::new();
                            let mut buf = [0u8; 4096];
                            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65_536
                            {
                                match tokio::time::timeout(
                                    Duration::from_secs(10),
                                    stream.read(&mut buf),
                                )
                                .await
                                {
                                    Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
                                    _ => return,
                                }
                            }
                            if behaviour == RawBehaviour::TruncatedBody {
                                let _ = stream.write_all(TRUNCATED_RESPONSE).await;
                                let _ = stream.flush().await;
                                return;
                            }
                            if behaviour == RawBehaviour::BadChunk {
                                let _ = stream.write_all(BAD_CHUNK_RESPONSE).await;
                                let _ = stream.flush().await;
                                tokio::time::sleep(Duration::from_secs(2)).await;
                                return;
                            }
                            let _ = stream.write_all(CONFLICTING_RESPONSE).await;
                            let _ = stream.flush().await;
                            // Keep the connection open a little, as a server
                            // that wants it reused would.
                            tokio::time::sleep(Duration::from_secs(2)).await;
                        });
                    }
                }
            }
        });
        RawUpstream {
            addr,
            connections,
            accept,
        }
    }

    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dp::{raw_get, raw_http};

    #[tokio::test]
    async fn echo_behaviours_and_raw_upstreams() {
        let up = Upstream::start("u").await;
        let response = raw_get(up.addr(), "h.test", "/a/%2Fb?x=1")
            .await
            .expect("echo");
        assert_eq!(response.status, 200);
        let body = response.json();
        assert_eq!(body["name"], "u");
        assert_eq!(body["path"], "/a/%2Fb?x=1");
        assert_eq!(body["headers"]["host"], "h.test");

        let response = raw_get(up.addr(), "h", "/x/status/418")
            .await
            .expect("status");
        assert_eq!(response.status, 418);
        let response = raw_get(up.addr(), "h", "/bytes?n=200000")
            .await
            .expect("bytes");
        assert_eq!(response.body.len(), 200_000);
        let response = raw_get(up.addr(), "h", "/slow?ms=10").await.expect("slow");
        assert_eq!(response.status, 200);

        let mut upload = b"POST /sink HTTP/1.1\r\nHost: h\r\nContent-Length: 100000\r\nConnection: close\r\n\r\n".to_vec();
        upload.extend(std::iter::repeat_n(b'y', 100_000));
        let response = raw_http(up.addr(), &upload).await.expect("sink");
        assert_eq!(response.json()["received"], 100_000);
        assert_eq!(up.sink_bytes(), 100_000);
        assert_eq!(up.requests(), 5);

        let bad = RawUpstream::start(RawBehaviour::ConflictingLength).await;
        let response = raw_get(bad.addr, "h", "/").await.expect("malformed answer");
        assert_eq!(response.header("content-length"), Some("5"));
        let closing = RawUpstream::start(RawBehaviour::CloseImmediately).await;
        assert!(raw_get(closing.addr, "h", "/").await.is_none());
        assert_eq!(closing.connections(), 1);
    }
}
