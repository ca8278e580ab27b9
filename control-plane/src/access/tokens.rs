//! Named admin tokens: created and revoked through the admin API, kept in
//! the store as SHA-256 digests only, and looked up in memory on every call.
//!
//! A token is `tgt_` followed by 43 characters of base64url (32 random bytes
//! from the OS): long enough that a digest is as good as the token for
//! lookups, and shown exactly once, in the `CreateToken` answer. Revocation
//! removes the digest from the store and from memory before it answers, so
//! the very next call with that token is refused.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use rand::RngCore;
use subtle::ConstantTimeEq;
use tollgate_shared::proto::admin as pb;
use tollgate_shared::secrets::api_key_digest;

use super::Role;
use crate::error::CpError;

/// The sled tree holding the tokens, keyed by name.
pub const TOKENS_TREE: &str = "admin_tokens";

/// The bootstrap token's caller name.
pub const BOOTSTRAP: &str = "bootstrap";

const MAX_NAME: usize = 64;

/// One stored token (never the token itself).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct StoredToken {
    name: String,
    role: Role,
    /// Hex SHA-256 of the token.
    digest: String,
    created_ms: i64,
    created_by: String,
}

impl StoredToken {
    fn to_pb(&self) -> pb::AdminToken {
        pb::AdminToken {
            name: self.name.clone(),
            role: self.role.to_pb() as i32,
            created_ms: self.created_ms,
            created_by: self.created_by.clone(),
            fingerprint: self.digest.chars().take(12).collect(),
        }
    }
}

/// Who a presented token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub name: String,
    pub role: Role,
}

/// The named tokens and the bootstrap token.
pub struct TokenBook {
    tree: sled::Tree,
    bootstrap: Option<[u8; 32]>,
    by_digest: RwLock<HashMap<[u8; 32], Holder>>,
}

impl TokenBook {
    /// Loads the stored tokens. Blocking (reads sled).
    pub fn open(tree: sled::Tree, bootstrap: Option<&str>) -> Result<TokenBook, CpError> {
        let mut by_digest = HashMap::new();
        for item in tree.iter() {
            let (_, value) = item?;
            let stored: StoredToken = serde_json::from_slice(&value)
                .map_err(|e| CpError::Internal(format!("unreadable admin token record: {e}")))?;
            let mut digest = [0u8; 32];
            hex::decode_to_slice(&stored.digest, &mut digest)
                .map_err(|e| CpError::Internal(format!("unreadable admin token digest: {e}")))?;
            by_digest.insert(
                digest,
                Holder {
                    name: stored.name,
                    role: stored.role,
                },
            );
        }
        Ok(TokenBook {
            tree,
            bootstrap: bootstrap.map(|t| api_key_digest(t.as_bytes())),
            by_digest: RwLock::new(by_digest),
        })
    }

    /// Whether every call must present a valid token (`--admin-token` set).
    pub fn required(&self) -> bool {
        self.bootstrap.is_some()
    }

    /// The holder of `token`, if it is the bootstrap token or a live named one.
    pub fn identify(&self, token: &[u8]) -> Option<Holder> {
        let digest = api_key_digest(token);
        if let Some(bootstrap) = &self.bootstrap {
            if bool::from(digest.ct_eq(bootstrap)) {
                return Some(Holder {
                    name: BOOTSTRAP.into(),
                    role: Role::Admin,
                });
            }
        }
        self.read().get(&digest).cloned()
    }

