//! Revision history and rollback (issue 18), end to end with the real
//! `tollgate-cp`, `tollgatectl` and two real `tollgate-dp`s: `history` names
//! who wrote each revision, `diff --from/--to` shows entity and field changes,
//! `rollback --to REV --wait` makes a new revision equal to REV (confirmed by
//! every data plane), after which `export` equals the export taken at REV byte
//! for byte (secrets as fingerprints: a JWT secret and an API key deleted
//! since REV come back), and `export --revision REV` equals it too. The
//! history window is bounded (`--history-revisions`), and a revision beyond
//! it is refused with a clear message.
//!
//! Run `cargo build --bins` first.

use std::process::Output;

use serde_json::json;
use tollgate_integration_tests::cp::{config_from_json, ControlPlane, CpOptions};
use tollgate_integration_tests::dp::DataPlane;
use tollgate_integration_tests::upstream::Upstream;
use tollgate_shared::model::GatewayConfig;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[track_caller]
fn ok(what: &str, output: &Output) -> String {
    assert!(
        output.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        output.status,
        text(&output.stdout),
        text(&output.stderr)
    );
    text(&output.stdout)
}

fn write(cp: &ControlPlane, name: &str, config: &GatewayConfig) -> String {
    let path = cp.scratch_dir().join(name);
    std::fs::write(&path, config.to_yaml()).expect("write config file");
    path.display().to_string()
}

