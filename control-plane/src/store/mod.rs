//! The durable truth: a sled database in the data directory.
//!
//! One tree per entity kind, keyed by name (see [`format`] for the values),
//! plus a `meta` tree with the format version, the store id and the revision.
//! [`Store::commit`] writes every changed entity and the revision bump in one
//! sled transaction, then waits for `flush_async` (fsync) before returning:
//! the admin API acknowledges a write only after that, so a `kill -9` right
//! after an acknowledgement loses nothing, and a crash before it leaves either
//! the whole change or none of it.
//!
//! Every revision committed through [`Store::commit_recorded`] also gets its
//! [`history::Record`] (who, when, what changed, the values before) in the
//! `history` tree, in the same transaction; the newest `keep` are kept.
//!
//! The data directory holds secrets that data planes need in clear (JWT HMAC
//! secrets, private keys), so it is created, or tightened, to mode 0700.

pub mod format;
pub mod history;

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;
use tollgate_shared::model::GatewayConfig;

use crate::entity::{self, Entity};
use crate::error::CpError;
use crate::kind::EntityKind;
use format::{FORMAT_VERSION, META_FORMAT, META_REVISION, META_STORE_ID, META_TREE};

/// Name of the sled database inside the data directory.
const DB_DIR: &str = "config.sled";

/// What [`Store::open`] found on disk.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: GatewayConfig,
    pub store_id: String,
    pub revision: u64,
}

/// One entity write of a commit: the new envelope, or `None` to delete.
#[derive(Debug, Clone)]
pub struct EntityWrite {
    pub kind: EntityKind,
    pub name: String,
    pub value: Option<Vec<u8>>,
}

impl EntityWrite {
    pub fn put(entity: &Entity) -> Result<EntityWrite, CpError> {
        let value = format::encode(entity)
            .map_err(|e| CpError::Internal(format!("cannot encode {}: {e}", entity.kind())))?;
        Ok(EntityWrite {
            kind: entity.kind(),
            name: entity.name().to_string(),
            value: Some(value),
        })
    }

    pub fn delete(kind: EntityKind, name: &str) -> EntityWrite {
        EntityWrite {
            kind,
            name: name.to_string(),
            value: None,
        }
    }
}

/// The sled database and its trees.
pub struct Store {
    path: PathBuf,
    db: sled::Db,
    /// The entity trees in [`EntityKind::ALL`] order, then `meta`, then
    /// `history`, so a commit can open one transaction over all of them.
    trees: Vec<sled::Tree>,
}

/// Why the state at a revision cannot be rebuilt.
fn unreachable_revision(wanted: u64, current: u64, oldest: Option<u64>) -> CpError {
    let kept = match oldest {
        Some(oldest) if oldest <= current => {
            format!(
                "the history reaches back to revision {}",
                oldest.saturating_sub(1)
            )
        }
        _ => "no history is kept yet".to_string(),
    };
    CpError::BadRequest(format!(
        "revision: {wanted} is no longer kept ({kept}; the current revision is {current})"
    ))
}

/// How long [`Store::open`] waits for the data dir's lock: a previous owner
/// that is still exiting (a restart that overlaps, or sled's flusher thread
/// finishing after the last handle in this process was dropped) releases it
/// within moments; another live tollgate-cp never does.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

fn is_lock_error(err: &sled::Error) -> bool {
    err.to_string().contains("could not acquire lock")
}

fn open_db(path: &Path) -> sled::Result<sled::Db> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match sled::Config::new().path(path).open() {
            Err(err) if is_lock_error(&err) && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            result => return result,
        }
    }
}

impl Store {
    /// Opens (or creates) the store in `data_dir`, and loads its content.
    /// Blocking: call it from `spawn_blocking` or before serving.
    pub fn open(data_dir: &Path) -> Result<(Store, Loaded), CpError> {
        prepare_data_dir(data_dir)?;
        let path = data_dir.join(DB_DIR);
        let db = open_db(&path).map_err(|err| {
            let busy = is_lock_error(&err);
            CpError::StoreFormat {
                path: path.clone(),
                message: if busy {
                    "in use by another process (is another tollgate-cp running on this data dir?)"
                        .into()
                } else {
                    format!("cannot open: {err}")
                },
            }
        })?;
        let mut trees = Vec::with_capacity(EntityKind::ALL.len() + 1);
        for kind in EntityKind::ALL {
            trees.push(db.open_tree(kind.tree_name())?);
        }
        trees.push(db.open_tree(META_TREE)?);
        trees.push(db.open_tree(history::HISTORY_TREE)?);
        let store = Store { path, db, trees };
        let loaded = store.load()?;
        Ok((store, loaded))
    }

