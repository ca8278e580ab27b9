//! Configuration snapshots: received, checked, compiled, swapped in, cached.
//!
//! - [`subscribe`]: the gRPC stream from the control plane (hello, snapshots,
//!   ACK/NACK, reconnect with backoff).
//! - [`compile`]: config -> [`CompiledSnapshot`] (routes, pools, chains).
//! - [`store`]: the single pointer requests load.
//! - [`cache`]: the on-disk copy used at boot.
//! - [`held`]: the applied config by entity, with its checksum: what deltas
//!   apply to. [`reassembly`]: full snapshots that arrive in chunks.
//!
//! [`Applier`] is the one path every snapshot takes, from the stream or from
//! the cache: convert from protobuf, validate, compile, swap. Any failure
//! leaves the config in service untouched.

pub mod cache;
pub mod cluster_identity;
pub mod compile;
pub mod held;
pub mod reassembly;
pub mod store;
pub mod subscribe;

use std::sync::Arc;

use tollgate_shared::model::GatewayConfig;
use tollgate_shared::proto::config::ConfigVersion;
use tollgate_shared::proto::stream::Snapshot;
use tollgate_shared::telemetry::TRACE_TARGET;

pub use cache::ConfigCache;
pub use compile::{CompiledRoute, CompiledService, CompiledSnapshot};
pub use store::SnapshotStore;

use tollgate_plugin_api::Registry;

use crate::upstream::ClientCache;

/// Applies snapshots to the store.
#[derive(Debug)]
pub struct Applier {
    store: Arc<SnapshotStore>,
    /// Every target's connections, shared across snapshots (and swept by
    /// [`crate::pool::maintain`]).
    clients: Arc<ClientCache>,
    cache: Option<ConfigCache>,
    /// The plugins this data plane implements, by name.
    registry: Arc<Registry>,
    /// TLS session-resumption state every snapshot's server config shares.
    tls: crate::tls::TlsShared,
    /// The config in service as the control plane sees it (entities and
    /// their checksum), the base deltas apply to.
    held: held::HeldState,
}

/// `store_id@revision`, for logs.
pub fn version_label(version: &ConfigVersion) -> String {
    format!("{}@{}", version.store_id, version.revision)
}

impl Applier {
    /// An applier compiling plugins from `registry` (the binary's list).
    pub fn new(
        store: Arc<SnapshotStore>,
        cache: Option<ConfigCache>,
        registry: Arc<Registry>,
    ) -> Result<Applier, String> {
        Ok(Applier {
            store,
            clients: Arc::default(),
            cache,
            registry,
            tls: crate::tls::TlsShared::new()?,
            held: held::HeldState::default(),
        })
    }

    /// What the TLS handshake does with an untrusted client certificate
    /// (`--tls-refuse-untrusted-client-certs`); before the first snapshot.
    pub fn with_client_cert_policy(
        mut self,
        policy: crate::tls::client_auth::ClientCertPolicy,
    ) -> Applier {
        self.tls.client_cert_policy = policy;
        self
    }

    /// The upstream targets' connections, for the idle sweeper.
    pub fn clients(&self) -> Arc<ClientCache> {
        self.clients.clone()
    }

    pub fn store(&self) -> &SnapshotStore {
        &self.store
    }

    /// Converts, validates and compiles without touching the store.
    pub fn prepare(&self, snapshot: &Snapshot) -> Result<CompiledSnapshot, String> {
        let version = snapshot
            .version
            .clone()
            .ok_or("snapshot carries no version")?;
        let config = snapshot
            .config
            .as_ref()
            .ok_or("snapshot carries no config")?;
        let config = GatewayConfig::try_from(config).map_err(|e| e.to_string())?;
        self.prepare_config(&config, version)
    }

    /// Validates and compiles a parsed config without touching the store.
    pub fn prepare_config(
        &self,
        config: &GatewayConfig,
        version: ConfigVersion,
    ) -> Result<CompiledSnapshot, String> {
        let _span = tracing::info_span!(target: TRACE_TARGET, "config_compile").entered();
        tollgate_shared::validate::validate(config).map_err(|e| e.to_string())?;
        let previous = self.store.load();
        let mut compiled = compile::compile(
            config,
            version,
            previous.as_deref(),
            &self.clients,
            &self.registry,
        )?;
        compiled.tls =
            crate::tls::server_config(config, &self.tls, &compiled.client_ca_certificates())?;
        compiled.certificate_expiries = crate::tls::expiries(config)
            .into_iter()
            .map(|(name, not_after)| (name.to_string(), not_after))
            .collect();
        Ok(compiled)
    }

    /// Applies a snapshot: on success it is in service when this returns.
    /// On failure the old config stays in service, whole.
    pub fn apply(&self, snapshot: &Snapshot) -> Result<ConfigVersion, String> {
        let version = snapshot
            .version
            .clone()
            .ok_or("snapshot carries no version")?;
        let config = snapshot
            .config
            .as_ref()
            .ok_or("snapshot carries no config")?;
        let config = GatewayConfig::try_from(config).map_err(|e| e.to_string())?;
        let compiled = self.prepare_config(&config, version)?;
        let table = tollgate_shared::delta::EntityTable::of(&config);
        let version = self.put_in_service(compiled);
        self.held.set(version.clone(), config, table);
        Ok(version)
    }

