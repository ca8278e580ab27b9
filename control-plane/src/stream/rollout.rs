//! Waiting for a version to reach the fleet (`WaitForVersion`, the CLI's
//! `--wait`).
//!
//! The data planes waited for are those connected when the wait starts. Each
//! gets exactly one answer, sent as soon as it is known: ACKED once it serves
//! the version or a later one (its ACK, heartbeat or hello says so), REJECTED
//! once it NACKed the version or a later one (with its reason), or TIMED_OUT
//! when the deadline passes first (frozen, too slow, or gone: a data plane that
//! disconnects may still reconnect and answer before the deadline). The waiter
//! reads the registry and sleeps on its change counter: nothing polls.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tollgate_shared::proto::admin::{DataPlaneRollout, RolloutOutcome};
use tollgate_shared::proto::config::ConfigVersion;
use tonic::Status;

use super::registry::{reaches, Registry};

/// Timeout when the request names none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest timeout accepted.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// Sends one [`DataPlaneRollout`] per data plane connected now to `events`,
/// then returns. Stops early if the receiver goes away.
pub async fn wait_for(
    registry: Arc<Registry>,
    target: ConfigVersion,
    timeout: Duration,
    events: mpsc::Sender<Result<DataPlaneRollout, Status>>,
) {
    let started = Instant::now();
    let deadline = started + timeout;
    let mut changes = registry.changes();
    let mut pending: BTreeSet<String> = registry
        .list()
        .into_iter()
        .filter(|plane| plane.connected)
        .map(|plane| plane.node_id)
        .collect();
    while !pending.is_empty() {
        changes.borrow_and_update();
        let elapsed_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
        for plane in registry.list() {
            if !pending.contains(&plane.node_id) {
                continue;
            }
            let event = if reaches(plane.applied_version.as_ref(), &target) {
                DataPlaneRollout {
                    node_id: plane.node_id.clone(),
                    outcome: RolloutOutcome::Acked as i32,
                    version: plane.applied_version.clone(),
                    reason: String::new(),
                    elapsed_ms,
                }
            } else if reaches(plane.rejected_version.as_ref(), &target) {
                DataPlaneRollout {
                    node_id: plane.node_id.clone(),
                    outcome: RolloutOutcome::Rejected as i32,
                    version: plane.rejected_version.clone(),
                    reason: plane.last_rejection.clone(),
                    elapsed_ms,
                }
            } else {
                continue;
            };
            pending.remove(&plane.node_id);
            if events.send(Ok(event)).await.is_err() {
                return;
            }
        }
        if pending.is_empty() {
            return;
        }
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            () = tokio::time::sleep_until(deadline) => break,
            () = events.closed() => return,
        }
    }
    let planes = registry.list();
    for node_id in pending {
        let connected = planes
            .iter()
            .find(|plane| plane.node_id == node_id)
            .is_some_and(|plane| plane.connected);
        let reason = if connected {
            format!("no answer within {}", show_duration(timeout))
        } else {
            format!("disconnected; no answer within {}", show_duration(timeout))
        };
        let event = DataPlaneRollout {
            node_id,
            outcome: RolloutOutcome::TimedOut as i32,
            version: None,
            reason,
            elapsed_ms: i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX),
        };
        if events.send(Ok(event)).await.is_err() {
            return;
        }
    }
}

/// `1.5s`, `30s`, `250ms`.
pub fn show_duration(duration: Duration) -> String {
    if duration.subsec_millis() == 0 {
        format!("{}s", duration.as_secs())
    } else if duration < Duration::from_secs(1) {
        format!("{}ms", duration.as_millis())
    } else {
        format!("{:.1}s", duration.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::registry::Identity;

    fn identity(node: &str) -> Identity {
        Identity {
            node_id: node.into(),
            hostname: "host".into(),
            build_version: "0.1.0".into(),
            address: "127.0.0.1:5000".into(),
        }
    }

    fn version(revision: u64) -> ConfigVersion {
        ConfigVersion {
            store_id: "s".into(),
            revision,
        }
    }

    #[tokio::test]
    async fn one_answer_per_data_plane() {
        let registry = Arc::new(Registry::default());
        let a = registry.connect(identity("a"), Some(version(1)));
        let b = registry.connect(identity("b"), Some(version(1)));
        let _c = registry.connect(identity("c"), Some(version(1)));
        let (events, mut received) = mpsc::channel(8);
        let waiter = tokio::spawn(wait_for(
            registry.clone(),
            version(2),
            Duration::from_millis(300),
            events,
        ));
        registry.ack("a", a, version(3));
        registry.nack("b", b, version(2), "plugin \"cors\" is not loaded");
        let mut answers = Vec::new();
        while let Some(Ok(event)) = received.recv().await {
            answers.push((event.node_id, event.outcome, event.reason));
        }
        waiter.await.expect("waiter");
        answers.sort();
        assert_eq!(answers.len(), 3, "{answers:?}");
        assert_eq!(answers[0].1, RolloutOutcome::Acked as i32);
        assert_eq!(answers[1].1, RolloutOutcome::Rejected as i32);
        assert_eq!(answers[1].2, "plugin \"cors\" is not loaded");
        assert_eq!(answers[2].1, RolloutOutcome::TimedOut as i32);
        assert_eq!(answers[2].2, "no answer within 300ms");
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(show_duration(Duration::from_secs(30)), "30s");
        assert_eq!(show_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(show_duration(Duration::from_millis(1500)), "1.5s");
    }
}
