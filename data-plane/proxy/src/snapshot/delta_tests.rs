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
    held.live_routes().map(|r| r.name.to_string()).collect()
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
    assert!(cached.is_none(), "no cache, nothing encoded for it");
    let held = applier.held.snapshot().expect("held");
    let held = GatewayConfig::try_from(held.config.as_ref().expect("config")).expect("parses");
    assert_eq!(held, v2, "the held state is the whole resulting config");
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

    // Removing a service a route still uses is refused the same way (the
    // incremental validation checks what refers to what it removed).
    let mut orphan = v2.clone();
    orphan.services.retain(|s| s.name != "users");
    match applier.apply_delta(&delta((2, &v2), (3, &orphan))) {
        Err(DeltaRefused::Invalid(message)) => {
            assert!(
                message.contains("users-api") && message.contains("users"),
                "{message}"
            )
        }
        other => panic!("expected a NACK: {other:?}"),
    }
    assert_eq!(applier.store().version(), Some(version(2)));
    assert_eq!(
        applier.held_checksum(),
        delta::checksum_bytes(EntityTable::of(&v2).checksum()),
        "a refused delta leaves the held state as it was"
    );

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

/// A route as the generator below writes it.
#[derive(Clone)]
struct GenRoute {
    name: String,
    service: usize,
    hosts: Vec<&'static str>,
    paths: Vec<String>,
    methods: Vec<&'static str>,
    priority: i32,
}

fn render(services: &[u16], routes: &[GenRoute]) -> GatewayConfig {
    let mut yaml = String::from("services:\n");
    for (i, port) in services.iter().enumerate() {
        yaml += &format!(
            "  - name: s{i}\n    upstream: {{ targets: [{{ address: \"127.0.0.1:{port}\" }}] }}\n"
        );
    }
    yaml += "routes:\n";
    for r in routes {
        yaml += &format!(
            "  - name: {}\n    service: s{}\n    hosts: {:?}\n    paths: {:?}\n    methods: {:?}\n    priority: {}\n",
            r.name, r.service, r.hosts, r.paths, r.methods, r.priority
        );
    }
    let mut config = GatewayConfig::from_yaml(&yaml).expect("yaml");
    config.sort();
    tollgate_shared::validate::validate(&config).expect("valid");
    config
}

/// (route name, matched length, service name) for each probe.
fn routing(applier: &Applier) -> Vec<Option<(String, usize, String)>> {
    let snapshot = applier.store().load().expect("in service");
    let mut out = Vec::new();
    for host in [
        "a.example.com",
        "b.example.com",
        "x.w.example.com",
        "other.example.com",
    ] {
        for path in [
            "/",
            "/p0",
            "/p1/x",
            "/p2",
            "/p3/deeper/still",
            "/p4",
            "/p5/q",
            "/p6",
            "/p7",
        ] {
            for method in [http::Method::GET, http::Method::POST] {
                let found = snapshot
                    .router
                    .find(host, path, &method, &http::HeaderMap::new())
                    .map(|m| {
                        let route = snapshot.route(m.route_index).expect("route at its index");
                        (
                            route.name.to_string(),
                            m.matched_len,
                            route.service.name.to_string(),
                        )
                    });
                out.push(found);
            }
        }
    }
    out
}

/// A data plane fed deltas, compiled incrementally, routes every probe as
/// one that compiled each state whole; untouched routes are shared.
#[test]
fn incremental_compiles_route_like_whole_ones() {
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut rand = move |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    const HOSTS: [&[&str]; 5] = [
        &[],
        &["a.example.com"],
        &["b.example.com"],
        &["*.w.example.com"],
        &["a.example.com", "*.w.example.com"],
    ];
    let gen = |i: usize, rand: &mut dyn FnMut(usize) -> usize| GenRoute {
        name: format!("r{i:03}"),
        service: rand(4),
        hosts: HOSTS[rand(HOSTS.len())].to_vec(),
        paths: (0..1 + rand(2))
            .map(|_| match rand(4) {
                0 => format!("/p{}", rand(8)),
                1 => format!("=/p{}", rand(8)),
                2 => format!("/p{}/", rand(8)),
                _ => "/".to_string(),
            })
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect(),
        methods: [vec![], vec!["GET"], vec!["POST"]][rand(3)].clone(),
        priority: rand(3) as i32,
    };
    let mut services: Vec<u16> = vec![9001, 9002, 9003, 9004];
    let mut routes: Vec<GenRoute> = (0..30).map(|i| gen(i, &mut rand)).collect();
    let mut made = 30;
    let mut state = render(&services, &routes);
    let fed = applier();
    fed.apply(&Snapshot {
        version: Some(version(1)),
        config: Some(pb_config::GatewayConfig::from(&state)),
    })
    .expect("first snapshot");
    for step in 2..60u64 {
        for _ in 0..1 + rand(3) {
            match rand(5) {
                0 => {
                    routes.push(gen(made, &mut rand));
                    made += 1;
                }
                1 if routes.len() > 5 => {
                    routes.remove(rand(routes.len()));
                }
                2 => {
                    let port = 9100 + rand(50) as u16;
                    services[rand(4)] = port;
                }
                _ => {
                    let i = rand(routes.len());
                    let name = routes[i].name.clone();
                    let index: usize = name[1..].parse().expect("number");
                    routes[i] = gen(index, &mut rand);
                }
            }
        }
        let next = render(&services, &routes);
        let before = fed.store().load().expect("in service");
        fed.apply_delta(&delta((step - 1, &state), (step, &next)))
            .expect("delta applies");
        let whole = applier();
        whole
            .apply(&Snapshot {
                version: Some(version(step)),
                config: Some(pb_config::GatewayConfig::from(&next)),
            })
            .expect("whole snapshot");
        assert_eq!(routing(&fed), routing(&whole), "step {step}");
        let after = fed.store().load().expect("in service");
        let shared = before.live_routes().filter(|old| {
            after
                .route_indexes
                .get(&old.name)
                .and_then(|&i| after.routes[i].as_ref())
                .is_some_and(|new| std::ptr::eq(&**new, *old))
        });
        let untouched = state
            .routes
            .iter()
            .filter(|r| next.routes.contains(r))
            .filter(|r| {
                let service =
                    |c: &GatewayConfig| c.services.iter().find(|s| s.name == r.service).cloned();
                service(&state) == service(&next)
            })
            .count();
        assert_eq!(
            shared.count(),
            untouched,
            "step {step}: untouched routes are shared"
        );
        state = next;
    }
}