    /// Applies a delta to the held config. On any error the config in
    /// service stays, whole: [`held::DeltaRefused::Invalid`] is a NACK,
    /// [`held::DeltaRefused::Drift`] asks the control plane for a full
    /// snapshot. On success, returns the snapshot to cache (only when this
    /// data plane keeps a cache: building it encodes the whole config).
    ///
    /// A delta of routes and services compiles incrementally
    /// ([`compile::compile_delta`]): only what it touched is validated and
    /// rebuilt, the rest is shared with the snapshot in service. Anything
    /// else compiles the resulting config whole.
    pub fn apply_delta(
        &self,
        delta: &tollgate_shared::proto::stream::Delta,
    ) -> Result<(ConfigVersion, Option<Snapshot>), held::DeltaRefused> {
        let (version, compiled) = self.held.advance(delta, |config, version, undo| {
            self.compile_delta(config, version, undo)
        })?;
        self.put_in_service(compiled);
        let snapshot = self.cache.as_ref().and_then(|_| self.held.snapshot());
        Ok((version, snapshot))
    }

    /// The snapshot of the state a delta led to: incrementally when it
    /// touched only routes and services, else whole.
    fn compile_delta(
        &self,
        config: &GatewayConfig,
        version: &ConfigVersion,
        undo: &tollgate_shared::delta::Undo,
    ) -> Result<CompiledSnapshot, String> {
        let metrics = tollgate_telemetry::metrics::global();
        let previous = self.store.load();
        let plan = compile::DeltaPlan::of(undo.touched(), config);
        if let (Some(previous), Some(plan)) = (previous.as_deref(), plan) {
            let _span = tracing::info_span!(
                target: TRACE_TARGET,
                "config_compile",
                tollgate.incremental = true
            )
            .entered();
            tollgate_shared::validate::validate_changed(config, &plan.changed())
                .map_err(|e| e.to_string())?;
            let compiled = compile::compile_delta(
                config,
                version.clone(),
                previous,
                &plan,
                &self.clients,
                &self.registry,
            )?;
            if let Some(mut compiled) = compiled {
                if compiled.client_cas_changed {
                    let snapshot = &mut compiled.snapshot;
                    snapshot.tls = crate::tls::server_config(
                        config,
                        &self.tls,
                        &snapshot.client_ca_certificates(),
                    )?;
                }
                metrics.config_compiled("incremental");
                return Ok(compiled.snapshot);
            }
        }
        metrics.config_compiled("whole");
        self.prepare_config(config, version.clone())
    }

    /// The checksum of the held state, for the hello (empty when none).
    pub fn held_checksum(&self) -> Vec<u8> {
        self.held.checksum()
    }

    /// Test hook: makes the held state differ from what was applied.
    #[doc(hidden)]
    pub fn corrupt_held_state(&self) {
        self.held.corrupt();
    }

    fn put_in_service(&self, compiled: CompiledSnapshot) -> ConfigVersion {
        let _span = tracing::info_span!(
            target: TRACE_TARGET,
            "config_swap",
            revision = compiled.version.revision
        )
        .entered();
        let version = compiled.version.clone();
        let metrics = tollgate_telemetry::metrics::global();
        metrics.set_certificate_expiry(
            compiled
                .certificate_expiries
                .iter()
                .map(|(name, not_after)| (name.as_str(), *not_after)),
        );
        self.store.swap(Arc::new(compiled));
        metrics.config_applied(&version.store_id, version.revision);
        version
    }

    /// Writes an applied snapshot to the cache file (blocking I/O: call from
    /// a blocking thread). Failures are logged, never fatal.
    pub fn write_cache(&self, snapshot: &Snapshot) {
        let Some(cache) = &self.cache else {
            return;
        };
        if let Err(err) = cache.store(snapshot) {
            tracing::warn!(path = %cache.path().display(), error = %err, "cannot write the config cache");
        }
    }

    /// Loads and applies the cached snapshot at boot, if there is one.
    pub fn load_cache(&self) -> Option<ConfigVersion> {
        let cache = self.cache.as_ref()?;
        let path = cache.path().display().to_string();
        let snapshot = match cache.load() {
            Ok(Some(snapshot)) => snapshot,
            Ok(None) => {
                tracing::info!(path, "no config cache yet");
                return None;
            }
            Err(err) => {
                tracing::warn!(path, error = %err, "ignoring unreadable config cache");
                return None;
            }
        };
        match self.apply(&snapshot) {
            Ok(version) => {
                tracing::info!(path, version = %version_label(&version), "serving the cached config");
                Some(version)
            }
            Err(err) => {
                tracing::warn!(path, error = %err, "ignoring a cached config that cannot be applied");
                None
            }
        }
    }
}

#[cfg(test)]
mod delta_tests;
