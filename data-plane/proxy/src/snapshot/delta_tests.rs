//! The applier fed deltas: ACK/NACK semantics unchanged (a refused delta
//! leaves the config in service whole), drift detected instead of served,
//! upstream pools carried over.

use std::sync::Arc;

use tollgate_shared::delta::{self, EntityTable};
use tollgate_shared::model::GatewayConfig;
use tollgate_shared::proto::config::{self as pb_config, ConfigVersion};
use tollgate_shared::proto::stream::{Delta, Snapshot};

use super::held::DeltaRefused;
use super::{Applier, SnapshotStore};

fn version(revision: u64) -> ConfigVersion {
    ConfigVersion {
        store_id: "store".into(),
        revision,
    }
}

fn config(probe_path: &str, extra_route_service: &str) -> GatewayConfig {
    let mut config = GatewayConfig::from_yaml(&format!(
        r#"
services:
  - name: orders
    upstream: {{ targets: [{{ address: "127.0.0.1:9001" }}] }}
  - name: users
    upstream: {{ targets: [{{ address: "127.0.0.1:9002" }}] }}
routes:
  - name: probe
    service: orders
    paths: ["{probe_path}"]
  - name: users-api
    service: {extra_route_service}
    paths: ["/users"]
"#
    ))
    .expect("yaml");
    config.sort();
    config
}

fn applier() -> Applier {
    Applier::new(
        Arc::new(SnapshotStore::default()),
        None,
        Arc::new(tollgate_plugins::registry(&Default::default())),
    )
    .expect("applier")
}

fn delta(from: (u64, &GatewayConfig), to: (u64, &GatewayConfig)) -> Delta {
    delta::build(
        &version(from.0),
        &EntityTable::of(from.1),
        &version(to.0),
        &EntityTable::of(to.1),
        to.1,
    )
}

fn probe_paths(applier: &Applier) -> Vec<String> {
    let held = applier.store().load().expect("in service");
    held.routes.iter().map(|r| r.name.to_string()).collect()
}

#[test]
fn deltas_apply_refusals_keep_the_config_and_drift_asks_for_a_full_snapshot() {
    let applier = applier();
    let v1 = config("/probe/1", "users");
    applier
        .apply(&Snapshot {
            version: Some(version(1)),
            config: Some(pb_config::GatewayConfig::from(&v1)),
        })
        .expect("full snapshot applies");
    let pool_before = applier.store().load().expect("v1").services["users"]
        .upstream
        .clone();

    // One changed route: in service, same state as a full snapshot of v2.
    let v2 = config("/probe/2", "users");
    let (applied, cached) = applier
        .apply_delta(&delta((1, &v1), (2, &v2)))
        .expect("delta applies");
    assert_eq!(applied, version(2));
    assert_eq!(applier.store().version(), Some(version(2)));
    assert_eq!(
        applier.held_checksum(),
        delta::checksum_bytes(EntityTable::of(&v2).checksum())
    );
    let cached = GatewayConfig::try_from(cached.config.as_ref().expect("config")).expect("parses");
    assert_eq!(cached, v2, "the cache gets the whole resulting config");
    let pool_after = applier.store().load().expect("v2").services["users"]
        .upstream
        .clone();
    assert!(
        Arc::ptr_eq(&pool_before, &pool_after),
        "untouched pools survive"
    );
    assert_eq!(probe_paths(&applier), ["probe", "users-api"]);

    // A delta to an invalid config (a route to a missing service) is a NACK:
    // v2 stays in service, whole.
    let broken = config("/probe/3", "missing");
    match applier.apply_delta(&delta((2, &v2), (3, &broken))) {
        Err(DeltaRefused::Invalid(message)) => {
            assert!(message.contains("users-api"), "{message}")
        }
        other => panic!("expected a NACK: {other:?}"),
    }
    assert_eq!(applier.store().version(), Some(version(2)));

    // A delta from a version this data plane does not hold: resync.
    let v3 = config("/probe/3", "users");
    assert!(matches!(
        applier.apply_delta(&delta((1, &v1), (3, &v3))),
        Err(DeltaRefused::Drift(_))
    ));

    // The held state drifted from what the control plane sent: the checksum
    // catches it, nothing is swapped in, the data plane asks for a full one.
    applier.corrupt_held_state();
    match applier.apply_delta(&delta((2, &v2), (3, &v3))) {
        Err(DeltaRefused::Drift(message)) => assert!(message.contains("checksum"), "{message}"),
        other => panic!("drift not detected: {other:?}"),
    }
    assert_eq!(applier.store().version(), Some(version(2)));

    // The full snapshot repairs it; deltas apply again.
    applier
        .apply(&Snapshot {
            version: Some(version(3)),
            config: Some(pb_config::GatewayConfig::from(&v3)),
        })
        .expect("full snapshot");
    let v4 = config("/probe/4", "users");
    applier
        .apply_delta(&delta((3, &v3), (4, &v4)))
        .expect("deltas apply after the resync");
    assert_eq!(applier.store().version(), Some(version(4)));
}
