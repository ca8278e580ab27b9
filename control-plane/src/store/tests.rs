use super::*;
use tollgate_shared::model::GatewayConfig;

const EXAMPLE: &str = r#"
services:
  - name: orders
    upstream: { targets: [{ address: "127.0.0.1:9001" }] }
routes:
  - name: orders-api
    service: orders
    paths: ["/v1/orders"]
consumers:
  - name: alice
    credentials: [{ api_key_hash: "sha256:1d8ad0a3a4c51f4a8b3c0e5d0e3a3e2b0a8c5f6e7d8c9b0a1f2e3d4c5b6a7980" }]
"#;

fn example() -> GatewayConfig {
    let mut config = GatewayConfig::from_yaml(EXAMPLE).expect("example parses");
    config.sort();
    config
}

fn writes_for(config: &GatewayConfig) -> Vec<EntityWrite> {
    EntityKind::ALL
        .into_iter()
        .flat_map(|kind| entity::list(config, kind))
        .map(|e| EntityWrite::put(&e).expect("encodes"))
        .collect()
}

#[tokio::test]
async fn new_store_is_private_and_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("data");
    let (store, loaded) = Store::open(&data_dir).expect("opens");
    let mode = std::fs::metadata(&data_dir)
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
    assert_eq!(loaded.revision, 0);
    assert!(loaded.config == GatewayConfig::default());
    let store_id = loaded.store_id.clone();

    let config = example();
    store.commit(writes_for(&config), 1).await.expect("commits");
    store
        .commit(vec![EntityWrite::delete(EntityKind::Consumer, "alice")], 2)
        .await
        .expect("commits a delete");
    drop(store);

    let (_store, reopened) = Store::open(&data_dir).expect("reopens");
    assert_eq!(reopened.store_id, store_id);
    assert_eq!(reopened.revision, 2);
    let mut expected = config;
    expected.consumers.clear();
    assert_eq!(reopened.config, expected);
}

#[test]
fn existing_dir_is_tightened_to_0700() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let _ = Store::open(dir.path()).expect("opens");
    let mode = std::fs::metadata(dir.path())
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
}

/// Writes a store exactly as format 1 lays it out, byte for byte, without
/// going through the current encoder: if the encoder ever changes shape, this
/// still proves that stores written by older builds open.
fn write_format_1_fixture(data_dir: &Path, format_marker: &[u8], route_format: u32) {
    let db = sled::open(data_dir.join(DB_DIR)).expect("fixture db");
    let meta = db.open_tree("meta").expect("meta");
    meta.insert("format", format_marker).expect("format");
    meta.insert("store_id", "5f0c2a9e-0000-4000-8000-000000000001")
        .expect("store id");
    meta.insert("revision", &7u64.to_be_bytes())
        .expect("revision");
    db.open_tree("services")
        .expect("services")
        .insert(
            "orders",
            br#"{"format":1,"kind":"service","entity":{"name":"orders","upstream":{"targets":[{"address":"127.0.0.1:9001"}]}}}"#.as_slice(),
        )
        .expect("service");
    let route = format!(
        r#"{{"format":{route_format},"kind":"route","entity":{{"name":"orders-api","service":"orders","paths":["/v1/orders"]}}}}"#
    );
    db.open_tree("routes")
        .expect("routes")
        .insert("orders-api", route.as_bytes())
        .expect("route");
    db.open_tree("consumers")
        .expect("consumers")
        .insert(
            "alice",
            br#"{"format":1,"kind":"consumer","entity":{"name":"alice","credentials":[{"api_key_hash":"sha256:1d8ad0a3a4c51f4a8b3c0e5d0e3a3e2b0a8c5f6e7d8c9b0a1f2e3d4c5b6a7980"}]}}"#.as_slice(),
        )
        .expect("consumer");
    db.flush().expect("flush");
}

#[test]
fn a_format_1_store_reopens() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_format_1_fixture(dir.path(), b"1", 1);
    let (_store, loaded) = Store::open(dir.path()).expect("format 1 opens");
    assert_eq!(loaded.store_id, "5f0c2a9e-0000-4000-8000-000000000001");
    assert_eq!(loaded.revision, 7);
    assert_eq!(loaded.config, example());
}

#[test]
fn a_newer_store_format_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_format_1_fixture(dir.path(), b"2", 1);
    let err = Store::open(dir.path()).err().expect("refused");
    let text = err.to_string();
    assert!(
        text.contains("on-disk format 2 by a newer tollgate-cp"),
        "{text}"
    );
}

#[test]
fn a_newer_entity_format_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_format_1_fixture(dir.path(), b"1", 2);
    let err = Store::open(dir.path()).err().expect("refused");
    let text = err.to_string();
    assert!(
        text.contains("route \"orders-api\": written in format 2"),
        "{text}"
    );
}

#[test]
fn entities_without_a_format_marker_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let db = sled::open(dir.path().join(DB_DIR)).expect("db");
        db.open_tree("routes")
            .expect("routes")
            .insert("r", b"{}".as_slice())
            .expect("insert");
        db.flush().expect("flush");
    }
    let err = Store::open(dir.path()).err().expect("refused");
    assert!(
        err.to_string().contains("format marker is missing"),
        "{err}"
    );
}
