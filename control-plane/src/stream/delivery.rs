//! What one session sends next: nothing, a delta, the next chunk of a full
//! snapshot, or (to a data plane that does not speak deltas) a whole
//! snapshot. Everything sent is built once per version in
//! [`super::builds`]; this only picks.
//!
//! A data plane that accepts deltas and holds a version still kept as a
//! delta base (same store, checksum as expected) gets the delta from that
//! version to the newest; otherwise, or after it asked for a resync, the full
//! snapshot in chunks. A newer version published while chunks are going out
//! waits for the last chunk, then follows as a delta.

use std::sync::Arc;

use tollgate_shared::proto::stream::{ControlPlaneMessage, Hello};

use super::builds::{Builds, Built};
use super::chunks::ChunkCursor;
use super::distribution_metrics::Sent;
use crate::metrics::CpMetrics;
use crate::model::ConfigVersion;

pub struct Delivery {
    accepts_deltas: bool,
    /// The version the data plane holds once it applied what was sent.
    sent: Option<ConfigVersion>,
    force_full: bool,
    cursor: Option<ChunkCursor>,
    chunk_started: bool,
}

impl Delivery {
    pub fn new(builds: &Builds, current: &Arc<Built>, hello: &Hello) -> Delivery {
        let mut sent = hello.held_version.as_ref().map(ConfigVersion::from_pb);
        // A held version whose checksum is not the one the control plane
        // computed is not that version (a cache written by hand, a bug):
        // start over from a full snapshot.
        if let Some(held) = &sent {
            if !hello.held_checksum.is_empty() {
                let expected = if held == &current.version {
                    Some(current.checksum.clone())
                } else {
                    builds.get(held).map(|built| built.checksum.clone())
                };
                if expected.is_some_and(|checksum| checksum != hello.held_checksum) {
                    tracing::warn!(
                        node_id = %hello.node_id,
                        revision = held.revision,
                        "the data plane's state does not match the version it says it holds; sending a full snapshot"
                    );
                    sent = None;
                }
            }
        }
        Delivery {
            accepts_deltas: hello.accepts_deltas,
            sent,
            force_full: false,
            cursor: None,
            chunk_started: false,
        }
    }

    /// Whether something is still to be sent for `latest`.
    pub fn behind(&self, latest: &Built) -> bool {
        self.cursor.is_some() || self.force_full || self.sent.as_ref() != Some(&latest.version)
    }

    /// Whether a chunked snapshot is partly sent.
    pub fn sending(&self) -> bool {
        self.cursor.is_some()
    }

    /// Whether the message [`Delivery::next`] just returned began a snapshot.
    pub fn chunk_started(&self) -> bool {
        self.chunk_started
    }

    /// The data plane asked for a full snapshot.
    pub fn resync(&mut self) {
        self.force_full = true;
    }

    /// The next message for this stream, if any.
    pub async fn next(
        &mut self,
        builds: &Builds,
        latest: &Arc<Built>,
        metrics: &CpMetrics,
    ) -> Option<(ControlPlaneMessage, Sent)> {
        self.chunk_started = false;
        if let Some(cursor) = &mut self.cursor {
            let message = cursor.next_chunk();
            if cursor.is_done() {
                self.cursor = None;
            }
            return message.map(|m| (m, Sent::Full));
        }
        if !self.force_full && self.sent.as_ref() == Some(&latest.version) {
            return None;
        }
        if !self.accepts_deltas {
            let full = latest.full(metrics).await;
            self.sent = Some(latest.version.clone());
            self.force_full = false;
            return Some((full.message.clone(), Sent::Legacy));
        }
        if !self.force_full {
            let base = self
                .sent
                .as_ref()
                .filter(|sent| {
                    sent.store_id == latest.version.store_id
                        && sent.revision < latest.version.revision
                })
                .and_then(|sent| builds.get(sent));
            if let Some(base) = base {
                let delta = latest.delta_from(&base, metrics).await;
                self.sent = Some(latest.version.clone());
                return Some(((*delta).clone(), Sent::Delta));
            }
        }
        let full = latest.full(metrics).await;
        self.force_full = false;
        self.sent = Some(latest.version.clone());
        let mut cursor = ChunkCursor::new(
            &full,
            latest.version.to_pb(),
            latest.checksum.clone(),
            latest.trace_context.clone(),
        );
        let first = cursor.next_chunk();
        if !cursor.is_done() {
            self.cursor = Some(cursor);
        }
        self.chunk_started = true;
        first.map(|m| (m, Sent::Full))
    }
}
