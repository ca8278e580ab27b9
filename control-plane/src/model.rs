//! The in-memory view of the store, and the one path every write takes.
//!
//! The current desired state is an `Arc<GatewayConfig>` plus its
//! [`ConfigVersion`], published through a `tokio::sync::watch` channel: reads
//! and stream sessions borrow it without locks, and sessions wake on each new
//! version.
//!
//! All writes are serialized by one async mutex and follow the same steps
//! ([`Model::write`]): clone the state, apply the change, restore secrets kept
//! by fingerprint, validate the *whole* new state, hash API keys, diff against
//! the current state, commit the changed entities and the revision bump to sled
//! (fsynced), and only then publish. An error at any step writes nothing, and a
//! write that changes nothing does not move the version.
//!
//! Everything from "apply the change" to "diff" runs on a blocking thread
//! ([`prepare`]), never on an async worker: a 50,000-route Apply takes CPU
//! for a while, and health checks, reads and config streams keep answering
//! meanwhile (reads only borrow the published state; the write lock is held
//! by writers alone). The blocking threads have the runtime's known stack
//! (8 MiB in `tollgate-cp`), and validation recurses on nothing the request
//! controls. The encoded size of the resulting snapshot (and export) is
//! checked there too: a config that could never be streamed to a data plane
//! is refused at write time with `RESOURCE_EXHAUSTED`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use prost::Message;
use tokio::sync::{watch, Mutex};
use tollgate_shared::limits::{MAX_MESSAGE_BYTES, MAX_SNAPSHOT_BYTES};
use tollgate_shared::model::GatewayConfig;
use tollgate_shared::proto::config as pb;
use tollgate_shared::telemetry::{self, TRACE_TARGET};
use tracing::Instrument;

use crate::diff::{self, Action, Change};
use crate::entity::NameIndex;
use crate::error::CpError;
use crate::secrets;
use crate::store::history::{self, Record};
use crate::store::{EntityWrite, Store};

/// The identity of one committed state: which store, which revision.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConfigVersion {
    pub store_id: String,
    pub revision: u64,
}

impl ConfigVersion {
    pub fn to_pb(&self) -> pb::ConfigVersion {
        pb::ConfigVersion {
            store_id: self.store_id.clone(),
            revision: self.revision,
        }
    }

    pub fn from_pb(version: &pb::ConfigVersion) -> ConfigVersion {
        ConfigVersion {
            store_id: version.store_id.clone(),
            revision: version.revision,
        }
    }
}

/// One published state. Secrets are in clear (`api_key`s only as hashes):
/// redact before showing it to an operator.
#[derive(Debug)]
pub struct Published {
    pub config: Arc<GatewayConfig>,
    pub version: ConfigVersion,
    /// The W3C context of the write that made it (empty when traces are not
    /// exported, or for a state loaded at boot): the snapshot build and
    /// every data plane's apply join that trace.
    pub trace_context: HashMap<String, String>,
}

/// What a write did.
#[derive(Debug)]
pub struct WriteOutcome {
    /// Per-entity changes, sorted; empty for a no-op.
    pub changes: Vec<Change>,
    /// The version in force after the call.
    pub version: ConfigVersion,
    /// The resulting state (on a dry run: the state it would produce).
    pub config: Arc<GatewayConfig>,
    /// The state the write started from.
    pub previous: Arc<GatewayConfig>,
    /// Accepted, but worth the operator's attention (a certificate expiring
    /// soon, an upstream whose certificate is not verified).
    pub warnings: Vec<String>,
}

pub struct Model {
    store: Arc<Store>,
    write_lock: Mutex<()>,
    current: watch::Sender<Arc<Published>>,
    /// How many revisions the history keeps.
    history_keep: usize,
}

/// Who made a write, and why (kept in the revision's history record).
#[derive(Debug, Clone, Default)]
pub struct Author {
    /// The admin token's name, or "local".
    pub actor: String,
    /// E.g. "rollback to revision 7"; empty for ordinary writes.
    pub note: String,
}

impl Author {
    pub fn new(actor: impl Into<String>) -> Author {
        Author {
            actor: actor.into(),
            note: String::new(),
        }
    }
}

impl Model {
    /// Opens the store in `data_dir` and loads it. Blocking.
    pub fn open(data_dir: &Path) -> Result<Model, CpError> {
        Model::open_keeping(data_dir, history::DEFAULT_KEEP)
    }

