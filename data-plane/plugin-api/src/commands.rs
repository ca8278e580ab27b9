//! Commands from the control plane to plugin state that outlives requests
//! and snapshots, delivered by the core's config stream. The core knows
//! only these traits; the binary hands it the plugins' implementations.

use std::future::Future;
use std::pin::Pin;

/// Drops cached responses (`tollgatectl cache purge ROUTE [--key KEY]`).
pub trait CachePurger: Send + Sync + std::fmt::Debug {
    /// Every entry of `route`, or the one whose `X-Cache-Key` is `key`.
    fn purge<'a>(
        &'a self,
        route: &'a str,
        key: Option<&'a str>,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;
}
