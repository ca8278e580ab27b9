//! The config stream at scale (issue 25): versions built once, full snapshots
//! in chunks, one-route changes as deltas, older data planes still on whole
//! snapshots, drift repaired by a full snapshot. Real `tollgate-cp`, real
//! `tollgate-dp`, real upstream, all on 127.0.0.1.

use std::time::Duration;

use prost::Message;
use serde_json::{json, Value};
use tollgate_integration_tests::cp::StreamSubscriber;
use tollgate_integration_tests::cp::{config_from_json, many_routes, ControlPlane, CpOptions};
use tollgate_integration_tests::dp::{DataPlane, WAIT};
use tollgate_integration_tests::process::{free_port, wait_until};
use tollgate_integration_tests::upstream::Upstream;
use tollgate_shared::delta::{self, EntityTable};
use tollgate_shared::model::GatewayConfig;
use tollgate_shared::proto::config::ConfigVersion;
use tollgate_shared::proto::stream::{
    control_plane_message, data_plane_message, ControlPlaneMessage, Delta, Hello, ResyncRequest,
    Snapshot,
};

const QUIET: Duration = Duration::from_millis(1500);

fn hello(node_id: &str, held: Option<ConfigVersion>, checksum: Vec<u8>) -> Hello {
    Hello {
        node_id: node_id.into(),
        hostname: "test-host".into(),
        build_version: "test".into(),
        held_version: held,
        accepts_deltas: true,
        held_checksum: checksum,
    }
}

async fn next(sub: &mut StreamSubscriber) -> ControlPlaneMessage {
    match sub.next_raw(WAIT).await {
        Some(Ok(Some(message))) => message,
        other => panic!("expected a stream message, got {other:?}"),
    }
}

/// Reads chunks until one snapshot is whole; returns it with its checksum.
async fn full_snapshot(sub: &mut StreamSubscriber) -> (Snapshot, Vec<u8>) {
    let mut buffer = Vec::new();
    loop {
        let message = next(sub).await;
        let encoded_len = message.encoded_len();
        let Some(control_plane_message::Kind::SnapshotChunk(chunk)) = message.kind else {
            panic!("expected a snapshot chunk, got {:?}", message.kind);
        };
        assert!(encoded_len <= 8 * 1024, "chunk of {encoded_len} bytes");
        assert_eq!(chunk.offset, buffer.len() as u64, "chunks in sequence");
        buffer.extend_from_slice(&chunk.data);
        if buffer.len() as u64 == chunk.total_bytes {
            let snapshot = Snapshot::decode(buffer.as_slice()).expect("snapshot decodes");
            return (snapshot, chunk.checksum);
        }
    }
}

async fn delta(sub: &mut StreamSubscriber) -> (Delta, usize) {
    let message = next(sub).await;
    let size = message.encoded_len();
    match message.kind {
        Some(control_plane_message::Kind::Delta(delta)) => (delta, size),
        other => panic!("expected a delta, got {other:?}"),
    }
}

fn parsed(snapshot: &Snapshot) -> GatewayConfig {
    GatewayConfig::try_from(snapshot.config.as_ref().expect("config")).expect("config parses")
}

