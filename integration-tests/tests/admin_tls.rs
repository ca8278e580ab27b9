//! The admin API over TLS and operator client certificates (issue 17, item
//! 4): real `tollgate-cp` (`--admin-tls`, cluster CA), real `tollgatectl`
//! (`--ca-cert`, `--client-cert`, `--client-key`, `operators cert ...`), a
//! real joined `tollgate-dp`, and raw tonic clients over rustls.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use tollgate_integration_tests::cp::{ControlPlane, CpOptions};
use tollgate_integration_tests::dp::DataPlane;
use tollgate_integration_tests::process::{bin_path, free_port, wait_until, ChildProcess};
use tollgate_integration_tests::tls::{grpc_client_config, grpc_tls_channel, write, Ca, GrpcTls};
use tollgate_shared::proto::admin::admin_client::AdminClient;
use tollgate_shared::proto::admin::ListRequest;
use tollgate_shared::proto::stream::config_stream_client::ConfigStreamClient;
use tollgate_shared::proto::stream::{data_plane_message, DataPlaneMessage, Hello};

fn list_services() -> ListRequest {
    ListRequest {
        kind: tollgate_shared::proto::admin::Kind::Service as i32,
    }
}

const TOKEN: &str = "boot-admin-token-4f1c9a7e";
const WAIT: Duration = Duration::from_secs(20);

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn ok(what: &str, out: &Output) -> String {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn refused(what: &str, out: &Output) -> String {
    assert!(
        !out.status.success(),
        "{what} succeeded: {}",
        text(&out.stdout)
    );
    text(&out.stderr)
}

/// `tollgatectl` against the TLS admin API with an operator certificate and
/// no token.
fn as_operator(cp: &ControlPlane, dir: &Path, name: &str, args: &[&str]) -> Output {
    let cert = dir.join(format!("{name}.crt")).display().to_string();
    let key = dir.join(format!("{name}.key")).display().to_string();
    let mut all = vec!["--client-cert", cert.as_str(), "--client-key", key.as_str()];
    all.extend_from_slice(args);
    cp.ctl_with_env(&all, &[])
}

fn config_file(dir: &Path, service: &str) -> String {
    write(
        dir,
        &format!("{service}.yaml"),
        &format!(
            "services:\n  - name: {service}\n    upstream:\n      targets:\n        - address: 127.0.0.1:9\n"
        ),
    )
    .display()
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_authenticate_with_client_certificates_over_tls() {
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path();
    // An operator PKI of the team's own, trusted with --admin-client-ca; and
    // a rogue CA nobody trusts.
    let byo = Ca::new("Team operators CA");
    let byo_path = write(dir, "byo-ca.pem", &byo.pem);
    let rogue = Ca::new("Rogue CA");
    let metrics = free_port();
    let cp = ControlPlane::start_with(CpOptions {
        admin_token: Some(TOKEN.into()),
        separate_stream_port: true,
        admin_tls: true,
        args: vec![
            "--stream-tls".into(),
            "--admin-client-ca".into(),
            byo_path.display().to_string(),
            "--metrics-listen".into(),
            format!("127.0.0.1:{metrics}"),
        ],
        ..CpOptions::default()
    })
    .await;
    assert!(cp
        .logs()
        .contains("(TLS; a token or an operator certificate"));

    // A plaintext client on the TLS admin port gets nowhere, and is told why.
    let out = std::process::Command::new(bin_path("tollgatectl"))
        .env_remove("TOLLGATE_ADMIN_TOKEN")
        .args([
            "--server",
            &format!("http://127.0.0.1:{}", cp.port()),
            "--token",
            TOKEN,
            "get",
            "routes",
        ])
        .output()
        .expect("tollgatectl");
    let err = refused("plaintext tollgatectl", &out);
    assert!(err.contains("use https:// with --ca-cert"), "{err}");
    let plain = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", cp.port()))
        .expect("url")
        .timeout(Duration::from_secs(5))
        .connect()
        .await;
    if let Ok(channel) = plain {
        let answer = AdminClient::new(channel).list(list_services()).await;
        assert!(answer.is_err(), "plaintext gRPC got an answer");
    }

    // The admin token still works over TLS; neither token nor certificate
    // is UNAUTHENTICATED.
    ok("token over TLS", &cp.ctl(&["get", "routes"]));
    let err = refused("no credentials", &cp.ctl_with_env(&["get", "routes"], &[]));
    assert!(err.contains("unauthenticated"), "{err}");
    assert!(err.contains("operator client certificate"), "{err}");

    // The CA file is the flag's business when it is wrong.
    let err = refused(
        "missing CA",
        &cp.ctl_with_env(&["--ca-cert", "/nonexistent/ca.pem", "get", "routes"], &[]),
    );
    assert!(err.contains("--ca-cert"), "{err}");
    let rogue_ca = write(dir, "rogue-ca.pem", &rogue.pem);
    let out = std::process::Command::new(bin_path("tollgatectl"))
        .env_remove("TOLLGATE_ADMIN_TOKEN")
        .args(["--server", &cp.url(), "--token", TOKEN, "--ca-cert"])
        .arg(&rogue_ca)
        .args(["get", "routes"])
        .output()
        .expect("tollgatectl");
    let err = refused("CA mismatch", &out);
    assert!(err.contains("not signed by the CA in --ca-cert"), "{err}");

    // Operator certificates: the key is made by tollgatectl, only a CSR
    // travels; viewer reads, is refused a write naming the roles.
    let ops = dir.join("ops");
    let out = ok(
        "create viewer",
        &cp.ctl(&[
            "operators",
            "cert",
            "create",
            "vic",
            "--role",
            "viewer",
            "--ttl",
            "1h",
            "--out",
            &ops.display().to_string(),
        ]),
    );
    assert!(out.contains("role viewer"), "{out}");
    assert!(!out.contains("PRIVATE KEY"), "{out}");
    let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode(&ops.join("vic.key")), 0o600);
    assert_eq!(mode(&ops), 0o700);
    ok(
        "create editor",
        &cp.ctl(&[
            "operators",
            "cert",
            "create",
            "eddie",
            "--role",
            "editor",
            "--ttl",
            "1h",
            "--out",
            &ops.display().to_string(),
        ]),
    );
    let routes = as_operator(&cp, &ops, "vic", &["get", "routes"]);
    assert!(ok("viewer reads", &routes).contains("no routes"));
    let apply = config_file(dir, "billing");
    let err = refused(
        "viewer writes",
        &as_operator(&cp, &ops, "vic", &["apply", "-f", &apply]),
    );
    assert!(err.contains("permission denied"), "{err}");
    assert!(
        err.contains("needs role editor; the operator certificate of \"vic\" has role viewer"),
        "{err}"
    );
    let err = refused(
        "viewer issues certificates",
        &as_operator(&cp, &ops, "vic", &["operators", "cert", "list"]),
    );
    assert!(err.contains("needs role admin"), "{err}");
    // The editor writes; the audit log names the certificate and its role.
    ok(
        "editor writes",
        &as_operator(&cp, &ops, "eddie", &["apply", "-f", &apply]),
    );
    let audit = ok("audit", &cp.ctl(&["audit", "-o", "json"]));
    let entries: serde_json::Value = serde_json::from_str(&audit).expect("audit json");
    let apply_entry = entries
        .as_array()
        .expect("entries")
        .iter()
        .find(|e| e["call"] == "Apply")
        .unwrap_or_else(|| panic!("no Apply in {audit}"));
    assert_eq!(apply_entry["actor"], "cert:eddie", "{apply_entry}");
    assert_eq!(apply_entry["role"], "editor", "{apply_entry}");

    // Revocation applies at the next call, also on a connection opened
    // before it.
    let vic = (
        std::fs::read(ops.join("vic.crt")).expect("crt"),
        std::fs::read(ops.join("vic.key")).expect("key"),
    );
    let channel = cp
        .admin_tls_channel(Some((&vic.0, &vic.1)))
        .await
        .expect("viewer connects");
    let mut open = AdminClient::new(channel);
    open.list(list_services())
        .await
        .expect("viewer lists over its open connection");
    let out = ok("revoke", &cp.ctl(&["operators", "cert", "revoke", "vic"]));
    assert!(out.contains("revoked the certificate of \"vic\""), "{out}");
    let status = open
        .list(list_services())
        .await
        .expect_err("a revoked certificate is refused on its open connection");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("revoked"), "{status:?}");
    let err = refused(
        "revoked viewer",
        &as_operator(&cp, &ops, "vic", &["get", "routes"]),
    );
    assert!(err.contains("is revoked"), "{err}");
    ok(
        "the editor is not revoked",
        &as_operator(&cp, &ops, "eddie", &["get", "services"]),
    );
    let list = ok(
        "list certificates",
        &cp.ctl(&["operators", "cert", "list", "-o", "json"]),
    );
    let certs: serde_json::Value = serde_json::from_str(&list).expect("json");
    let revoked: Vec<(String, bool)> = certs
        .as_array()
        .expect("certs")
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or_default().to_string(),
                c["revoked"].as_bool().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        revoked,
        vec![("eddie".to_string(), false), ("vic".to_string(), true)]
    );

    // A data plane's certificate (same CA) is never an operator's.
    let join_token = ok(
        "join token",
        &cp.ctl(&["dataplanes", "token", "create", "--ttl", "10m"]),
    );
    let state = dir.join("dp-state");
    let dp = DataPlane::start_with_url(
        &format!("https://127.0.0.1:{}", cp.stream_port()),
        "edge-1",
        &[
            "--state-dir".into(),
            state.display().to_string(),
            "--join-token".into(),
            join_token.trim().to_string(),
        ],
    );
    wait_until("the data plane joins", WAIT, || async {
        (dp.control_plane_state().await.as_deref() == Some("connected")).then_some(())
    })
    .await;
    let out = cp.ctl_with_env(
        &[
            "--client-cert",
            &state.join("cert.pem").display().to_string(),
            "--client-key",
            &state.join("key.pem").display().to_string(),
            "get",
            "routes",
        ],
        &[],
    );
    let err = refused("data-plane certificate on admin", &out);
    assert!(
        err.contains("a data plane's certificate is not an operator certificate"),
        "{err}"
    );

    // An operator certificate gets no config on the stream.
    let eddie = (
        std::fs::read(ops.join("eddie.crt")).expect("crt"),
        std::fs::read(ops.join("eddie.key")).expect("key"),
    );
    let ca = std::fs::read(cp.ca_path()).expect("ca");
    let stream = grpc_tls_channel(
        cp.stream_port(),
        GrpcTls {
            config: Arc::new(grpc_client_config(&ca, Some((&eddie.0, &eddie.1)))),
            server_name: "tollgate-control-plane",
        },
    )
    .await
    .expect("TLS to the stream port");
    let hello = DataPlaneMessage {
        kind: Some(data_plane_message::Kind::Hello(Hello {
            node_id: "eddie".into(),
            ..Hello::default()
        })),
    };
    let subscribed = ConfigStreamClient::new(stream)
        .subscribe(futures::stream::iter([hello]))
        .await;
    match subscribed {
        Err(status) => assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}"),
        Ok(response) => {
            let first = response.into_inner().message().await;
            assert!(
                matches!(&first, Err(status) if status.code() == tonic::Code::Unauthenticated),
                "an operator certificate got {first:?}"
            );
        }
    }

    // Another CA's certificate, even naming an operator, fails the handshake.
    let rogue_op = rogue.issue_operator("mallory", Some("urn:tollgate:operator:mallory:admin"));
    write(dir, "mallory.crt", &rogue_op.cert_pem);
    write(dir, "mallory.key", &rogue_op.key_pem);
    let err = refused(
        "another CA's certificate",
        &as_operator(&cp, dir, "mallory", &["get", "routes"]),
    );
    assert!(err.contains("refuse"), "{err}");
    wait_until("the handshake refusal is logged", WAIT, || async {
        cp.logs()
            .contains("admin API TLS handshake failed")
            .then_some(())
    })
    .await;
    let scrape = reqwest::get(format!("http://127.0.0.1:{metrics}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body");
    assert!(
        scrape.contains("tollgate_cp_admin_refusals_total{reason=\"tls_handshake\"}"),
        "{scrape}"
    );

    // Bring your own PKI: the same URI SAN convention from --admin-client-ca;
    // a certificate naming no operator is refused; revocation by serial.
    let bob = byo.issue_operator("bob", Some("urn:tollgate:operator:bob:editor"));
    write(dir, "bob.crt", &bob.cert_pem);
    write(dir, "bob.key", &bob.key_pem);
    ok(
        "a team-CA editor writes",
        &as_operator(
            &cp,
            dir,
            "bob",
            &["apply", "-f", &config_file(dir, "orders")],
        ),
    );
    let anon = byo.issue_operator("anon", None);
    write(dir, "anon.crt", &anon.cert_pem);
    write(dir, "anon.key", &anon.key_pem);
    let err = refused(
        "a certificate naming no operator",
        &as_operator(&cp, dir, "anon", &["get", "routes"]),
    );
    assert!(err.contains("urn:tollgate:operator:"), "{err}");
    let serial = {
        let out = std::process::Command::new("openssl")
            .args(["x509", "-noout", "-serial", "-in"])
            .arg(dir.join("bob.crt"))
            .output()
            .expect("openssl");
        ok("openssl serial", &out)
            .trim()
            .trim_start_matches("serial=")
            .to_string()
    };
    ok(
        "revoke by serial",
        &cp.ctl(&["operators", "cert", "revoke", &serial]),
    );
    let err = refused(
        "revoked team-CA certificate",
        &as_operator(&cp, dir, "bob", &["get", "routes"]),
    );
    assert!(err.contains("is revoked"), "{err}");

    // Canary: no token, key or certificate body in the logs, the audit log,
    // the certificate list or the export.
    let export = ok("export", &cp.ctl(&["export"]));
    let audit = ok("audit", &cp.ctl(&["audit", "-o", "json"]));
    let key_body = |pem: &[u8]| {
        text(pem)
            .lines()
            .nth(1)
            .expect("a PEM body line")
            .to_string()
    };
    let secrets = [
        TOKEN.to_string(),
        join_token.trim().to_string(),
        key_body(&vic.1),
        key_body(&eddie.1),
        key_body(bob.key_pem.as_bytes()),
        key_body(&std::fs::read(state.join("key.pem")).expect("dp key")),
        key_body(&std::fs::read(cp.data_dir().join("pki/ca-key.pem")).expect("CA key")),
    ];
    for (what, haystack) in [
        ("cp log", cp.logs()),
        ("dp log", dp.logs()),
        ("audit", audit),
        ("certificate list", list),
        ("export", export),
    ] {
        assert!(!haystack.contains("PRIVATE KEY"), "{what} holds a key");
        for secret in &secrets {
            assert!(!haystack.contains(secret.as_str()), "{what} leaks a secret");
        }
    }
}

