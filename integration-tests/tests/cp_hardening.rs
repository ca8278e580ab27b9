//! End-to-end hardening tests of the control plane (issue 26): the real
//! `tollgate-cp` probed as a hostile or careless operator would, through the
//! real gRPC admin API and the real `tollgatectl`. After every case the server
//! must still answer a health check.
//!
//! Every load loop here is bounded in count and in time, talks to 127.0.0.1
//! only, and the only processes killed are the ones the test started (the
//! fixture kills by PID).
//!
//! Run `cargo build --bins` first. Figures are printed (`--nocapture`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use tollgate_integration_tests::cp::{
    many_routes, orders_config, ControlPlane, CpOptions, RawCodec, StreamSubscriber,
};
use tollgate_shared::model::{GatewayConfig, Route, Service};
use tollgate_shared::proto::admin::{ApplyRequest, Kind, ListRequest};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

// ---------------------------------------------------------------- helpers

fn config(yaml: &str) -> GatewayConfig {
    GatewayConfig::from_yaml(yaml).expect("test config parses")
}

async fn revision(cp: &ControlPlane) -> u64 {
    cp.try_apply(&current(cp).await, true)
        .await
        .expect("dry run of the current state")
}

async fn current(cp: &ControlPlane) -> GatewayConfig {
    let mut admin = cp.admin().await;
    let export = admin
        .export(tollgate_shared::proto::admin::ExportRequest::default())
        .await
        .expect("export")
        .into_inner();
    GatewayConfig::try_from(&export.config.unwrap_or_default()).expect("export converts")
}

#[track_caller]
fn assert_refused(status: &tonic::Status, code: Code, needles: &[&str]) {
    assert_eq!(status.code(), code, "{status:?}");
    for needle in needles {
        assert!(
            status.message().contains(needle),
            "{:?} should contain {needle:?}",
            status.message()
        );
    }
    assert!(
        status.message().len() <= 4096,
        "message of {} bytes",
        status.message().len()
    );
}

async fn assert_healthy(cp: &ControlPlane, after: &str) {
    assert_eq!(
        cp.health().await,
        Some(ServingStatus::Serving),
        "health check failed after {after}:\n{}",
        cp.logs()
    );
}

fn write_file(cp: &ControlPlane, name: &str, contents: &[u8]) -> String {
    let path = cp.scratch_dir().join(name);
    std::fs::write(&path, contents).expect("write test file");
    path.display().to_string()
}

