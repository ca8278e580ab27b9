//! Joins the chunks of a full snapshot (`SnapshotChunk`) back into the
//! `Snapshot` the control plane encoded once for every data plane.

use prost::Message;
use tollgate_shared::proto::config::ConfigVersion;
use tollgate_shared::proto::stream::{Snapshot, SnapshotChunk};

use super::version_label;

/// A complete snapshot with the checksum the control plane computed for it.
#[derive(Debug)]
pub struct Assembled {
    pub snapshot: Snapshot,
    pub checksum: Vec<u8>,
}

/// The snapshot being received, if any.
#[derive(Debug, Default)]
pub struct Reassembly {
    current: Option<(ConfigVersion, u64, Vec<u8>)>,
}

impl Reassembly {
    /// Takes one chunk: the snapshot once its last chunk arrived, `None`
    /// before, an error (and nothing kept) on a chunk out of sequence or a
    /// snapshot over `max_bytes`.
    pub fn push(
        &mut self,
        chunk: SnapshotChunk,
        max_bytes: usize,
    ) -> Result<Option<Assembled>, String> {
        let version = chunk.version.clone().unwrap_or_default();
        if chunk.total_bytes > max_bytes as u64 {
            self.current = None;
            return Err(format!(
                "snapshot {} has {} bytes, over the limit of {max_bytes}",
                version_label(&version),
                chunk.total_bytes
            ));
        }
        if chunk.offset == 0 {
            self.current = Some((
                version.clone(),
                chunk.total_bytes,
                Vec::with_capacity(chunk.total_bytes as usize),
            ));
        }
        let Some((held_version, total, buffer)) = self.current.as_mut() else {
            return Err(format!(
                "chunk at offset {} of snapshot {} without its start",
                chunk.offset,
                version_label(&version)
            ));
        };
        if *held_version != version
            || *total != chunk.total_bytes
            || buffer.len() as u64 != chunk.offset
            || buffer.len() + chunk.data.len() > *total as usize
        {
            self.current = None;
            return Err(format!(
                "chunk at offset {} of snapshot {} out of sequence",
                chunk.offset,
                version_label(&version)
            ));
        }
        buffer.extend_from_slice(&chunk.data);
        if (buffer.len() as u64) < *total {
            return Ok(None);
        }
        let Some((_, _, buffer)) = self.current.take() else {
            return Ok(None);
        };
        let snapshot = Snapshot::decode(buffer.as_slice())
            .map_err(|e| format!("snapshot {}: {e}", version_label(&version)))?;
        if snapshot.version.as_ref() != Some(&version) {
            return Err(format!(
                "snapshot {} carries another version",
                version_label(&version)
            ));
        }
        Ok(Some(Assembled {
            snapshot,
            checksum: chunk.checksum,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(snapshot: &Snapshot, size: usize) -> Vec<SnapshotChunk> {
        let encoded = snapshot.encode_to_vec();
        encoded
            .chunks(size)
            .enumerate()
            .map(|(i, part)| SnapshotChunk {
                version: snapshot.version.clone(),
                offset: (i * size) as u64,
                total_bytes: encoded.len() as u64,
                data: part.to_vec().into(),
                checksum: vec![1, 2],
            })
            .collect()
    }

    #[test]
    fn joins_chunks_and_refuses_gaps() {
        let snapshot = Snapshot {
            version: Some(ConfigVersion {
                store_id: "s".into(),
                revision: 4,
            }),
            config: Some(tollgate_shared::proto::config::GatewayConfig {
                json: format!("{{\"routes\":[{}]}}", "1,".repeat(500) + "1"),
            }),
        };
        let parts = chunks(&snapshot, 100);
        assert!(parts.len() > 3);
        let mut joined = Reassembly::default();
        let mut result = None;
        for part in parts.clone() {
            result = joined.push(part, 1 << 20).expect("in sequence");
        }
        assert_eq!(result.expect("complete").snapshot, snapshot);

        let mut gap = Reassembly::default();
        gap.push(parts[0].clone(), 1 << 20).expect("first");
        assert!(gap.push(parts[2].clone(), 1 << 20).is_err());
        assert!(Reassembly::default()
            .push(parts[1].clone(), 1 << 20)
            .is_err());
        assert!(Reassembly::default().push(parts[0].clone(), 10).is_err());
    }
}