    /// [`Model::open`], keeping the newest `history_keep` revisions' history.
    pub fn open_keeping(data_dir: &Path, history_keep: usize) -> Result<Model, CpError> {
        let (store, loaded) = Store::open(data_dir)?;
        tracing::info!(
            store_id = %loaded.store_id,
            revision = loaded.revision,
            services = loaded.config.services.len(),
            routes = loaded.config.routes.len(),
            consumers = loaded.config.consumers.len(),
            "config store loaded"
        );
        let published = Published {
            config: Arc::new(loaded.config),
            version: ConfigVersion {
                store_id: loaded.store_id,
                revision: loaded.revision,
            },
            trace_context: HashMap::new(),
        };
        let (current, _) = watch::channel(Arc::new(published));
        Ok(Model {
            store: Arc::new(store),
            write_lock: Mutex::new(()),
            current,
            history_keep: history_keep.max(1),
        })
    }

    /// A side tree of the store (see [`Store::side_tree`]).
    pub fn side_tree(&self, name: &str) -> Result<sled::Tree, CpError> {
        self.store.side_tree(name)
    }

    /// The newest `limit` revisions' history records, newest first.
    pub async fn history(&self, limit: usize) -> Result<Vec<Record>, CpError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.history(limit))
            .await
            .map_err(|e| CpError::Internal(format!("history task failed: {e}")))?
    }

    /// The whole state (secrets as stored) at `revision` (0: the current
    /// one), and the current version.
    pub async fn state_at(
        &self,
        revision: u64,
    ) -> Result<(Arc<GatewayConfig>, ConfigVersion), CpError> {
        let current = self.current();
        if revision == 0 || revision == current.version.revision {
            return Ok((current.config.clone(), current.version.clone()));
        }
        let store = self.store.clone();
        let config = tokio::task::spawn_blocking(move || {
            store.state_at(revision, &current.config, current.version.revision)
        })
        .await
        .map_err(|e| CpError::Internal(format!("history task failed: {e}")))??;
        Ok((Arc::new(config), self.current().version.clone()))
    }

    /// The current state.
    pub fn current(&self) -> Arc<Published> {
        self.current.borrow().clone()
    }

    /// A receiver that wakes on every new version.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Published>> {
        self.current.subscribe()
    }

    /// Applies `change` to a copy of the current state and, unless `dry_run`
    /// or nothing changed, commits and publishes the result.
    pub async fn write<F>(&self, dry_run: bool, change: F) -> Result<WriteOutcome, CpError>
    where
        F: FnOnce(&mut GatewayConfig) -> Result<(), CpError> + Send + 'static,
    {
        self.write_as(Author::new("local"), dry_run, change).await
    }

    /// [`Model::write`], recording `author` in the revision's history.
    ///
    /// Traced (when export is on) as `config_write` with the children
    /// `config_validate` (change, secrets, validation, diff) and
    /// `store_commit`; its context travels with the published version.
    #[tracing::instrument(target = "tollgate::trace", name = "config_write", skip_all, fields(dry_run = dry_run))]
    pub async fn write_as<F>(
        &self,
        author: Author,
        dry_run: bool,
        change: F,
    ) -> Result<WriteOutcome, CpError>
    where
        F: FnOnce(&mut GatewayConfig) -> Result<(), CpError> + Send + 'static,
    {
        let _serialized = self.write_lock.lock().await;
        let current = self.current();
        let base = current.config.clone();
        let revision = current.version.revision + 1;
        let validate_span = tracing::info_span!(target: TRACE_TARGET, "config_validate");
        let Prepared {
            next,
            changes,
            writes,
            warnings,
            record,
        } = tokio::task::spawn_blocking(move || {
            validate_span.in_scope(|| prepare(&base, change, dry_run, revision, &author))
        })
        .await
        .map_err(|e| CpError::Internal(format!("config write task failed: {e}")))??;
        if dry_run || changes.is_empty() {
            return Ok(WriteOutcome {
                changes,
                version: current.version.clone(),
                config: if dry_run {
                    Arc::new(next)
                } else {
                    current.config.clone()
                },
                previous: current.config.clone(),
                warnings,
            });
        }

        let version = ConfigVersion {
            store_id: current.version.store_id.clone(),
            revision,
        };
        if let Err(err) = self
            .store
            .commit_recorded(writes, version.revision, record, self.history_keep)
            .instrument(tracing::info_span!(
                target: TRACE_TARGET,
                "store_commit",
                revision = version.revision
            ))
            .await
        {
            // The outcome is unknown (the transaction may have applied without
            // the fsync succeeding): follow what the store now holds, so the
            // next diff starts from the truth rather than from a guess.
            self.resync(&current);
            return Err(err);
        }
        tracing::info!(
            revision = version.revision,
            changes = changes.len(),
            "config committed"
        );
        let config = Arc::new(next);
        self.current.send_replace(Arc::new(Published {
            config: config.clone(),
            version: version.clone(),
            trace_context: telemetry::context_fields(&tracing::Span::current()),
        }));
        Ok(WriteOutcome {
            changes,
            version,
            config,
            previous: current.config.clone(),
            warnings,
        })
    }

    /// Republishes the store's content after a failed commit, if it differs
    /// from `before`.
    fn resync(&self, before: &Published) {
        match self.store.load() {
            Ok(loaded) if loaded.revision != before.version.revision => {
                tracing::warn!(
                    revision = loaded.revision,
                    "a failed commit reached the store; publishing what it holds"
                );
                self.current.send_replace(Arc::new(Published {
                    config: Arc::new(loaded.config),
                    version: ConfigVersion {
                        store_id: loaded.store_id,
                        revision: loaded.revision,
                    },
                    trace_context: HashMap::new(),
                }));
            }
            Ok(_) => {}
            Err(err) => {
                tracing::error!(error = %err, "cannot re-read the store after a failed commit")
            }
        }
    }

    /// Flushes the store (at shutdown).
    pub async fn flush(&self) -> Result<(), CpError> {
        self.store.flush().await
    }
}