/// Base64 of `bytes` (standard alphabet, padded), for test PEMs.
fn base64(bytes: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                TABLE[((n >> (18 - 6 * i)) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

/// A DER of `depth` nested SEQUENCEs around a NULL, with minimal lengths.
fn nested_der(depth: usize) -> Vec<u8> {
    let mut der = vec![0x05, 0x00];
    for _ in 0..depth {
        let len = der.len();
        let mut wrapped = vec![0x30];
        match len {
            0..=0x7f => wrapped.push(len as u8),
            0x80..=0xff => wrapped.extend([0x81, len as u8]),
            0x100..=0xffff => wrapped.extend([0x82, (len >> 8) as u8, len as u8]),
            _ => wrapped.extend([0x83, (len >> 16) as u8, (len >> 8) as u8, len as u8]),
        }
        wrapped.extend_from_slice(&der);
        der = wrapped;
    }
    der
}

fn nested_pem(depth: usize) -> String {
    let body = base64(&nested_der(depth));
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect();
    format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        lines.join("\n")
    )
}

fn jwt_consumer_yaml(public_key: &str) -> String {
    format!(
        "consumers:\n  - name: svc\n    credentials:\n      - jwt:\n          key: issuer\n          algorithm: RS256\n          public_key: {}\n",
        serde_json::to_string(public_key).unwrap_or_default()
    )
}

// ---------------------------------------------------------------- connections

/// Reads until the server closes the connection; `None` if it stays open past `limit`.
fn time_until_closed(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("read timeout");
    let mut buf = [0u8; 4096];
    while started.elapsed() < limit {
        match stream.read(&mut buf) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Some(started.elapsed()),
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_under_a_low_fd_limit_cannot_stop_the_server() {
    const HANDSHAKE_MS: u64 = 500;
    const IDLE_MS: u64 = 1_000;
    let mut cp = ControlPlane::start_with(CpOptions {
        nofile_limit: Some(256),
        env: vec![
            (
                "TOLLGATE_CP_HANDSHAKE_TIMEOUT_MS".into(),
                HANDSHAKE_MS.to_string(),
            ),
            ("TOLLGATE_CP_IDLE_TIMEOUT_MS".into(), IDLE_MS.to_string()),
        ],
        ..Default::default()
    })
    .await;
    let port = cp.port();

    // 1,000 idle connections, opened in waves of 250 held at once (more than
    // the 256 descriptors the server has), then closed.
    let started = Instant::now();
    let mut opened = 0usize;
    for _wave in 0..4 {
        let wave = tokio::task::spawn_blocking(move || {
            let mut held = Vec::new();
            for _ in 0..250 {
                if let Ok(stream) = TcpStream::connect_timeout(
                    &format!("127.0.0.1:{port}").parse().expect("addr"),
                    Duration::from_secs(2),
                ) {
                    held.push(stream);
                }
            }
            std::thread::sleep(Duration::from_millis(300));
            held.len()
        });
        opened += wave.await.expect("wave");
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "waves took too long"
        );
    }
    eprintln!(
        "opened and closed {opened} idle connections in {:?}",
        started.elapsed()
    );
    assert!(opened >= 900, "only {opened} connections opened");

    // Still serving (health and an admin call), within a few seconds.
    let deadline = Instant::now() + Duration::from_secs(10);
    while cp.health().await != Some(ServingStatus::Serving) {
        assert!(
            Instant::now() < deadline,
            "not serving after the idle storm:\n{}",
            cp.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cp.try_apply(&orders_config(), false)
        .await
        .expect("an apply after the storm");

    // The server closes a silent connection after the handshake timeout...
    let mut silent = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let closed = time_until_closed(&mut silent, Duration::from_secs(10))
        .expect("a connection without preface is closed");
    eprintln!("no-preface connection closed after {closed:?} (timeout {HANDSHAKE_MS} ms)");
    assert!(
        closed >= Duration::from_millis(HANDSHAKE_MS - 100),
        "{closed:?}"
    );
    assert!(
        closed < Duration::from_millis(HANDSHAKE_MS + 2_000),
        "{closed:?}"
    );

    // ...and an HTTP/2 connection with no call after the idle timeout.
    let mut idle = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    idle.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .expect("preface");
    let closed = time_until_closed(&mut idle, Duration::from_secs(10))
        .expect("an idle HTTP/2 connection is closed");
    eprintln!("idle HTTP/2 connection closed after {closed:?} (timeout {IDLE_MS} ms)");
    assert!(closed >= Duration::from_millis(IDLE_MS - 100), "{closed:?}");
    assert!(
        closed < Duration::from_millis(IDLE_MS + 2_000),
        "{closed:?}"
    );

    // A config stream is a call in progress: never closed as idle.
    let mut dp = cp.subscribe("dp-idle", None).await.expect("subscribe");
    assert!(dp.next_snapshot(Duration::from_secs(5)).await.is_some());
    tokio::time::sleep(Duration::from_millis(3 * IDLE_MS)).await;
    cp.try_apply(&many_routes(2), false).await.expect("apply");
    assert!(
        dp.next_snapshot(Duration::from_secs(5)).await.is_some(),
        "the stream survived the idle timeout"
    );
    assert_healthy(&cp, "the idle checks").await;
    let status = cp.stop().expect("was running");
    assert!(status.success(), "SIGTERM exit: {status}");
}

// ---------------------------------------------------------------- large writes

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_whose_snapshot_exceeds_the_message_limit_is_refused() {
    let cp = ControlPlane::start().await;
    let before = cp.try_apply(&orders_config(), false).await.expect("base");
    // Short API keys become 71-byte hashes: a 16 MB Apply whose snapshot
    // would be about 68 MB.
    let consumers: Vec<String> = (0..28_000)
        .map(|c| {
            let keys: Vec<String> = (0..32)
                .map(|k| format!("{{api_key: k{c:05}-{k:02}x}}"))
                .collect();
            format!("  - {{name: c{c}, credentials: [{}]}}", keys.join(","))
        })
        .collect();
    let mut big = orders_config();
    big.consumers = config(&format!("consumers:\n{}\n", consumers.join("\n"))).consumers;
    let started = Instant::now();
    let status = cp.try_apply(&big, false).await.expect_err("refused");
    eprintln!(
        "oversized snapshot refused in {:?}: {}",
        started.elapsed(),
        status.message()
    );
    assert_refused(
        &status,
        Code::ResourceExhausted,
        &["config:", "67043328", "byte limit"],
    );
    assert_eq!(revision(&cp).await, before, "nothing stored");
    assert_healthy(&cp, "the oversized snapshot").await;
}

// ---------------------------------------------------------------- slow readers

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_readers_that_stop_reading_are_cut_off_and_memory_stays_bounded() {
    const MAX_LAG_MS: u64 = 2_000;
    let cp = ControlPlane::start_with(CpOptions {
        env: vec![("TOLLGATE_STREAM_MAX_LAG_MS".into(), MAX_LAG_MS.to_string())],
        ..Default::default()
    })
    .await;
    let pid = cp.pid().expect("running");
    let rss = || {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            })
            .unwrap_or(0)
            / 1024
    };
    cp.try_apply(&many_routes(10_000), false)
        .await
        .expect("10,000 routes");
    let start_rss = rss();

    // 20 subscribers that say hello and never read, with small HTTP/2
    // windows so the server, not the client library, holds what is unread.
    let mut stuck = Vec::new();
    for i in 0..20 {
        stuck.push(stuck_subscriber(&cp.stream_url(), &format!("stuck-{i}")).await);
    }
    let mut peak = start_rss;
    for change in 0..20 {
        let mut next = many_routes(10_000);
        next.routes[0].paths = vec![format!("/changed/{change}")];
        cp.try_apply(&next, false).await.expect("change");
        peak = peak.max(rss());
    }
    eprintln!("RSS: {start_rss} MiB before, {peak} MiB peak with 20 stuck readers over 20 changes");
    assert!(
        peak < start_rss + 400,
        "memory grew from {start_rss} to {peak} MiB"
    );

    // After the lag bound they are disconnected.
    let deadline = Instant::now() + Duration::from_millis(MAX_LAG_MS + 10_000);
    loop {
        let planes = cp
            .admin()
            .await
            .list_data_planes(tollgate_shared::proto::admin::ListDataPlanesRequest {})
            .await
            .expect("list data planes")
            .into_inner()
            .data_planes;
        let connected = planes.iter().filter(|p| p.connected).count();
        if connected == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{connected} stuck readers still connected"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after = rss();
    eprintln!("RSS after the stuck readers were cut off: {after} MiB");
    // A reading data plane gets the newest version.
    let mut fresh = cp.subscribe("fresh", None).await.expect("subscribe");
    let snapshot = fresh
        .next_snapshot(Duration::from_secs(10))
        .await
        .expect("snapshot");
    let got = tollgate_shared::model::GatewayConfig::try_from(&snapshot.config.expect("config"))
        .expect("model");
    assert!(got.routes.iter().any(|r| r.paths == ["/changed/19"]));
    drop(stuck);
    assert_healthy(&cp, "the stuck readers").await;
}

/// A config-stream subscriber that sends its hello and never reads.
async fn stuck_subscriber(
    url: &str,
    node_id: &str,
) -> (
    futures::channel::mpsc::Sender<tollgate_shared::proto::stream::DataPlaneMessage>,
    tonic::Streaming<tollgate_shared::proto::stream::ControlPlaneMessage>,
) {
    use futures::SinkExt;
    use tollgate_shared::proto::stream::{data_plane_message, DataPlaneMessage, Hello};
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())
        .expect("url")
        .initial_stream_window_size(Some(65_535))
        .initial_connection_window_size(Some(65_535))
        .connect()
        .await
        .expect("connect");
    let mut client =
        tollgate_shared::proto::stream::config_stream_client::ConfigStreamClient::new(channel)
            .max_decoding_message_size(64 * 1024 * 1024);
    let (mut outbound, receiver) = futures::channel::mpsc::channel(4);
    outbound
        .send(DataPlaneMessage {
            kind: Some(data_plane_message::Kind::Hello(Hello {
                node_id: node_id.to_string(),
                hostname: "stuck".into(),
                build_version: "test".into(),
                held_version: None,
                ..Hello::default()
            })),
        })
        .await
        .expect("hello");
    let inbound = client
        .subscribe(receiver)
        .await
        .expect("subscribe")
        .into_inner();
    (outbound, inbound)
}

// ---------------------------------------------------------------- bad input, named fields

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_reported_bad_input_gets_a_field_naming_error_and_nothing_is_stored() {
    let cp = ControlPlane::start().await;
    let before = cp.try_apply(&orders_config(), false).await.expect("base");

    let with_route = |edit: &dyn Fn(&mut Route)| {
        let mut c = orders_config();
        edit(&mut c.routes[0]);
        c
    };
    let with_service = |edit: &dyn Fn(&mut Service)| {
        let mut c = orders_config();
        edit(&mut c.services[0]);
        c
    };
    let transformer = |config: serde_json::Value| {
        with_route(&|r: &mut Route| {
            r.plugins = vec![tollgate_shared::model::PluginInstance::new(
                "request-transformer",
                config.clone(),
            )]
        })
    };
    let mut cases: Vec<(String, GatewayConfig, Vec<String>)> = Vec::new();
    for window in ["1é", "é", "1日", "mé"] {
        cases.push((
            format!("window {window:?}"),
            with_route(&|r: &mut Route| {
                r.plugins = vec![tollgate_shared::model::PluginInstance::new(
                    "rate-limit",
                    serde_json::json!({"limit": 1, "window": window}),
                )]
            }),
            vec!["route \"orders-api\": plugins[0].config.window".into()],
        ));
    }
    for value in ["a\u{1}b", "x\u{7f}"] {
        cases.push((
            format!("route header value {value:?}"),
            with_route(&|r: &mut Route| {
                r.headers = vec![tollgate_shared::model::HeaderMatch {
                    name: "x-v".into(),
                    value: Some(value.into()),
                }]
            }),
            vec!["headers[0].value: must not contain control characters".into()],
        ));
        cases.push((
            format!("transformer header value {value:?}"),
            transformer(serde_json::json!({"add": {"headers": {"x-a": value}}})),
            vec!["plugins[0].config.add.headers.\"x-a\": must not contain control".into()],
        ));
    }
    for name in ["a&b", "a=b", "a#b", "a\r\nb"] {
        cases.push((
            format!("query name {name:?}"),
            transformer(serde_json::json!({"add": {"querystring": {name: "v"}}})),
            vec![
                "plugins[0].config.add.querystring".into(),
                "must not contain".into(),
            ],
        ));
        cases.push((
            format!("removed query name {name:?}"),
            transformer(serde_json::json!({"remove": {"querystring": [name]}})),
            vec!["plugins[0].config.remove.querystring[0]".into()],
        ));
    }
    for address in ["h:+80", "::1:80", "[1.2.3.4]:80"] {
        cases.push((
            format!("target {address:?}"),
            with_service(&|s: &mut Service| s.upstream.targets[0].address = address.into()),
            vec!["service \"orders\": upstream.targets[0].address".into()],
        ));
    }
    cases.push((
        "host *.com".into(),
        with_route(&|r: &mut Route| r.hosts = vec!["*.com".into()]),
        vec!["hosts[0]".into(), "at least two labels".into()],
    ));
    cases.push((
        "1 KiB path".into(),
        with_route(&|r: &mut Route| r.paths = vec![format!("/{}", "a".repeat(1023))]),
        vec!["paths[0]: at most 512 bytes".into()],
    ));
    let hash = tollgate_shared::secrets::hash_api_key("shared-key-123");
    let upper = format!("sha256:{}", hash["sha256:".len()..].to_ascii_uppercase());
    cases.push((
        "one API key as lower- and upper-case hashes".into(),
        {
            let mut c = orders_config();
            c.consumers = config(&format!(
                "consumers:\n  - {{name: a, credentials: [{{api_key_hash: \"{hash}\"}}]}}\n  - {{name: b, credentials: [{{api_key_hash: \"{upper}\"}}]}}\n"
            ))
            .consumers;
            c
        },
        vec!["consumer \"b\": credentials[0].api_key: the same key".into()],
    ));
    cases.push((
        "5,000-level DER public key (27 KB)".into(),
        {
            let mut c = orders_config();
            c.consumers = config(&jwt_consumer_yaml(&nested_pem(5_000))).consumers;
            c
        },
        vec!["consumer \"svc\": credentials[0].jwt.public_key".into()],
    ));
    cases.push((
        "3,000-level DER public key (under the size limit)".into(),
        {
            let mut c = orders_config();
            c.consumers = config(&jwt_consumer_yaml(&nested_pem(3_000))).consumers;
            c
        },
        vec!["credentials[0].jwt.public_key: DER nested more than 32 levels".into()],
    ));

    for (what, bad, needles) in &cases {
        for dry_run in [true, false] {
            let status = cp.try_apply(bad, dry_run).await.expect_err(what);
            let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
            assert_refused(&status, Code::InvalidArgument, &needles);
        }
        assert_healthy(&cp, what).await;
    }
    assert_eq!(revision(&cp).await, before, "nothing stored");
    eprintln!("{} bad inputs refused naming their field", cases.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_values_are_refused_with_short_errors() {
    let cp = ControlPlane::start().await;
    let before = cp.try_apply(&orders_config(), false).await.expect("base");

    // A 50 MiB header value in a route.
    let mut big_value = orders_config();
    big_value.routes[0].headers = vec![tollgate_shared::model::HeaderMatch {
        name: "x-big".into(),
        value: Some("v".repeat(50 * 1024 * 1024)),
    }];
    let status = cp.try_apply(&big_value, false).await.expect_err("refused");
    assert_refused(
        &status,
        Code::InvalidArgument,
        &["headers[0].value: at most 4096 bytes"],
    );
    assert_healthy(&cp, "a 50 MiB header value").await;

    // A 48 MiB invalid name: the error is short and the name cut.
    let mut big_name = orders_config();
    big_name.routes[0].name = format!("{}!", "n".repeat(48 * 1024 * 1024));
    let status = cp.try_apply(&big_name, false).await.expect_err("refused");
    assert_refused(
        &status,
        Code::InvalidArgument,
        &["route \"nnnn", "…", "name: must be at most 128"],
    );
    eprintln!(
        "48 MiB name refused with a {}-byte message",
        status.message().len()
    );
    assert_healthy(&cp, "a 48 MiB name").await;

    // Over the 64 MiB message limit.
    let status = cp
        .raw_call(
            "/tollgate.admin.v1.Admin/Apply",
            vec![0u8; 65 * 1024 * 1024],
        )
        .await
        .expect_err("refused");
    assert_refused(&status, Code::ResourceExhausted, &["67108864"]);
    assert_healthy(&cp, "a 65 MiB message").await;
    assert_eq!(revision(&cp).await, before, "nothing stored");
}

// ---------------------------------------------------------------- status codes

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_codes_say_whose_fault_it_was() {
    const TOKEN: &str = "admin-token-for-tests";
    const CLUSTER: &str = "cluster-token-for-tests";
    let cp = ControlPlane::start_with(CpOptions {
        admin_token: Some(TOKEN.into()),
        cluster_token: Some(CLUSTER.into()),
        ..Default::default()
    })
    .await;

    // Undecodable protobuf: INVALID_ARGUMENT (tonic alone says INTERNAL).
    // Needs the token first, or the interceptor answers before decoding.
    let channel = tonic::transport::Endpoint::from_shared(cp.url())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::with_origin(channel, cp.url().parse().expect("uri"));
    for garbage in [vec![0xff, 0xff, 0xff, 0xff], vec![0x0a, 0x80], vec![0x08]] {
        grpc.ready().await.expect("ready");
        let mut request = tonic::Request::new(garbage);
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {TOKEN}").parse().expect("ascii"),
        );
        let status = grpc
            .unary(
                request,
                tonic::codegen::http::uri::PathAndQuery::from_static(
                    "/tollgate.admin.v1.Admin/Apply",
                ),
                RawCodec,
            )
            .await
            .expect_err("undecodable");
        assert_refused(
            &status,
            Code::InvalidArgument,
            &["not a valid protobuf message"],
        );
    }

    // The right token followed by spaces is refused; the exact one accepted.
    for token in [
        "admin-token-for-tests ",
        "admin-token-for-tests\t",
        "admin-token-for-test",
        " admin-token-for-tests",
    ] {
        let status = cp
            .admin_with_token(Some(token))
            .await
            .list(ListRequest {
                kind: Kind::Route as i32,
            })
            .await
            .expect_err("wrong token");
        assert_eq!(
            status.code(),
            Code::Unauthenticated,
            "{token:?}: {status:?}"
        );
    }
    cp.admin()
        .await
        .list(ListRequest {
            kind: Kind::Route as i32,
        })
        .await
        .expect("exact token");

    // 500 concurrent streams without the cluster token: all UNAUTHENTICATED.
    let url = cp.stream_url();
    let mut tasks = Vec::new();
    for i in 0..500 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            // A connection the loaded host drops before the call is answered
            // is a transport error, not a refusal: like a data plane, retry
            // it (at most twice). Every answered call must be UNAUTHENTICATED.
            let mut attempts = 0;
            loop {
                attempts += 1;
                let outcome = tokio::time::timeout(
                    Duration::from_secs(30),
                    StreamSubscriber::connect(&url, None, &format!("intruder-{i}"), None),
                )
                .await;
                let code = match outcome {
                    Ok(Err(status)) => {
                        if status.code() != Code::Unauthenticated {
                            eprintln!("stream {i} attempt {attempts}: {status:?}");
                        }
                        status.code()
                    }
                    Ok(Ok(_)) => Code::Ok,
                    Err(_) => Code::DeadlineExceeded,
                };
                let transport = matches!(code, Code::Unknown | Code::Unavailable);
                if !transport || attempts == 3 {
                    break code;
                }
            }
        }));
    }
    let mut codes = std::collections::BTreeMap::new();
    for task in tasks {
        *codes
            .entry(format!("{:?}", task.await.expect("task")))
            .or_insert(0) += 1;
    }
    assert_eq!(codes.len(), 1, "{codes:?}");
    assert_eq!(codes.get("Unauthenticated"), Some(&500), "{codes:?}");
    assert_healthy(&cp, "500 refused streams").await;
}

