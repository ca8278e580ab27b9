//! `--config-cache FILE`: the last applied snapshot on disk, so a data plane
//! started while the control plane is down serves at once.
//!
//! Format (versioned so a later release can still read or knowingly refuse
//! an old file): the 8 bytes `TGDPSNAP`, one format-version byte (`1`), then
//! the protobuf `tollgate.stream.v1.Snapshot` exactly as received.
//!
//! Writes are atomic: a temporary file in the same directory, fsync, rename
//! over the target, fsync of the directory. A crash leaves the old file or the
//! new one, never half of one. The file holds secrets (JWT HMAC secrets, key
//! hashes), so it is created with mode 0600.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use prost::Message;
use tollgate_shared::proto::stream::Snapshot;

const MAGIC: &[u8; 8] = b"TGDPSNAP";
const FORMAT_VERSION: u8 = 1;
/// Refuse to read anything larger (a config this big is a mistake).
const MAX_CACHE_BYTES: u64 = 256 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct ConfigCache {
    path: PathBuf,
}

impl ConfigCache {
    pub fn new(path: PathBuf) -> ConfigCache {
        ConfigCache { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The cached snapshot; `Ok(None)` when there is no cache file yet.
    pub fn load(&self) -> Result<Option<Snapshot>, String> {
        let metadata = match fs::metadata(&self.path) {
            Ok(metadata) => metadata,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err.to_string()),
        };
        if metadata.len() > MAX_CACHE_BYTES {
            return Err(format!("larger than {MAX_CACHE_BYTES} bytes"));
        }
        let bytes = fs::read(&self.path).map_err(|e| e.to_string())?;
        let body = bytes
            .strip_prefix(MAGIC.as_slice())
            .ok_or("not a tollgate-dp config cache (bad magic)")?;
        match body.split_first() {
            Some((&FORMAT_VERSION, encoded)) => Snapshot::decode(encoded)
                .map(Some)
                .map_err(|e| format!("corrupt snapshot: {e}")),
            Some((other, _)) => Err(format!("unsupported cache format version {other}")),
            None => Err("truncated file".into()),
        }
    }

    /// Replaces the cache with `snapshot`, atomically and durably.
    pub fn store(&self, snapshot: &Snapshot) -> io::Result<()> {
        let mut bytes = Vec::with_capacity(MAGIC.len() + 1 + snapshot.encoded_len());
        bytes.extend_from_slice(MAGIC);
        bytes.push(FORMAT_VERSION);
        snapshot
            .encode(&mut bytes)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;

        let directory = match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let file_name = self
            .path
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
        let mut temp_name = std::ffi::OsString::from(".");
        temp_name.push(file_name);
        temp_name.push(format!(".tmp.{}", std::process::id()));
        let temp_path = directory.join(temp_name);

        let result = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&temp_path)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            drop(file);
            fs::rename(&temp_path, &self.path)?;
            File::open(&directory)?.sync_all()
        })();
        if result.is_err() {
            let _ = fs::remove_file(&temp_path);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use tollgate_shared::proto::config::{ConfigVersion, GatewayConfig};

    fn snapshot(revision: u64) -> Snapshot {
        Snapshot {
            version: Some(ConfigVersion {
                store_id: "store-1".into(),
                revision,
            }),
            config: Some(GatewayConfig {
                json: r#"{"services":[{"name":"orders","upstream":{"targets":[{"address":"127.0.0.1:1"}]}}]}"#
                    .into(),
            }),
        }
    }

    #[test]
    fn missing_file_is_no_cache() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = ConfigCache::new(dir.path().join("none.bin"));
        assert_eq!(cache.load(), Ok(None));
    }

    #[test]
    fn store_then_load_round_trips_with_private_permissions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("snapshot.bin");
        let cache = ConfigCache::new(path.clone());
        cache.store(&snapshot(1)).expect("store");
        cache.store(&snapshot(2)).expect("overwrite");
        assert_eq!(cache.load().expect("load"), Some(snapshot(2)));
        let mode = fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .expect("dir")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp."))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn garbage_and_unknown_versions_are_errors_not_panics() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("snapshot.bin");
        let cache = ConfigCache::new(path.clone());
        fs::write(&path, b"hello").expect("write");
        assert!(cache
            .load()
            .expect_err("must be refused")
            .contains("bad magic"));
        fs::write(&path, b"TGDPSNAP\x09rest").expect("write");
        assert!(cache
            .load()
            .expect_err("must be refused")
            .contains("version 9"));
        fs::write(&path, b"TGDPSNAP\x01\xff\xff\xff").expect("write");
        assert!(cache
            .load()
            .expect_err("must be refused")
            .contains("corrupt"));
        fs::write(&path, b"TGDPSNAP").expect("write");
        assert!(cache
            .load()
            .expect_err("must be refused")
            .contains("truncated"));
    }
}