/// What [`prepare`] computed for a write.
struct Prepared {
    next: GatewayConfig,
    changes: Vec<Change>,
    writes: Vec<EntityWrite>,
    /// Accepted, but worth the operator's attention (see `WriteOutcome`).
    warnings: Vec<String>,
    /// The encoded history record of the new revision (not on a dry run).
    record: Option<Vec<u8>>,
}

/// The CPU-bound part of a write (blocking): change a copy, restore kept
/// secrets, validate, hash API keys, sort, check the encoded size, diff, and
/// encode the entity writes.
fn prepare<F>(
    current: &GatewayConfig,
    change: F,
    dry_run: bool,
    revision: u64,
    author: &Author,
) -> Result<Prepared, CpError>
where
    F: FnOnce(&mut GatewayConfig) -> Result<(), CpError>,
{
    let mut next = current.clone();
    change(&mut next)?;
    secrets::restore_kept_secrets(&mut next, current)?;
    for certificate in &mut next.certificates {
        certificate.info = None; // read-only: computed by reads
    }
    tollgate_shared::validate::validate(&next)?;
    let warnings =
        tollgate_shared::certs::check_write(current, &next, tollgate_shared::certs::unix_now())?;
    for warning in &warnings {
        tracing::warn!(dry_run, "{warning}");
    }
    secrets::hash_api_keys(&mut next);
    next.sort();
    check_encoded_size(&next)?;
    let changes = diff::diff(current, &next);
    let mut writes = Vec::new();
    let mut record = None;
    if !dry_run && !changes.is_empty() {
        record = Some(
            Record::new(revision, &author.actor, &author.note, current, &changes)
                .and_then(|r| r.encode())
                .map_err(|e| CpError::Internal(format!("cannot encode the history record: {e}")))?,
        );
    }
    if !dry_run {
        let index = NameIndex::new(&next);
        writes.reserve(changes.len());
        for change in &changes {
            match change.action {
                Action::Delete => writes.push(EntityWrite::delete(change.kind, &change.name)),
                Action::Create | Action::Update => {
                    let stored = index.get(change.kind, &change.name).ok_or_else(|| {
                        CpError::Internal(format!("{} {:?} vanished", change.kind, change.name))
                    })?;
                    writes.push(EntityWrite::put(&stored)?);
                }
            }
        }
    }
    Ok(Prepared {
        next,
        changes,
        writes,
        warnings,
        record,
    })
}

/// The checks of a write that need no stored state (for `tollgatectl
/// validate`, offline): the same functions and messages as [`prepare`],
/// against an empty current state. Returns the warnings.
pub fn check_offline(config: &GatewayConfig) -> Result<Vec<String>, CpError> {
    let mut next = config.clone();
    for certificate in &mut next.certificates {
        certificate.info = None;
    }
    tollgate_shared::validate::validate(&next)?;
    let warnings = tollgate_shared::certs::check_write(
        &GatewayConfig::default(),
        &next,
        tollgate_shared::certs::unix_now(),
    )?;
    secrets::hash_api_keys(&mut next);
    check_encoded_size(&next)?;
    Ok(warnings)
}

