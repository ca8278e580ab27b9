//! The config in service as the control plane describes it: the parsed
//! config, the hash of each entity and their checksum. Deltas apply to it.
//!
//! It is not on the request path (requests read the compiled snapshot from
//! [`super::SnapshotStore`]); a mutex guards it against the rare overlap of a
//! cache load and a stream apply.

use std::sync::Mutex;

use tollgate_shared::delta::{self, DeltaError, EntityTable, Undo};
use tollgate_shared::model::GatewayConfig;
use tollgate_shared::proto::config::ConfigVersion;
use tollgate_shared::proto::stream::{Delta, Snapshot};

use super::version_label;

/// Why a delta was not applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeltaRefused {
    /// The delta or the config it leads to is invalid: NACK, keep serving.
    Invalid(String),
    /// The held state is not the delta's base: ask for a full snapshot.
    Drift(String),
}

#[derive(Debug)]
struct Held {
    version: ConfigVersion,
    /// Lists sorted by name (what deltas edit in place).
    config: GatewayConfig,
    table: EntityTable,
}

#[derive(Debug, Default)]
pub struct HeldState {
    inner: Mutex<Option<Held>>,
}

impl HeldState {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Held>> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn set(&self, version: ConfigVersion, mut config: GatewayConfig, table: EntityTable) {
        config.sort();
        *self.lock() = Some(Held {
            version,
            config,
            table,
        });
    }

    pub fn checksum(&self) -> Vec<u8> {
        self.lock()
            .as_ref()
            .map(|held| delta::checksum_bytes(held.table.checksum()))
            .unwrap_or_default()
    }

    /// The held state as a snapshot (for the disk cache).
    pub fn snapshot(&self) -> Option<Snapshot> {
        self.lock().as_ref().map(|held| Snapshot {
            version: Some(held.version.clone()),
            config: Some(tollgate_shared::proto::config::GatewayConfig::from(
                &held.config,
            )),
        })
    }

    /// Applies `delta` to the held state in place (in time proportional to
    /// the delta) and hands the state it leads to, with its version and
    /// what it touched, to `compile`. When `compile` fails, the held state
    /// is put back as it was; when it succeeds, the state is held at the
    /// delta's target version. The lock is held throughout (it is not on the
    /// request path).
    pub fn advance<R>(
        &self,
        delta: &Delta,
        compile: impl FnOnce(&GatewayConfig, &ConfigVersion, &Undo) -> Result<R, String>,
    ) -> Result<(ConfigVersion, R), DeltaRefused> {
        let target = delta
            .target
            .clone()
            .ok_or_else(|| DeltaRefused::Invalid("delta carries no target version".into()))?;
        let base = delta.base.clone().unwrap_or_default();
        let mut guard = self.lock();
        let Some(held) = guard.as_mut().filter(|held| held.version == base) else {
            let holds = guard
                .as_ref()
                .map(|held| version_label(&held.version))
                .unwrap_or_else(|| "nothing".into());
            return Err(DeltaRefused::Drift(format!(
                "delta from {} but this data plane holds {holds}",
                version_label(&base)
            )));
        };
        let undo = match delta::apply_in_place(&mut held.config, &mut held.table, delta) {
            Ok(undo) => undo,
            Err(DeltaError::Invalid(message)) => return Err(DeltaRefused::Invalid(message)),
            Err(DeltaError::Drift(message)) => return Err(DeltaRefused::Drift(message)),
        };
        match compile(&held.config, &target, &undo) {
            Ok(result) => {
                held.version = target.clone();
                Ok((target, result))
            }
            Err(message) => {
                undo.revert(&mut held.config, &mut held.table);
                Err(DeltaRefused::Invalid(message))
            }
        }
    }

    /// Test hook: the held state stops matching what was applied.
    pub fn corrupt(&self) {
        if let Some(held) = self.lock().as_mut() {
            if let Some(route) = held.config.routes.last_mut() {
                route.strip_path = !route.strip_path;
            }
            held.table = EntityTable::of(&held.config);
        }
    }
}