    /// Creates a token; returns its record and the secret (shown once).
    pub async fn create(
        &self,
        name: &str,
        role: Role,
        created_by: &str,
    ) -> Result<(pb::AdminToken, String), CpError> {
        check_name(name)?;
        if name == BOOTSTRAP || name == "local" {
            return Err(CpError::BadRequest(format!(
                "name: {name:?} is reserved for the built-in callers"
            )));
        }
        let mut random = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut random);
        let secret = format!(
            "tgt_{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random)
        );
        let digest = api_key_digest(secret.as_bytes());
        let stored = StoredToken {
            name: name.to_string(),
            role,
            digest: hex::encode(digest),
            created_ms: now_ms(),
            created_by: created_by.to_string(),
        };
        let value = serde_json::to_vec(&stored)
            .map_err(|e| CpError::Internal(format!("cannot encode a token record: {e}")))?;
        let inserted =
            self.tree
                .compare_and_swap(name.as_bytes(), None as Option<&[u8]>, Some(value))?;
        if inserted.is_err() {
            return Err(CpError::BadRequest(format!(
                "name: a token named {name:?} already exists (revoke it first)"
            )));
        }
        self.tree.flush_async().await?;
        self.write().insert(
            digest,
            Holder {
                name: stored.name.clone(),
                role,
            },
        );
        Ok((stored.to_pb(), secret))
    }

    /// The tokens, by name.
    pub fn list(&self) -> Result<Vec<pb::AdminToken>, CpError> {
        let mut tokens = Vec::new();
        for item in self.tree.iter() {
            let (_, value) = item?;
            let stored: StoredToken = serde_json::from_slice(&value)
                .map_err(|e| CpError::Internal(format!("unreadable admin token record: {e}")))?;
            tokens.push(stored.to_pb());
        }
        Ok(tokens)
    }

    /// Revokes a named token: refused from the next call on.
    pub async fn revoke(&self, name: &str) -> Result<pb::AdminToken, CpError> {
        let Some(value) = self.tree.remove(name.as_bytes())? else {
            return Err(CpError::BadRequest(format!(
                "name: no admin token named {}",
                tollgate_shared::limits::show(name)
            )));
        };
        self.tree.flush_async().await?;
        let stored: StoredToken = serde_json::from_slice(&value)
            .map_err(|e| CpError::Internal(format!("unreadable admin token record: {e}")))?;
        let mut digest = [0u8; 32];
        if hex::decode_to_slice(&stored.digest, &mut digest).is_ok() {
            self.write().remove(&digest);
        }
        Ok(stored.to_pb())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<[u8; 32], Holder>> {
        self.by_digest.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<[u8; 32], Holder>> {
        self.by_digest.write().unwrap_or_else(|e| e.into_inner())
    }
}

pub(crate) fn check_name(name: &str) -> Result<(), CpError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if valid {
        Ok(())
    } else {
        Err(CpError::BadRequest(format!(
            "name: 1 to {MAX_NAME} characters of letters, digits, '-', '_' or '.' (got {})",
            tollgate_shared::limits::show(name)
        )))
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book(bootstrap: Option<&str>) -> (tempfile::TempDir, TokenBook) {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::open(dir.path()).expect("sled");
        let tree = db.open_tree(TOKENS_TREE).expect("tree");
        (dir, TokenBook::open(tree, bootstrap).expect("open"))
    }

    #[tokio::test]
    async fn tokens_identify_until_revoked_and_only_digests_are_stored() {
        let (_dir, book) = book(Some("boot-token"));
        assert_eq!(
            book.identify(b"boot-token").map(|h| (h.name, h.role)),
            Some((BOOTSTRAP.to_string(), Role::Admin))
        );
        let (record, secret) = book
            .create("ci", Role::Editor, "bootstrap")
            .await
            .expect("create");
        assert!(secret.starts_with("tgt_") && secret.len() > 40);
        assert_eq!(record.fingerprint.len(), 12);
        assert_eq!(
            book.identify(secret.as_bytes()).map(|h| h.role),
            Some(Role::Editor)
        );
        for item in book.tree.iter() {
            let (_, value) = item.expect("item");
            let text = String::from_utf8_lossy(&value);
            assert!(!text.contains(&secret), "the token itself is never stored");
        }
        assert!(
            book.create("ci", Role::Viewer, "x").await.is_err(),
            "names are unique"
        );
        assert!(book.create("bootstrap", Role::Viewer, "x").await.is_err());
        assert!(book.create("has space", Role::Viewer, "x").await.is_err());
        book.revoke("ci").await.expect("revoke");
        assert_eq!(book.identify(secret.as_bytes()), None);
        assert!(book.revoke("ci").await.is_err());
    }
}
