//! gRPC through the gateway (issue 16, item 2), end to end: the real
//! `tollgate-cp` and `tollgate-dp`, a real gRPC server and client (Python
//! `grpcio`, see `tollgate_integration_tests::python`), the client speaking
//! HTTP/2 with prior knowledge to the plain listener and the gateway speaking
//! `h2c` to the server.
//!
//! - unary (with trailing metadata), server-streaming, client-streaming and
//!   bidirectional calls, and the upstream's `grpc.health.v1.Health/Check`;
//! - the same calls to a gRPC server over TLS (`protocol: h2`, ALPN `h2`,
//!   verified against a private CA);
//! - the gateway's own answers as gRPC statuses: no API key ->
//!   `UNAUTHENTICATED`, no route -> `UNIMPLEMENTED`, a dead upstream ->
//!   `UNAVAILABLE`, and `grpc-timeout` shorter than the service's timeout ->
//!   `DEADLINE_EXCEEDED` from the gateway (its access log says
//!   `upstream_timeout`; shown with an h2c upstream that ignores the header).

use std::time::Duration;

use serde_json::{json, Value};
use tollgate_integration_tests::cp::{config_from_json as config, ControlPlane};
use tollgate_integration_tests::dp::DataPlane;
use tollgate_integration_tests::process::{free_port, wait_until};
use tollgate_integration_tests::python;
use tollgate_integration_tests::upstream::Upstream;

const GRPC: &[&str] = &["grpc"];
const KEY: &str = "grpc-client-key-0123456789";

