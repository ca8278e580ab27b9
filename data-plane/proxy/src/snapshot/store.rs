//! The one pointer to the compiled snapshot in service.
//!
//! Swapping a single `Arc` makes a config change atomic: a request loads the
//! pointer once when it starts and holds that `Arc` until it ends, so it sees
//! one whole config from routing to logging even if a swap happens meanwhile;
//! the old snapshot is freed when its last request finishes. Loading is
//! lock-free (`arc-swap`), with no global lock on the request path.

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use tollgate_shared::proto::config::ConfigVersion;

use super::compile::CompiledSnapshot;

#[derive(Debug, Default)]
pub struct SnapshotStore {
    current: ArcSwapOption<CompiledSnapshot>,
}

impl SnapshotStore {
    /// The snapshot in service, if any; hold it for the whole request.
    #[inline]
    pub fn load(&self) -> Option<Arc<CompiledSnapshot>> {
        self.current.load_full()
    }

    /// Puts `snapshot` in service; requests already running keep theirs.
    pub fn swap(&self, snapshot: Arc<CompiledSnapshot>) {
        self.current.store(Some(snapshot));
    }

    pub fn version(&self) -> Option<ConfigVersion> {
        self.current.load().as_ref().map(|s| s.version.clone())
    }

    pub fn is_ready(&self) -> bool {
        self.current.load().is_some()
    }
}
