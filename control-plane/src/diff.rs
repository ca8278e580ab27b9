//! The difference between two desired states, per entity: what an `Apply`
//! (or its dry run) creates, updates and deletes, and what a commit writes.
//!
//! Entities are compared in their redacted form, the form reads and exports
//! show: a secret given again by fingerprint is "no change", a new secret
//! (new fingerprint) is an update. The result is sorted by kind, then name,
//! so dry runs are deterministic.

use std::collections::BTreeMap;

use tollgate_shared::model::GatewayConfig;
use tollgate_shared::proto::admin as pb;

use crate::entity::{self, Entity};
use crate::kind::EntityKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    Create,
    Update,
    Delete,
}

impl Action {
    /// The one-character marker `tollgatectl` prints.
    pub fn marker(self) -> char {
        match self {
            Action::Create => '+',
            Action::Update => '~',
            Action::Delete => '-',
        }
    }

    pub fn to_pb(self) -> pb::ChangeAction {
        match self {
            Action::Create => pb::ChangeAction::Create,
            Action::Update => pb::ChangeAction::Update,
            Action::Delete => pb::ChangeAction::Delete,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub kind: EntityKind,
    pub name: String,
    pub action: Action,
}

impl Change {
    pub fn to_pb(&self) -> pb::Change {
        pb::Change {
            kind: self.kind.to_pb() as i32,
            name: self.name.clone(),
            action: self.action.to_pb() as i32,
        }
    }
}

/// What changes from `old` to `new`, sorted by kind then name.
pub fn diff(old: &GatewayConfig, new: &GatewayConfig) -> Vec<Change> {
    let mut changes = Vec::new();
    for kind in EntityKind::ALL {
        let before = by_name(old, kind);
        let after = by_name(new, kind);
        for (name, entity) in &after {
            match before.get(name) {
                None => changes.push(change(kind, name, Action::Create)),
                Some(previous)
                    if previous != entity
                        && previous.clone().redacted() != entity.clone().redacted() =>
                {
                    changes.push(change(kind, name, Action::Update))
                }
                Some(_) => {}
            }
        }
        for name in before.keys() {
            if !after.contains_key(name) {
                changes.push(change(kind, name, Action::Delete));
            }
        }
    }
    changes.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
    changes
}

fn change(kind: EntityKind, name: &str, action: Action) -> Change {
    Change {
        kind,
        name: name.to_string(),
        action,
    }
}

fn by_name(config: &GatewayConfig, kind: EntityKind) -> BTreeMap<String, Entity> {
    entity::list(config, kind)
        .into_iter()
        .map(|e| (e.name().to_string(), e))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> GatewayConfig {
        GatewayConfig::from_yaml(yaml).expect("parses")
    }

    #[test]
    fn creates_updates_deletes_sorted() {
        let old = config(
            r#"
services:
  - { name: orders, upstream: { targets: [{ address: "127.0.0.1:1" }] } }
  - { name: users, upstream: { targets: [{ address: "127.0.0.1:2" }] } }
consumers:
  - { name: bob }
"#,
        );
        let new = config(
            r#"
services:
  - { name: users, upstream: { targets: [{ address: "127.0.0.1:2" }] } }
  - { name: orders, upstream: { targets: [{ address: "127.0.0.1:3" }] } }
routes:
  - { name: z-route, service: orders }
  - { name: a-route, service: orders }
"#,
        );
        let lines: Vec<String> = diff(&old, &new)
            .iter()
            .map(|c| format!("{} {} {}", c.action.marker(), c.kind, c.name))
            .collect();
        assert_eq!(
            lines,
            [
                "~ service orders",
                "+ route a-route",
                "+ route z-route",
                "- consumer bob"
            ]
        );
        assert!(diff(&new, &new).is_empty());
    }

    #[test]
    fn secrets_compare_by_fingerprint() {
        let stored = config(
            r#"
consumers:
  - name: svc
    credentials: [{ jwt: { key: iss, algorithm: HS256, secret: "0123456789abcdef-one" } }]
"#,
        );
        assert!(diff(&stored, &stored.redacted()).is_empty());
        let mut changed = stored.clone();
        if let Some(jwt) = changed.consumers[0].credentials[0].jwt.as_mut() {
            jwt.secret = Some("0123456789abcdef-two".into());
        }
        assert_eq!(diff(&stored, &changed).len(), 1);
    }
}
