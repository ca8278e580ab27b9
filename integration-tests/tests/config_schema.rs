//! The one config schema (issue 14): the model in `shared/src/model.rs` is
//! the file format, the admin API's payload and the stream's. An export made
//! by `tollgatectl` before the config moved onto that schema must keep
//! applying, through the real `tollgate-cp` and `tollgatectl`.

use tollgate_integration_tests::cp::ControlPlane;

const CONFIG: &str = include_str!("../../shared/testdata/config-before-one-schema.yaml");
const OLD_EXPORT: &str = include_str!("../../shared/testdata/export-before-one-schema.yaml");

fn ok(what: &str, output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_from_before_the_change_applies_and_round_trips() {
    let cp = ControlPlane::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.yaml");
    let export = dir.path().join("export.yaml");
    std::fs::write(&config, CONFIG).expect("write");
    std::fs::write(&export, OLD_EXPORT).expect("write");

    // The secrets come from the original file; the old export carries only
    // their hash and fingerprint, which must match what is stored.
    ok(
        "apply config",
        &cp.ctl(&["apply", "-f", config.to_str().expect("utf-8")]),
    );
    let diff = ok(
        "diff old export",
        &cp.ctl(&["diff", "-f", export.to_str().expect("utf-8")]),
    );
    assert!(
        !diff.contains("+ ") && !diff.contains("- ") && !diff.contains("~ "),
        "the old export describes the same state: {diff}"
    );
    ok(
        "apply old export",
        &cp.ctl(&["apply", "-f", export.to_str().expect("utf-8")]),
    );

    // Today's export is the old export, byte for byte (minus its comment).
    let now = ok("export", &cp.ctl(&["export"]));
    let old: String = OLD_EXPORT
        .lines()
        .filter(|line| !line.starts_with('#'))
        .map(|line| format!("{line}\n"))
        .collect();
    assert_eq!(now, old);
}