/// Refuses a config whose snapshot (secrets in clear) or export (secrets as
/// fingerprints, which can be longer) would not fit in one gRPC message.
fn check_encoded_size(config: &GatewayConfig) -> Result<(), CpError> {
    let snapshot = pb::GatewayConfig::from(config).encoded_len();
    // Only consumers and certificates change when redacted: measure those
    // two lists in both forms instead of encoding the whole config twice.
    let secret_part = |consumers: &[tollgate_shared::model::Consumer],
                       certificates: &[tollgate_shared::model::Certificate]| {
        pb::GatewayConfig::from(&GatewayConfig {
            consumers: consumers.to_vec(),
            certificates: certificates.to_vec(),
            ..GatewayConfig::default()
        })
        .encoded_len()
    };
    let mut export = snapshot;
    if !config.consumers.is_empty() || !config.certificates.is_empty() {
        let redacted: Vec<_> = config
            .consumers
            .iter()
            .map(|c| {
                let mut c = c.clone();
                c.redact();
                c
            })
            .collect();
        let redacted_certificates: Vec<_> = config
            .certificates
            .iter()
            .map(|c| {
                let mut c = c.clone();
                c.redact();
                c
            })
            .collect();
        export = snapshot - secret_part(&config.consumers, &config.certificates)
            + secret_part(&redacted, &redacted_certificates);
    }
    let largest = snapshot.max(export);
    if largest > MAX_SNAPSHOT_BYTES {
        return Err(CpError::OverLimit(format!(
            "config: the resulting config encodes to {largest} bytes, over the {MAX_SNAPSHOT_BYTES} \
             byte limit for a snapshot (the config stream's and export's message limit is \
             {MAX_MESSAGE_BYTES} bytes); split it or remove entities"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kind::EntityKind;

    const EXAMPLE: &str = r#"
services:
  - name: orders
    upstream: { targets: [{ address: "127.0.0.1:9001" }] }
routes:
  - { name: orders-api, service: orders, paths: ["/v1/orders"] }
consumers:
  - name: alice
    credentials: [{ api_key: "alice-secret-key" }]
"#;

    fn apply(
        yaml: &str,
    ) -> impl FnOnce(&mut GatewayConfig) -> Result<(), CpError> + Send + 'static {
        let parsed = GatewayConfig::from_yaml(yaml).expect("parses");
        move |config| {
            *config = parsed;
            Ok(())
        }
    }

    #[tokio::test]
    async fn writes_bump_the_version_only_on_change() {
        let dir = tempfile::tempdir().expect("tempdir");
        let model = Model::open(dir.path()).expect("opens");
        let mut updates = model.subscribe();
        let start = model.current().version.clone();

        let outcome = model.write(false, apply(EXAMPLE)).await.expect("applies");
        assert_eq!(outcome.version.revision, start.revision + 1);
        assert_eq!(outcome.changes.len(), 3);
        assert!(updates.has_changed().expect("open"));
        updates.borrow_and_update();
        let stored = model.current();
        let key = &stored.config.consumers[0].credentials[0];
        assert_eq!(key.api_key, None);
        assert!(key.api_key_hash.is_some());

        // The same file again, and the export form: no change, no new version.
        let again = model.write(false, apply(EXAMPLE)).await.expect("no-op");
        assert!(again.changes.is_empty());
        assert_eq!(again.version, outcome.version);
        let export = stored.config.redacted().to_yaml();
        let reapplied = model.write(false, apply(&export)).await.expect("no-op");
        assert!(reapplied.changes.is_empty());
        assert!(!updates.has_changed().expect("open"));

        // Dry run: diff only.
        let dry = model
            .write(true, |config| {
                config.routes.clear();
                Ok(())
            })
            .await
            .expect("dry run");
        assert_eq!(dry.changes.len(), 1);
        assert_eq!(dry.changes[0].kind, EntityKind::Route);
        assert_eq!(model.current().version, outcome.version);
    }

    #[tokio::test]
    async fn invalid_writes_change_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let model = Model::open(dir.path()).expect("opens");
        model.write(false, apply(EXAMPLE)).await.expect("applies");
        let before = model.current();
        let err = model
            .write(false, |config| {
                config.routes[0].service = "ordrs".into();
                Ok(())
            })
            .await
            .expect_err("must fail");
        assert_eq!(
            err.to_string(),
            r#"route "orders-api": service "ordrs" does not exist"#
        );
        let after = model.current();
        assert_eq!(after.version, before.version);
        assert_eq!(after.config, before.config);
        drop(model);
        let reopened = Model::open(dir.path()).expect("reopens");
        assert_eq!(reopened.current().version, before.version);
        assert_eq!(reopened.current().config, before.config);
    }
}
