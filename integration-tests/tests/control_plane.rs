//! End-to-end tests of the control plane: the real `tollgate-cp` on a temp
//! data dir, driven by the real `tollgatectl` and the generated gRPC clients.
//!
//! Run `cargo build --bins` first.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use tollgate_integration_tests::cp::{Admin, ControlPlane, CpOptions, StreamSubscriber};
use tollgate_integration_tests::process::{bin_path, free_port, ChildProcess};
use tollgate_shared::model::{GatewayConfig, Route, Service};
use tollgate_shared::proto::admin::{
    self as admin_pb, entity::Entity as PbEntity, ApplyRequest, ChangeAction, EntityRef,
    EntityRequest, ExportRequest, Kind, ListRequest,
};
use tollgate_shared::proto::config::{self as config_pb, ConfigVersion};
use tollgate_shared::secrets::{fingerprint, hash_api_key};
use tonic::Code;

/// The file from the issue, as written.
const EXAMPLE: &str = r#"services:
  - name: orders
    upstream:
      targets: [{ address: "127.0.0.1:9001" }, { address: "127.0.0.1:9002", weight: 2 }]
      load_balancing: round_robin
    timeouts: { connect_ms: 1000, request_ms: 15000 }
routes:
  - name: orders-api
    service: orders
    hosts: ["api.example.com"]
    paths: ["/v1/orders"]
    methods: [GET, POST]
    strip_path: true
    plugins:
      - name: key-auth
      - name: rate-limit
        config: { limit: 100, window: 1m, scope: consumer }
consumers:
  - name: alice
    groups: [partners]
    credentials:
      - api_key: "alice-secret-key"
"#;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[track_caller]
fn assert_ok(what: &str, output: &Output) -> String {
    assert!(
        output.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        output.status,
        text(&output.stdout),
        text(&output.stderr)
    );
    text(&output.stdout)
}

fn write_file(cp: &ControlPlane, name: &str, contents: &str) -> String {
    let path = cp.scratch_dir().join(name);
    std::fs::write(&path, contents).expect("write test file");
    path.display().to_string()
}

async fn export(admin: &mut Admin) -> (GatewayConfig, ConfigVersion) {
    let response = admin
        .export(ExportRequest::default())
        .await
        .expect("export")
        .into_inner();
    let config = GatewayConfig::try_from(&response.config.unwrap_or_default()).expect("converts");
    (config, response.version.expect("export carries a version"))
}

async fn apply(
    admin: &mut Admin,
    config: &GatewayConfig,
    dry_run: bool,
) -> admin_pb::ApplyResponse {
    admin
        .apply(ApplyRequest {
            select_tag: String::new(),
            config: Some(config.into()),
            dry_run,
        })
        .await
        .unwrap_or_else(|status| panic!("apply failed: {status}"))
        .into_inner()
}

