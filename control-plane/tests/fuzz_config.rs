//! A bounded fuzz run of config validation, as an ordinary `cargo test`.
//!
//! What reaches validation from outside: a file `tollgatectl` reads (YAML or
//! JSON, [`ctl::input::parse_bounded`]), and an Apply's protobuf (decoded,
//! converted with `GatewayConfig::try_from`). Both are driven here with
//! arbitrary bytes and with structure-aware configs whose strings come from
//! the alphabets that broke things before (non-ASCII, control characters,
//! brackets and colons, wildcard hosts, DER-ish PEM blocks). The property is
//! only "no panic, no abort": every input must end in `Ok` or an error.
//!
//! The case counts are fixed so CI time stays bounded (a few seconds in a
//! debug build); set `PROPTEST_CASES` for a longer local run.

use proptest::prelude::*;
use prost::Message;
use tollgate_control_plane::ctl::input::parse_bounded;
use tollgate_shared::model::GatewayConfig;
use tollgate_shared::proto::config as pb;
use tollgate_shared::validate::validate;

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Everything an outside input can go through, ending in validation.
fn check_all_entry_points(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    if let Ok(config) = parse_bounded(&text) {
        let _ = validate(&config);
    }
    if let Ok(config) = serde_json::from_slice::<GatewayConfig>(bytes) {
        let _ = validate(&config);
    }
    if let Ok(wire) = pb::GatewayConfig::decode(bytes) {
        if let Ok(config) = GatewayConfig::try_from(&wire) {
            let _ = validate(&config);
        }
    }
}

/// Strings from the alphabets that matter.
fn nasty_string() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9.-]{0,20}",
        "[a-zA-Z0-9:\\[\\]*.+%-]{0,24}",
        "\\PC{0,12}",
        "[\\x00-\\x20\\x7f&=#é日]{0,6}",
        Just("*.com".to_string()),
        Just("::1:80".to_string()),
        Just("[1.2.3.4]:80".to_string()),
        Just("h:+80".to_string()),
        Just("1é".to_string()),
        Just("-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----\n".to_string()),
        "-----BEGIN PUBLIC KEY-----\n[A-Za-z0-9+/=]{0,40}\n-----END PUBLIC KEY-----\n",
        "[0-9]{1,4}[smhd日é]?",
    ]
}

fn plugin_config() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        nasty_string().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<bool>().prop_map(serde_json::Value::from),
        Just(serde_json::Value::Null),
    ];
    let value = leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("limit".to_string()),
                    Just("window".to_string()),
                    Just("scope".to_string()),
                    Just("add".to_string()),
                    Just("headers".to_string()),
                    Just("querystring".to_string()),
                    Just("remove".to_string()),
                    Just("rename".to_string()),
                    Just("allow".to_string()),
                    Just("forward_claims".to_string()),
                    nasty_string(),
                ],
                inner,
                0..4
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    });
    prop_oneof![
        value,
        (nasty_string(), any::<u64>()).prop_map(|(window, limit)| {
            serde_json::json!({"limit": limit, "window": window})
        }),
        (nasty_string(), nasty_string()).prop_map(|(name, value)| {
            serde_json::json!({"add": {"headers": {"x-a": value.clone()}, "querystring": {name: value}}})
        }),
    ]
}

fn plugin() -> impl Strategy<Value = serde_json::Value> {
    (
        prop_oneof![
            Just("rate-limit"),
            Just("request-transformer"),
            Just("key-auth"),
            Just("jwt"),
            Just("acl"),
            Just("nope"),
        ],
        plugin_config(),
    )
        .prop_map(|(name, config)| serde_json::json!({"name": name, "config": config}))
}

/// A config in the model's JSON shape, most fields from [`nasty_string`].
fn structured_config() -> impl Strategy<Value = serde_json::Value> {
    let service = (
        nasty_string(),
        prop::collection::vec(nasty_string(), 0..3),
        prop::collection::vec(plugin(), 0..2),
    )
        .prop_map(|(name, targets, plugins)| {
            let targets: Vec<_> = targets
                .into_iter()
                .map(|address| serde_json::json!({"address": address}))
                .collect();
            serde_json::json!({"name": name, "upstream": {"targets": targets}, "plugins": plugins})
        });
    let route = (
        nasty_string(),
        prop::collection::vec(nasty_string(), 0..3),
        prop::collection::vec(nasty_string(), 0..3),
        prop::collection::vec((nasty_string(), proptest::option::of(nasty_string())), 0..3),
        prop::collection::vec(plugin(), 0..3),
    )
        .prop_map(|(name, hosts, paths, headers, plugins)| {
            let headers: Vec<_> = headers
                .into_iter()
                .map(|(name, value)| match value {
                    Some(value) => serde_json::json!({"name": name, "value": value}),
                    None => serde_json::json!({"name": name}),
                })
                .collect();
            serde_json::json!({
                "name": name, "service": "s", "hosts": hosts, "paths": paths,
                "headers": headers, "plugins": plugins,
            })
        });
    let credential = prop_oneof![
        nasty_string().prop_map(|k| serde_json::json!({"api_key": k})),
        nasty_string().prop_map(|h| serde_json::json!({"api_key_hash": h})),
        (nasty_string(), nasty_string(), nasty_string()).prop_map(|(key, algorithm, public_key)| {
            serde_json::json!({"jwt": {"key": key, "algorithm": algorithm, "public_key": public_key}})
        }),
    ];
    let consumer = (
        nasty_string(),
        prop::collection::vec(nasty_string(), 0..3),
        prop::collection::vec(credential, 0..3),
    )
        .prop_map(|(name, groups, credentials)| {
            serde_json::json!({"name": name, "groups": groups, "credentials": credentials})
        });
    (
        prop::collection::vec(service, 0..3),
        prop::collection::vec(route, 0..4),
        prop::collection::vec(consumer, 0..3),
        prop::collection::vec(plugin(), 0..2),
    )
        .prop_map(|(mut services, routes, consumers, plugins)| {
            services.push(serde_json::json!({
                "name": "s", "upstream": {"targets": [{"address": "127.0.0.1:1"}]}
            }));
            serde_json::json!({
                "services": services, "routes": routes, "consumers": consumers,
                "plugins": plugins,
            })
        })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(2048),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        check_all_entry_points(&bytes);
    }

    #[test]
    fn yaml_shaped_text_never_panics(
        text in "[ \\n:\\-\\[\\]{},&*!|>'\"a-z0-9#é]{0,400}"
    ) {
        check_all_entry_points(text.as_bytes());
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(1024),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn structured_configs_never_panic(value in structured_config()) {
        // Through every entry point: the model, YAML text, JSON text and the
        // protobuf an Apply carries.
        if let Ok(config) = serde_json::from_value::<GatewayConfig>(value.clone()) {
            let _ = validate(&config);
            let wire = pb::GatewayConfig::from(&config);
            if let Ok(back) = GatewayConfig::try_from(&wire) {
                let _ = validate(&back);
            }
            check_all_entry_points(&wire.encode_to_vec());
            check_all_entry_points(config.to_yaml().as_bytes());
        }
        check_all_entry_points(value.to_string().as_bytes());
    }
}
