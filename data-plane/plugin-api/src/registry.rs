//! How plugins are found by name and built when a snapshot compiles.
//!
//! The binary builds one [`Registry`] at startup (`tollgate_plugins::
//! registry`, one line per plugin) and hands it to the proxy core, which
//! looks plugins up by the name in the config and never names one itself.
//! A factory lives as long as the data plane, so state that must outlive
//! snapshots (rate-limit counters, the Redis connection) lives in it;
//! state shared by the instances of one snapshot (the consumer index) goes
//! in the snapshot's [`SnapshotScope`].

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tollgate_shared::model::GatewayConfig;

use crate::plugin::{Phase, Plugin};

/// Builds instances of one plugin.
pub trait PluginFactory: Send + Sync {
    /// The name configs use (`key-auth`).
    fn name(&self) -> &'static str;

    /// The phase the plugin's instances run in.
    fn phase(&self) -> Phase;

    /// Whether several instances on one route all run (rate limits) instead
    /// of the most specific one replacing the others.
    fn stackable(&self) -> bool {
        false
    }

    /// Whether an instance's build reads the config's routes beyond the one
    /// it is attached to (`ctx.config.routes`). When only routes change, a
    /// config delta reuses the global and service-level instances of
    /// factories that answer `false`; an instance of one that answers `true`
    /// is built again. Override it whenever `build` looks at other routes.
    fn reads_routes(&self) -> bool {
        false
    }

    /// Called once per snapshot before any instance is built: prepare what
    /// the snapshot's instances share in `ctx.scope`. An error fails the
    /// snapshot (NACK).
    fn prepare(&self, _ctx: &BuildCtx<'_>) -> Result<(), String> {
        Ok(())
    }

    /// Compiles one instance from its JSON config. Errors name the field
    /// (`config.limit: must be at least 1`).
    fn build(
        &self,
        config: &serde_json::Value,
        ctx: &BuildCtx<'_>,
    ) -> Result<Arc<dyn Plugin>, String>;
}

/// What building an instance may need.
#[derive(Clone, Copy)]
pub struct BuildCtx<'a> {
    /// Identifies the instance stably across snapshots (`route:orders#0`:
    /// rate-limit counters are keyed by it); empty in [`PluginFactory::prepare`].
    pub instance: &'a str,
    /// The whole config being compiled.
    pub config: &'a GatewayConfig,
    /// Values the snapshot's instances share.
    pub scope: &'a SnapshotScope,
}

/// Values shared by the plugin instances of one snapshot, by type, built
/// on first use (compiling is single-threaded; the lock is never contended).
#[derive(Default)]
pub struct SnapshotScope {
    values: Mutex<Vec<Arc<dyn Any + Send + Sync>>>,
}

impl SnapshotScope {
    /// The snapshot's `T`, built by `init` the first time it is asked for.
    pub fn get_or_try_init<T: Any + Send + Sync>(
        &self,
        init: impl FnOnce() -> Result<T, String>,
    ) -> Result<Arc<T>, String> {
        let mut values = self
            .values
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(found) = values
            .iter()
            .find_map(|value| value.clone().downcast::<T>().ok())
        {
            return Ok(found);
        }
        let created = Arc::new(init()?);
        values.push(created.clone());
        Ok(created)
    }
}

/// Every plugin this data plane implements, by name.
#[derive(Default, Clone)]
pub struct Registry {
    factories: HashMap<&'static str, Arc<dyn PluginFactory>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("plugins", &self.names())
            .finish()
    }
}

impl Registry {
    pub fn new() -> Self {
        Registry::default()
    }

    /// Adds a plugin (the one line per plugin of `tollgate_plugins::registry`).
    pub fn with(mut self, factory: impl PluginFactory + 'static) -> Self {
        self.factories.insert(factory.name(), Arc::new(factory));
        self
    }

    /// Keeps only the named plugins (a node's `--plugins`); an unknown
    /// name is an error naming the known ones.
    pub fn only(mut self, names: &[String]) -> Result<Self, String> {
        if let Some(unknown) = names
            .iter()
            .find(|n| !self.factories.contains_key(n.as_str()))
        {
            return Err(format!(
                "unknown plugin {unknown:?} (known: {})",
                self.names().join(", ")
            ));
        }
        self.factories
            .retain(|name, _| names.iter().any(|wanted| wanted == name));
        Ok(self)
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn PluginFactory>> {
        self.factories.get(name)
    }

    /// The registered names, sorted.
    pub fn names(&self) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = self.factories.keys().copied().collect();
        names.sort_unstable();
        names
    }

    /// Runs every factory's [`PluginFactory::prepare`] for a snapshot.
    pub fn prepare(&self, config: &GatewayConfig, scope: &SnapshotScope) -> Result<(), String> {
        let ctx = BuildCtx {
            instance: "",
            config,
            scope,
        };
        let mut factories: Vec<&Arc<dyn PluginFactory>> = self.factories.values().collect();
        factories.sort_unstable_by_key(|factory| factory.name());
        for factory in factories {
            factory.prepare(&ctx)?;
        }
        Ok(())
    }

    /// Whether plugin `name`'s instances depend on the config's routes (see
    /// [`PluginFactory::reads_routes`]); unknown plugins do, to be safe.
    pub fn reads_routes(&self, name: &str) -> bool {
        self.get(name).is_none_or(|factory| factory.reads_routes())
    }

    /// Compiles one instance; unknown plugins are errors naming the known ones.
    pub fn build(
        &self,
        name: &str,
        config: &serde_json::Value,
        ctx: &BuildCtx<'_>,
    ) -> Result<Arc<dyn Plugin>, String> {
        match self.get(name) {
            Some(factory) => factory.build(config, ctx),
            None => Err(format!(
                "name: unknown plugin {name:?} (known: {})",
                self.names().join(", ")
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Named(&'static str);

    impl PluginFactory for Named {
        fn name(&self) -> &'static str {
            self.0
        }
        fn phase(&self) -> Phase {
            Phase::Admit
        }
        fn build(
            &self,
            _config: &serde_json::Value,
            _ctx: &BuildCtx<'_>,
        ) -> Result<Arc<dyn Plugin>, String> {
            Err("not built in this test".into())
        }
    }

    #[test]
    fn a_node_can_load_a_subset_and_unknown_names_are_refused() {
        let registry = Registry::new().with(Named("a")).with(Named("b"));
        assert_eq!(registry.names(), ["a", "b"]);
        let only = registry.clone().only(&["b".into()]).expect("known");
        assert_eq!(only.names(), ["b"]);
        let err = registry.only(&["c".into()]).expect_err("unknown");
        assert_eq!(err, "unknown plugin \"c\" (known: a, b)");
    }
}
