//! A full snapshot sent as chunks: slices of the one encoded `Snapshot`
//! buffer every session shares ([`super::builds::Full`]).
//!
//! Sent whole, a snapshot makes each stream's encode buffer grow to the
//! snapshot's size and keep that capacity for the life of the stream (about
//! 1 MiB per data plane at 10,000 routes). In chunks of [`CHUNK_BYTES`], what
//! a stream holds stays under tonic's default 8 KiB buffer plus what is in
//! flight, whatever the size of the config.

use std::collections::HashMap;
use std::sync::Arc;

use prost::bytes::Bytes;
use tollgate_shared::proto::config::ConfigVersion;
use tollgate_shared::proto::stream::{control_plane_message, ControlPlaneMessage, SnapshotChunk};

use super::builds::Full;

/// Payload per chunk: the message with its headers fits in 8 KiB.
pub const CHUNK_BYTES: usize = 8 * 1024 - 128;

/// The chunks of one full snapshot still to send on one stream.
pub struct ChunkCursor {
    version: ConfigVersion,
    checksum: Vec<u8>,
    encoded: Bytes,
    offset: usize,
    /// The version's trace context, sent on the last chunk (the one whose
    /// arrival makes the data plane apply the snapshot).
    trace_context: HashMap<String, String>,
}

impl ChunkCursor {
    pub fn new(
        full: &Arc<Full>,
        version: ConfigVersion,
        checksum: Vec<u8>,
        trace_context: HashMap<String, String>,
    ) -> ChunkCursor {
        ChunkCursor {
            version,
            checksum,
            encoded: full.encoded.clone(),
            offset: 0,
            trace_context,
        }
    }

    /// The next chunk (a zero-copy slice), or `None` once all were taken.
    /// An empty snapshot is still one (empty) chunk.
    pub fn next_chunk(&mut self) -> Option<ControlPlaneMessage> {
        let total = self.encoded.len();
        if self.offset >= total && !(total == 0 && self.offset == 0) {
            return None;
        }
        let end = (self.offset + CHUNK_BYTES).min(total);
        let chunk = SnapshotChunk {
            version: Some(self.version.clone()),
            offset: self.offset as u64,
            total_bytes: total as u64,
            data: self.encoded.slice(self.offset..end),
            checksum: self.checksum.clone(),
        };
        self.offset = if total == 0 { 1 } else { end };
        let trace_context = if self.is_done() {
            std::mem::take(&mut self.trace_context)
        } else {
            HashMap::new()
        };
        Some(ControlPlaneMessage {
            kind: Some(control_plane_message::Kind::SnapshotChunk(chunk)),
            trace_context,
        })
    }

    pub fn is_done(&self) -> bool {
        self.offset >= self.encoded.len() && !(self.encoded.is_empty() && self.offset == 0)
    }
}