async fn calls(target: String, metadata: Value, calls: &[&str], timeout: f64) -> Vec<Value> {
    let spec = json!({"target": target, "metadata": metadata, "calls": calls, "timeout": timeout});
    let lines = tokio::task::spawn_blocking(move || {
        python::client("grpc_client.py", GRPC, &spec, Duration::from_secs(120))
    })
    .await
    .expect("client thread");
    assert_eq!(lines.len(), calls.len(), "{lines:?}");
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_stream_through_h2c_and_gateway_errors_are_grpc_statuses() {
    let port = free_port();
    let server = python::server("grpc_server.py", GRPC, port, &[]).await;
    let dead = free_port();
    let slow_upstream = Upstream::start("slow-h2c").await;
    let cp = ControlPlane::start().await;
    let revision = cp
        .apply_revision(&config(json!({
            "services": [
                {"name": "echo", "protocol": "h2c", "timeouts": {"request_ms": 30000},
                 "upstream": {"targets": [{"address": format!("127.0.0.1:{port}")}]}},
                {"name": "gone", "protocol": "h2c",
                 "upstream": {"targets": [{"address": format!("127.0.0.1:{dead}")}]}},
                {"name": "slow", "protocol": "h2c", "timeouts": {"request_ms": 30000},
                 "upstream": {"targets": [{"address": slow_upstream.address()}]}},
            ],
            "routes": [
                {"name": "echo", "service": "echo", "paths": ["/test.Echo"],
                 "plugins": [{"name": "key-auth"}]},
                {"name": "health", "service": "echo", "paths": ["/grpc.health.v1.Health"]},
                {"name": "gone", "service": "gone", "paths": ["/gone.Service"]},
                {"name": "slow", "service": "slow", "paths": ["/slow.Echo"],
                 "plugins": [{"name": "key-auth"}]},
            ],
            "consumers": [{"name": "grpc-app", "credentials": [{"api_key": KEY}]}],
        })))
        .await;
    let log_dir = tempfile::tempdir().expect("log dir");
    let log_path = log_dir.path().join("access.log");
    let dp = DataPlane::start(
        cp.port(),
        "dp-grpc",
        &[
            "--access-log".to_string(),
            log_path.to_string_lossy().into_owned(),
        ],
    );
    dp.wait_version(revision).await;
    let gateway = dp.addr().to_string();
    let with_key = json!([["apikey", KEY]]);

    let results = calls(
        gateway.clone(),
        with_key.clone(),
        &["unary", "server_stream", "client_stream", "bidi", "health"],
        20.0,
    )
    .await;
    for result in &results {
        assert_eq!(result["code"], "OK", "{result}");
    }
    assert_eq!(results[0]["response"], "echo:hello");
    assert_eq!(
        results[0]["trailers"]["x-trailer"], "unary-done",
        "trailers relayed: {}",
        results[0]
    );
    assert_eq!(
        results[1]["responses"],
        json!(["item 0", "item 1", "item 2", "item 3", "item 4"])
    );
    assert_eq!(results[2]["response"], "7 70");
    assert_eq!(
        results[3]["responses"],
        json!(["re:one", "re:two", "re:three"])
    );
    assert_eq!(results[4]["response"], "0801", "SERVING");
    let seen = python::server_lines(&server);
    assert!(
        seen.iter()
            .filter(|line| line["method"] == "Unary")
            .all(|line| line["apikey"] == KEY),
        "{seen:?}"
    );

    // The gateway's own refusals, as gRPC statuses.
    let before = python::server_lines(&server).len();
    let refused = calls(gateway.clone(), json!([]), &["unary", "bidi"], 20.0).await;
    for result in &refused {
        assert_eq!(result["code"], "UNAUTHENTICATED", "{result}");
        assert!(
            result["details"]
                .as_str()
                .is_some_and(|d| d.starts_with("unauthorized: ")),
            "{result}"
        );
    }
    let wrong = calls(
        gateway.clone(),
        json!([["apikey", "wrong-key-42"]]),
        &["unary"],
        20.0,
    )
    .await;
    assert_eq!(wrong[0]["code"], "UNAUTHENTICATED", "{}", wrong[0]);
    assert_eq!(
        python::server_lines(&server).len(),
        before,
        "refused calls never reach the upstream"
    );

    // No route for the method, and a service whose only target is down.
    let elsewhere = calls(
        gateway.clone(),
        with_key.clone(),
        &["/nowhere.Service/Call", "/gone.Service/Call"],
        20.0,
    )
    .await;
    assert_eq!(elsewhere[0]["code"], "UNIMPLEMENTED", "{}", elsewhere[0]);
    assert_eq!(elsewhere[1]["code"], "UNAVAILABLE", "{}", elsewhere[1]);

    // grpc-timeout bounds the gateway's wait below the service's 30 s
    // timeout. The grpcio server enforces the deadline it is forwarded too,
    // so whose answer comes first is a race there: the gateway's own is
    // shown against an h2c upstream that ignores grpc-timeout (the fixture
    // echo server, `/slow?ms=3000`), with a raw HTTP/2 call (hyper) that has
    // no deadline of its own: DEADLINE_EXCEEDED from the gateway at ~1 s.
    let started = std::time::Instant::now();
    let (status, grpc_status) =
        raw_grpc_call(&dp, "/slow.Echo/slow?ms=3000", b"3", Some("1S")).await;
    let waited = started.elapsed();
    assert_eq!((status, grpc_status.as_deref()), (200, Some("4")));
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_millis(2900),
        "answered by the gateway's deadline, before the upstream's answer: {waited:?}"
    );
    wait_until(
        "the gateway's own deadline in the log",
        Duration::from_secs(20),
        || async {
            std::fs::read_to_string(&log_path)
                .unwrap_or_default()
                .lines()
                .filter_map(|line| serde_json::from_str::<Value>(line).ok())
                .any(|line| {
                    line["path"] == "/slow.Echo/slow" && line["error"] == "upstream_timeout"
                })
                .then_some(())
        },
    )
    .await;
    // Without grpc-timeout the service's timeout applies: the slow echo
    // answers after 300 ms, relayed as is.
    let (status, _) = raw_grpc_call(&dp, "/slow.Echo/slow?ms=300", b"3", None).await;
    assert_eq!(status, 200);
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_reach_a_tls_server_over_h2() {
    let ca = tollgate_integration_tests::tls::Ca::new("grpc-test-ca");
    let leaf = ca.issue(&["grpc.test"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = tollgate_integration_tests::tls::write(dir.path(), "cert.pem", &leaf.cert_pem);
    let key = tollgate_integration_tests::tls::write(dir.path(), "key.pem", &leaf.key_pem);
    let port = free_port();
    let server = python::server(
        "grpc_server.py",
        GRPC,
        port,
        &["tls", &cert.to_string_lossy(), &key.to_string_lossy()],
    )
    .await;
    let other_ca = tollgate_integration_tests::tls::Ca::new("someone-else");
    let cp = ControlPlane::start().await;
    let revision = cp
        .apply_revision(&config(json!({
            "services": [
                {"name": "secure", "protocol": "h2",
                 "tls": {"ca_pem": ca.pem, "sni": "grpc.test"},
                 "upstream": {"targets": [{"address": format!("127.0.0.1:{port}")}]}},
                {"name": "untrusted", "protocol": "h2",
                 "tls": {"ca_pem": other_ca.pem, "sni": "grpc.test"},
                 "upstream": {"targets": [{"address": format!("127.0.0.1:{port}")}]}},
            ],
            "routes": [
                {"name": "secure", "service": "secure", "paths": ["/test.Echo", "/grpc.health.v1.Health"]},
                {"name": "untrusted", "service": "untrusted", "paths": ["/untrusted.Service"]},
            ],
        })))
        .await;
    let dp = DataPlane::start(cp.port(), "dp-grpc-tls", &[]);
    dp.wait_version(revision).await;
    let results = calls(
        dp.addr().to_string(),
        json!([]),
        &[
            "unary",
            "server_stream",
            "client_stream",
            "bidi",
            "health",
            "/untrusted.Service/Call",
        ],
        20.0,
    )
    .await;
    for result in &results[..5] {
        assert_eq!(result["code"], "OK", "{result}");
    }
    assert_eq!(results[0]["trailers"]["x-trailer"], "unary-done");
    assert_eq!(
        results[3]["responses"],
        json!(["re:one", "re:two", "re:three"])
    );
    // A server the service's CA did not sign: the handshake fails, a gRPC error.
    assert_eq!(results[5]["code"], "UNAVAILABLE", "{}", results[5]);
    assert!(
        results[5]["details"]
            .as_str()
            .is_some_and(|d| d.starts_with("upstream_tls_error")),
        "{}",
        results[5]
    );
    drop(server);
}

/// One unary gRPC call over a raw h2c connection to the gateway (hyper),
/// with the API key, an optional `grpc-timeout` and no deadline of its own;
/// the HTTP status and the `grpc-status` of the headers or trailers.
async fn raw_grpc_call(
    dp: &DataPlane,
    path: &str,
    message: &[u8],
    timeout: Option<&str>,
) -> (u16, Option<String>) {
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let stream = tokio::net::TcpStream::connect(dp.addr())
        .await
        .expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2c handshake");
    tokio::spawn(connection);
    let mut frame = vec![0u8];
    frame.extend_from_slice(&u32::try_from(message.len()).expect("small").to_be_bytes());
    frame.extend_from_slice(message);
    let mut request = hyper::Request::post(format!("http://{}{path}", dp.addr()))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("apikey", KEY);
    if let Some(timeout) = timeout {
        request = request.header("grpc-timeout", timeout);
    }
    let request = request
        .body(Full::new(bytes::Bytes::from(frame)))
        .expect("request");
    let response = tokio::time::timeout(Duration::from_secs(20), sender.send_request(request))
        .await
        .expect("answered within 20 s")
        .expect("h2 response");
    let status = response.status().as_u16();
    let mut grpc_status = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if grpc_status.is_none() {
        let collected = response.into_body().collect().await.expect("body");
        grpc_status = collected
            .trailers()
            .and_then(|t| t.get("grpc-status"))
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
    }
    (status, grpc_status)
}
