//! The five kinds of entity the control plane stores, and the names each kind
//! goes by: in sled (tree names), in the admin API (`Kind`), in messages
//! (`route "orders-api"`) and on the `tollgatectl` command line (`routes`).

use std::fmt;

use tollgate_shared::proto::admin as pb;

/// One kind of entity. The order is the order of diffs and exports.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum EntityKind {
    Service,
    Route,
    Consumer,
    Plugin,
    Certificate,
}

impl EntityKind {
    pub const ALL: [EntityKind; 5] = [
        EntityKind::Service,
        EntityKind::Route,
        EntityKind::Consumer,
        EntityKind::Plugin,
        EntityKind::Certificate,
    ];

    /// Singular lower-case name, as in error messages and diffs.
    pub fn label(self) -> &'static str {
        match self {
            EntityKind::Service => "service",
            EntityKind::Route => "route",
            EntityKind::Consumer => "consumer",
            EntityKind::Plugin => "plugin",
            EntityKind::Certificate => "certificate",
        }
    }

    /// The sled tree holding this kind (plural, as in the YAML file).
    pub fn tree_name(self) -> &'static str {
        match self {
            EntityKind::Service => "services",
            EntityKind::Route => "routes",
            EntityKind::Consumer => "consumers",
            EntityKind::Plugin => "plugins",
            EntityKind::Certificate => "certificates",
        }
    }

    /// Position in [`EntityKind::ALL`].
    pub fn index(self) -> usize {
        match self {
            EntityKind::Service => 0,
            EntityKind::Route => 1,
            EntityKind::Consumer => 2,
            EntityKind::Plugin => 3,
            EntityKind::Certificate => 4,
        }
    }

    pub fn to_pb(self) -> pb::Kind {
        match self {
            EntityKind::Service => pb::Kind::Service,
            EntityKind::Route => pb::Kind::Route,
            EntityKind::Consumer => pb::Kind::Consumer,
            EntityKind::Plugin => pb::Kind::Plugin,
            EntityKind::Certificate => pb::Kind::Certificate,
        }
    }

    /// The kind named by a raw `Kind` field of a request; `None` for
    /// `KIND_UNSPECIFIED` or a number this build does not know.
    pub fn from_pb(raw: i32) -> Option<EntityKind> {
        match pb::Kind::try_from(raw).ok()? {
            pb::Kind::Unspecified => None,
            pb::Kind::Service => Some(EntityKind::Service),
            pb::Kind::Route => Some(EntityKind::Route),
            pb::Kind::Consumer => Some(EntityKind::Consumer),
            pb::Kind::Plugin => Some(EntityKind::Plugin),
            pb::Kind::Certificate => Some(EntityKind::Certificate),
        }
    }

    /// Parses a command-line kind: singular or plural, any case.
    pub fn parse(text: &str) -> Option<EntityKind> {
        let lower = text.to_ascii_lowercase();
        EntityKind::ALL
            .into_iter()
            .find(|kind| lower == kind.label() || lower == kind.tree_name())
    }
}

impl fmt::Display for EntityKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_singular_and_plural() {
        assert_eq!(EntityKind::parse("routes"), Some(EntityKind::Route));
        assert_eq!(EntityKind::parse("Route"), Some(EntityKind::Route));
        assert_eq!(
            EntityKind::parse("certificate"),
            Some(EntityKind::Certificate)
        );
        assert_eq!(EntityKind::parse("upstreams"), None);
        for kind in EntityKind::ALL {
            assert_eq!(EntityKind::from_pb(kind.to_pb() as i32), Some(kind));
            assert_eq!(EntityKind::ALL[kind.index()], kind);
        }
        assert_eq!(EntityKind::from_pb(0), None);
        assert_eq!(EntityKind::from_pb(99), None);
    }
}
