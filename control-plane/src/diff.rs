//! The difference between two desired states, per entity: what an `Apply`
//! (or its dry run) creates, updates and deletes, and what a commit writes.
//!
//! Entities are compared in their redacted form, the form reads and exports
//! show: a secret given again by fingerprint is "no change", a new secret
//! (new fingerprint) is an update. The result is sorted by kind, then name,
//! so dry runs are deterministic.
//!
//! Cost: one hash map of names per kind and one pass over each side, so an
//! Apply of 50,000 routes diffs in milliseconds (the first version looked each
//! entity up with a linear scan: quadratic, 7.8 s at 50,000 routes).

use std::collections::HashMap;

use tollgate_shared::model::{Consumer, GatewayConfig};
use tollgate_shared::proto::admin as pb;

use crate::kind::EntityKind;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
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
    diff_kind(
        EntityKind::Service,
        &old.services,
        &new.services,
        |e| &e.name,
        same,
        &mut changes,
    );
    diff_kind(
        EntityKind::Route,
        &old.routes,
        &new.routes,
        |e| &e.name,
        same,
        &mut changes,
    );
    diff_kind(
        EntityKind::Consumer,
        &old.consumers,
        &new.consumers,
        |e| &e.name,
        |a: &Consumer, b: &Consumer| a == b || redacted(a) == redacted(b),
        &mut changes,
    );
    diff_kind(
        EntityKind::Plugin,
        &old.plugins,
        &new.plugins,
        |e| e.instance_name(),
        same,
        &mut changes,
    );
    diff_kind(
        EntityKind::Certificate,
        &old.certificates,
        &new.certificates,
        |e| &e.name,
        |a, b| {
            a == b || {
                let (mut a, mut b) = (a.clone(), b.clone());
                a.redact();
                b.redact();
                a == b
            }
        },
        &mut changes,
    );
    changes.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
    changes
}

fn same<T: PartialEq>(a: &T, b: &T) -> bool {
    a == b
}

fn redacted(consumer: &Consumer) -> Consumer {
    let mut copy = consumer.clone();
    copy.redact();
    copy
}

/// The changes of one kind; `unchanged` compares an entity in its two states
/// (equal, or equal once redacted).
fn diff_kind<'a, T: 'a>(
    kind: EntityKind,
    old: &'a [T],
    new: &'a [T],
    name: impl Fn(&'a T) -> &'a str,
    unchanged: impl Fn(&T, &T) -> bool,
    changes: &mut Vec<Change>,
) {
    let before: HashMap<&str, &T> = old.iter().map(|e| (name(e), e)).collect();
    let mut seen: HashMap<&str, ()> = HashMap::with_capacity(new.len());
    for entity in new {
        let entity_name = name(entity);
        seen.insert(entity_name, ());
        match before.get(entity_name) {
            None => changes.push(change(kind, entity_name, Action::Create)),
            Some(previous) if !unchanged(previous, entity) => {
                changes.push(change(kind, entity_name, Action::Update))
            }
            Some(_) => {}
        }
    }
    for entity in old {
        let entity_name = name(entity);
        if !seen.contains_key(entity_name) {
            changes.push(change(kind, entity_name, Action::Delete));
        }
    }
}

fn change(kind: EntityKind, name: &str, action: Action) -> Change {
    Change {
        kind,
        name: name.to_string(),
        action,
    }
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
