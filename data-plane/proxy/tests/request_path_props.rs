//! Property tests of what every request meets before a plugin runs: path
//! normalization and routing take any byte string without panicking, and
//! normalization is a fixed point that never leaves a dot segment, a
//! duplicate slash or a raw character a request-target may not hold.
//! Bounded: a fixed case count, so it runs in CI as a normal test.

use proptest::prelude::*;
use tollgate_proxy::router::{normalize_path, PathPolicy, Router};
use tollgate_shared::model::{EncodedSlashes, GatewayConfig, PathParameters};

/// Paths built from the pieces that make normalization interesting.
fn tricky_path() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("/".to_string()),
        Just("//".to_string()),
        Just(".".to_string()),
        Just("..".to_string()),
        Just("%2e".to_string()),
        Just("%2F".to_string()),
        Just("%2f".to_string()),
        Just("%25".to_string()),
        Just("%00".to_string()),
        Just("%5C".to_string()),
        Just(";".to_string()),
        Just("%3B".to_string()),
        Just("é".to_string()),
        Just(" ".to_string()),
        Just("%".to_string()),
        "[a-z]{1,3}",
        any::<char>().prop_map(|c| c.to_string()),
    ];
    prop::collection::vec(piece, 0..12).prop_map(|pieces| format!("/{}", pieces.concat()))
}

fn router() -> Router {
    let config = GatewayConfig::from_yaml(
        r#"
services: [{ name: s, upstream: { targets: [{ address: "127.0.0.1:1" }] } }]
routes:
  - { name: a, service: s, paths: ["/admin", "=/exact"], hosts: ["api.example.com", "*.example.com"] }
  - { name: b, service: s, paths: ["/users/{id}/orders"], methods: [GET] }
  - { name: c, service: s }
"#,
    )
    .expect("yaml");
    Router::build(&config.routes).expect("router")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn normalizing_any_string_never_panics(raw in any::<String>()) {
        let _ = normalize_path(&raw);
    }

    #[test]
    fn normal_paths_are_fixed_points_without_dot_segments(raw in tricky_path()) {
        if let Ok(normal) = normalize_path(&raw) {
            let normal = normal.into_owned();
            prop_assert!(normal.starts_with('/'));
            prop_assert!(!normal.contains("//"), "{normal}");
            for segment in normal.split('/') {
                prop_assert!(segment != "." && segment != "..", "{normal}");
            }
            prop_assert!(normal.bytes().all(|b| b.is_ascii_graphic()), "{normal}");
            let again = normalize_path(&normal).map(|p| p.into_owned());
            prop_assert_eq!(again, Ok(normal.clone()));
        }
    }

    #[test]
    fn every_path_policy_yields_a_normal_path_or_a_refusal(raw in tricky_path()) {
        if let Ok(normal) = normalize_path(&raw) {
            for (_, slashes) in EncodedSlashes::ALL {
                for (_, params) in PathParameters::ALL {
                    let policy = PathPolicy { encoded_slashes: slashes, path_parameters: params };
                    if let Ok(path) = policy.apply(normal.clone()) {
                        let path = path.into_owned();
                        let again = normalize_path(&path).map(|p| p.into_owned());
                        prop_assert_eq!(again, Ok(path.clone()));
                        if slashes == EncodedSlashes::Decode {
                            prop_assert!(!path.contains("%2F"), "{}", path);
                        }
                        if params != PathParameters::Keep {
                            prop_assert!(!path.contains(';'), "{}", path);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn routing_any_request_never_panics(
        host in "[a-zA-Z0-9.:*-]{0,40}",
        raw in tricky_path(),
        method in prop_oneof![Just(http::Method::GET), Just(http::Method::POST), Just(http::Method::OPTIONS)],
    ) {
        let router = router();
        if let Ok(path) = normalize_path(&raw) {
            let _ = router.find(&host, &path, &method, &http::HeaderMap::new());
        }
    }
}
