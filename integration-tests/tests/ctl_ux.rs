//! `tollgatectl` for operators (issue 18), with the real binaries: a
//! field-level `diff -f` and `--exit-code`, `validate` offline with the
//! server's messages, `completion`, the refusal of an empty file, and the
//! errors for a proxy port given as `--server`, a service still used by a
//! route, and a server address without a scheme.
//!
//! Run `cargo build --bins` first.

use std::process::{Command, Output};

use tollgate_integration_tests::cp::ControlPlane;
use tollgate_integration_tests::dp::DataPlane;
use tollgate_integration_tests::process::bin_path;

const BASE: &str = r#"services:
  - name: orders
    upstream: { targets: [{ address: "127.0.0.1:9001" }] }
routes:
  - name: orders-api
    service: orders
    paths: ["/v1/orders"]
    plugins:
      - name: key-auth
      - name: rate-limit
        config: { limit: 3, window: 1m }
"#;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn show(output: &Output) -> String {
    format!(
        "exit {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        text(&output.stdout),
        text(&output.stderr)
    )
}

/// `tollgatectl` with no server running anywhere it could reach.
fn offline(args: &[&str]) -> Output {
    Command::new(bin_path("tollgatectl"))
        .env_remove("TOLLGATE_SERVER")
        .env_remove("TOLLGATE_ADMIN_TOKEN")
        .args(["--server", "http://127.0.0.1:1"])
        .args(args)
        .output()
        .expect("run tollgatectl")
}

fn file(dir: &std::path::Path, name: &str, yaml: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, yaml).expect("write");
    path.display().to_string()
}

#[tokio::test]
async fn diff_shows_fields_and_exit_code_reports_drift() {
    let cp = ControlPlane::start().await;
    let base = file(cp.scratch_dir(), "base.yaml", BASE);
    let output = cp.ctl(&["apply", "-f", &base]);
    assert!(output.status.success(), "{}", show(&output));

    let output = cp.ctl(&["diff", "-f", &base, "--exit-code"]);
    assert_eq!(output.status.code(), Some(0), "no drift: {}", show(&output));

    let changed = file(
        cp.scratch_dir(),
        "changed.yaml",
        &BASE.replace("limit: 3", "limit: 5"),
    );
    let output = cp.ctl(&["diff", "-f", &changed, "--exit-code"]);
    assert_eq!(output.status.code(), Some(1), "drift: {}", show(&output));
    let stdout = text(&output.stdout);
    assert!(
        stdout.contains("~ route orders-api: plugins[1].config.limit 3 -> 5"),
        "{stdout}"
    );
    assert!(
        !stdout.contains('\u{1b}'),
        "plain when not a terminal: {stdout:?}"
    );
    assert!(
        output.stderr.is_empty(),
        "drift is not an error: {}",
        show(&output)
    );
    // Without --exit-code, changes are not a failure.
    assert!(cp.ctl(&["diff", "-f", &changed]).status.success());
    // An error under --exit-code is 2, never mistaken for drift.
    let broken = file(
        cp.scratch_dir(),
        "broken.yaml",
        &BASE.replace("service: orders", "service: ordrs"),
    );
    let output = cp.ctl(&["diff", "-f", &broken, "--exit-code"]);
    assert_eq!(output.status.code(), Some(2), "{}", show(&output));
}

#[tokio::test]
async fn validate_works_offline_with_the_servers_messages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = file(dir.path(), "good.yaml", BASE);
    let output = offline(&["validate", "-f", &good]);
    assert!(output.status.success(), "{}", show(&output));
    assert!(
        text(&output.stdout).contains("valid (2 entities)"),
        "{}",
        show(&output)
    );

    let bad = file(
        dir.path(),
        "bad.yaml",
        &BASE.replace("service: orders", "service: ordrs"),
    );
    let offline_error = offline(&["validate", "-f", &bad]);
    assert!(!offline_error.status.success());
    // The same message as the server's.
    let cp = ControlPlane::start().await;
    let server_error = cp.ctl(&["apply", "-f", &bad]);
    assert!(!server_error.status.success());
    assert_eq!(
        text(&offline_error.stderr),
        text(&server_error.stderr),
        "offline and server messages match"
    );
    assert!(
        text(&offline_error.stderr)
            .contains(r#"route "orders-api": service "ordrs" does not exist"#),
        "{}",
        show(&offline_error)
    );
}

