//! Join tokens and revoked data planes, kept in the store's side trees.
//!
//! A token is stored under the hex SHA-256 of its secret, with its expiry and
//! whether it was used; the secret itself is never stored, logged or shown
//! again after `CreateJoinToken`. Using a token is one `compare_and_swap`
//! from the record as read (unused) to the record marked used: two data
//! planes racing with the same token cannot both win. Used and expired
//! records are kept (for `ListJoinTokens`) until [`MAX_TOKENS`] forces the
//! oldest out.
//!
//! Revoked node ids are kept forever in their own tree and mirrored in
//! memory; a `watch` counter wakes the open stream sessions, which close the
//! stream of a node that is now revoked.

use std::collections::BTreeSet;
use std::sync::RwLock;

use rand::RngCore;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tollgate_shared::cluster_pki::{self, JoinToken};
use tollgate_shared::proto::admin as pb;

use crate::access::tokens::now_ms;
use crate::error::CpError;

pub const JOIN_TOKENS_TREE: &str = "join_tokens";
pub const REVOKED_TREE: &str = "revoked_data_planes";
/// Tokens kept (used and expired ones included); the oldest go first.
const MAX_TOKENS: usize = 10_000;
/// Longest token lifetime.
pub const MAX_TTL_SECONDS: u64 = 7 * 24 * 3600;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredJoinToken {
    created_ms: i64,
    expires_ms: i64,
    created_by: String,
    #[serde(default)]
    used_by_node: Option<String>,
}

impl StoredJoinToken {
    fn to_pb(&self, key: &[u8]) -> pb::JoinToken {
        pb::JoinToken {
            id: token_id(key),
            created_ms: self.created_ms,
            expires_ms: self.expires_ms,
            used: self.used_by_node.is_some(),
            used_by_node: self.used_by_node.clone().unwrap_or_default(),
            created_by: self.created_by.clone(),
        }
    }
}

/// The first 12 hex digits of the digest: a token's name in lists and logs.
fn token_id(key: &[u8]) -> String {
    String::from_utf8_lossy(key).chars().take(12).collect()
}

/// Why a join was refused; the label of `tollgate_cp_stream_refusals_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Malformed,
    WrongCluster,
    Unknown,
    Used,
    Expired,
    Revoked,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Malformed => "join_token_malformed",
            Refusal::WrongCluster => "join_token_other_cluster",
            Refusal::Unknown => "join_token_unknown",
            Refusal::Used => "join_token_used",
            Refusal::Expired => "join_token_expired",
            Refusal::Revoked => "revoked",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Refusal::Malformed => "join token: malformed",
            Refusal::WrongCluster => "join token: made for another cluster CA",
            Refusal::Unknown => "join token: unknown (never issued, or dropped)",
            Refusal::Used => "join token: already used (a token joins one data plane)",
            Refusal::Expired => "join token: expired",
            Refusal::Revoked => "this node id was revoked; join under another --node-id",
        }
    }
}

/// The join tokens and the revoked node ids.
pub struct JoinBook {
    tokens: sled::Tree,
    revoked_tree: sled::Tree,
    revoked: RwLock<BTreeSet<String>>,
    changed: watch::Sender<u64>,
}

impl JoinBook {
    /// Loads the revoked ids. Blocking (reads sled).
    pub fn open(tokens: sled::Tree, revoked_tree: sled::Tree) -> Result<JoinBook, CpError> {
        let mut revoked = BTreeSet::new();
        for item in revoked_tree.iter() {
            let (key, _) = item?;
            revoked.insert(String::from_utf8_lossy(&key).into_owned());
        }
        Ok(JoinBook {
            tokens,
            revoked_tree,
            revoked: RwLock::new(revoked),
            changed: watch::channel(0).0,
        })
    }