/// Revision 1: a route with a rate limit of 3, a consumer with an API key and
/// a JWT secret.
fn first(upstream: &Upstream) -> GatewayConfig {
    config_from_json(json!({
        "services": [{"name": "orders", "upstream": {"targets": [{"address": upstream.address()}]}}],
        "routes": [{"name": "orders-api", "service": "orders", "paths": ["/v1/orders"],
            "plugins": [{"name": "key-auth"},
                        {"name": "rate-limit", "config": {"limit": 3, "window": "1m"}}]}],
        "consumers": [{"name": "alice", "credentials": [
            {"api_key": "alice-secret-key-0001"},
            {"jwt": {"key": "alice-jwt", "algorithm": "HS256", "secret": "alice-hmac-secret-0123456789abcdef"}}]}],
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rollback_restores_a_revision_byte_for_byte_and_the_fleet_confirms() {
    let upstream = Upstream::start("orders").await;
    let cp = ControlPlane::start().await;
    let dps = [
        DataPlane::start(cp.stream_port(), "dp-1", &[]),
        DataPlane::start(cp.stream_port(), "dp-2", &[]),
    ];

    // Revision 1, and its export.
    let v1 = first(&upstream);
    ok(
        "apply v1",
        &cp.ctl(&["apply", "-f", &write(&cp, "v1.yaml", &v1)]),
    );
    let export_v1 = ok("export v1", &cp.ctl(&["export"]));
    for dp in &dps {
        dp.wait_version(1).await;
    }

    // Revision 2: the limit goes to 5, the consumer loses both secrets.
    let mut v2 = v1.clone();
    let v2_json = json!({"name": "rate-limit", "config": {"limit": 5, "window": "1m"}});
    v2.routes[0].plugins[1] = serde_json::from_value(v2_json).expect("plugin");
    v2.consumers.clear();
    ok(
        "apply v2",
        &cp.ctl(&["apply", "-f", &write(&cp, "v2.yaml", &v2)]),
    );
    // Revision 3: one route more.
    let mut v3 = v2.clone();
    let mut extra = v3.routes[0].clone();
    extra.name = "orders-admin".into();
    extra.paths = vec!["/admin/orders".into()];
    v3.routes.push(extra);
    ok(
        "apply v3",
        &cp.ctl(&["apply", "-f", &write(&cp, "v3.yaml", &v3)]),
    );

    // history: newest first, who and what.
    let history = ok("history", &cp.ctl(&["history"]));
    let lines: Vec<&str> = history.lines().collect();
    assert!(lines[0].starts_with("REVISION"), "{history}");
    assert!(
        lines[1].starts_with("3 ") && lines[1].contains("+route orders-admin"),
        "{history}"
    );
    assert!(
        lines[2].starts_with("2 ") && lines[2].contains("-consumer alice"),
        "{history}"
    );
    assert!(
        lines[3].starts_with("1 ") && lines[3].contains("+service orders"),
        "{history}"
    );
    assert!(
        lines[1..].iter().all(|l| l.contains(" local ")),
        "who wrote it: {history}"
    );

    // diff between revisions: entity and field level.
    let diff = ok("diff 1..2", &cp.ctl(&["diff", "--from", "1", "--to", "2"]));
    assert!(
        diff.contains("~ route orders-api: plugins[1].config.limit 3 -> 5"),
        "{diff}"
    );
    assert!(diff.contains("- consumer alice"), "{diff}");
    assert!(
        !diff.contains("alice-hmac-secret"),
        "no secret in a diff: {diff}"
    );
    let diff = ok("diff 1..", &cp.ctl(&["diff", "--from", "1"]));
    assert!(diff.contains("+ route orders-admin"), "{diff}");
    assert!(
        diff.contains("3 changes from revision 1 to the current revision"),
        "{diff}"
    );

    // export --revision 1 is the export taken then.
    let old = ok(
        "export --revision 1",
        &cp.ctl(&["export", "--revision", "1"]),
    );
    assert_eq!(
        old, export_v1,
        "export --revision 1 equals the export taken at 1"
    );

    // rollback --to 1 --wait: a new revision 4, confirmed by both data planes.
    let rolled = ok(
        "rollback",
        &cp.ctl(&["rollback", "--to", "1", "--wait", "--timeout", "20s"]),
    );
    assert!(rolled.contains("version 4"), "{rolled}");
    for dp in &dps {
        assert!(
            rolled.contains(&format!("✓ {} serves version 4", dp.node_id())),
            "{rolled}"
        );
    }
    let export_now = ok("export after rollback", &cp.ctl(&["export"]));
    assert_eq!(
        export_now, export_v1,
        "the export after the rollback equals the export at revision 1, byte for byte"
    );
    assert!(export_now.contains("secret_fingerprint"), "{export_now}");
    assert!(!export_now.contains("alice-hmac-secret"), "{export_now}");
    // The restored secrets work on the data planes: the API key dropped in
    // revision 2 authenticates again.
    for dp in &dps {
        let status = dp
            .get("any", "/v1/orders")
            .header("apikey", "alice-secret-key-0001")
            .send()
            .await
            .expect("request")
            .status()
            .as_u16();
        assert_eq!(status, 200, "{}", dp.node_id());
    }
    // History is never rewritten: revision 4 is the rollback.
    let history = ok("history", &cp.ctl(&["history"]));
    let newest = history.lines().nth(1).unwrap_or_default();
    assert!(
        newest.starts_with("4 ") && newest.contains("[rollback to revision 1]"),
        "{history}"
    );
    assert_eq!(history.lines().count(), 5, "{history}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_window_is_bounded_and_says_so() {
    let upstream = Upstream::start("orders").await;
    let cp = ControlPlane::start_with(CpOptions {
        env: vec![("TOLLGATE_HISTORY_REVISIONS".into(), "3".into())],
        ..CpOptions::default()
    })
    .await;
    let mut config = first(&upstream);
    for i in 0..6 {
        config.routes[0].paths = vec![format!("/v{i}/orders")];
        cp.apply(&config).await;
    }
    let history = ok("history", &cp.ctl(&["history"]));
    assert_eq!(
        history.lines().count(),
        4,
        "three revisions kept: {history}"
    );
    // Three records reach back to revision 3.
    ok(
        "export --revision 3",
        &cp.ctl(&["export", "--revision", "3"]),
    );
    let refused = cp.ctl(&["rollback", "--to", "2"]);
    assert!(!refused.status.success());
    let stderr = text(&refused.stderr);
    assert!(
        stderr.contains("revision: 2 is no longer kept (the history reaches back to revision 3; the current revision is 6)"),
        "{stderr}"
    );
    let refused = cp.ctl(&["rollback", "--to", "9"]);
    assert!(
        text(&refused.stderr).contains("revision: 9 does not exist yet"),
        "{}",
        text(&refused.stderr)
    );
}