// ---------------------------------------------------------------- what must keep holding

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_applies_get_contiguous_revisions_and_the_last_wins() {
    let cp = std::sync::Arc::new(ControlPlane::start().await);
    let start = cp.try_apply(&orders_config(), false).await.expect("base");
    let mut tasks = Vec::new();
    for i in 0..200u32 {
        let cp = cp.clone();
        tasks.push(tokio::spawn(async move {
            let mut config = orders_config();
            config.routes[0].priority = i as i32 + 1;
            let revision = cp.try_apply(&config, false).await.expect("apply");
            (revision, i as i32 + 1)
        }));
    }
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.expect("task"));
    }
    results.sort();
    let revisions: Vec<u64> = results.iter().map(|(r, _)| *r).collect();
    let expected: Vec<u64> = (start + 1..=start + 200).collect();
    assert_eq!(revisions, expected, "distinct and contiguous");
    let last_priority = results.last().map(|(_, p)| *p).unwrap_or_default();
    assert_eq!(
        current(&cp).await.routes[0].priority,
        last_priority,
        "the last one wins"
    );
    assert_healthy(&cp, "200 concurrent applies").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_large_apply_leaves_the_old_or_the_new_state_whole() {
    let mut cp = ControlPlane::start().await;
    cp.try_apply(&orders_config(), false).await.expect("base");
    let big = many_routes(60_000);
    // Kill at three points inside the write (decode, validate, commit, fsync).
    for (round, delay_ms) in [1_000u64, 3_000, 3_600].into_iter().enumerate() {
        let before = revision(&cp).await;
        let before_routes = current(&cp).await.routes.len();
        let mut next = big.clone();
        next.routes[0].priority = round as i32 + 1;
        let request = ApplyRequest {
            select_tag: String::new(),
            config: Some((&next).into()),
            dry_run: false,
        };
        let mut admin = cp.admin().await;
        let call = tokio::spawn(async move { admin.apply(request).await });
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        cp.kill_9();
        let _ = tokio::time::timeout(Duration::from_secs(10), call).await;
        cp.restart().await;
        let after = revision(&cp).await;
        let state = current(&cp).await;
        eprintln!(
            "kill -9 {delay_ms} ms into a 60,000-route apply: revision {before} -> {after}, \
             {before_routes} -> {} routes",
            state.routes.len()
        );
        if after == before {
            assert_eq!(state.routes.len(), before_routes, "old state whole");
        } else {
            assert_eq!(after, before + 1, "one revision, never more, never less");
            assert_eq!(state.routes.len(), 60_000, "new state whole");
            assert_eq!(state.routes[0].priority, round as i32 + 1);
        }
    }
    assert_healthy(&cp, "kill -9 during a large apply").await;
}