#[test]
fn a_non_loopback_admin_api_needs_tls_unless_opted_out() {
    let start = |extra: &[&str]| {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut args: Vec<String> = vec![
            "--admin-listen".into(),
            format!("0.0.0.0:{}", free_port()),
            "--data-dir".into(),
            dir.path().join("data").display().to_string(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        let process = ChildProcess::spawn(
            "tollgate-cp",
            &bin_path("tollgate-cp"),
            &args,
            &[("TOLLGATE_ADMIN_TOKEN".to_string(), TOKEN.to_string())],
        );
        (dir, process)
    };
    // TLS is implied beyond loopback, and needs the stream on its own port.
    let (_dir, mut process) = start(&[]);
    let status = process.wait_exit(WAIT).expect("refuses and exits");
    assert!(!status.success());
    assert!(
        process
            .logs()
            .contains("--admin-tls, always on beyond loopback unless --insecure-plaintext-admin"),
        "{}",
        process.logs()
    );
    // With its own stream port it serves TLS on both.
    let stream = format!("0.0.0.0:{}", free_port());
    let (_dir, mut process) = start(&["--stream-listen", &stream]);
    let logs = wait_for_log(&mut process, "admin API listening");
    assert!(
        logs.contains("(TLS; a token or an operator certificate"),
        "{logs}"
    );
    process.kill_9();
    // The explicit opt-out keeps the old plaintext behaviour.
    let (_dir, mut process) = start(&[
        "--insecure-plaintext-admin",
        "--insecure-plaintext-stream",
        "--cluster-token",
        "cluster-token-3b8e",
    ]);
    let logs = wait_for_log(&mut process, "admin API listening");
    assert!(!logs.contains("(TLS;"), "{logs}");
    process.kill_9();
}

fn wait_for_log(process: &mut ChildProcess, needle: &str) -> String {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let logs = process.logs();
        if logs.contains(needle) {
            return logs;
        }
        assert!(process.is_running(), "exited: {logs}");
        assert!(
            std::time::Instant::now() < deadline,
            "no {needle:?} in {logs}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
