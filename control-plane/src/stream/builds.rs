//! Each published version built once and shared by every stream session.
//!
//! Before, each session converted the published config into its own snapshot:
//! N data planes cost N conversions and N snapshot-sized buffers per change.
//! Here one task follows the model and, per version, builds its [`EntityTable`]
//! (what deltas and checksums are computed from) from the previous version's,
//! hashing only the entities that differ ([`EntityTable::of_from`]). What a
//! session sends is then built at most once per version and shared:
//!
//! - the full snapshot, encoded once into one [`Bytes`] buffer that chunked
//!   sessions slice (no copy per stream) and kept once as a message for data
//!   planes that do not speak deltas;
//! - the delta from each base version some session asked for.
//!
//! The last [`HISTORY`] versions are kept, so a data plane up to that many
//! versions behind gets a delta; an older one (or one from another store)
//! gets the full snapshot.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prost::bytes::Bytes;
use prost::Message;
use tokio::sync::{watch, OnceCell};
use tollgate_shared::delta::{self, EntityTable};
use tollgate_shared::model::GatewayConfig;
use tollgate_shared::proto::config as pb_config;
use tollgate_shared::proto::stream::{control_plane_message, ControlPlaneMessage, Snapshot};
use tollgate_shared::telemetry::{self, TRACE_TARGET};

use crate::metrics::CpMetrics;
use crate::model::{ConfigVersion, Model, Published};

/// Versions kept as delta bases.
pub const HISTORY: usize = 32;
/// Longest a new session waits for the build of the version just written.
pub const CATCH_UP: std::time::Duration = std::time::Duration::from_secs(5);

/// The full snapshot of one version, built once.
pub struct Full {
    /// For data planes that do not speak deltas (one clone per send).
    pub message: ControlPlaneMessage,
    /// The encoded `Snapshot`, sliced into chunks for the others.
    pub encoded: Bytes,
}

/// One version, as the sessions share it.
pub struct Built {
    pub version: ConfigVersion,
    pub config: Arc<GatewayConfig>,
    pub table: EntityTable,
    /// The table's checksum as it travels.
    pub checksum: Vec<u8>,
    /// When this version was published (for commit-to-ACK times).
    pub published_at: Instant,
    /// W3C context of this version's `snapshot_build` span (a child of the
    /// write's trace), sent with every message of this version.
    pub trace_context: HashMap<String, String>,
    full: OnceCell<Arc<Full>>,
    deltas: Mutex<HashMap<u64, Arc<OnceCell<Arc<ControlPlaneMessage>>>>>,
}

impl std::fmt::Debug for Built {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Built")
            .field("version", &self.version)
            .field("entities", &self.table.len())
            .finish_non_exhaustive()
    }
}

impl Built {
    /// Hashes every entity of `published` (the per-version build); with
    /// the build of an earlier version of the same store, only the entities
    /// that differ from it.
    fn new(published: &Published, previous: Option<&Built>) -> Built {
        let span = tracing::info_span!(
            target: TRACE_TARGET,
            "snapshot_build",
            revision = published.version.revision,
            routes = published.config.routes.len(),
        );
        telemetry::set_parent_from_fields(&span, &published.trace_context);
        let table = span.in_scope(|| match previous {
            Some(previous) if previous.version.store_id == published.version.store_id => {
                EntityTable::of_from(&published.config, &previous.config, &previous.table)
            }
            _ => EntityTable::of(&published.config),
        });
        Built {
            version: published.version.clone(),
            config: published.config.clone(),
            checksum: delta::checksum_bytes(table.checksum()),
            table,
            published_at: Instant::now(),
            trace_context: telemetry::context_fields(&span),
            full: OnceCell::new(),
            deltas: Mutex::new(HashMap::new()),
        }
    }

    /// The full snapshot, encoded on first use (on a blocking thread; every
    /// session asking meanwhile waits for that one build).
    pub async fn full(self: &Arc<Self>, metrics: &CpMetrics) -> Arc<Full> {
        self.full
            .get_or_init(|| async {
                let built = self.clone();
                let started = Instant::now();
                let full = tokio::task::spawn_blocking(move || built.encode_full())
                    .await
                    .unwrap_or_else(|_| self.encode_full());
                metrics
                    .distribution
                    .full_encoded(started.elapsed(), full.encoded.len());
                full
            })
            .await
            .clone()
    }

    fn encode_full(&self) -> Arc<Full> {
        let span = tracing::info_span!(
            target: TRACE_TARGET,
            "snapshot_encode",
            revision = self.version.revision,
        );
        telemetry::set_parent_from_fields(&span, &self.trace_context);
        span.in_scope(|| {
            let snapshot = Snapshot {
                version: Some(self.version.to_pb()),
                config: Some(pb_config::GatewayConfig::from(&*self.config)),
            };
            let encoded = Bytes::from(snapshot.encode_to_vec());
            Arc::new(Full {
                message: ControlPlaneMessage {
                    kind: Some(control_plane_message::Kind::Snapshot(snapshot)),
                    trace_context: self.trace_context.clone(),
                },
                encoded,
            })
        })
    }

