//! The upstream HTTP/1.1 client of our own (`--upstream-http1 native`, the
//! default) and hyper's (`--upstream-http1 hyper`), through the real
//! binaries against a scripted upstream on 127.0.0.1: keep-alive reuse, an
//! idle connection the upstream closed noticed before reuse, interim `1xx`
//! responses skipped, trailers and `HEAD`, a buffered body written with its
//! length. Both clients must give the same answers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tollgate_integration_tests::cp::config_from_json as config;
use tollgate_integration_tests::cp::ControlPlane;
use tollgate_integration_tests::dp::DataPlane;

/// Connections accepted and requests answered by the scripted upstream.
#[derive(Default)]
struct Counts {
    connections: AtomicUsize,
    requests: AtomicUsize,
}

/// Reads one request (head and `Content-Length` body) from `stream`.
async fn read_request(stream: &mut TcpStream, pending: &mut Vec<u8>) -> Option<(String, Vec<u8>)> {
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).to_string();
            let length = head
                .lines()
                .filter_map(|line| line.split_once(':'))
                .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, value)| value.trim().parse::<usize>().ok())
                .unwrap_or(0);
            while pending.len() < end + 4 + length {
                let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
                    .await
                    .ok()?
                    .ok()?;
                if n == 0 {
                    return None;
                }
                pending.extend_from_slice(&buf[..n]);
            }
            let body = pending[end + 4..end + 4 + length].to_vec();
            pending.drain(..end + 4 + length);
            return Some((head, body));
        }
        let n = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        pending.extend_from_slice(&buf[..n]);
    }
}

/// The answer to one request, by the path of its request line.
fn answer(head: &str, body: &[u8]) -> (Vec<u8>, bool) {
    let target = head.split(' ').nth(1).unwrap_or("/");
    let head_request = head.starts_with("HEAD ");
    let path = target.rsplit('/').next().unwrap_or("");
    match path {
        // Answers, then closes the connection a moment later while idle.
        "close-after" => (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
            true,
        ),
        "interim" => (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n\
HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-checksum\r\n\r\n\
3\r\nint\r\n4;ext=1\r\nerim\r\n0\r\nx-checksum: 42\r\n\r\n"
                .to_vec(),
            false,
        ),
        "head" if head_request => (
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nX-Head: yes\r\n\r\n".to_vec(),
            false,
        ),
        "echo" => {
            let length = head
                .lines()
                .find(|line| line.to_ascii_lowercase().starts_with("content-length:"))
                .map(|line| line[15..].trim().to_owned())
                .unwrap_or_default();
            let mut out = format!(
                "HTTP/1.1 200 OK\r\nX-Received-Length: {length}\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes();
            out.extend_from_slice(body);
            (out, false)
        }
        "close-delimited" => (
            b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end".to_vec(),
            true,
        ),
        _ => (
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
            false,
        ),
    }
}

/// A keep-alive HTTP/1.1 upstream that follows [`answer`].
async fn scripted_upstream() -> (String, Arc<Counts>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("addr").to_string();
    let counts = Arc::new(Counts::default());
    let shared = Arc::clone(&counts);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            shared.connections.fetch_add(1, Ordering::SeqCst);
            let counts = Arc::clone(&shared);
            tokio::spawn(async move {
                let mut pending = Vec::new();
                while let Some((head, body)) = read_request(&mut stream, &mut pending).await {
                    counts.requests.fetch_add(1, Ordering::SeqCst);
                    let (bytes, close) = answer(&head, &body);
                    if stream.write_all(&bytes).await.is_err() {
                        return;
                    }
                    if close {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        return;
                    }
                }
            });
        }
    });
    (address, counts)
}

async fn exercise(mode: &str) {
    let cp = ControlPlane::start().await;
    let (address, counts) = scripted_upstream().await;
    let revision = cp
        .apply_revision(&config(json!({
            "services": [{"name": "scripted", "upstream": {"targets": [{"address": address}]}}],
            "routes": [{"name": "all", "service": "scripted"}],
        })))
        .await;
    let args = [
        "--upstream-http1".to_string(),
        mode.to_string(),
        "--worker-threads".to_string(),
        "1".to_string(),
    ];
    let dp = DataPlane::start(cp.port(), &format!("h1-{mode}"), &args);
    dp.wait_version(revision).await;

    // Keep-alive: sequential requests share one upstream connection.
    for _ in 0..20 {
        let response = dp.get("any.test", "/plain").send().await.expect("plain");
        assert_eq!(response.status(), 200, "{mode}");
        assert_eq!(response.text().await.expect("body"), "hello", "{mode}");
    }
    assert_eq!(
        counts.connections.load(Ordering::SeqCst),
        1,
        "{mode}: one connection reused"
    );

    // The upstream closes an idle connection: the next request is not lost.
    for round in 0..3 {
        let response = dp
            .get("any.test", "/close-after")
            .send()
            .await
            .expect("close-after");
        assert_eq!(response.status(), 200, "{mode}");
        assert_eq!(response.text().await.expect("body"), "ok", "{mode}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let response = dp
            .get("any.test", "/plain")
            .send()
            .await
            .expect("after close");
        assert_eq!(
            response.status(),
            200,
            "{mode} round {round}: the closed connection was not reused"
        );
        assert_eq!(response.text().await.expect("body"), "hello", "{mode}");
    }
    assert_eq!(
        counts.connections.load(Ordering::SeqCst),
        4,
        "{mode}: one new connection per close"
    );

    // Interim responses skipped; chunked body with extensions and trailers.
    let response = dp
        .get("any.test", "/interim")
        .send()
        .await
        .expect("interim");
    assert_eq!(response.status(), 200, "{mode}");
    assert_eq!(response.text().await.expect("body"), "interim", "{mode}");

    // HEAD: no body read although Content-Length says 100; the connection
    // stays usable.
    let response = dp
        .request(reqwest::Method::HEAD, "any.test", "/head")
        .send()
        .await
        .expect("head");
    assert_eq!(response.status(), 200, "{mode}");
    assert_eq!(response.headers()["x-head"], "yes", "{mode}");
    let response = dp
        .get("any.test", "/plain")
        .send()
        .await
        .expect("after head");
    assert_eq!(response.text().await.expect("body"), "hello", "{mode}");

    // A small body is buffered and written with its length.
    let response = dp
        .request(reqwest::Method::POST, "any.test", "/echo")
        .body("twelve bytes")
        .send()
        .await
        .expect("echo");
    assert_eq!(response.status(), 200, "{mode}");
    assert_eq!(response.headers()["x-received-length"], "12", "{mode}");
    assert_eq!(
        response.text().await.expect("body"),
        "twelve bytes",
        "{mode}"
    );

    // A body delimited by the close.
    let response = dp
        .get("any.test", "/close-delimited")
        .send()
        .await
        .expect("eof body");
    assert_eq!(response.status(), 200, "{mode}");
    assert_eq!(
        response.text().await.expect("body"),
        "until the end",
        "{mode}"
    );
    let before = counts.requests.load(Ordering::SeqCst);
    let response = dp
        .get("any.test", "/plain")
        .send()
        .await
        .expect("after eof body");
    assert_eq!(response.text().await.expect("body"), "hello", "{mode}");
    assert_eq!(counts.requests.load(Ordering::SeqCst), before + 1, "{mode}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_keeps_connections_skips_interim_answers_and_frames_bodies() {
    exercise("native").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hyper_client_fallback_gives_the_same_answers() {
    exercise("hyper").await;
}
