//! Deltas against full snapshots: a data plane fed deltas must end with
//! exactly the state (same export) of one fed full snapshots.

use proptest::prelude::*;

use super::*;
use crate::proto::config::ConfigVersion;

fn version(revision: u64) -> ConfigVersion {
    ConfigVersion {
        store_id: "store".into(),
        revision,
    }
}

/// A config from small integer choices: which services, routes, consumers
/// and global plugins exist and what each holds.
fn config_of(state: &State) -> GatewayConfig {
    let mut json =
        serde_json::json!({ "services": [], "routes": [], "consumers": [], "plugins": [] });
    for (i, port) in state.services.iter().enumerate() {
        if let Some(port) = port {
            json["services"].as_array_mut().unwrap().push(serde_json::json!({
                "name": format!("svc-{i}"),
                "upstream": { "targets": [{ "address": format!("127.0.0.1:{}", 9000 + u32::from(*port)) }] }
            }));
        }
    }
    for (i, route) in state.routes.iter().enumerate() {
        if let Some((service, path, strip)) = route {
            json["routes"]
                .as_array_mut()
                .unwrap()
                .push(serde_json::json!({
                    "name": format!("route-{i}"),
                    "service": format!("svc-{service}"),
                    "paths": [format!("/p{path}")],
                    "strip_path": strip,
                }));
        }
    }
    for (i, consumer) in state.consumers.iter().enumerate() {
        if let Some(group) = consumer {
            json["consumers"]
                .as_array_mut()
                .unwrap()
                .push(serde_json::json!({
                    "name": format!("consumer-{i}"),
                    "groups": [format!("g{group}")],
                }));
        }
    }
    for (i, plugin) in state.plugins.iter().enumerate() {
        if let Some(value) = plugin {
            json["plugins"]
                .as_array_mut()
                .unwrap()
                .push(serde_json::json!({
                    "name": "request-transformer",
                    "instance": format!("tag-{i}"),
                    "config": { "add": { "headers": { "x-tag": format!("v{value}") } } },
                }));
        }
    }
    let mut config: GatewayConfig = serde_json::from_value(json).expect("model json");
    config.sort();
    config
}

#[derive(Debug, Clone)]
struct State {
    services: Vec<Option<u8>>,
    routes: Vec<Option<(u8, u8, bool)>>,
    consumers: Vec<Option<u8>>,
    plugins: Vec<Option<u8>>,
}

fn state() -> impl Strategy<Value = State> {
    (
        prop::collection::vec(prop::option::of(0u8..4), 6),
        prop::collection::vec(prop::option::of((0u8..6, 0u8..5, any::<bool>())), 12),
        prop::collection::vec(prop::option::of(0u8..3), 5),
        prop::collection::vec(prop::option::of(0u8..3), 3),
    )
        .prop_map(|(services, routes, consumers, plugins)| State {
            services,
            routes,
            consumers,
            plugins,
        })
}

/// The wire form both ways, as an export compares them.
fn export(config: &GatewayConfig) -> String {
    serde_json::to_string(config).expect("json")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn deltas_end_in_the_same_state_as_full_snapshots(states in prop::collection::vec(state(), 2..10)) {
        // The data plane starts from the first version's full snapshot.
        let mut held = config_of(&states[0]);
        let mut held_table = EntityTable::of(&held);
        let mut tables = vec![held_table.clone()];
        for (i, s) in states.iter().enumerate().skip(1) {
            let full = config_of(s);
            let full_table = EntityTable::of(&full);
            // The control plane's per-version table, from the previous one.
            let previous = config_of(&states[i - 1]);
            prop_assert_eq!(
                &EntityTable::of_from(&full, &previous, &EntityTable::of(&previous)),
                &full_table
            );
            let delta = build(&version(i as u64), &held_table, &version(i as u64 + 1), &full_table, &full);
            let (next, next_table) = apply(&held, &held_table, &delta).expect("delta applies");
            prop_assert_eq!(export(&next), export(&full));
            // In place, then undone (a result that fails to compile): the
            // state before, exactly.
            let (mut undone, mut undone_table) = (held.clone(), held_table.clone());
            undone.sort();
            let before = export(&undone);
            apply_in_place(&mut undone, &mut undone_table, &delta)
                .expect("delta applies in place")
                .revert(&mut undone, &mut undone_table);
            prop_assert_eq!(export(&undone), before);
            prop_assert_eq!(&undone_table, &held_table);
            prop_assert_eq!(&next_table, &full_table);
            prop_assert_eq!(&next_table, &EntityTable::of(&next));
            held = next;
            held_table = next_table;
            tables.push(full_table);
        }
        // A data plane several versions behind gets one delta from its base.
        let last = config_of(states.last().unwrap());
        let first = config_of(&states[0]);
        let delta = build(&version(1), &tables[0], &version(states.len() as u64), tables.last().unwrap(), &last);
        let (caught_up, _) = apply(&first, &tables[0], &delta).expect("skip delta applies");
        prop_assert_eq!(export(&caught_up), export(&last));
    }
}

#[test]
fn a_drifted_state_is_detected_not_served() {
    let base = State {
        services: vec![Some(1), Some(2)],
        routes: vec![Some((0, 1, false)), Some((1, 2, true))],
        consumers: vec![Some(0)],
        plugins: vec![None],
    };
    let mut changed = base.clone();
    changed.routes[0] = Some((1, 3, false));
    let (old, new) = (config_of(&base), config_of(&changed));
    let (old_table, new_table) = (EntityTable::of(&old), EntityTable::of(&new));
    let delta = build(&version(1), &old_table, &version(2), &new_table, &new);
    assert_eq!(delta.upserts.len(), 1, "only the changed route travels");
    assert!(delta.removals.is_empty());

    // The data plane's copy of an entity the delta does not touch differs
    // from the control plane's: the checksum says so.
    let mut drifted = old.clone();
    drifted.routes[1].strip_path = !drifted.routes[1].strip_path;
    let drifted_table = EntityTable::of(&drifted);
    match apply(&drifted, &drifted_table, &delta) {
        Err(DeltaError::Drift(message)) => assert!(message.contains("checksum"), "{message}"),
        other => panic!("drift not detected: {other:?}"),
    }
    let mut corrupted = old_table.clone();
    corrupted.corrupt(EntityKind::Consumer, "consumer-0");
    assert!(matches!(
        apply(&old, &corrupted, &delta),
        Err(DeltaError::Drift(_))
    ));
    // An entity that does not parse is a bad delta (NACK), not drift.
    let mut bad = delta.clone();
    bad.upserts[0].json = r#"{"name":"route-0","service":"svc-1","priority":"high"}"#.into();
    assert!(matches!(
        apply(&old, &old_table, &bad),
        Err(DeltaError::Invalid(_))
    ));
    // The untouched state applies.
    let (next, _) = apply(&old, &old_table, &delta).expect("applies");
    assert_eq!(next, new);
}
