//! Revision history: who wrote each committed revision, when, and what it
//! changed, for `tollgatectl history`, `diff --from/--to`, `export --revision`
//! and `rollback --to`.
//!
//! One record per revision in the `history` tree, keyed by the big-endian
//! revision, written in the same sled transaction as the revision itself (a
//! revision never exists without its record). A record holds each changed
//! entity's kind, name, action and its value *before* the change, in the
//! model's serde form, exactly as the entity trees hold it: JWT secrets and
//! private keys in clear (data planes need them; the data directory is 0700),
//! API keys only as their SHA-256. The state at revision `R` is the current
//! state with the records of `current..R+1` undone, newest first; nothing is
//! stored twice, so a record costs what its change costs.
//!
//! Only the newest `keep` records are kept (`--history-revisions`, default
//! 100): each commit removes the record that falls out of the window, so a
//! rollback reaches back at most `keep` revisions. Revisions committed before
//! this build have no record and cannot be reconstructed: that is said, never
//! guessed.

use serde::{Deserialize, Serialize};
use tollgate_shared::model::GatewayConfig;

use crate::diff::{Action, Change};
use crate::entity::{self, Entity, NameIndex};
use crate::kind::EntityKind;

pub const HISTORY_TREE: &str = "history";
/// The record format this build writes and reads.
const RECORD_FORMAT: u32 = 1;
/// Default number of revisions kept.
pub const DEFAULT_KEEP: usize = 100;

/// One committed revision.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub format: u32,
    pub revision: u64,
    /// Unix milliseconds.
    pub at_ms: i64,
    /// The admin token's name, or "local".
    pub actor: String,
    /// Why, when the write says (e.g. "rollback to revision 7").
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
    pub changes: Vec<RecordedChange>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RecordedChange {
    pub kind: EntityKind,
    pub name: String,
    pub action: Action,
    /// The entity before the change (absent for a create).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<serde_json::Value>,
}

impl Record {
    /// The record of `changes` made to `before`.
    pub fn new(
        revision: u64,
        actor: &str,
        note: &str,
        before: &GatewayConfig,
        changes: &[Change],
    ) -> Result<Record, serde_json::Error> {
        let index = NameIndex::new(before);
        let changes = changes
            .iter()
            .map(|change| {
                let before = match change.action {
                    Action::Create => None,
                    Action::Update | Action::Delete => index
                        .get(change.kind, &change.name)
                        .map(|e| e.to_json())
                        .transpose()?,
                };
                Ok(RecordedChange {
                    kind: change.kind,
                    name: change.name.clone(),
                    action: change.action,
                    before,
                })
            })
            .collect::<Result<Vec<_>, serde_json::Error>>()?;
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        Ok(Record {
            format: RECORD_FORMAT,
            revision,
            at_ms,
            actor: actor.to_string(),
            note: note.to_string(),
            changes,
        })
    }

    pub fn encode(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Record, String> {
        let record: Record =
            serde_json::from_slice(bytes).map_err(|e| format!("unreadable history record: {e}"))?;
        if record.format > RECORD_FORMAT {
            return Err(format!(
                "history record of revision {} is in format {}, newer than this build reads",
                record.revision, record.format
            ));
        }
        Ok(record)
    }

    /// Undoes this record's changes on `config` (which is the state at this
    /// record's revision).
    pub fn undo(&self, config: &mut GatewayConfig) -> Result<(), String> {
        for change in &self.changes {
            entity::remove(config, change.kind, &change.name);
            if let Some(before) = &change.before {
                let entity = Entity::from_json(change.kind, before.clone()).map_err(|e| {
                    format!(
                        "revision {}: {} {:?} is unreadable: {e}",
                        self.revision, change.kind, change.name
                    )
                })?;
                entity::insert(config, entity);
            }
        }
        Ok(())
    }
}

/// The key of `revision`'s record.
pub fn key(revision: u64) -> [u8; 8] {
    revision.to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undo_restores_the_previous_state() {
        let before = GatewayConfig::from_yaml(
            r#"
services:
  - name: orders
    upstream: { targets: [{ address: "127.0.0.1:9001" }] }
routes:
  - { name: orders-api, service: orders, paths: ["/v1/orders"] }
"#,
        )
        .expect("parses");
        let after = GatewayConfig::from_yaml(
            r#"
services:
  - name: orders
    upstream: { targets: [{ address: "127.0.0.1:9002" }] }
  - name: billing
    upstream: { targets: [{ address: "127.0.0.1:9003" }] }
"#,
        )
        .expect("parses");
        let changes = crate::diff::diff(&before, &after);
        let record = Record::new(2, "local", "", &before, &changes).expect("record");
        let decoded = Record::decode(&record.encode().expect("encodes")).expect("decodes");
        assert_eq!(decoded, record);
        let mut state = after.clone();
        decoded.undo(&mut state).expect("undo");
        state.sort();
        let mut expected = before;
        expected.sort();
        assert_eq!(state, expected);
    }
}
