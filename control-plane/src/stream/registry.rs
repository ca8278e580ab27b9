//! Who is subscribed: one entry per data plane node id, read by
//! `ListDataPlanes`.
//!
//! Entries outlive their stream (shown as `connected: false`) so an operator
//! sees a data plane that went away and what it last applied. Each stream
//! session gets a session number; a disconnect only marks an entry
//! disconnected if it still belongs to that session, so a data plane that
//! reconnected before its old stream was noticed dead stays `connected`.
//!
//! What an entry shows is the data plane's own word: the version it serves
//! comes from its hello (what it held when it connected), its ACKs and its
//! heartbeats, so a control-plane restart does not blank it; a rejection is
//! shown only while it is the data plane's latest answer (a later ACK, or a
//! reconnect serving that version or a newer one, clears it). Every change
//! bumps a `watch` counter that rollout waiters (`--wait`) sleep on.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use tollgate_shared::proto::admin as pb;
use tollgate_shared::proto::config::ConfigVersion;
use tollgate_shared::proto::stream::CachePurge;

/// At most this many entries are kept; beyond it, the disconnected entry
/// seen longest ago is forgotten first.
const MAX_ENTRIES: usize = 10_000;
/// Longest rejection text kept from a NACK.
const MAX_REJECTION_BYTES: usize = 4096;

#[derive(Debug, Clone)]
struct Entry {
    session: u64,
    plane: pb::DataPlane,
}

/// The identity a data plane gave in its hello.
#[derive(Debug, Clone)]
pub struct Identity {
    pub node_id: String,
    pub hostname: String,
    pub build_version: String,
    pub address: String,
}

pub struct Registry {
    inner: Mutex<Inner>,
    /// Bumped on every change, for [`Registry::changes`].
    changed: watch::Sender<u64>,
    /// Cache purges for every connected session to forward.
    purges: Purges,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            inner: Mutex::default(),
            changed: watch::channel(0).0,
            purges: Purges::default(),
        }
    }
}

/// Whether `version` is `target` or later (same store, revision not lower).
pub fn reaches(version: Option<&ConfigVersion>, target: &ConfigVersion) -> bool {
    version.is_some_and(|v| v.store_id == target.store_id && v.revision >= target.revision)
}

#[derive(Default)]
struct Inner {
    next_session: u64,
    planes: BTreeMap<String, Entry>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Cuts `text` to at most `max` bytes on a character boundary.
pub fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// The channel cache purges travel on to the stream sessions.
struct Purges(tokio::sync::broadcast::Sender<CachePurge>);

impl Default for Purges {
    fn default() -> Self {
        Purges(tokio::sync::broadcast::channel(64).0)
    }
}

impl Registry {
    /// Sends a cache purge to every connected data plane; returns how many
    /// sessions will forward it.
    pub fn purge_cache(&self, purge: CachePurge) -> usize {
        self.purges.0.send(purge).unwrap_or(0)
    }