    /// The delta from `base` to this version, built once per base.
    pub async fn delta_from(&self, base: &Built, metrics: &CpMetrics) -> Arc<ControlPlaneMessage> {
        let cell = {
            let mut deltas = self
                .deltas
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            deltas
                .entry(base.version.revision)
                .or_insert_with(|| Arc::new(OnceCell::new()))
                .clone()
        };
        cell.get_or_init(|| async {
            let started = Instant::now();
            let message = ControlPlaneMessage {
                trace_context: self.trace_context.clone(),
                kind: Some(control_plane_message::Kind::Delta(delta::build(
                    &base.version.to_pb(),
                    &base.table,
                    &self.version.to_pb(),
                    &self.table,
                    &self.config,
                ))),
            };
            metrics.distribution.delta_built(started.elapsed());
            Arc::new(message)
        })
        .await
        .clone()
    }
}

/// The versions sessions send from: the newest, and the last [`HISTORY`].
pub struct Builds {
    latest: watch::Sender<Arc<Built>>,
    history: Mutex<VecDeque<Arc<Built>>>,
}

impl Builds {
    /// Builds the model's current version and follows the model from then on
    /// (on a task of the current runtime).
    pub fn start(model: &Model, metrics: Arc<CpMetrics>) -> Arc<Builds> {
        let mut updates = model.subscribe();
        let first = Arc::new(build_counted(&updates.borrow_and_update(), None, &metrics));
        let (latest, _) = watch::channel(first.clone());
        let builds = Arc::new(Builds {
            latest,
            history: Mutex::new(VecDeque::from([first.clone()])),
        });
        let weak = Arc::downgrade(&builds);
        tokio::spawn(async move {
            let mut previous = first;
            while updates.changed().await.is_ok() {
                let published = updates.borrow_and_update().clone();
                let metrics = metrics.clone();
                let base = previous.clone();
                let built = tokio::task::spawn_blocking(move || {
                    build_counted(&published, Some(&base), &metrics)
                })
                .await;
                let (Ok(built), Some(builds)) = (built, weak.upgrade()) else {
                    return;
                };
                previous = Arc::new(built);
                builds.push(previous.clone());
            }
        });
        builds
    }

    fn push(&self, built: Arc<Built>) {
        {
            let mut history = self
                .history
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if history
                .back()
                .is_some_and(|last| last.version.store_id != built.version.store_id)
            {
                history.clear(); // another store: no delta bridges the two
            }
            history.push_back(built.clone());
            while history.len() > HISTORY {
                history.pop_front();
            }
        }
        self.latest.send_replace(built);
    }

    /// Follows the newest version.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Built>> {
        self.latest.subscribe()
    }

    /// Follows the newest version, once the build of the model's current one
    /// is out (waiting at most [`CATCH_UP`]): a data plane that connects
    /// right after a write starts from that write, not from the one before.
    pub async fn subscribe_current(&self, model: &Model) -> watch::Receiver<Arc<Built>> {
        let target = model.current().version.clone();
        let mut updates = self.subscribe();
        let _ = tokio::time::timeout(
            CATCH_UP,
            updates.wait_for(|built| {
                built.version.store_id != target.store_id
                    || built.version.revision >= target.revision
            }),
        )
        .await;
        updates
    }

    /// The kept build of `version`, if it is still kept.
    pub fn get(&self, version: &ConfigVersion) -> Option<Arc<Built>> {
        self.history
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .rev()
            .find(|built| &built.version == version)
            .cloned()
    }
}

fn build_counted(published: &Published, previous: Option<&Built>, metrics: &CpMetrics) -> Built {
    let started = Instant::now();
    let built = Built::new(published, previous);
    metrics.snapshot_built(started.elapsed());
    built
}

#[cfg(test)]
mod tests {
    use super::*;

    fn published(revision: u64, routes: usize) -> Published {
        let mut yaml = String::from(
            "services:\n  - name: s\n    upstream: { targets: [{ address: \"127.0.0.1:1\" }] }\nroutes:\n",
        );
        for i in 0..routes {
            yaml.push_str(&format!(
                "  - name: r{i:03}\n    service: s\n    paths: [\"/r{i}/{revision}\"]\n"
            ));
        }
        let mut config = GatewayConfig::from_yaml(&yaml).expect("yaml");
        config.sort();
        Published {
            config: Arc::new(config),
            version: ConfigVersion {
                store_id: "st".into(),
                revision,
            },
            trace_context: HashMap::new(),
        }
    }

    #[tokio::test]
    async fn full_and_deltas_are_built_once_and_shared() {
        let metrics = CpMetrics::new(Arc::new(Vec::new));
        let base = Arc::new(Built::new(&published(1, 50), None));
        let mut next = published(1, 50);
        next.version.revision = 2;
        // Only one route differs.
        Arc::make_mut(&mut next.config).routes[7].paths = vec!["/changed".into()];
        let target = Arc::new(Built::new(&next, Some(&base)));
        assert_eq!(
            target.table,
            EntityTable::of(&next.config),
            "the table from the previous one is the table of the whole"
        );
        let first = target.delta_from(&base, &metrics).await;
        let second = target.delta_from(&base, &metrics).await;
        assert!(Arc::ptr_eq(&first, &second));
        let Some(control_plane_message::Kind::Delta(delta)) = &first.kind else {
            panic!("not a delta");
        };
        assert_eq!(delta.upserts.len(), 1);
        assert_eq!(delta.upserts[0].name, "r007");
        let a = target.full(&metrics).await;
        let b = target.full(&metrics).await;
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(
            a.encoded,
            Bytes::from(match &a.message.kind {
                Some(control_plane_message::Kind::Snapshot(s)) => s.encode_to_vec(),
                _ => panic!("not a snapshot"),
            })
        );
    }
}