    fn meta(&self) -> &sled::Tree {
        &self.trees[EntityKind::ALL.len()]
    }

    fn history_tree(&self) -> &sled::Tree {
        &self.trees[EntityKind::ALL.len() + 1]
    }

    /// The newest `limit` history records, newest first. Blocking.
    pub fn history(&self, limit: usize) -> Result<Vec<history::Record>, CpError> {
        let mut records = Vec::new();
        for item in self.history_tree().iter().rev().take(limit) {
            let (_, value) = item?;
            records.push(history::Record::decode(&value).map_err(|m| self.corrupt(m))?);
        }
        Ok(records)
    }

    /// The state at `revision`, rebuilt from `current` (the state at
    /// `current_revision`) by undoing the newer records. Blocking.
    pub fn state_at(
        &self,
        revision: u64,
        current: &GatewayConfig,
        current_revision: u64,
    ) -> Result<GatewayConfig, CpError> {
        if revision > current_revision {
            return Err(CpError::BadRequest(format!(
                "revision: {revision} does not exist yet (the current revision is {current_revision})"
            )));
        }
        let mut state = current.clone();
        for newer in ((revision + 1)..=current_revision).rev() {
            let Some(bytes) = self.history_tree().get(history::key(newer))? else {
                let oldest = self
                    .history_tree()
                    .first()?
                    .and_then(|(key, _)| <[u8; 8]>::try_from(key.as_ref()).ok())
                    .map(u64::from_be_bytes);
                return Err(unreachable_revision(revision, current_revision, oldest));
            };
            let record = history::Record::decode(&bytes).map_err(|m| self.corrupt(m))?;
            record.undo(&mut state).map_err(|m| self.corrupt(m))?;
        }
        state.sort();
        Ok(state)
    }

    fn corrupt(&self, message: impl Into<String>) -> CpError {
        CpError::StoreFormat {
            path: self.path.clone(),
            message: message.into(),
        }
    }

    /// Reads the whole store (what a restart would see).
    /// A tree of the same database for records kept beside the config
    /// (admin tokens, the audit log); never part of a config commit.
    pub fn side_tree(&self, name: &str) -> Result<sled::Tree, CpError> {
        Ok(self.db.open_tree(name)?)
    }

    pub fn load(&self) -> Result<Loaded, CpError> {
        let meta = self.meta();
        let format = match meta.get(META_FORMAT)? {
            Some(bytes) => format::decode_format(&bytes)
                .ok_or_else(|| self.corrupt("the format marker is unreadable"))?,
            None => return self.initialize(),
        };
        if format > FORMAT_VERSION {
            return Err(self.corrupt(format!(
                "written in on-disk format {format} by a newer tollgate-cp; this build reads \
                 formats up to {FORMAT_VERSION}: upgrade tollgate-cp or restore an export"
            )));
        }
        if format == 0 {
            return Err(self.corrupt("on-disk format 0 does not exist"));
        }
        let store_id = meta
            .get(META_STORE_ID)?
            .and_then(|bytes| String::from_utf8(bytes.to_vec()).ok())
            .filter(|id| !id.is_empty())
            .ok_or_else(|| self.corrupt("the store id is missing"))?;
        let revision = meta
            .get(META_REVISION)?
            .and_then(|bytes| format::decode_revision(&bytes))
            .ok_or_else(|| self.corrupt("the revision counter is missing"))?;

        let mut config = GatewayConfig::default();
        for kind in EntityKind::ALL {
            for item in self.trees[kind.index()].iter() {
                let (key, value) = item?;
                let name = String::from_utf8_lossy(&key).into_owned();
                let decoded = format::decode(kind, &value)
                    .map_err(|m| self.corrupt(format!("{kind} {name:?}: {m}")))?;
                if decoded.kind() != kind || decoded.name() != name {
                    return Err(
                        self.corrupt(format!("{kind} {name:?} is stored under the wrong key"))
                    );
                }
                entity::insert(&mut config, decoded);
            }
        }
        config.sort();
        Ok(Loaded {
            config,
            store_id,
            revision,
        })
    }

