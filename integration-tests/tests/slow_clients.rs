//! Slow senders through the real binaries (issue 16): 50 clients announce a
//! 1 MiB body and send it a few bytes at a time. Each gets 408
//! `request_body_timeout` at the body deadline, the upstream sees no
//! request from any of them (the body is read ahead before a connection is
//! taken), and a legitimate client keeps being answered meanwhile.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tollgate_integration_tests::cp::config_from_json as config;
use tollgate_integration_tests::cp::ControlPlane;
use tollgate_integration_tests::dp::DataPlane;
use tollgate_integration_tests::upstream::Upstream;

/// The body deadline the data plane runs with.
const DEADLINE: Duration = Duration::from_secs(3);

/// Announces 1 MiB and sends a byte every 200 ms (5 B/s) until answered;
/// returns the status line's code and when it came, or `None` after 15 s.
async fn slow_sender(addr: SocketAddr) -> Option<(u16, Duration)> {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let head = "POST /upload/sink HTTP/1.1\r\nHost: slow.test\r\nContent-Length: 1048576\r\n\r\n";
    stream.write_all(head.as_bytes()).await.ok()?;
    let mut buf = [0u8; 1024];
    let mut received = Vec::new();
    let give_up = started + Duration::from_secs(15);
    while Instant::now() < give_up {
        let read = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await;
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                received.extend_from_slice(&buf[..n]);
                if received.windows(2).any(|w| w == b"\r\n") {
                    break;
                }
            }
            // Nothing yet: trickle one more byte (the server may have
            // stopped reading; a failed write is not the end).
            Err(_) => {
                let _ = stream.write_all(b"x").await;
            }
        }
    }
    let text = String::from_utf8_lossy(&received);
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, started.elapsed()))
}

/// A control plane, an upstream and a data plane run with `args`, one
/// route to the upstream.
async fn gateway(args: &[&str]) -> (ControlPlane, Upstream, DataPlane) {
    let cp = ControlPlane::start().await;
    let upstream = Upstream::start("app").await;
    let revision = cp
        .apply_revision(&config(json!({
            "services": [{"name": "app", "upstream": {"targets": [{"address": upstream.address()}]}}],
            "routes": [{"name": "app", "service": "app"}],
        })))
        .await;
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let dp = DataPlane::start(cp.port(), "slow-dp", &args);
    dp.wait_version(revision).await;
    (cp, upstream, dp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_senders_get_408_and_never_reach_the_upstream() {
    // A 3 s body deadline keeps the test short; 2 MiB of read-ahead holds
    // the whole 1 MiB body before any upstream connection is taken.
    let (_cp, upstream, dp) = gateway(&[
        "--body-timeout-ms",
        "3000",
        "--body-buffer-bytes",
        "2097152",
    ])
    .await;

    // Baseline latency of a legitimate request.
    let mut baseline = Vec::new();
    for _ in 0..20 {
        let started = Instant::now();
        let response = dp.get("slow.test", "/fast").send().await.expect("fast");
        assert_eq!(response.status(), 200);
        baseline.push(started.elapsed());
    }

    let senders: Vec<_> = (0..50)
        .map(|_| tokio::spawn(slow_sender(dp.addr())))
        .collect();
    // A legitimate client meanwhile: a request every 50 ms while the slow
    // ones trickle.
    let mut during = Vec::new();
    let until = Instant::now() + DEADLINE;
    while Instant::now() < until {
        let started = Instant::now();
        let response = dp
            .request(reqwest::Method::POST, "slow.test", "/fast")
            .body(r#"{"order": 1}"#)
            .send()
            .await
            .expect("legitimate request");
        assert_eq!(response.status(), 200);
        during.push(started.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut answered = Vec::new();
    for sender in senders {
        answered.push(sender.await.expect("sender task"));
    }
    for result in &answered {
        let (code, elapsed) = result.expect("every slow sender got an answer");
        assert_eq!(code, 408);
        // At the deadline: not before it, and well before the defaults.
        assert!(
            elapsed >= DEADLINE - Duration::from_millis(100),
            "{elapsed:?}"
        );
        assert!(elapsed < DEADLINE + Duration::from_secs(5), "{elapsed:?}");
    }
    assert!(
        upstream.targets().iter().all(|t| !t.contains("/upload")),
        "the upstream saw a slow sender's request"
    );

    baseline.sort();
    during.sort();
    let median = |v: &[Duration]| v[v.len() / 2];
    let worst = during.last().copied().unwrap_or_default();
    eprintln!(
        "legitimate latency: baseline median {:?}, during median {:?}, worst {:?} ({} requests)",
        median(&baseline),
        median(&during),
        worst,
        during.len()
    );
    // Generous for a loaded machine: the point is that nobody waits on the
    // slow senders (they hold no upstream connection and no worker).
    assert!(during.len() >= 10, "{}", during.len());
    assert!(median(&during) < Duration::from_millis(500), "{during:?}");
    assert!(worst < Duration::from_secs(2), "{during:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_disconnected_at_the_send_timeout() {
    let (_cp, _upstream, dp) = gateway(&["--send-timeout-ms", "1000"]).await;

    // Ask for 256 MiB and read nothing: socket buffers fill, the gateway's
    // writes stall, and the send timeout closes the connection.
    let total: u64 = 256 * 1024 * 1024;
    let mut stream = TcpStream::connect(dp.addr()).await.expect("connect");
    let request = format!("GET /bytes?n={total} HTTP/1.1\r\nHost: big.test\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Now read what was buffered: the stream ends (closed by the gateway)
    // long before 256 MiB.
    let mut received = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    let read_all = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received += n as u64,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read_all)
        .await
        .expect("the gateway closed the connection");
    eprintln!("slow reader: {received} of {total} bytes before the gateway closed");
    assert!(received < total / 4, "{received}");
}