// ---------------------------------------------------------------- tollgatectl

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tollgatectl_bounds_what_it_reads() {
    let cp = ControlPlane::start().await;
    let before = cp.try_apply(&orders_config(), false).await.expect("base");

    // The wide alias form: an anchor of 20,000 items referenced 20,000 times.
    let mut wide = String::from("services: []\nx: &a [");
    wide.push_str(&vec!["1"; 20_000].join(","));
    wide.push_str("]\ny: [");
    wide.push_str(&vec!["*a"; 20_000].join(","));
    wide.push_str("]\n");
    let path = write_file(&cp, "wide.yaml", wide.as_bytes());
    let started = Instant::now();
    let output = cp.ctl(&["diff", "-f", &path]);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    eprintln!(
        "wide alias file ({} bytes) refused in {:?}",
        wide.len(),
        started.elapsed()
    );
    assert!(!output.status.success());
    assert!(stderr.contains("wide.yaml:"), "{stderr}");
    assert!(
        stderr.contains("the document expands to more than 5000000 values"),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));

    // Deep nesting.
    let deep = format!("services: {}1{}\n", "[".repeat(200), "]".repeat(200));
    let path = write_file(&cp, "deep.yaml", deep.as_bytes());
    let output = cp.ctl(&["apply", "-f", &path]);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success());
    assert!(stderr.contains("deep.yaml:"), "{stderr}");

    // Larger than one Apply can carry.
    let path = cp.scratch_dir().join("huge.yaml");
    let file = std::fs::File::create(&path).expect("create");
    file.set_len(65 * 1024 * 1024).expect("sparse file");
    let output = cp.ctl(&["apply", "-f", &path.display().to_string()]);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success());
    assert!(stderr.contains("larger than 67108864 bytes"), "{stderr}");

    // The nested-DER key through `tollgatectl diff`, as reported.
    let path = write_file(
        &cp,
        "der.yaml",
        jwt_consumer_yaml(&nested_pem(5_000)).as_bytes(),
    );
    let output = cp.ctl(&["diff", "-f", &path]);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success());
    assert!(
        stderr.contains("consumer \"svc\": credentials[0].jwt.public_key"),
        "{stderr}"
    );

    assert_eq!(revision(&cp).await, before, "nothing stored");
    assert_healthy(&cp, "tollgatectl's bad files").await;
}
