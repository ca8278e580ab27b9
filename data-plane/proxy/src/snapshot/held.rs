//! The config in service as the control plane describes it: the parsed
//! config, the hash of each entity and their checksum. Deltas apply to it.
//!
//! It is not on the request path (requests read the compiled snapshot from
//! [`super::SnapshotStore`]); a mutex guards it against the rare overlap of a
//! cache load and a stream apply.

use std::sync::{Arc, Mutex};

use tollgate_shared::delta::{self, DeltaError, EntityTable};
use tollgate_shared::model::GatewayConfig;
use tollgate_shared::proto::config::ConfigVersion;
use tollgate_shared::proto::stream::Delta;

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
    config: Arc<GatewayConfig>,
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

    pub fn set(&self, version: ConfigVersion, config: Arc<GatewayConfig>, table: EntityTable) {
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

    /// The state `delta` leads to from the held one (not yet held: the
    /// caller sets it once the result is in service).
    pub fn advance(
        &self,
        delta: &Delta,
    ) -> Result<(ConfigVersion, GatewayConfig, EntityTable), DeltaRefused> {
        let target = delta
            .target
            .clone()
            .ok_or_else(|| DeltaRefused::Invalid("delta carries no target version".into()))?;
        let base = delta.base.clone().unwrap_or_default();
        let (config, table) = {
            let guard = self.lock();
            let Some(held) = guard.as_ref().filter(|held| held.version == base) else {
                let holds = guard
                    .as_ref()
                    .map(|held| version_label(&held.version))
                    .unwrap_or_else(|| "nothing".into());
                return Err(DeltaRefused::Drift(format!(
                    "delta from {} but this data plane holds {holds}",
                    version_label(&base)
                )));
            };
            (held.config.clone(), held.table.clone())
        };
        match delta::apply(&config, &table, delta) {
            Ok((next, next_table)) => Ok((target, next, next_table)),
            Err(DeltaError::Invalid(message)) => Err(DeltaRefused::Invalid(message)),
            Err(DeltaError::Drift(message)) => Err(DeltaRefused::Drift(message)),
        }
    }

    /// Test hook: the held state stops matching what was applied.
    pub fn corrupt(&self) {
        if let Some(held) = self.lock().as_mut() {
            let mut config = (*held.config).clone();
            if let Some(route) = config.routes.last_mut() {
                route.strip_path = !route.strip_path;
            }
            held.config = Arc::new(config);
            held.table = EntityTable::of(&held.config);
        }
    }
}
