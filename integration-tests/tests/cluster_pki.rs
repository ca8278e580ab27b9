//! Cluster PKI (issue 17): data planes join with one-time tokens, the config
//! stream is mutually authenticated TLS, revocation cuts a data plane off,
//! and certificates renew with no gap. Real `tollgate-cp`, `tollgatectl`,
//! `tollgate-dp`, a real upstream, and raw gRPC clients over rustls.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate_integration_tests::cp::{config_from_json, ControlPlane, CpOptions};
use tollgate_integration_tests::dp::DataPlane;
use tollgate_integration_tests::process::{bin_path, free_port, wait_until, ChildProcess};
use tollgate_integration_tests::tls::{grpc_client_config, grpc_tls_channel, GrpcTls};
use tollgate_integration_tests::upstream::Upstream;
use tollgate_shared::proto::stream::config_stream_client::ConfigStreamClient;
use tollgate_shared::proto::stream::{data_plane_message, DataPlaneMessage, Hello, JoinRequest};
use tonic::transport::Endpoint;

const WAIT: Duration = Duration::from_secs(20);

async fn start_cp(extra: &[&str]) -> (ControlPlane, u16) {
    let metrics = free_port();
    let mut args = vec![
        "--stream-tls".to_string(),
        "--metrics-listen".to_string(),
        format!("127.0.0.1:{metrics}"),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let cp = ControlPlane::start_with(CpOptions {
        separate_stream_port: true,
        args,
        ..CpOptions::default()
    })
    .await;
    (cp, metrics)
}

async fn apply_route(cp: &ControlPlane, upstream: &Upstream) -> u64 {
    cp.apply_revision(&config_from_json(serde_json::json!({
        "services": [{ "name": "echo", "upstream": { "targets": [{ "address": upstream.address() }] } }],
        "routes": [{ "name": "echo", "service": "echo", "paths": ["/echo"] }]
    })))
    .await
}

fn token(cp: &ControlPlane, ttl: &str) -> String {
    let output = cp.ctl(&["dataplanes", "token", "create", "--ttl", ttl]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

fn join(cp: &ControlPlane, node: &str, state: &Path, token: &str) -> DataPlane {
    DataPlane::start_with_url(
        &format!("https://127.0.0.1:{}", cp.stream_port()),
        node,
        &[
            "--state-dir".into(),
            state.display().to_string(),
            "--join-token".into(),
            token.into(),
        ],
    )
}

async fn metrics(port: u16) -> String {
    reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body")
}

async fn wait_connected(dp: &DataPlane, connected: bool) {
    wait_until("the data plane's stream state", WAIT, || async {
        ((dp.control_plane_state().await.as_deref() == Some("connected")) == connected)
            .then_some(())
    })
    .await
}

/// A gRPC channel over TLS to the stream port, trusting the cluster CA and
/// presenting no client certificate.
async fn channel_without_cert(cp: &ControlPlane) -> tonic::transport::Channel {
    let ca_pem = std::fs::read(cp.data_dir().join("pki/ca.pem")).expect("ca.pem");
    let connector = GrpcTls {
        config: Arc::new(grpc_client_config(&ca_pem, None)),
        server_name: "tollgate-control-plane",
    };
    grpc_tls_channel(cp.stream_port(), connector)
        .await
        .expect("TLS without a client certificate connects")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_planes_join_once_and_revoked_ones_are_cut_off() {
    let upstream = Upstream::start("echo").await;
    let (cp, metrics_port) = start_cp(&[]).await;
    let revision = apply_route(&cp, &upstream).await;
    let scratch = cp.scratch_dir().to_path_buf();

    // The CA was made on first start, owner-only.
    let pki = cp.data_dir().join("pki");
    let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode(&pki), 0o700);
    assert_eq!(mode(&pki.join("ca-key.pem")), 0o600);

    // Join: the data plane gets its certificate and serves the config.
    let secret = token(&cp, "1h");
    assert!(secret.starts_with("tgjoin."), "{secret}");
    let state = scratch.join("edge-1");
    let edge = join(&cp, "edge-1", &state, &secret);
    edge.wait_version(revision).await;
    let response = edge.get("api.test", "/echo").send().await.expect("request");
    assert_eq!(response.status(), 200);
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join("key.pem")), 0o600);
    assert!(state.join("cert.pem").exists() && state.join("ca.pem").exists());
    let listed = cp.ctl(&["dataplanes", "-o", "json"]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains("edge-1"));

    // The same token again: refused, the data plane exits with the reason.
    let mut again = join(&cp, "edge-2", &scratch.join("edge-2"), &secret);
    assert!(again.wait_exit(WAIT).is_some_and(|s| !s.success()));
    assert!(again.logs().contains("already used"), "{}", again.logs());

    // An expired token: refused.
    let short = token(&cp, "1s");
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let mut late = join(&cp, "edge-3", &scratch.join("edge-3"), &short);
    assert!(late.wait_exit(WAIT).is_some_and(|s| !s.success()));
    assert!(late.logs().contains("expired"), "{}", late.logs());

    // A token pinning another CA: the data plane does not even send it.
    let other_pin = format!(
        "{}.{}",
        &secret[..secret.rfind('.').expect("dot")],
        "00".repeat(32)
    );
    let mut pinned = join(&cp, "edge-4", &scratch.join("edge-4"), &other_pin);
    assert!(pinned.wait_exit(WAIT).is_some_and(|s| !s.success()));
    assert!(
        pinned.logs().contains("does not match the join token hash"),
        "{}",
        pinned.logs()
    );

    // No client certificate: TLS connects, but no config and no secret.
    let mut raw = ConfigStreamClient::new(channel_without_cert(&cp).await);
    let hello = DataPlaneMessage {
        kind: Some(data_plane_message::Kind::Hello(Hello {
            node_id: "edge-1".into(),
            ..Hello::default()
        })),
    };
    let refused = raw
        .subscribe(futures::stream::iter(vec![hello]))
        .await
        .expect_err("no stream without a certificate");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    assert!(
        refused.message().contains("client certificate"),
        "{refused:?}"
    );
    let bogus = raw
        .join(JoinRequest {
            token: format!("tgjoin.{}.{}", "A".repeat(43), "11".repeat(32)),
            csr_pem: "garbage".into(),
        })
        .await
        .expect_err("garbage join refused");
    assert_eq!(bogus.code(), tonic::Code::InvalidArgument, "{bogus:?}");
    // Plaintext gRPC on the TLS port gets nothing either.
    let plain = Endpoint::from_shared(format!("http://127.0.0.1:{}", cp.stream_port()))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect()
        .await;
    if let Ok(channel) = plain {
        let answer = ConfigStreamClient::new(channel)
            .join(JoinRequest::default())
            .await;
        assert!(answer.is_err(), "plaintext call answered: {answer:?}");
    }

    // Revoke: the open stream closes within about a second, and stays shut.
    wait_connected(&edge, true).await;
    let started = Instant::now();
    let revoked = cp.ctl(&["dataplanes", "revoke", "edge-1"]);
    assert!(
        revoked.status.success(),
        "{}",
        String::from_utf8_lossy(&revoked.stderr)
    );
    assert!(String::from_utf8_lossy(&revoked.stdout).contains("closed 1"));
    wait_connected(&edge, false).await;
    let cut_off = started.elapsed();
    eprintln!("revoked data plane disconnected after {cut_off:?}");
    assert!(cut_off < Duration::from_secs(5), "{cut_off:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_ne!(
        edge.control_plane_state().await.as_deref(),
        Some("connected")
    );
    assert!(edge.logs().contains("is revoked"), "{}", edge.logs());
    // It keeps serving its last config meanwhile.
    let response = edge.get("api.test", "/echo").send().await.expect("request");
    assert_eq!(response.status(), 200);
    let tokens = cp.ctl(&["dataplanes", "token", "list", "-o", "json"]);
    let tokens = String::from_utf8_lossy(&tokens.stdout).to_string();
    assert!(tokens.contains("edge-1"), "{tokens}");

    // Every refusal was logged and counted; no secret leaked.
    let text = metrics(metrics_port).await;
    for reason in [
        "join_token_used",
        "join_token_expired",
        "no_client_certificate",
        "revoked",
    ] {
        assert!(
            text.contains(&format!("reason=\"{reason}\"")),
            "{reason} not counted:\n{text}"
        );
    }
    let logs = format!(
        "{}{}{}{}",
        cp.logs(),
        edge.logs(),
        again.logs(),
        late.logs()
    );
    let token_secret = secret.split('.').nth(1).expect("secret part");
    for canary in [token_secret, "PRIVATE KEY", "BEGIN CERTIFICATE"] {
        assert!(!logs.contains(canary), "{canary:?} in the logs");
        assert!(!tokens.contains(canary), "{canary:?} in the token list");
    }
    let export = cp.ctl(&["export"]);
    assert!(!String::from_utf8_lossy(&export.stdout).contains(token_secret));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_renew_with_no_gap_in_service() {
    let upstream = Upstream::start("echo").await;
    let (mut cp, _) = start_cp(&["--data-plane-cert-ttl-secs", "6"]).await;
    let revision = apply_route(&cp, &upstream).await;
    let state = cp.scratch_dir().join("edge");
    let edge = join(&cp, "edge-renew", &state, &token(&cp, "10m"));
    edge.wait_version(revision).await;
    let first = std::fs::read_to_string(state.join("cert.pem")).expect("cert");

    // Requests through the data plane for 14 s (two lifetimes), bounded in
    // count: every one must succeed while the certificate renews.
    let mut certificates = vec![first.clone()];
    let mut served = 0u32;
    let deadline = Instant::now() + Duration::from_secs(14);
    while Instant::now() < deadline && served < 2_000 {
        let response = edge.get("api.test", "/echo").send().await.expect("request");
        assert_eq!(response.status(), 200, "request {served} failed");
        served += 1;
        let current = std::fs::read_to_string(state.join("cert.pem")).unwrap_or_default();
        if !current.is_empty() && certificates.last() != Some(&current) {
            certificates.push(current);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("{served} requests, {} certificates", certificates.len());
    assert!(
        certificates.len() >= 3,
        "renewed {} times",
        certificates.len() - 1
    );
    assert_eq!(
        std::fs::metadata(state.join("key.pem"))
            .expect("key")
            .permissions()
            .mode()
            & 0o777,
        0o600
    );

    // The first certificate expired long ago: a restarted control plane
    // sees the data plane back on its renewed one, and it takes new config.
    cp.restart().await;
    wait_connected(&edge, true).await;
    let next = cp
        .apply_revision(&config_from_json(serde_json::json!({
            "services": [{ "name": "echo", "upstream": { "targets": [{ "address": upstream.address() }] } }],
            "routes": [{ "name": "echo", "service": "echo", "paths": ["/echo", "/again"] }]
        })))
        .await;
    edge.wait_version(next).await;
    let response = edge
        .get("api.test", "/again")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
}

/// Item 3: beyond loopback the stream is TLS without being asked; plaintext
/// there needs an explicit, token-guarded opt-in; loopback stays plaintext
/// (every other test file, and the quickstart, rely on that).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_loopback_the_stream_is_tls() {
    let upstream = Upstream::start("echo").await;
    let stream_port = free_port();
    let cp = ControlPlane::start_with(CpOptions {
        args: vec!["--stream-listen".into(), format!("0.0.0.0:{stream_port}")],
        ..CpOptions::default()
    })
    .await;
    let revision = apply_route(&cp, &upstream).await;
    let plain = DataPlane::start(stream_port, "plain", &[]);
    let joined = DataPlane::start_with_url(
        &format!("https://127.0.0.1:{stream_port}"),
        "joined",
        &[
            "--state-dir".into(),
            cp.scratch_dir().join("joined").display().to_string(),
            "--join-token".into(),
            token(&cp, "1h"),
        ],
    );
    joined.wait_version(revision).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_ne!(
        plain.control_plane_state().await.as_deref(),
        Some("connected")
    );
    assert_eq!(
        plain.revision().await,
        None,
        "a plaintext data plane got config"
    );

    let refuse = |args: &[&str], expected: &str| {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut all: Vec<String> = vec![
            "--admin-listen".into(),
            format!("127.0.0.1:{}", free_port()),
            "--data-dir".into(),
            dir.path().join("data").display().to_string(),
        ];
        all.extend(args.iter().map(|a| a.to_string()));
        let mut process = ChildProcess::spawn("tollgate-cp", &bin_path("tollgate-cp"), &all, &[]);
        let status = process.wait_exit(WAIT).expect("refuses and exits");
        assert!(!status.success());
        assert!(process.logs().contains(expected), "{}", process.logs());
    };
    let beyond = format!("0.0.0.0:{}", free_port());
    refuse(
        &["--stream-listen", &beyond, "--insecure-plaintext-stream"],
        "--cluster-token",
    );
    refuse(&["--stream-tls"], "--stream-listen");
}
