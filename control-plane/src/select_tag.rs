//! `apply --select-tag TAG`: a file that owns only the entities carrying a
//! tag, so several teams (or tools) can each apply their part of one gateway.
//!
//! The merge runs on the server, inside the write, against the stored state:
//! entities without the tag are kept exactly as stored (secrets included, so
//! nothing has to round-trip through fingerprints), stored entities with the
//! tag are replaced by the file's, and those the file omits are deleted. Done
//! under the store's write lock, a concurrent write by another team cannot be
//! undone by a stale read (as a client-side merge would risk). The rules
//! follow decK's `select_tags`, but stricter: an entity in the file without
//! the tag, or a file entity whose name is taken by an untagged stored one, is
//! an error naming it rather than a silent takeover.

use tollgate_shared::model::GatewayConfig;

use crate::entity::{self, Entity};
use crate::error::CpError;
use crate::kind::EntityKind;

/// Checks the tag itself (it is a name like any other).
pub fn check(tag: &str) -> Result<(), CpError> {
    tollgate_shared::validate::check_name(tag)
        .map_err(|message| CpError::BadRequest(format!("select_tag: {message}")))
}

/// The whole desired state when `file` covers only the entities tagged `tag`
/// and `stored` is the current state.
pub fn merge(
    stored: &GatewayConfig,
    file: GatewayConfig,
    tag: &str,
) -> Result<GatewayConfig, CpError> {
    let tagged = |entity: &Entity| entity.tags().iter().any(|t| t == tag);
    let mut merged = GatewayConfig::default();
    for kind in EntityKind::ALL {
        for entity in entity::list(&file, kind) {
            if !tagged(&entity) {
                return Err(CpError::BadRequest(format!(
                    "{kind} {:?}: does not carry tag {tag:?}; with select_tag every entity in \
                     the file must carry it",
                    entity.name()
                )));
            }
            if let Some(owned) = entity::find(stored, kind, entity.name()).filter(|e| !tagged(e)) {
                return Err(CpError::BadRequest(format!(
                    "{kind} {:?}: already exists without tag {tag:?} (owned outside this \
                     selection); rename it or tag the stored one first",
                    owned.name()
                )));
            }
        }
        for entity in entity::list(stored, kind) {
            if !tagged(&entity) {
                entity::insert(&mut merged, entity);
            }
        }
        for entity in entity::list(&file, kind) {
            entity::insert(&mut merged, entity);
        }
    }
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> GatewayConfig {
        GatewayConfig::from_yaml(yaml).expect("parses")
    }

    const STORED: &str = r#"
services:
  - { name: billing, tags: [payments], upstream: { targets: [{ address: "127.0.0.1:9001" }] } }
  - { name: orders, tags: [shop], upstream: { targets: [{ address: "127.0.0.1:9002" }] } }
routes:
  - { name: billing-api, service: billing, tags: [payments], paths: ["/billing"] }
  - { name: orders-api, service: orders, tags: [shop], paths: ["/orders"] }
  - { name: legacy, service: orders, paths: ["/legacy"] }
"#;

    #[test]
    fn only_the_tagged_entities_change() {
        let stored = config(STORED);
        let file = config(
            r#"
services:
  - { name: orders, tags: [shop], upstream: { targets: [{ address: "127.0.0.1:9003" }] } }
"#,
        );
        let merged = merge(&stored, file, "shop").expect("merges");
        let names: Vec<_> = merged.routes.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            ["billing-api", "legacy"],
            "orders-api was omitted: deleted"
        );
        assert_eq!(merged.services.len(), 2);
        let orders = merged
            .services
            .iter()
            .find(|s| s.name == "orders")
            .expect("kept");
        assert_eq!(orders.upstream.targets[0].address, "127.0.0.1:9003");
        assert_eq!(merged.services[0], stored.services[0], "billing untouched");
    }

    #[test]
    fn untagged_file_entities_and_takeovers_are_refused() {
        let stored = config(STORED);
        let untagged = config(
            r#"
routes:
  - { name: new-route, service: orders, paths: ["/new"] }
"#,
        );
        let err = merge(&stored, untagged, "shop").expect_err("untagged");
        assert!(
            err.to_string()
                .contains(r#"route "new-route": does not carry tag "shop""#),
            "{err}"
        );
        let takeover = config(
            r#"
routes:
  - { name: legacy, service: orders, tags: [shop], paths: ["/legacy"] }
"#,
        );
        let err = merge(&stored, takeover, "shop").expect_err("takeover");
        assert!(
            err.to_string()
                .contains(r#"route "legacy": already exists without tag"#),
            "{err}"
        );
        assert!(check("bad tag").is_err());
    }
}