    /// A new store: writes the format marker, a fresh store id and revision 0.
    fn initialize(&self) -> Result<Loaded, CpError> {
        if self.trees[..EntityKind::ALL.len()]
            .iter()
            .any(|tree| !tree.is_empty())
        {
            return Err(self.corrupt("entities are stored but the format marker is missing"));
        }
        let store_id = uuid::Uuid::new_v4().to_string();
        let meta = self.meta();
        meta.transaction(|tx| {
            tx.insert(META_FORMAT, format::encode_format(FORMAT_VERSION))?;
            tx.insert(META_STORE_ID, store_id.as_bytes())?;
            tx.insert(META_REVISION, &0u64.to_be_bytes())?;
            Ok::<(), ConflictableTransactionError<()>>(())
        })
        .map_err(tx_error)?;
        self.db.flush()?;
        tracing::info!(path = %self.path.display(), %store_id, "created a new config store");
        Ok(Loaded {
            config: GatewayConfig::default(),
            store_id,
            revision: 0,
        })
    }

    /// Writes `writes` and sets the revision to `revision`, atomically and
    /// durably: returns only once the data is fsynced.
    pub async fn commit(&self, writes: Vec<EntityWrite>, revision: u64) -> Result<(), CpError> {
        self.commit_recorded(writes, revision, None, history::DEFAULT_KEEP)
            .await
    }

    /// [`Store::commit`], with `record` (the encoded [`history::Record`] of
    /// `revision`) stored in the same transaction; the record that falls
    /// out of the newest `keep` is removed.
    pub async fn commit_recorded(
        &self,
        writes: Vec<EntityWrite>,
        revision: u64,
        record: Option<Vec<u8>>,
        keep: usize,
    ) -> Result<(), CpError> {
        let trees = self.trees.clone();
        let meta_index = EntityKind::ALL.len();
        let history_index = meta_index + 1;
        let expired = revision.checked_sub(keep as u64);
        tokio::task::spawn_blocking(move || {
            trees
                .as_slice()
                .transaction(|tx| {
                    for write in &writes {
                        let tree = &tx[write.kind.index()];
                        match &write.value {
                            Some(value) => {
                                tree.insert(write.name.as_bytes(), value.as_slice())?;
                            }
                            None => {
                                tree.remove(write.name.as_bytes())?;
                            }
                        }
                    }
                    tx[meta_index].insert(META_REVISION, &revision.to_be_bytes())?;
                    if let Some(record) = &record {
                        tx[history_index].insert(&history::key(revision), record.as_slice())?;
                    }
                    if let Some(expired) = expired.filter(|r| *r > 0) {
                        tx[history_index].remove(&history::key(expired))?;
                    }
                    Ok::<(), ConflictableTransactionError<()>>(())
                })
                .map_err(tx_error)
        })
        .await
        .map_err(|e| CpError::Internal(format!("store commit task failed: {e}")))??;
        self.db.flush_async().await?;
        Ok(())
    }

    /// Flushes everything (used at shutdown).
    pub async fn flush(&self) -> Result<(), CpError> {
        self.db.flush_async().await?;
        Ok(())
    }
}

fn tx_error(error: TransactionError<()>) -> CpError {
    match error {
        TransactionError::Storage(err) => CpError::Storage(err),
        TransactionError::Abort(()) => CpError::Internal("store transaction aborted".into()),
    }
}

/// Creates the data directory with mode 0700, or tightens an existing one.
fn prepare_data_dir(dir: &Path) -> Result<(), CpError> {
    let io = |source| CpError::DataDir {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io)?;
    let metadata = std::fs::metadata(dir).map_err(io)?;
    if metadata.permissions().mode() & 0o777 != 0o700 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