#[test]
fn completion_scripts_for_each_shell() {
    for (shell, sign) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef tollgatectl"),
        ("fish", "complete -c tollgatectl"),
    ] {
        let output = offline(&["completion", shell]);
        assert!(output.status.success(), "{}", show(&output));
        let script = text(&output.stdout);
        assert!(script.contains(sign), "{shell}: {script}");
        assert!(script.contains("rollback"), "{shell} knows the commands");
    }
}

#[tokio::test]
async fn an_empty_file_is_refused_unless_allowed() {
    let cp = ControlPlane::start().await;
    let base = file(cp.scratch_dir(), "base.yaml", BASE);
    assert!(cp.ctl(&["apply", "-f", &base]).status.success());
    let empty = file(cp.scratch_dir(), "empty.yaml", "{}\n");
    let output = cp.ctl(&["apply", "-f", &empty]);
    assert!(!output.status.success());
    assert!(
        text(&output.stderr).contains(
            "the file has no entities: applying it would delete everything; pass --allow-empty"
        ),
        "{}",
        show(&output)
    );
    let export = text(&cp.ctl(&["export"]).stdout);
    assert!(
        export.contains("orders-api"),
        "nothing was deleted: {export}"
    );
    let output = cp.ctl(&["apply", "-f", &empty, "--allow-empty"]);
    assert!(output.status.success(), "{}", show(&output));
    assert!(
        text(&output.stdout).contains("applied 2 changes"),
        "{}",
        show(&output)
    );
}

