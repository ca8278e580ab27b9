//! The audit log: one append-only record per admin write, in the store.
//!
//! Each record says who (the token's name and role), when, from which
//! address, which call, what changed (entity, action, and the changed field
//! paths, computed on the redacted entities, so a secret shows only as a
//! changed path, never as a value) and the revision it produced. Token
//! creation and revocation are recorded too (name and role, never the token).
//!
//! Records live in their own sled tree keyed by a big-endian sequence
//! number, so iteration is chronological and nothing rewrites an old key.
//! A record is written right after the config commit it describes and
//! flushed before the call answers; a crash between the two loses the
//! record, never the commit. The log is not pruned (one small record per
//! write); `tollgatectl audit --since 24h` reads the tail.

use std::sync::Mutex;

use serde_json::Value;
use tollgate_shared::model::GatewayConfig;
use tollgate_shared::proto::admin as pb;

use crate::access::tokens::now_ms;
use crate::auth::Actor;
use crate::diff::{Action, Change};
use crate::entity;
use crate::error::CpError;

/// The sled tree holding the records.
pub const AUDIT_TREE: &str = "audit";

/// How many records a query returns by default, and at most.
const DEFAULT_LIMIT: usize = 1000;
const MAX_LIMIT: usize = 10_000;

/// At most this many field paths per changed entity (then "...").
const MAX_FIELDS: usize = 50;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Record {
    seq: u64,
    at_ms: i64,
    actor: String,
    role: crate::access::Role,
    peer: String,
    call: String,
    revision: u64,
    #[serde(default)]
    changes: Vec<RecordChange>,
    #[serde(default)]
    detail: String,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct RecordChange {
    kind: crate::kind::EntityKind,
    name: String,
    action: Action,
    fields: Vec<String>,
}

pub struct AuditLog {
    tree: sled::Tree,
    /// The next sequence number; appends are serialized by this lock (writes
    /// are rare and already serialized by the model's write lock).
    next: Mutex<u64>,
}

impl AuditLog {
    /// Opens the log. Blocking.
    pub fn open(tree: sled::Tree) -> Result<AuditLog, CpError> {
        let next = match tree.last()? {
            Some((key, _)) => key_seq(&key) + 1,
            None => 1,
        };
        Ok(AuditLog {
            tree,
            next: Mutex::new(next),
        })
    }

    /// Records a committed config write: the changes between `before` and
    /// `after` with their changed fields.
    pub async fn config_write(
        &self,
        actor: &Actor,
        call: &str,
        revision: u64,
        changes: &[Change],
        before: &GatewayConfig,
        after: &GatewayConfig,
    ) {
        let changes = changes
            .iter()
            .map(|change| RecordChange {
                kind: change.kind,
                name: change.name.clone(),
                action: change.action,
                fields: changed_fields(change, before, after),
            })
            .collect();
        self.append(actor, call, revision, changes, String::new())
            .await;
    }

    /// Records a call that is not a config write (a token created...).
    pub async fn event(&self, actor: &Actor, call: &str, detail: String) {
        self.append(actor, call, 0, Vec::new(), detail).await;
    }

    async fn append(
        &self,
        actor: &Actor,
        call: &str,
        revision: u64,
        changes: Vec<RecordChange>,
        detail: String,
    ) {
        let result = async {
            let value = {
                let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
                let record = Record {
                    seq: *next,
                    at_ms: now_ms(),
                    actor: actor.name.clone(),
                    role: actor.role,
                    peer: actor.peer_text(),
                    call: call.to_string(),
                    revision,
                    changes,
                    detail,
                };
                let value = serde_json::to_vec(&record)
                    .map_err(|e| CpError::Internal(format!("cannot encode audit record: {e}")))?;
                self.tree.insert(record.seq.to_be_bytes(), value)?;
                *next += 1;
                record.seq
            };
            self.tree.flush_async().await?;
            Ok::<u64, CpError>(value)
        }
        .await;
        if let Err(err) = result {
            // The write itself is committed; losing its record is logged loudly.
            tracing::error!(error = %err, call, actor = %actor.name, "cannot write the audit record");
        }
    }

    /// Records at or after `since_ms`, the newest `limit`, oldest first.
    pub fn list(&self, since_ms: i64, limit: u32) -> Result<Vec<pb::AuditEntry>, CpError> {
        let limit = match limit as usize {
            0 => DEFAULT_LIMIT,
            n => n.min(MAX_LIMIT),
        };
        let mut entries = Vec::new();
        for item in self.tree.iter().rev() {
            let (_, value) = item?;
            let record: Record = serde_json::from_slice(&value)
                .map_err(|e| CpError::Internal(format!("unreadable audit record: {e}")))?;
            if record.at_ms < since_ms || entries.len() >= limit {
                break;
            }
            entries.push(record.to_pb());
        }
        entries.reverse();
        Ok(entries)
    }
}

impl Record {
    fn to_pb(&self) -> pb::AuditEntry {
        pb::AuditEntry {
            seq: self.seq,
            at_ms: self.at_ms,
            actor: self.actor.clone(),
            role: self.role.to_pb() as i32,
            peer: self.peer.clone(),
            call: self.call.clone(),
            revision: self.revision,
            changes: self
                .changes
                .iter()
                .map(|c| pb::AuditChange {
                    kind: c.kind.to_pb() as i32,
                    name: c.name.clone(),
                    action: c.action.to_pb() as i32,
                    fields: c.fields.clone(),
                })
                .collect(),
            detail: self.detail.clone(),
        }
    }
}

fn key_seq(key: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    if key.len() == 8 {
        bytes.copy_from_slice(key);
    }
    u64::from_be_bytes(bytes)
}

/// The field paths that differ between an entity's two states (redacted).
fn changed_fields(change: &Change, before: &GatewayConfig, after: &GatewayConfig) -> Vec<String> {
    let json = |config: &GatewayConfig| {
        entity::find(config, change.kind, &change.name)
            .and_then(|e| e.redacted().to_json().ok())
            .unwrap_or(Value::Null)
    };
    let mut fields = Vec::new();
    if change.action == Action::Update {
        diff_values("", &json(before), &json(after), &mut fields);
    }
    if fields.len() > MAX_FIELDS {
        fields.truncate(MAX_FIELDS);
        fields.push("...".into());
    }
    fields
}

/// Appends to `out` the paths where `a` and `b` differ.
pub fn diff_values(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    if out.len() > MAX_FIELDS || a == b {
        return;
    }
    let join = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                let null = Value::Null;
                diff_values(
                    &join(key),
                    x.get(key).unwrap_or(&null),
                    y.get(key).unwrap_or(&null),
                    out,
                );
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                diff_values(&format!("{path}[{i}]"), p, q, out);
            }
        }
        _ => out.push(if path.is_empty() {
            "(whole entity)".into()
        } else {
            path.to_string()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn field_paths_name_what_changed() {
        let mut out = Vec::new();
        diff_values(
            "",
            &json!({"name": "r", "plugins": [{"name": "a", "config": {"limit": 3}}], "x": 1}),
            &json!({"name": "r", "plugins": [{"name": "a", "config": {"limit": 5}}], "y": 2}),
            &mut out,
        );
        assert_eq!(out, ["plugins[0].config.limit", "x", "y"]);
    }
}