fn example() -> GatewayConfig {
    GatewayConfig::from_yaml(EXAMPLE).expect("the example parses")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_applies_reads_back_exports_and_reapplies_with_no_diff() {
    let cp = ControlPlane::start().await;
    let file = write_file(&cp, "gateway.yaml", EXAMPLE);

    let dry = assert_ok("diff", &cp.ctl(&["diff", "-f", &file]));
    assert!(dry.contains("+ route orders-api"), "{dry}");
    let mut admin = cp.admin().await;
    assert_eq!(export(&mut admin).await.1.revision, 0, "diff wrote nothing");

    let applied = assert_ok("apply", &cp.ctl(&["apply", "-f", &file]));
    for line in ["+ service orders", "+ route orders-api", "+ consumer alice"] {
        assert!(applied.contains(line), "missing {line:?} in:\n{applied}");
    }
    assert!(applied.contains("version 1"), "{applied}");

    // Reads: table, YAML and JSON through the CLI, and the gRPC Get.
    let table = assert_ok("get routes", &cp.ctl(&["get", "routes"]));
    assert!(
        table.contains("orders-api") && table.contains("/v1/orders"),
        "{table}"
    );
    let yaml = assert_ok(
        "get route",
        &cp.ctl(&["get", "route", "orders-api", "-o", "yaml"]),
    );
    let route: Route = serde_yaml::from_str(&yaml).expect("route YAML");
    assert_eq!(route, example().routes[0]);
    let json = assert_ok("get services", &cp.ctl(&["get", "services", "-o", "json"]));
    let services: Vec<Service> = serde_json::from_str(&json).expect("services JSON");
    assert_eq!(services, example().services);
    let consumer = admin
        .get(EntityRef {
            kind: Kind::Consumer as i32,
            name: "alice".into(),
        })
        .await
        .expect("get consumer")
        .into_inner();
    let Some(PbEntity::Consumer(consumer)) = consumer.entity else {
        panic!("not a consumer: {consumer:?}");
    };
    let consumer = tollgate_shared::model::Consumer::try_from(&consumer).expect("a consumer");
    assert_eq!(consumer.credentials[0].api_key, None);
    assert_eq!(
        consumer.credentials[0].api_key_hash.as_deref(),
        Some(hash_api_key("alice-secret-key").as_str())
    );

    // Export, deterministic, and re-applied with no diff (CLI and gRPC).
    let exported = assert_ok("export", &cp.ctl(&["export"]));
    assert_eq!(exported, assert_ok("export", &cp.ctl(&["export"])));
    assert!(exported.contains("api_key_hash: sha256:"), "{exported}");
    let export_file = write_file(&cp, "export.yaml", &exported);
    let diff = assert_ok("diff export", &cp.ctl(&["diff", "-f", &export_file]));
    assert!(diff.starts_with("no changes"), "{diff}");
    let reapplied = assert_ok("apply export", &cp.ctl(&["apply", "-f", &export_file]));
    assert!(
        reapplied.starts_with("no changes; version 1"),
        "{reapplied}"
    );
    let (config, version) = export(&mut admin).await;
    assert!(apply(&mut admin, &config, true).await.changes.is_empty());
    assert!(apply(&mut admin, &config, false).await.changes.is_empty());
    assert_eq!(
        export(&mut admin).await.1,
        version,
        "a no-op apply keeps the version"
    );

    // Apply deletes what the file omits; the diff says so, sorted.
    let smaller = r#"services:
  - name: orders
    upstream: { targets: [{ address: "127.0.0.1:9003" }] }
"#;
    let smaller_file = write_file(&cp, "smaller.yaml", smaller);
    let out = assert_ok(
        "apply smaller",
        &cp.ctl(&["apply", "-f", &smaller_file, "--dry-run"]),
    );
    let lines: Vec<&str> = out.lines().take(3).collect();
    assert_eq!(
        lines,
        ["~ service orders", "- route orders-api", "- consumer alice"]
    );
    assert_ok("apply smaller", &cp.ctl(&["apply", "-f", &smaller_file]));
    assert_eq!(export(&mut admin).await.1.revision, 2);
}

/// A route's `metrics.consumer_labels` survives YAML apply, gRPC, the store,
/// reads (YAML and JSON) and export; the export re-applies as "no changes",
/// and turning the switch off is an update of that route alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_metrics_options_round_trip_through_apply_and_export() {
    let cp = ControlPlane::start().await;
    let on = r#"services:
  - name: orders
    upstream: { targets: [{ address: "127.0.0.1:9001" }] }
routes:
  - name: labelled
    service: orders
    paths: ["/labelled"]
    metrics: { consumer_labels: true }
  - name: plain
    service: orders
    paths: ["/plain"]
"#;
    let file = write_file(&cp, "labels.yaml", on);
    assert_ok("apply", &cp.ctl(&["apply", "-f", &file]));

    let yaml = assert_ok(
        "get route",
        &cp.ctl(&["get", "route", "labelled", "-o", "yaml"]),
    );
    let route: Route = serde_yaml::from_str(&yaml).expect("route YAML");
    assert!(route.metrics.consumer_labels, "{yaml}");
    let json = assert_ok(
        "get route",
        &cp.ctl(&["get", "route", "plain", "-o", "json"]),
    );
    let route: Route = serde_json::from_str(&json).expect("route JSON");
    assert!(!route.metrics.consumer_labels);
    assert!(
        !json.contains("metrics"),
        "the default is not written: {json}"
    );

    let exported = assert_ok("export", &cp.ctl(&["export"]));
    assert_eq!(
        exported.matches("consumer_labels: true").count(),
        1,
        "{exported}"
    );
    let export_file = write_file(&cp, "labels-export.yaml", &exported);
    let diff = assert_ok("diff export", &cp.ctl(&["diff", "-f", &export_file]));
    assert!(diff.starts_with("no changes"), "{diff}");
    let reapplied = assert_ok("apply export", &cp.ctl(&["apply", "-f", &export_file]));
    assert!(reapplied.starts_with("no changes"), "{reapplied}");

    let off_file = write_file(
        &cp,
        "labels-off.yaml",
        &on.replace("    metrics: { consumer_labels: true }\n", ""),
    );
    let diff = assert_ok("diff off", &cp.ctl(&["diff", "-f", &off_file]));
    let changes: Vec<&str> = diff
        .lines()
        .filter(|l| l.starts_with(['+', '~', '-']))
        .collect();
    assert_eq!(
        changes,
        [r#"~ route labelled: metrics: - {"consumer_labels":true}"#],
        "{diff}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_per_kind_with_status_codes() {
    let cp = ControlPlane::start().await;
    let mut admin = cp.admin().await;
    let config = example();
    let service = config_pb::Service::from(&config.services[0]);
    let entity = |e: PbEntity| EntityRequest {
        entity: Some(admin_pb::Entity { entity: Some(e) }),
    };

    let created = admin
        .create(entity(PbEntity::Service(service.clone())))
        .await
        .expect("create")
        .into_inner();
    assert_eq!(created.version.expect("version").revision, 1);
    let again = admin
        .create(entity(PbEntity::Service(service.clone())))
        .await
        .expect_err("duplicate");
    assert_eq!(again.code(), Code::AlreadyExists, "{again:?}");

    let consumer = config_pb::Consumer::from(&config.consumers[0]);
    let response = admin
        .create(entity(PbEntity::Consumer(consumer)))
        .await
        .expect("create consumer")
        .into_inner();
    let shown = format!("{response:?}");
    assert!(!shown.contains("alice-secret-key"), "{shown}");
    assert!(shown.contains(&hash_api_key("alice-secret-key")), "{shown}");

    let mut changed = config.services[0].clone();
    changed.host_header = Some("orders.internal".into());
    admin
        .update(entity(PbEntity::Service(config_pb::Service::from(
            &changed,
        ))))
        .await
        .expect("update");
    let mut ghost = config.services[0].clone();
    ghost.name = "ghost".into();
    let missing = admin
        .update(entity(PbEntity::Service(config_pb::Service::from(&ghost))))
        .await
        .expect_err("update of a missing service");
    assert_eq!(missing.code(), Code::NotFound);

    let listed = admin
        .list(ListRequest {
            kind: Kind::Service as i32,
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.entities.len(), 1);
    let unspecified = admin
        .list(ListRequest { kind: 0 })
        .await
        .expect_err("no kind");
    assert_eq!(unspecified.code(), Code::InvalidArgument);

    let deleted = admin
        .delete(EntityRef {
            kind: Kind::Service as i32,
            name: "orders".into(),
        })
        .await
        .expect("delete")
        .into_inner();
    assert_eq!(deleted.version.expect("version").revision, 4);
    let gone = admin
        .get(EntityRef {
            kind: Kind::Service as i32,
            name: "orders".into(),
        })
        .await
        .expect_err("deleted");
    assert_eq!(gone.code(), Code::NotFound);

    // The CLI: delete of a missing entity fails readably; unknown kinds too.
    let out = cp.ctl(&["delete", "route", "nope"]);
    assert!(!out.status.success());
    assert_eq!(
        text(&out.stderr).trim(),
        "error: route \"nope\" does not exist"
    );
    let out = cp.ctl(&["get", "upstreams"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).starts_with("error: unknown kind \"upstreams\""));
    let out = assert_ok("get consumers", &cp.ctl(&["get", "consumers"]));
    assert!(out.contains("alice") && out.contains("api_key"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_everything() {
    let mut cp = ControlPlane::start().await;
    let file = write_file(&cp, "gateway.yaml", EXAMPLE);
    assert_ok("apply", &cp.ctl(&["apply", "-f", &file]));
    let before = assert_ok("export", &cp.ctl(&["export"]));
    let version_before = export(&mut cp.admin().await).await.1;

    cp.restart().await;
    assert!(
        cp.logs().contains("shutting down"),
        "graceful shutdown logged"
    );
    assert_eq!(assert_ok("export", &cp.ctl(&["export"])), before);
    let version_after = export(&mut cp.admin().await).await.1;
    assert_eq!(version_after, version_before, "same store id and revision");

    cp.kill_9();
    cp.restart().await;
    assert_eq!(assert_ok("export", &cp.ctl(&["export"])), before);
    assert_eq!(export(&mut cp.admin().await).await.1, version_before);
}

/// One write of the kill loop.
#[derive(Debug, Clone)]
enum Op {
    Create(String),
    Delete(String),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_acknowledged_writes_loses_nothing() {
    let mut cp = ControlPlane::start().await;
    // Acknowledged state: service name -> exists; plus the highest acked revision.
    let acked: Arc<Mutex<(BTreeMap<String, bool>, u64)>> = Arc::default();
    let mut store_id: Option<String> = None;
    let mut total_acked = 0usize;
    const ROUNDS: usize = 22;

    for round in 0..ROUNDS {
        let mut admin = cp.admin().await;
        let acked_in_writer = acked.clone();
        // The op in flight when the server died: its outcome is unknown.
        let in_flight: Arc<Mutex<Option<Op>>> = Arc::default();
        let in_flight_writer = in_flight.clone();
        let writer = tokio::spawn(async move {
            let mut count = 0usize;
            for i in 0.. {
                let op = {
                    let state = acked_in_writer.lock().expect("lock");
                    let existing: Vec<&String> = state
                        .0
                        .iter()
                        .filter(|(_, e)| **e)
                        .map(|(n, _)| n)
                        .collect();
                    if i % 3 == 2 && !existing.is_empty() {
                        Op::Delete(existing[i % existing.len()].clone())
                    } else {
                        Op::Create(format!("svc-{round}-{i}"))
                    }
                };
                *in_flight_writer.lock().expect("lock") = Some(op.clone());
                let result = match &op {
                    Op::Create(name) => {
                        let service = config_pb::Service {
                            json: serde_json::json!({
                                "name": name,
                                "upstream": {"targets": [{"address": format!("127.0.0.1:{}", 1000 + i)}]},
                            })
                            .to_string(),
                        };
                        admin
                            .create(EntityRequest {
                                entity: Some(admin_pb::Entity {
                                    entity: Some(PbEntity::Service(service)),
                                }),
                            })
                            .await
                    }
                    Op::Delete(name) => {
                        admin
                            .delete(EntityRef {
                                kind: Kind::Service as i32,
                                name: name.clone(),
                            })
                            .await
                    }
                };
                let Ok(response) = result else {
                    return count; // the server is gone
                };
                let revision = response.into_inner().version.expect("version").revision;
                let mut state = acked_in_writer.lock().expect("lock");
                match &op {
                    Op::Create(name) => state.0.insert(name.clone(), true),
                    Op::Delete(name) => state.0.insert(name.clone(), false),
                };
                state.1 = state.1.max(revision);
                *in_flight_writer.lock().expect("lock") = None;
                count += 1;
            }
            count
        });
        let delay = rand::thread_rng().gen_range(20..400);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        cp.kill_9();
        let written = tokio::time::timeout(Duration::from_secs(30), writer)
            .await
            .expect("the writer notices the dead server")
            .expect("writer task");
        total_acked += written;

        cp.restart().await;
        let mut admin = cp.admin().await;
        let (config, version) = export(&mut admin).await;
        match &store_id {
            None => store_id = Some(version.store_id.clone()),
            Some(id) => assert_eq!(&version.store_id, id, "round {round}: store identity kept"),
        }
        let present: BTreeSet<&str> = config.services.iter().map(|s| s.name.as_str()).collect();
        let unknown = match &*in_flight.lock().expect("lock") {
            Some(Op::Create(name)) | Some(Op::Delete(name)) => Some(name.clone()),
            None => None,
        };
        let mut state = acked.lock().expect("lock");
        assert!(
            version.revision >= state.1,
            "round {round}: revision {} < acknowledged {}",
            version.revision,
            state.1
        );
        for (name, exists) in &state.0 {
            if Some(name) == unknown.as_ref() {
                continue;
            }
            assert_eq!(
                present.contains(name.as_str()),
                *exists,
                "round {round}: acknowledged state of service {name:?} lost after kill -9"
            );
        }
        // The write in flight either landed or not; from now on, what is stored counts.
        if let Some(name) = unknown {
            let landed = present.contains(name.as_str());
            state.0.insert(name, landed);
        }
        state.1 = version.revision;
    }
    eprintln!("{ROUNDS} kills during {total_acked} acknowledged writes lost nothing");
    assert!(
        total_acked >= ROUNDS,
        "too few acknowledged writes: {total_acked}"
    );
}

/// Invalid desired states, each with the text its error must contain.
fn invalid_cases() -> Vec<(&'static str, GatewayConfig, &'static str)> {
    let base = example();
    let mut cases = Vec::new();
    let mut add =
        |what: &'static str, expected: &'static str, edit: &dyn Fn(&mut GatewayConfig)| {
            let mut config = base.clone();
            edit(&mut config);
            cases.push((what, config, expected));
        };
    add(
        "unknown service",
        r#"route "orders-api": service "ordrs" does not exist"#,
        &|c| c.routes[0].service = "ordrs".into(),
    );
    add(
        "relative path",
        r#"route "orders-api": paths[0]: "v1/orders" must start with"#,
        &|c| c.routes[0].paths[0] = "v1/orders".into(),
    );
    add("dot segments", r#"route "orders-api": paths[0]:"#, &|c| {
        c.routes[0].paths[0] = "/v1/../admin".into()
    });
    add(
        "bad method",
        r#"route "orders-api": methods[1]: "FETCH" is not one of"#,
        &|c| c.routes[0].methods[1] = "FETCH".into(),
    );
    add(
        "upper-case host",
        r#"route "orders-api": hosts[0]:"#,
        &|c| c.routes[0].hosts[0] = "API.example.com".into(),
    );
    add(
        "target without port",
        r#"service "orders": upstream.targets[0].address:"#,
        &|c| c.services[0].upstream.targets[0].address = "127.0.0.1".into(),
    );
    add(
        "huge weight",
        r#"service "orders": upstream.targets[1].weight:"#,
        &|c| c.services[0].upstream.targets[1].weight = 1_000_000,
    );
    add(
        "zero timeout",
        r#"service "orders": timeouts.connect_ms:"#,
        &|c| c.services[0].timeouts.connect_ms = Some(0),
    );
    add(
        "unknown plugin",
        r#"route "orders-api": plugins[2].name: unknown plugin "magic""#,
        &|c| {
            c.routes[0]
                .plugins
                .push(tollgate_shared::model::PluginInstance::new(
                    "magic",
                    serde_json::json!({}),
                ))
        },
    );
    add(
        "bad rate-limit window",
        r#"route "orders-api": plugins[1]."#,
        &|c| c.routes[0].plugins[1].config = serde_json::json!({ "limit": 100, "window": "1y" }),
    );
    add(
        "short API key",
        r#"consumer "alice": credentials[0].api_key: must be between 8 and 512"#,
        &|c| c.consumers[0].credentials[0].api_key = Some("short".into()),
    );
    add(
        "duplicate route",
        r#"route "orders-api": name: defined more than once"#,
        &|c| {
            let copy = c.routes[0].clone();
            c.routes.push(copy)
        },
    );
    add("bad entity name", r#"service "bad name": name:"#, &|c| {
        c.services[0].name = "bad name".into();
        c.routes[0].service = "bad name".into();
    });
    add(
        "unknown JWT secret fingerprint",
        r#"consumer "alice": credentials[1].jwt.secret_fingerprint: no stored secret"#,
        &|c| {
            c.consumers[0]
                .credentials
                .push(tollgate_shared::model::Credential {
                    jwt: Some(tollgate_shared::model::JwtCredential {
                        key: "issuer".into(),
                        algorithm: "HS256".into(),
                        secret_fingerprint: Some(fingerprint("never stored anywhere")),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
        },
    );
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_configs_are_rejected_naming_the_field_and_change_nothing() {
    let cp = ControlPlane::start().await;
    let mut admin = cp.admin().await;
    apply(&mut admin, &example(), false).await;
    let (before, version_before) = export(&mut admin).await;

    let cases = invalid_cases();
    assert!(cases.len() >= 10);
    for (what, config, expected) in &cases {
        for dry_run in [true, false] {
            let status = admin
                .apply(ApplyRequest {
                    select_tag: String::new(),
                    config: Some(config.into()),
                    dry_run,
                })
                .await
                .expect_err(what);
            assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
            assert!(
                status.message().starts_with(expected),
                "{what}: {:?} does not start with {expected:?}",
                status.message()
            );
        }
    }

    // Rejected at conversion (a string enum prost cannot check).
    let mut json = serde_json::to_value(example()).expect("json");
    json["services"][0]["upstream"]["load_balancing"] = "random".into();
    let wire = config_pb::GatewayConfig {
        json: json.to_string(),
    };
    let status = admin
        .apply(ApplyRequest {
            select_tag: String::new(),
            config: Some(wire),
            dry_run: false,
        })
        .await
        .expect_err("unknown load balancing");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status
            .message()
            .starts_with(r#"service "orders": upstream.load_balancing: "#)
            && status.message().contains("random"),
        "{}",
        status.message()
    );

    // Single-entity writes are validated against the whole state too.
    let status = admin
        .delete(EntityRef {
            kind: Kind::Service as i32,
            name: "orders".into(),
        })
        .await
        .expect_err("a route still uses it");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.message(),
        r#"service "orders" is used by route "orders-api": delete or move those routes first"#
    );
    let status = admin
        .create(EntityRequest { entity: None })
        .await
        .expect_err("empty entity");
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = admin
        .apply(ApplyRequest {
            select_tag: String::new(),
            config: None,
            dry_run: false,
        })
        .await
        .expect_err("an Apply without a config is not a wipe");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.message(), "config: required");

    // The CLI shows the same readable line on stderr and fails.
    let bad = EXAMPLE.replace("service: orders", "service: ordrs");
    let file = write_file(&cp, "bad.yaml", &bad);
    let out = cp.ctl(&["apply", "-f", &file]);
    assert!(!out.status.success());
    assert_eq!(
        text(&out.stderr).trim(),
        r#"error: route "orders-api": service "ordrs" does not exist"#
    );
    let out = cp.ctl(&[
        "apply",
        "-f",
        &write_file(&cp, "broken.yaml", "services: ["),
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).starts_with("error: "),
        "{}",
        text(&out.stderr)
    );

    let (after, version_after) = export(&mut admin).await;
    assert_eq!(
        version_after, version_before,
        "no rejected write moved the version"
    );
    assert_eq!(after, before, "no rejected write changed the state");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_subscriber_gets_each_version_and_its_nack_shows_in_dataplanes() {
    let mut cp = ControlPlane::start().await;
    let mut admin = cp.admin().await;
    apply(&mut admin, &example(), false).await;
    let (_, v1) = export(&mut admin).await;

    let mut dp = cp.subscribe("dp-test-1", None).await.expect("subscribe");
    let first = dp
        .next_snapshot(Duration::from_secs(5))
        .await
        .expect("snapshot on hello");
    assert_eq!(first.version.as_ref(), Some(&v1));
    let snapshot_config =
        GatewayConfig::try_from(&first.config.clone().unwrap_or_default()).expect("converts");
    let credential = &snapshot_config.consumers[0].credentials[0];
    assert_eq!(credential.api_key, None, "only the hash travels");
    assert_eq!(
        credential.api_key_hash.as_deref(),
        Some(hash_api_key("alice-secret-key").as_str())
    );
    dp.ack(v1.clone()).await;

    // Each new version arrives.
    let mut expected = example();
    for port in 9100..9103u16 {
        expected.services[0].upstream.targets[0].address = format!("127.0.0.1:{port}");
        let file = write_file(&cp, "next.yaml", &expected.to_yaml());
        assert_ok("apply", &cp.ctl(&["apply", "-f", &file]));
        let (_, version) = export(&mut admin).await;
        let started = Instant::now();
        let snapshot = dp
            .next_snapshot(Duration::from_secs(5))
            .await
            .expect("snapshot after a change");
        assert_eq!(snapshot.version.as_ref(), Some(&version));
        assert!(started.elapsed() < Duration::from_secs(2));
        let got = GatewayConfig::try_from(&snapshot.config.unwrap_or_default()).expect("converts");
        assert_eq!(
            got.services[0].upstream.targets[0].address,
            format!("127.0.0.1:{port}")
        );
        dp.ack(version).await;
    }

    // A burst of writes is coalesced, and the last version always arrives.
    let burst_started = Instant::now();
    let mut slowest_write = Duration::ZERO;
    for i in 0..10 {
        let write_started = Instant::now();
        let mut service = example().services[0].clone();
        service.name = format!("burst-{i}");
        admin
            .create(EntityRequest {
                entity: Some(admin_pb::Entity {
                    entity: Some(PbEntity::Service((&service).into())),
                }),
            })
            .await
            .expect("burst write");
        slowest_write = slowest_write.max(write_started.elapsed());
    }
    let burst_took = burst_started.elapsed();
    let (_, burst_last) = export(&mut admin).await;
    let mut received = 0;
    let last = loop {
        let snapshot = dp
            .next_snapshot(Duration::from_secs(5))
            .await
            .expect("burst snapshot");
        received += 1;
        if snapshot.version.as_ref() == Some(&burst_last) {
            break snapshot;
        }
    };
    // Writes closer together than the quiet period (20 ms) share a snapshot,
    // and a snapshot waits at most 100 ms: so at most one per started 100 ms,
    // plus the one in flight. (On a machine so loaded that a single write
    // takes longer than the quiet period, every write is its own burst.)
    if slowest_write < Duration::from_millis(15) {
        let bound = 2 + burst_took.as_millis() as usize / 100;
        assert!(
            received <= bound,
            "10 writes in {burst_took:?} produced {received} snapshots (bound {bound})"
        );
    } else {
        eprintln!("slow writes ({slowest_write:?}); coalescing bound not checked");
    }
    assert!(received <= 10);
    assert!(dp.next_snapshot(Duration::from_millis(300)).await.is_none());

    // NACK: shown by tollgatectl dataplanes (table and JSON).
    let last_version = last.version.expect("version");
    let reason = r#"route "orders-api": upstream pool could not be built"#;
    dp.nack(last_version.clone(), reason).await;
    let json = tollgate_integration_tests::process::wait_until(
        "the NACK in tollgatectl dataplanes",
        Duration::from_secs(5),
        || async {
            let out = cp.ctl(&["dataplanes", "-o", "json"]);
            let json: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            (json[0]["last_rejection"] == reason).then_some(json)
        },
    )
    .await;
    assert_eq!(json[0]["node_id"], "dp-test-1");
    assert_eq!(json[0]["connected"], true);
    assert_eq!(json[0]["hostname"], "test-host");
    assert!(
        json[0]["address"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "{json}"
    );
    assert_eq!(
        json[0]["rejected_version"]["revision"],
        last_version.revision
    );
    assert_eq!(json[0]["applied_version"]["revision"], v1.revision + 3);
    let table = assert_ok("dataplanes", &cp.ctl(&["dataplanes"]));
    assert!(
        table.contains("dp-test-1") && table.contains("connected"),
        "{table}"
    );
    assert!(table.contains(reason), "{table}");

    // Disconnected data planes stay listed, as disconnected.
    drop(dp);
    tollgate_integration_tests::process::wait_until(
        "the data plane shown disconnected",
        Duration::from_secs(10),
        || async {
            let out = cp.ctl(&["dataplanes", "-o", "json"]);
            let json: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            (json[0]["connected"] == false).then_some(())
        },
    )
    .await;

    // A data plane already holding the current version gets nothing until a change;
    // one holding the same revision of another store gets the snapshot at once.
    let (_, current) = export(&mut admin).await;
    let mut up_to_date = cp
        .subscribe("dp-test-2", Some(current.clone()))
        .await
        .expect("subscribe");
    assert!(up_to_date
        .next_snapshot(Duration::from_millis(300))
        .await
        .is_none());
    let mut other_store = cp
        .subscribe(
            "dp-test-3",
            Some(ConfigVersion {
                store_id: "another-store".into(),
                revision: current.revision,
            }),
        )
        .await
        .expect("subscribe");
    let snapshot = other_store
        .next_snapshot(Duration::from_secs(5))
        .await
        .expect("another store's version is replaced");
    assert_eq!(snapshot.version.as_ref(), Some(&current));
    admin
        .delete(EntityRef {
            kind: Kind::Service as i32,
            name: "burst-0".into(),
        })
        .await
        .expect("delete");
    let snapshot = up_to_date
        .next_snapshot(Duration::from_secs(5))
        .await
        .expect("snapshot after the change");
    assert_eq!(
        snapshot.version.map(|v| v.revision),
        Some(current.revision + 1)
    );

    // SIGTERM with streams open: they are ended, and the server exits promptly.
    let started = Instant::now();
    let status = cp.stop().expect("was running");
    assert!(status.success(), "{status}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    match up_to_date.next_raw(Duration::from_secs(5)).await {
        Some(Err(_)) | Some(Ok(None)) => {}
        other => panic!("stream still open after shutdown: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_on_its_own_listener_with_a_cluster_token() {
    let cp = ControlPlane::start_with(CpOptions {
        cluster_token: Some("cluster-token-for-tests".into()),
        separate_stream_port: true,
        ..Default::default()
    })
    .await;
    assert_ne!(cp.stream_port(), cp.port());
    let mut dp = cp
        .subscribe("dp-1", None)
        .await
        .expect("subscribe with the token");
    assert!(dp.next_snapshot(Duration::from_secs(5)).await.is_some());

    for token in [None, Some("wrong-token")] {
        let result = StreamSubscriber::connect(&cp.stream_url(), token, "dp-2", None).await;
        let status = match result {
            Err(status) => status,
            Ok(mut subscriber) => match subscriber.next_raw(Duration::from_secs(5)).await {
                Some(Err(status)) => status,
                other => panic!("stream without the right token answered {other:?}"),
            },
        };
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }
    // The admin listener does not serve the stream when it has its own.
    let result =
        StreamSubscriber::connect(&cp.url(), Some("cluster-token-for-tests"), "dp-3", None).await;
    let status = match result {
        Err(status) => status,
        Ok(mut subscriber) => match subscriber.next_raw(Duration::from_secs(5)).await {
            Some(Err(status)) => status,
            other => panic!("admin listener served the stream: {other:?}"),
        },
    };
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_appears_in_reads_exports_cli_output_logs_or_errors() {
    const API_KEY: &str = "canary-APIKEY-7f3e9b1c5a";
    const JWT_SECRET: &str = "canary-HMACSECRET-2d8e4a6f0b";
    let cp = ControlPlane::start_with(CpOptions {
        env: vec![("RUST_LOG".into(), "debug".into())],
        ..Default::default()
    })
    .await;
    // A real key pair (the control plane parses both and checks they
    // match); the canary is the key's base64 body.
    let leaf = tollgate_integration_tests::tls::Ca::new("Canary CA").issue(&["api.example.com"]);
    let private_key = leaf.key_pem.clone();
    let cert_pem = leaf.cert_pem.clone();
    let key_line = private_key
        .lines()
        .find(|line| !line.starts_with("-----"))
        .unwrap_or_default()
        .to_string();
    let yaml = format!(
        r#"services:
  - name: orders
    upstream: {{ targets: [{{ address: "127.0.0.1:9001" }}] }}
consumers:
  - name: alice
    credentials:
      - api_key: "{API_KEY}"
      - jwt: {{ key: issuer-a, algorithm: HS256, secret: "{JWT_SECRET}" }}
certificates:
  - name: main
    cert_pem: {cert_pem:?}
    key_pem: {private_key:?}
    snis: [api.example.com]
"#
    );
    let file = write_file(&cp, "secrets.yaml", &yaml);
    let mut seen = String::new();
    let mut run = |args: &[&str]| {
        let out = cp.ctl(args);
        seen.push_str(&text(&out.stdout));
        seen.push_str(&text(&out.stderr));
        out
    };
    assert_ok("apply", &run(&["apply", "-f", &file]));
    for args in [
        &["get", "consumers"][..],
        &["get", "consumers", "-o", "yaml"],
        &["get", "consumer", "alice", "-o", "json"],
        &["get", "certificates", "-o", "yaml"],
        &["get", "certificate", "main"],
        &["export"],
        &["diff", "-f", &file],
        &["dataplanes"],
    ] {
        assert_ok(&args.join(" "), &run(args));
    }
    // The export re-applies, keeping the secrets it only names by fingerprint.
    let exported = assert_ok("export", &run(&["export"]));
    assert!(exported.contains(&fingerprint(JWT_SECRET)), "{exported}");
    let export_file = write_file(&cp, "export.yaml", &exported);
    let out = assert_ok("apply export", &run(&["apply", "-f", &export_file]));
    assert!(out.starts_with("no changes"), "{out}");

    // Errors about credentials name the field, never the key.
    let duplicate = yaml.replace(
        "certificates:",
        &format!("  - name: bob\n    credentials: [{{ api_key: \"{API_KEY}\" }}]\ncertificates:"),
    );
    let out = run(&["apply", "-f", &write_file(&cp, "dup.yaml", &duplicate)]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("credentials[0].api_key"),
        "{}",
        text(&out.stderr)
    );
    let spaced = yaml.replace(API_KEY, &format!("{API_KEY} with space"));
    let out = run(&["apply", "-f", &write_file(&cp, "spaced.yaml", &spaced)]);
    assert!(!out.status.success());

    // gRPC reads and write responses.
    let mut admin = cp.admin().await;
    for kind in [Kind::Consumer, Kind::Certificate] {
        let listed = admin
            .list(ListRequest { kind: kind as i32 })
            .await
            .expect("list")
            .into_inner();
        seen.push_str(&format!("{listed:?}"));
    }
    let exported = admin
        .export(ExportRequest::default())
        .await
        .expect("export")
        .into_inner();
    seen.push_str(&format!("{exported:?}"));
    let mut carol = GatewayConfig::from_yaml(&yaml).expect("yaml").consumers[0].clone();
    carol.name = "carol".into();
    carol.credentials.truncate(1);
    if carol.credentials[0].api_key.is_some() {
        carol.credentials[0].api_key = Some(format!("{API_KEY}-carol"));
    }
    let consumer = config_pb::Consumer::from(&carol);
    let created = admin
        .create(EntityRequest {
            entity: Some(admin_pb::Entity {
                entity: Some(PbEntity::Consumer(consumer.clone())),
            }),
        })
        .await
        .expect("create")
        .into_inner();
    seen.push_str(&format!("{created:?}"));
    let duplicate = admin
        .create(EntityRequest {
            entity: Some(admin_pb::Entity {
                entity: Some(PbEntity::Consumer(consumer)),
            }),
        })
        .await
        .expect_err("exists");
    seen.push_str(&format!("{duplicate:?}"));

    let logs = cp.logs();
    for secret in [API_KEY, JWT_SECRET, key_line.as_str()] {
        assert!(
            !seen.contains(secret),
            "{secret} leaked into a read, export, CLI output or error:\n{seen}"
        );
        assert!(
            !logs.contains(secret),
            "{secret} leaked into the log:\n{logs}"
        );
    }
    assert!(
        logs.contains("config committed"),
        "the debug log was captured:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_token_is_enforced_when_set() {
    const TOKEN: &str = "admin-token-for-tests";
    let cp = ControlPlane::start_with(CpOptions {
        admin_token: Some(TOKEN.into()),
        ..Default::default()
    })
    .await;
    for token in [None, Some("wrong-token")] {
        let status = cp
            .admin_with_token(token)
            .await
            .export(ExportRequest::default())
            .await
            .expect_err("no or wrong token");
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        assert!(!status.message().contains(TOKEN));
    }
    export(&mut cp.admin().await).await;

    let out = cp.ctl_with_env(&["get", "routes"], &[]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).starts_with("error: unauthenticated"),
        "{}",
        text(&out.stderr)
    );
    let out = cp.ctl_with_env(&["--token", TOKEN, "get", "routes"], &[]);
    assert_ok("get with --token", &out);
    let out = cp.ctl_with_env(&["export"], &[("TOLLGATE_ADMIN_TOKEN", TOKEN)]);
    assert_ok("export with TOLLGATE_ADMIN_TOKEN", &out);
    // Health stays answerable for load balancers.
    assert!(cp.health().await.is_some());
    assert!(!cp.logs().contains(TOKEN));
}

#[test]
fn non_loopback_admin_listener_without_a_token_refuses_to_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut process = ChildProcess::spawn(
        "tollgate-cp",
        &bin_path("tollgate-cp"),
        &[
            "--admin-listen".into(),
            format!("0.0.0.0:{}", free_port()),
            "--data-dir".into(),
            dir.path().join("data").display().to_string(),
        ],
        &[],
    );
    let status = process
        .wait_exit(Duration::from_secs(20))
        .expect("refuses and exits");
    assert!(!status.success());
    assert!(
        process.logs().contains("without --admin-token"),
        "{}",
        process.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_and_health_are_served() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let cp = ControlPlane::start().await;
    let channel = tonic::transport::Endpoint::from_shared(cp.url())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner();
    let response = responses
        .message()
        .await
        .expect("answer")
        .expect("one message");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "tollgate.admin.v1.Admin",
        "tollgate.stream.v1.ConfigStream",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} not in {names:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_route_apply_passes() {
    let cp = ControlPlane::start().await;
    let mut admin = cp.admin().await;
    let mut config = example();
    config.routes = (0..10_000)
        .map(|i| {
            let mut route = example().routes[0].clone();
            route.name = format!("route-{i:05}");
            route.paths = vec![format!("/v1/orders/{i}")];
            route
        })
        .collect();
    let started = Instant::now();
    let response = apply(&mut admin, &config, false).await;
    let took = started.elapsed();
    assert_eq!(response.changes.len(), 10_002);
    assert!(response
        .changes
        .iter()
        .all(|c| c.action == ChangeAction::Create as i32));
    let listed = admin
        .list(ListRequest {
            kind: Kind::Route as i32,
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.entities.len(), 10_000);
    let (exported, _) = export(&mut admin).await;
    assert!(apply(&mut admin, &exported, true).await.changes.is_empty());
    let mut dp = cp.subscribe("dp-big", None).await.expect("subscribe");
    let snapshot = dp
        .next_snapshot(Duration::from_secs(30))
        .await
        .expect("big snapshot");
    let config = GatewayConfig::try_from(&snapshot.config.expect("config")).expect("model");
    assert_eq!(config.routes.len(), 10_000);
    eprintln!("10,000-route apply took {took:?}");
}
