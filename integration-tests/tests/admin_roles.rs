//! Named admin tokens with roles, and the audit log, end to end: a real
//! `tollgate-cp` with a bootstrap token, driven through the real
//! `tollgatectl` and the gRPC admin API.

use std::time::Duration;

use tollgate_integration_tests::cp::{config_from_json, orders_config, ControlPlane, CpOptions};
use tollgate_shared::proto::admin::{EntityRef, Kind, ListAuditRequest};

const BOOTSTRAP: &str = "bootstrap-admin-token-0123456789";

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `tollgatectl tokens create NAME --role ROLE` as the bootstrap admin.
fn create_token(cp: &ControlPlane, name: &str, role: &str) -> String {
    let out = cp.ctl(&["tokens", "create", name, "--role", role]);
    assert!(out.status.success(), "tokens create: {}", stderr(&out));
    let token = stdout(&out).trim().to_string();
    assert!(token.starts_with("tgt_"), "{token}");
    token
}

fn ctl_as(cp: &ControlPlane, token: &str, args: &[&str]) -> std::process::Output {
    cp.ctl_with_env(args, &[("TOLLGATE_ADMIN_TOKEN", token)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_limit_what_each_token_may_do_and_every_write_is_audited() {
    let cp = ControlPlane::start_with(CpOptions {
        admin_token: Some(BOOTSTRAP.into()),
        ..CpOptions::default()
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("gateway.json");
    std::fs::write(
        &file,
        serde_json::to_string(&orders_config()).expect("json"),
    )
    .expect("write config");
    let file = file.to_str().expect("utf-8 path");

    let viewer = create_token(&cp, "dashboards", "viewer");
    let editor = create_token(&cp, "ci-deploy", "editor");

    // A viewer reads and diffs, but cannot write: PERMISSION_DENIED naming the role.
    assert!(ctl_as(&cp, &viewer, &["get", "routes"]).status.success());
    let diff = ctl_as(&cp, &viewer, &["diff", "-f", file]);
    assert!(diff.status.success(), "a diff is a read: {}", stderr(&diff));
    let refused = ctl_as(&cp, &viewer, &["apply", "-f", file]);
    assert!(!refused.status.success());
    let message = stderr(&refused);
    assert!(
        message.contains("permission denied")
            && message.contains("needs role editor")
            && message.contains("role viewer"),
        "{message}"
    );
    let mut as_viewer = cp.admin_with_token(Some(&viewer)).await;
    let status = as_viewer
        .delete(EntityRef {
            kind: Kind::Route as i32,
            name: "orders-api".into(),
        })
        .await
        .expect_err("a viewer cannot delete");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");

    // An editor writes, but cannot create tokens.
    let applied = ctl_as(&cp, &editor, &["apply", "-f", file]);
    assert!(applied.status.success(), "{}", stderr(&applied));
    let no_tokens = ctl_as(
        &cp,
        &editor,
        &["tokens", "create", "sneaky", "--role", "admin"],
    );
    assert!(!no_tokens.status.success());
    assert!(
        stderr(&no_tokens).contains("CreateToken needs role admin"),
        "{}",
        stderr(&no_tokens)
    );

    // A field-level change by the editor, with a secret in it.
    let mut changed = orders_config();
    changed.routes[0].paths.push("/v2/orders".into());
    changed.consumers.push(
        config_from_json(serde_json::json!({
            "consumers": [{ "name": "partner", "credentials": [{ "api_key": "partner-secret-key-123" }] }]
        }))
        .consumers
        .remove(0),
    );
    std::fs::write(file, serde_json::to_string(&changed).expect("json")).expect("write");
    assert!(ctl_as(&cp, &editor, &["apply", "-f", file])
        .status
        .success());

    // Revocation takes effect on the very next call.
    let revoked = cp.ctl(&["tokens", "revoke", "ci-deploy"]);
    assert!(revoked.status.success(), "{}", stderr(&revoked));
    let after = ctl_as(&cp, &editor, &["get", "routes"]);
    assert!(!after.status.success());
    assert!(
        stderr(&after).contains("unauthenticated"),
        "{}",
        stderr(&after)
    );

    // The token list shows names, roles and fingerprints, never a token.
    let list = stdout(&cp.ctl(&["tokens", "list"]));
    assert!(
        list.contains("dashboards") && list.contains("viewer"),
        "{list}"
    );
    assert!(
        !list.contains("ci-deploy"),
        "revoked tokens are gone: {list}"
    );
    assert!(!list.contains(&viewer) && !list.contains(&editor));

    // The audit log: each write, by whom, with the changed fields, no secret.
    let audit = cp.ctl(&["audit", "--since", "1h", "-o", "json"]);
    assert!(audit.status.success(), "{}", stderr(&audit));
    let entries: serde_json::Value = serde_json::from_slice(&audit.stdout).expect("json");
    let entries = entries.as_array().expect("array");
    let calls: Vec<(String, String)> = entries
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap_or_default().to_string(),
                e["call"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(
        calls,
        [
            ("bootstrap".to_string(), "CreateToken".to_string()),
            ("bootstrap".into(), "CreateToken".into()),
            ("ci-deploy".into(), "Apply".into()),
            ("ci-deploy".into(), "Apply".into()),
            ("bootstrap".into(), "RevokeToken".into()),
        ],
        "{entries:#?}"
    );
    let second = &entries[3];
    let changes: Vec<&str> = second["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .filter_map(|c| c.as_str())
        .collect();
    assert!(
        changes.contains(&"~ route orders-api: paths"),
        "field-level change recorded: {changes:?}"
    );
    assert!(changes.contains(&"+ consumer partner"), "{changes:?}");
    assert!(second["revision"].as_u64().unwrap_or(0) >= 2);
    assert!(second["peer"]
        .as_str()
        .unwrap_or("-")
        .starts_with("127.0.0.1:"));
    let text = String::from_utf8_lossy(&audit.stdout);
    let table = stdout(&cp.ctl(&["audit"]));
    for secret in [
        BOOTSTRAP,
        viewer.as_str(),
        editor.as_str(),
        "partner-secret-key-123",
    ] {
        assert!(!text.contains(secret) && !table.contains(secret));
        assert!(!cp.logs().contains(secret), "no secret in the server log");
    }
    // Refusals are logged with the peer (and counted), never with a token.
    let logs = cp.logs();
    assert!(logs.contains("admin call refused"), "{logs}");

    // The API answers the same to a raw gRPC client.
    let mut admin = cp.admin().await;
    let raw = admin
        .list_audit(ListAuditRequest {
            since_ms: 0,
            limit: 2,
        })
        .await
        .expect("audit")
        .into_inner();
    assert_eq!(raw.entries.len(), 2, "limit keeps the newest");
    assert_eq!(raw.entries[1].call, "RevokeToken");
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_or_missing_token_is_refused_and_counted() {
    let cp = ControlPlane::start_with(CpOptions {
        admin_token: Some(BOOTSTRAP.into()),
        ..CpOptions::default()
    })
    .await;
    for token in [None, Some("tgt_not-a-real-token")] {
        let mut admin = cp.admin_with_token(token).await;
        let status = admin
            .list_audit(ListAuditRequest::default())
            .await
            .expect_err("refused");
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
    }
    let logs = cp.logs();
    assert!(!logs.contains("tgt_not-a-real-token"), "{logs}");
    assert!(logs.matches("admin call refused").count() >= 2, "{logs}");
}
