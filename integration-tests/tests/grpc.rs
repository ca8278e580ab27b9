//! gRPC through the gateway (issue 16, item 2), end to end: the real
//! `tollgate-cp` and `tollgate-dp`, a real gRPC server and client (Python
//! `grpcio`, see `tollgate_integration_tests::python`), the client speaking
//! HTTP/2 with prior knowledge to the plain listener and the gateway speaking
//! `h2c` to the server.
//!
//! - unary (with trailing metadata), server-streaming, client-streaming and
//!   bidirectional calls, and the upstream's `grpc.health.v1.Health/Check`;
//! - the gateway's own answers as gRPC statuses: no API key ->
//!   `UNAUTHENTICATED`, no route -> `UNIMPLEMENTED`, a dead upstream ->
//!   `UNAVAILABLE`, and `grpc-timeout` shorter than the service's timeout ->
//!   `DEADLINE_EXCEEDED` from the gateway (its access log says
//!   `upstream_timeout`).

use std::time::Duration;

use serde_json::{json, Value};
use tollgate_integration_tests::cp::{config_from_json as config, ControlPlane};
use tollgate_integration_tests::dp::DataPlane;
use tollgate_integration_tests::process::{free_port, wait_until};
use tollgate_integration_tests::python;

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
    let cp = ControlPlane::start().await;
    let revision = cp
        .apply_revision(&config(json!({
            "services": [
                {"name": "echo", "protocol": "h2c", "timeouts": {"request_ms": 30000},
                 "upstream": {"targets": [{"address": format!("127.0.0.1:{port}")}]}},
                {"name": "gone", "protocol": "h2c",
                 "upstream": {"targets": [{"address": format!("127.0.0.1:{dead}")}]}},
            ],
            "routes": [
                {"name": "echo", "service": "echo", "paths": ["/test.Echo"],
                 "plugins": [{"name": "key-auth"}]},
                {"name": "health", "service": "echo", "paths": ["/grpc.health.v1.Health"]},
                {"name": "gone", "service": "gone", "paths": ["/gone.Service"]},
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

    // grpc-timeout (the client's 1 s deadline) bounds the gateway's wait
    // below the service's 30 s timeout: the gateway answers
    // DEADLINE_EXCEEDED itself, and says so in its access log.
    let slow = calls(gateway.clone(), with_key.clone(), &["slow"], 1.0).await;
    assert_eq!(slow[0]["code"], "DEADLINE_EXCEEDED", "{}", slow[0]);
    wait_until(
        "the gateway's own deadline in the log",
        Duration::from_secs(20),
        || async {
            std::fs::read_to_string(&log_path)
                .unwrap_or_default()
                .lines()
                .filter_map(|line| serde_json::from_str::<Value>(line).ok())
                .any(|line| {
                    line["path"] == "/test.Echo/Slow" && line["error"] == "upstream_timeout"
                })
                .then_some(())
        },
    )
    .await;
    drop(server);
}