#[tokio::test]
async fn errors_say_what_is_wrong() {
    let cp = ControlPlane::start().await;
    let base = file(cp.scratch_dir(), "base.yaml", BASE);
    assert!(cp.ctl(&["apply", "-f", &base]).status.success());

    // A service still used by a route.
    let output = cp.ctl(&["delete", "service", "orders"]);
    assert!(!output.status.success());
    assert!(
        text(&output.stderr).contains(r#"service "orders" is used by route "orders-api""#),
        "{}",
        show(&output)
    );

    // A server without a scheme is taken as http.
    let bare = format!("127.0.0.1:{}", cp.port());
    let output = Command::new(bin_path("tollgatectl"))
        .env_remove("TOLLGATE_ADMIN_TOKEN")
        .args(["--server", &bare, "get", "routes"])
        .output()
        .expect("run tollgatectl");
    assert!(output.status.success(), "{}", show(&output));
    assert!(
        text(&output.stdout).contains("orders-api"),
        "{}",
        show(&output)
    );

    // A data plane's proxy port and status port are not an admin API.
    let dp = DataPlane::start(cp.stream_port(), "dp-ux", &[]);
    dp.wait_ready().await;
    for address in [dp.addr(), dp.status_addr()] {
        let output = Command::new(bin_path("tollgatectl"))
            .env_remove("TOLLGATE_ADMIN_TOKEN")
            .args(["--server", &format!("http://{address}"), "get", "routes"])
            .output()
            .expect("run tollgatectl");
        assert!(!output.status.success());
        assert!(
            text(&output.stderr).contains(&format!("http://{address} is not a Tollgate admin API")),
            "{}",
            show(&output)
        );
    }
}

/// The lines of an export that belong to entities of `team` (the export is
/// sorted YAML, one entity a `- name:` block).
fn blocks_of(export: &str, team: &str) -> String {
    let mut out = String::new();
    let mut keep = false;
    let mut block = String::new();
    for line in export.lines() {
        if line.starts_with("- ") || !line.starts_with(' ') {
            if keep {
                out.push_str(&block);
            }
            block.clear();
            keep = false;
        }
        keep |= line.contains(&format!("- {team}")) || line.contains(&format!("[{team}]"));
        block.push_str(line);
        block.push('\n');
    }
    if keep {
        out.push_str(&block);
    }
    out
}

#[tokio::test]
async fn select_tag_applies_and_diffs_only_one_teams_entities() {
    let cp = ControlPlane::start().await;
    let both = file(
        cp.scratch_dir(),
        "both.yaml",
        r#"services:
  - { name: billing, tags: [payments], upstream: { targets: [{ address: "127.0.0.1:9001" }] } }
  - { name: orders, tags: [shop], upstream: { targets: [{ address: "127.0.0.1:9002" }] } }
routes:
  - { name: billing-api, service: billing, tags: [payments], paths: ["/billing"] }
  - { name: orders-api, service: orders, tags: [shop], paths: ["/orders"] }
  - { name: orders-old, service: orders, tags: [shop], paths: ["/old"] }
consumers:
  - { name: acme, tags: [payments], credentials: [{ api_key: "acme-secret-key-1" }] }
"#,
    );
    let output = cp.ctl(&["apply", "-f", &both]);
    assert!(output.status.success(), "{}", show(&output));
    let before = text(&cp.ctl(&["export"]).stdout);
    let payments_before = blocks_of(&before, "payments");
    assert!(payments_before.contains("billing-api"), "{before}");
    assert!(payments_before.contains("acme"), "{before}");

    // The shop team's file: orders changed, orders-old dropped, a new route.
    let shop = file(
        cp.scratch_dir(),
        "shop.yaml",
        r#"services:
  - { name: orders, tags: [shop], upstream: { targets: [{ address: "127.0.0.1:9003" }] } }
routes:
  - { name: orders-api, service: orders, tags: [shop], paths: ["/orders"] }
  - { name: orders-new, service: orders, tags: [shop], paths: ["/new"] }
"#,
    );
    let output = cp.ctl(&["diff", "-f", &shop, "--select-tag", "shop", "--exit-code"]);
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    let stdout = text(&output.stdout);
    for line in [
        "~ service orders: upstream.targets[0].address",
        "+ route orders-new",
        "- route orders-old",
    ] {
        assert!(stdout.contains(line), "{line}: {stdout}");
    }
    assert!(
        !stdout.contains("billing") && !stdout.contains("acme"),
        "other teams' entities are not in the diff: {stdout}"
    );
    // Without the selection the same file would delete the other team's work.
    let output = cp.ctl(&["diff", "-f", &shop]);
    assert!(
        text(&output.stdout).contains("- route billing-api"),
        "{}",
        show(&output)
    );

    let output = cp.ctl(&["apply", "-f", &shop, "--select-tag", "shop"]);
    assert!(output.status.success(), "{}", show(&output));
    assert!(
        text(&output.stdout).contains("applied 3 changes"),
        "{}",
        show(&output)
    );
    let after = text(&cp.ctl(&["export"]).stdout);
    assert_eq!(
        blocks_of(&after, "payments"),
        payments_before,
        "the payments team's entities (and the key's fingerprint) are untouched"
    );
    assert!(
        after.contains("orders-new") && !after.contains("orders-old"),
        "{after}"
    );
    assert!(after.contains("127.0.0.1:9003"), "{after}");
    let output = cp.ctl(&["diff", "-f", &shop, "--select-tag", "shop", "--exit-code"]);
    assert_eq!(output.status.code(), Some(0), "{}", show(&output));

    // A file entity without the tag, or taking over another team's name, is
    // refused with its name, and nothing changes.
    let untagged = file(
        cp.scratch_dir(),
        "untagged.yaml",
        r#"routes:
  - { name: orders-api, service: orders, tags: [shop], paths: ["/orders"] }
  - { name: stray, service: orders, paths: ["/stray"] }
"#,
    );
    let output = cp.ctl(&["apply", "-f", &untagged, "--select-tag", "shop"]);
    assert!(!output.status.success(), "{}", show(&output));
    assert!(
        text(&output.stderr).contains(r#"route "stray": does not carry tag "shop""#),
        "{}",
        show(&output)
    );
    let takeover = file(
        cp.scratch_dir(),
        "takeover.yaml",
        r#"routes:
  - { name: billing-api, service: billing, tags: [shop], paths: ["/billing"] }
"#,
    );
    let output = cp.ctl(&["apply", "-f", &takeover, "--select-tag", "shop"]);
    assert!(
        text(&output.stderr).contains(r#"route "billing-api": already exists without tag "shop""#),
        "{}",
        show(&output)
    );
    assert_eq!(
        text(&cp.ctl(&["export"]).stdout),
        after,
        "refusals change nothing"
    );
}