    /// Creates a token valid for `ttl_seconds`; returns it (shown once) and
    /// its record.
    pub async fn create(
        &self,
        ttl_seconds: u64,
        ca_pin: &[u8; 32],
        created_by: &str,
    ) -> Result<(String, pb::JoinToken), CpError> {
        if ttl_seconds == 0 || ttl_seconds > MAX_TTL_SECONDS {
            return Err(CpError::BadRequest(format!(
                "ttl_seconds: must be 1 to {MAX_TTL_SECONDS} (7 days)"
            )));
        }
        let mut random = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut random);
        let secret =
            base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, random);
        let key = hex::encode(cluster_pki::secret_digest(&secret));
        let now = now_ms();
        let stored = StoredJoinToken {
            created_ms: now,
            expires_ms: now.saturating_add(i64::try_from(ttl_seconds).unwrap_or(i64::MAX) * 1000),
            created_by: created_by.to_string(),
            used_by_node: None,
        };
        self.tokens.insert(key.as_bytes(), encode(&stored)?)?;
        self.trim()?;
        self.tokens.flush_async().await?;
        Ok((
            JoinToken::format(&secret, ca_pin),
            stored.to_pb(key.as_bytes()),
        ))
    }

    /// Checks `token` without using it: the cheap refusals before any work.
    pub fn check(&self, token: &str, ca_pin: &[u8; 32], node_id: &str) -> Result<String, Refusal> {
        let token = JoinToken::parse(token).map_err(|_| Refusal::Malformed)?;
        if &token.ca_pin != ca_pin {
            return Err(Refusal::WrongCluster);
        }
        if self.is_revoked(node_id) {
            return Err(Refusal::Revoked);
        }
        Ok(hex::encode(token.digest()))
    }

    /// Uses the token stored under `key` for `node_id`, atomically: at most
    /// one caller ever succeeds.
    pub async fn consume(&self, key: &str, node_id: &str) -> Result<pb::JoinToken, Refusal> {
        let Ok(Some(current)) = self.tokens.get(key.as_bytes()) else {
            return Err(Refusal::Unknown);
        };
        let Ok(stored) = serde_json::from_slice::<StoredJoinToken>(&current) else {
            return Err(Refusal::Unknown);
        };
        if stored.used_by_node.is_some() {
            return Err(Refusal::Used);
        }
        if stored.expires_ms <= now_ms() {
            return Err(Refusal::Expired);
        }
        let used = StoredJoinToken {
            used_by_node: Some(node_id.to_string()),
            ..stored
        };
        let Ok(value) = encode(&used) else {
            return Err(Refusal::Unknown);
        };
        match self
            .tokens
            .compare_and_swap(key.as_bytes(), Some(&current), Some(value))
        {
            Ok(Ok(())) => {
                let _ = self.tokens.flush_async().await;
                Ok(used.to_pb(key.as_bytes()))
            }
            // Someone else used it between the read and the swap.
            Ok(Err(_)) => Err(Refusal::Used),
            Err(_) => Err(Refusal::Unknown),
        }
    }

    /// Every token, newest first, and the revoked node ids.
    pub fn list(&self) -> Result<pb::ListJoinTokensResponse, CpError> {
        let mut tokens = Vec::new();
        for item in self.tokens.iter() {
            let (key, value) = item?;
            let stored: StoredJoinToken = serde_json::from_slice(&value)
                .map_err(|e| CpError::Internal(format!("unreadable join token record: {e}")))?;
            tokens.push(stored.to_pb(&key));
        }
        tokens.sort_by_key(|t| std::cmp::Reverse(t.created_ms));
        Ok(pb::ListJoinTokensResponse {
            tokens,
            revoked_nodes: self.read().iter().cloned().collect(),
        })
    }

    /// Revokes `node_id` for good and wakes the stream sessions.
    pub async fn revoke(&self, node_id: &str, by: &str) -> Result<(), CpError> {
        if !cluster_pki::valid_node_id(node_id) {
            return Err(CpError::BadRequest(
                "node_id: must be 1 to 256 printable characters".into(),
            ));
        }
        let record = serde_json::json!({ "revoked_ms": now_ms(), "revoked_by": by });
        self.revoked_tree
            .insert(node_id.as_bytes(), record.to_string().into_bytes())?;
        self.revoked_tree.flush_async().await?;
        self.revoked
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(node_id.to_string());
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
        Ok(())
    }

    pub fn is_revoked(&self, node_id: &str) -> bool {
        self.read().contains(node_id)
    }

    /// Wakes on every revocation.
    pub fn revocations(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeSet<String>> {
        self.revoked.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops the oldest records beyond [`MAX_TOKENS`].
    fn trim(&self) -> Result<(), CpError> {
        if self.tokens.len() <= MAX_TOKENS {
            return Ok(());
        }
        let mut all = Vec::new();
        for item in self.tokens.iter() {
            let (key, value) = item?;
            let created = serde_json::from_slice::<StoredJoinToken>(&value)
                .map(|s| s.created_ms)
                .unwrap_or(0);
            all.push((created, key));
        }
        all.sort();
        for (_, key) in all.iter().take(all.len().saturating_sub(MAX_TOKENS)) {
            self.tokens.remove(key)?;
        }
        Ok(())
    }
}

fn encode(stored: &StoredJoinToken) -> Result<Vec<u8>, CpError> {
    serde_json::to_vec(stored)
        .map_err(|e| CpError::Internal(format!("cannot encode a join token record: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book() -> JoinBook {
        let db = sled::Config::new().temporary(true).open().expect("sled");
        JoinBook::open(
            db.open_tree(JOIN_TOKENS_TREE).expect("tree"),
            db.open_tree(REVOKED_TREE).expect("tree"),
        )
        .expect("opens")
    }

    #[tokio::test]
    async fn a_token_joins_once_and_revoked_nodes_stay_out() {
        let book = book();
        let pin = [7u8; 32];
        let (token, info) = book.create(60, &pin, "admin").await.expect("creates");
        assert!(!info.used);
        assert!(!format!("{:?}", book.list().expect("lists")).contains(&token));
        assert_eq!(
            book.check(&token, &[8u8; 32], "dp"),
            Err(Refusal::WrongCluster)
        );
        assert_eq!(
            book.check("tgjoin.x.y", &pin, "dp"),
            Err(Refusal::Malformed)
        );
        let key = book.check(&token, &pin, "dp").expect("checks");
        assert!(book.consume(&key, "dp").await.is_ok());
        assert_eq!(book.consume(&key, "dp").await, Err(Refusal::Used));
        assert!(book.list().expect("lists").tokens[0].used);
        assert!(book.create(0, &pin, "admin").await.is_err());

        book.revoke("dp", "admin").await.expect("revokes");
        let (token, _) = book.create(60, &pin, "admin").await.expect("creates");
        assert_eq!(book.check(&token, &pin, "dp"), Err(Refusal::Revoked));
        assert!(book.check(&token, &pin, "dp-2").is_ok());
        assert_eq!(
            book.list().expect("lists").revoked_nodes,
            vec!["dp".to_string()]
        );
    }
}