    /// Cache purges from now on, for one session to forward.
    pub fn cache_purges(&self) -> tokio::sync::broadcast::Receiver<CachePurge> {
        self.purges.0.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind: keep going.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A receiver that wakes on every change to any entry.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Records a new stream session; returns its session number. `serving`
    /// is the version the data plane said it holds in its hello.
    pub fn connect(&self, identity: Identity, serving: Option<ConfigVersion>) -> u64 {
        let session = self.connect_entry(identity, serving);
        self.bump();
        session
    }

    fn connect_entry(&self, identity: Identity, serving: Option<ConfigVersion>) -> u64 {
        let mut inner = self.lock();
        inner.next_session += 1;
        let session = inner.next_session;
        let now = now_ms();
        let previous = inner.planes.remove(&identity.node_id);
        let (rejected_version, last_rejection) = match previous {
            // A rejection of a version older than the one now served is
            // no longer the data plane's latest answer.
            Some(entry)
                if !entry
                    .plane
                    .rejected_version
                    .as_ref()
                    .is_some_and(|rejected| reaches(serving.as_ref(), rejected)) =>
            {
                (entry.plane.rejected_version, entry.plane.last_rejection)
            }
            _ => (None, String::new()),
        };
        let applied_version = serving;
        if inner.planes.len() >= MAX_ENTRIES {
            let oldest = inner
                .planes
                .iter()
                .filter(|(_, e)| !e.plane.connected)
                .min_by_key(|(_, e)| e.plane.last_seen_ms)
                .map(|(id, _)| id.clone());
            if let Some(id) = oldest {
                inner.planes.remove(&id);
            }
        }
        inner.planes.insert(
            identity.node_id.clone(),
            Entry {
                session,
                plane: pb::DataPlane {
                    node_id: identity.node_id,
                    hostname: identity.hostname,
                    address: identity.address,
                    build_version: identity.build_version,
                    connected: true,
                    connected_since_ms: now,
                    last_seen_ms: now,
                    applied_version,
                    rejected_version,
                    last_rejection,
                },
            },
        );
        session
    }

    fn update(&self, node_id: &str, session: u64, apply: impl FnOnce(&mut pb::DataPlane)) {
        {
            let mut inner = self.lock();
            let Some(entry) = inner.planes.get_mut(node_id) else {
                return;
            };
            if entry.session != session {
                return;
            }
            entry.plane.last_seen_ms = now_ms();
            apply(&mut entry.plane);
        }
        self.bump();
    }

    /// A heartbeat: alive, and serving `serving`.
    pub fn heartbeat(&self, node_id: &str, session: u64, serving: Option<ConfigVersion>) {
        self.update(node_id, session, |plane| {
            if let Some(version) = serving {
                clear_rejection_up_to(plane, &version);
                plane.applied_version = Some(version);
            }
        });
    }

    /// Any message from the data plane: it is alive.
    pub fn seen(&self, node_id: &str, session: u64) {
        self.update(node_id, session, |_| {});
    }

    /// ACK: `version` is in service on that data plane.
    pub fn ack(&self, node_id: &str, session: u64, version: ConfigVersion) {
        self.update(node_id, session, |plane| {
            clear_rejection_up_to(plane, &version);
            plane.applied_version = Some(version);
        });
    }

    /// NACK: the data plane rejected `version` and kept its old config.
    pub fn nack(&self, node_id: &str, session: u64, version: ConfigVersion, error: &str) {
        let text = truncate(error, MAX_REJECTION_BYTES);
        self.update(node_id, session, |plane| {
            plane.rejected_version = Some(version);
            plane.last_rejection = text;
        });
    }

    /// The stream of `session` ended.
    pub fn disconnect(&self, node_id: &str, session: u64) {
        self.update(node_id, session, |plane| {
            plane.connected = false;
        });
    }

    /// Every known data plane, sorted by node id.
    pub fn list(&self) -> Vec<pb::DataPlane> {
        self.lock()
            .planes
            .values()
            .map(|e| e.plane.clone())
            .collect()
    }
}

/// An ACK of `version` supersedes a rejection of that version or an older one.
fn clear_rejection_up_to(plane: &mut pb::DataPlane, version: &ConfigVersion) {
    if plane
        .rejected_version
        .as_ref()
        .is_some_and(|rejected| reaches(Some(version), rejected))
    {
        plane.rejected_version = None;
        plane.last_rejection.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn tracks_acks_nacks_and_reconnects() {
        let registry = Registry::default();
        let first = registry.connect(identity("dp-1"), None);
        registry.ack("dp-1", first, version(3));
        registry.nack("dp-1", first, version(4), "route \"x\": bad");
        let second = registry.connect(identity("dp-1"), Some(version(3)));
        // The old session ending late does not mark the new one disconnected.
        registry.disconnect("dp-1", first);
        let planes = registry.list();
        assert_eq!(planes.len(), 1);
        assert!(planes[0].connected);
        assert_eq!(planes[0].applied_version, Some(version(3)));
        assert_eq!(planes[0].rejected_version, Some(version(4)));
        assert_eq!(planes[0].last_rejection, "route \"x\": bad");
        registry.disconnect("dp-1", second);
        assert!(!registry.list()[0].connected);
    }

    #[test]
    fn a_rejection_shows_only_while_it_is_the_latest_answer() {
        let registry = Registry::default();
        let changes = registry.changes();
        let session = registry.connect(identity("dp-1"), Some(version(2)));
        assert!(changes.has_changed().unwrap_or(false));
        assert_eq!(registry.list()[0].applied_version, Some(version(2)));
        registry.nack("dp-1", session, version(3), "bad");
        // An ACK of an older version (a resend) keeps the rejection.
        registry.ack("dp-1", session, version(2));
        assert_eq!(registry.list()[0].last_rejection, "bad");
        registry.heartbeat("dp-1", session, Some(version(4)));
        let plane = &registry.list()[0];
        assert_eq!(plane.applied_version, Some(version(4)));
        assert_eq!(plane.rejected_version, None);
        assert_eq!(plane.last_rejection, "");
        // A reconnect serving a version at or past the rejected one clears it.
        registry.nack("dp-1", session, version(5), "worse");
        registry.connect(identity("dp-1"), Some(version(4)));
        assert_eq!(registry.list()[0].last_rejection, "worse");
        registry.connect(identity("dp-1"), Some(version(6)));
        assert_eq!(registry.list()[0].rejected_version, None);
    }

    #[test]
    fn truncates_on_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h…");
        assert_eq!(truncate("short", 10), "short");
    }
}