async fn expect_silence(sub: &mut StreamSubscriber) {
    if let Some(message) = sub.next_raw(QUIET).await {
        panic!("expected nothing, got {message:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deltas_chunks_legacy_snapshots_and_resyncs_on_the_wire() {
    let cp = ControlPlane::start().await;
    let mut config = many_routes(2_000);
    let first = cp.apply_revision(&config).await;

    // A data plane that speaks deltas and holds nothing: the full snapshot,
    // in chunks, with the checksum of exactly that state.
    let mut fresh = cp
        .subscribe_with(hello("dp-deltas", None, Vec::new()))
        .await
        .expect("subscribe");
    let (snapshot, checksum) = full_snapshot(&mut fresh).await;
    let mut v1 = snapshot.version.clone().expect("version");
    let mut state1 = parsed(&snapshot);
    let mut table1 = EntityTable::of(&state1);
    assert_eq!(checksum, delta::checksum_bytes(table1.checksum()));
    fresh.ack(v1.clone()).await;
    // The stream may have started before the build of the applied version
    // was out: that version then follows as a delta.
    if v1.revision < first {
        let (change, _) = delta(&mut fresh).await;
        (state1, table1) = delta::apply(&state1, &table1, &change).expect("delta applies");
        v1 = change.target.expect("target");
        fresh.ack(v1.clone()).await;
    }
    assert_eq!(v1.revision, first);
    assert_eq!(state1.routes.len(), 2_000);

    // An older data plane (no accepts_deltas) gets one whole Snapshot.
    let mut legacy = cp.subscribe("dp-legacy", None).await.expect("subscribe");
    let whole = legacy.next_snapshot(WAIT).await.expect("whole snapshot");
    assert_eq!(parsed(&whole), state1);

    // One route changes: the delta carries that route only, far under 2 KB,
    // and leads to exactly the state the full snapshot has.
    config.routes[0].paths = vec!["/changed".into()];
    let second = cp.apply_revision(&config).await;
    let (change, size) = delta(&mut fresh).await;
    assert!(size < 2_048, "delta of {size} bytes");
    assert_eq!(change.base.as_ref(), Some(&v1));
    assert_eq!(change.target.as_ref().map(|v| v.revision), Some(second));
    assert_eq!(change.upserts.len(), 1);
    assert!(change.removals.is_empty());
    let (state2, table2) = delta::apply(&state1, &table1, &change).expect("delta applies");
    let whole2 = legacy
        .next_snapshot(WAIT)
        .await
        .expect("legacy gets it whole");
    assert_eq!(
        serde_json::to_string(&state2).expect("json"),
        serde_json::to_string(&parsed(&whole2)).expect("json"),
        "deltas and full snapshots give the same export"
    );
    let v2 = change.target.clone().expect("target");
    fresh.ack(v2.clone()).await;
    expect_silence(&mut fresh).await;

    // A data plane that finds its state drifted asks, and gets it whole.
    fresh
        .send(data_plane_message::Kind::Resync(ResyncRequest {
            held_version: Some(v2.clone()),
            reason: "test".into(),
        }))
        .await;
    let (again, _) = full_snapshot(&mut fresh).await;
    assert_eq!(parsed(&again), state2);

    // Reconnects: the right checksum at the newest version gets nothing; a
    // wrong one gets the full snapshot; one version behind gets the delta.
    let checksum2 = delta::checksum_bytes(table2.checksum());
    let mut current = cp
        .subscribe_with(hello("dp-current", Some(v2.clone()), checksum2.clone()))
        .await
        .expect("subscribe");
    expect_silence(&mut current).await;
    let mut wrong = cp
        .subscribe_with(hello("dp-drifted", Some(v2.clone()), vec![0; 16]))
        .await
        .expect("subscribe");
    let (repaired, repaired_checksum) = full_snapshot(&mut wrong).await;
    assert_eq!(repaired_checksum, checksum2);
    assert_eq!(parsed(&repaired), state2);
    let mut behind = cp
        .subscribe_with(hello(
            "dp-behind",
            Some(v1.clone()),
            delta::checksum_bytes(table1.checksum()),
        ))
        .await
        .expect("subscribe");
    let (catch_up, _) = delta(&mut behind).await;
    assert_eq!(catch_up.base.as_ref(), Some(&v1));
    assert_eq!(catch_up.upserts.len(), 1);
}

fn gateway_config(up: &Upstream, routes: usize, probe: &str) -> GatewayConfig {
    let mut list: Vec<Value> = (0..routes)
        .map(|i| json!({"name": format!("r{i:04}"), "service": "svc", "paths": [format!("/r{i}")]}))
        .collect();
    list.push(json!({"name": "probe", "service": "svc", "paths": [probe]}));
    config_from_json(json!({
        "services": [{"name": "svc", "upstream": {"targets": [{"address": up.address()}]}}],
        "routes": list,
    }))
}

async fn status_of(dp: &DataPlane, path: &str) -> u16 {
    match dp.get("any.test", path).send().await {
        Ok(response) => response.status().as_u16(),
        Err(_) => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_data_plane_follows_deltas_and_repairs_a_tampered_cache() {
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let cp = ControlPlane::start_with(CpOptions {
        env: vec![("TOLLGATE_METRICS_LISTEN".into(), metrics_addr.clone())],
        ..CpOptions::default()
    })
    .await;
    let up = Upstream::start("deltas").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let cache = dir.path().join("cache.pb");
    let args = vec!["--config-cache".to_string(), cache.display().to_string()];
    let first = cp
        .apply_revision(&gateway_config(&up, 200, "/probe/1"))
        .await;
    let mut dp = DataPlane::start(cp.port(), "dp-real", &args);
    dp.wait_ready().await;
    dp.wait_version(first).await;
    assert_eq!(status_of(&dp, "/probe/1").await, 200);

    // A one-route change arrives as a delta and is served.
    let second = cp
        .apply_revision(&gateway_config(&up, 200, "/probe/2"))
        .await;
    dp.wait_version(second).await;
    assert_eq!(status_of(&dp, "/probe/2").await, 200);
    assert_eq!(status_of(&dp, "/probe/1").await, 404);
    let scrape = reqwest::get(format!("http://{metrics_addr}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    let sent = |kind: &str| {
        scrape
            .lines()
            .find(|l| {
                l.starts_with(&format!(
                    "tollgate_cp_config_bytes_sent_total{{kind=\"{kind}\"}}"
                ))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert!(sent("delta") > 0.0 && sent("delta") < 2_048.0, "{scrape}");
    assert!(sent("full") > 0.0, "{scrape}");
    // The data plane compiled that delta incrementally (one route rebuilt,
    // the rest shared), not as a whole config.
    let dp_scrape = reqwest::get(dp.status_url("/metrics"))
        .await
        .expect("data plane metrics")
        .text()
        .await
        .expect("metrics text");
    assert!(
        dp_scrape
            .lines()
            .any(|l| l.starts_with("tollgate_config_compiles_total{mode=\"incremental\"} 1")),
        "{dp_scrape}"
    );
    wait_until("the cache to hold the delta's result", WAIT, || async {
        let bytes = std::fs::read(&cache).ok()?;
        let snapshot = Snapshot::decode(&bytes[9..]).ok()?;
        (snapshot.version.as_ref()?.revision == second).then_some(())
    })
    .await;

    // Tamper with the cache while the data plane is down: same version,
    // other content. On restart it serves the tampered copy at first, says
    // so through its checksum, and the control plane sends the real state.
    dp.sigterm();
    dp.wait_exit(WAIT).expect("data plane exits");
    let bytes = std::fs::read(&cache).expect("cache");
    let mut snapshot = Snapshot::decode(&bytes[9..]).expect("cache decodes");
    let mut tampered = parsed(&snapshot);
    for route in &mut tampered.routes {
        if route.name == "r0007" {
            route.paths = vec!["/tampered".into()];
        }
    }
    snapshot.config = Some((&tampered).into());
    let mut rewritten = bytes[..9].to_vec();
    snapshot.encode(&mut rewritten).expect("encode");
    std::fs::write(&cache, rewritten).expect("write cache");

    let dp = DataPlane::start(cp.port(), "dp-real", &args);
    dp.wait_ready().await;
    wait_until(
        "the data plane to serve the real config again",
        WAIT,
        || async {
            (status_of(&dp, "/r7").await == 200 && status_of(&dp, "/tampered").await == 404)
                .then_some(())
        },
    )
    .await;
    assert_eq!(dp.revision().await, Some(second));
}
