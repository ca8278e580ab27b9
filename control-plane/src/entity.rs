//! One entity of any kind, and the per-kind operations on a [`GatewayConfig`]
//! (find, insert, replace, remove, list) that the admin API, the diff and the
//! store share, so "which list holds a plugin, and what is its name" is
//! answered in one place.

use tollgate_shared::model::{Certificate, Consumer, GatewayConfig, GlobalPlugin, Route, Service};
use tollgate_shared::proto::admin as pb;
use tollgate_shared::proto::admin::entity::Entity as PbEntity;

use crate::error::CpError;
use crate::kind::EntityKind;

/// An entity of any kind, in the model's form.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(untagged)]
pub enum Entity {
    Service(Service),
    Route(Route),
    Consumer(Consumer),
    Plugin(GlobalPlugin),
    Certificate(Certificate),
}

impl Entity {
    pub fn kind(&self) -> EntityKind {
        match self {
            Entity::Service(_) => EntityKind::Service,
            Entity::Route(_) => EntityKind::Route,
            Entity::Consumer(_) => EntityKind::Consumer,
            Entity::Plugin(_) => EntityKind::Plugin,
            Entity::Certificate(_) => EntityKind::Certificate,
        }
    }

    /// The unique name within its kind (a global plugin's instance name).
    pub fn name(&self) -> &str {
        match self {
            Entity::Service(e) => &e.name,
            Entity::Route(e) => &e.name,
            Entity::Consumer(e) => &e.name,
            Entity::Plugin(e) => e.instance_name(),
            Entity::Certificate(e) => &e.name,
        }
    }

    /// Its `tags` (labels for `--select-tag`).
    pub fn tags(&self) -> &[String] {
        match self {
            Entity::Service(e) => &e.tags,
            Entity::Route(e) => &e.tags,
            Entity::Consumer(e) => &e.tags,
            Entity::Plugin(e) => &e.tags,
            Entity::Certificate(e) => &e.tags,
        }
    }

    /// The form every read returns: secrets replaced by fingerprints.
    pub fn redacted(mut self) -> Entity {
        match &mut self {
            Entity::Consumer(consumer) => consumer.redact(),
            Entity::Certificate(certificate) => certificate.redact(),
            _ => {}
        }
        self
    }

    /// Converts the `entity` of an admin request, rejecting an empty one.
    pub fn from_pb(entity: Option<pb::Entity>) -> Result<Entity, CpError> {
        let inner = entity
            .and_then(|e| e.entity)
            .ok_or_else(|| CpError::BadRequest("entity: required".into()))?;
        Ok(match &inner {
            PbEntity::Service(e) => Entity::Service(e.try_into()?),
            PbEntity::Route(e) => Entity::Route(e.try_into()?),
            PbEntity::Consumer(e) => Entity::Consumer(e.try_into()?),
            PbEntity::Plugin(e) => Entity::Plugin(e.try_into()?),
            PbEntity::Certificate(e) => Entity::Certificate(e.try_into()?),
        })
    }

    pub fn to_pb(&self) -> pb::Entity {
        let inner = match self {
            Entity::Service(e) => PbEntity::Service(e.into()),
            Entity::Route(e) => PbEntity::Route(e.into()),
            Entity::Consumer(e) => PbEntity::Consumer(e.into()),
            Entity::Plugin(e) => PbEntity::Plugin(e.into()),
            Entity::Certificate(e) => PbEntity::Certificate(e.into()),
        };
        pb::Entity {
            entity: Some(inner),
        }
    }

    /// The model entity as JSON, for the store.
    pub fn to_json(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::to_value(self)
    }

    /// Decodes a stored entity of `kind`.
    pub fn from_json(kind: EntityKind, value: serde_json::Value) -> serde_json::Result<Entity> {
        Ok(match kind {
            EntityKind::Service => Entity::Service(serde_json::from_value(value)?),
            EntityKind::Route => Entity::Route(serde_json::from_value(value)?),
            EntityKind::Consumer => Entity::Consumer(serde_json::from_value(value)?),
            EntityKind::Plugin => Entity::Plugin(serde_json::from_value(value)?),
            EntityKind::Certificate => Entity::Certificate(serde_json::from_value(value)?),
        })
    }
}

/// Every entity of `kind` in `config`, in the config's order.
pub fn list(config: &GatewayConfig, kind: EntityKind) -> Vec<Entity> {
    match kind {
        EntityKind::Service => config
            .services
            .iter()
            .cloned()
            .map(Entity::Service)
            .collect(),
        EntityKind::Route => config.routes.iter().cloned().map(Entity::Route).collect(),
        EntityKind::Consumer => config
            .consumers
            .iter()
            .cloned()
            .map(Entity::Consumer)
            .collect(),
        EntityKind::Plugin => config.plugins.iter().cloned().map(Entity::Plugin).collect(),
        EntityKind::Certificate => config
            .certificates
            .iter()
            .cloned()
            .map(Entity::Certificate)
            .collect(),
    }
}

/// The entity of `kind` named `name`, if any.
pub fn find(config: &GatewayConfig, kind: EntityKind, name: &str) -> Option<Entity> {
    match kind {
        EntityKind::Service => config
            .services
            .iter()
            .find(|e| e.name == name)
            .cloned()
            .map(Entity::Service),
        EntityKind::Route => config
            .routes
            .iter()
            .find(|e| e.name == name)
            .cloned()
            .map(Entity::Route),
        EntityKind::Consumer => config
            .consumers
            .iter()
            .find(|e| e.name == name)
            .cloned()
            .map(Entity::Consumer),
        EntityKind::Plugin => config
            .plugins
            .iter()
            .find(|e| e.instance_name() == name)
            .cloned()
            .map(Entity::Plugin),
        EntityKind::Certificate => config
            .certificates
            .iter()
            .find(|e| e.name == name)
            .cloned()
            .map(Entity::Certificate),
    }
}

/// Every entity of a config by kind and name, for looking many of them up
/// (a commit's writes) without a scan per lookup.
pub struct NameIndex<'a> {
    config: &'a GatewayConfig,
    by_kind: [std::collections::HashMap<&'a str, usize>; 5],
}

impl<'a> NameIndex<'a> {
    pub fn new(config: &'a GatewayConfig) -> NameIndex<'a> {
        fn index<'a, T>(
            items: &'a [T],
            name: impl Fn(&'a T) -> &'a str,
        ) -> std::collections::HashMap<&'a str, usize> {
            items
                .iter()
                .enumerate()
                .map(|(i, e)| (name(e), i))
                .collect()
        }
        // In `EntityKind::index` order.
        NameIndex {
            config,
            by_kind: [
                index(&config.services, |e| &e.name),
                index(&config.routes, |e| &e.name),
                index(&config.consumers, |e| &e.name),
                index(&config.plugins, |e| e.instance_name()),
                index(&config.certificates, |e| &e.name),
            ],
        }
    }

    /// The entity of `kind` named `name`, if any.
    pub fn get(&self, kind: EntityKind, name: &str) -> Option<Entity> {
        let i = *self.by_kind.get(kind.index())?.get(name)?;
        let config = self.config;
        Some(match kind {
            EntityKind::Service => Entity::Service(config.services.get(i)?.clone()),
            EntityKind::Route => Entity::Route(config.routes.get(i)?.clone()),
            EntityKind::Consumer => Entity::Consumer(config.consumers.get(i)?.clone()),
            EntityKind::Plugin => Entity::Plugin(config.plugins.get(i)?.clone()),
            EntityKind::Certificate => Entity::Certificate(config.certificates.get(i)?.clone()),
        })
    }
}

/// Adds `entity` (the caller checked that the name is free).
pub fn insert(config: &mut GatewayConfig, entity: Entity) {
    match entity {
        Entity::Service(e) => config.services.push(e),
        Entity::Route(e) => config.routes.push(e),
        Entity::Consumer(e) => config.consumers.push(e),
        Entity::Plugin(e) => config.plugins.push(e),
        Entity::Certificate(e) => config.certificates.push(e),
    }
}

fn replace_in<T>(items: &mut [T], item: T, same: impl Fn(&T) -> bool) -> bool {
    match items.iter_mut().find(|existing| same(existing)) {
        Some(slot) => {
            *slot = item;
            true
        }
        None => false,
    }
}

/// Replaces the entity of the same kind and name; `false` if there is none.
pub fn replace(config: &mut GatewayConfig, entity: Entity) -> bool {
    match entity {
        Entity::Service(e) => {
            let name = e.name.clone();
            replace_in(&mut config.services, e, |x| x.name == name)
        }
        Entity::Route(e) => {
            let name = e.name.clone();
            replace_in(&mut config.routes, e, |x| x.name == name)
        }
        Entity::Consumer(e) => {
            let name = e.name.clone();
            replace_in(&mut config.consumers, e, |x| x.name == name)
        }
        Entity::Plugin(e) => {
            let name = e.instance_name().to_string();
            replace_in(&mut config.plugins, e, |x| x.instance_name() == name)
        }
        Entity::Certificate(e) => {
            let name = e.name.clone();
            replace_in(&mut config.certificates, e, |x| x.name == name)
        }
    }
}

/// Removes the entity of `kind` named `name`; `false` if there is none.
pub fn remove(config: &mut GatewayConfig, kind: EntityKind, name: &str) -> bool {
    fn remove_from<T>(items: &mut Vec<T>, same: impl Fn(&T) -> bool) -> bool {
        let before = items.len();
        items.retain(|item| !same(item));
        items.len() != before
    }
    match kind {
        EntityKind::Service => remove_from(&mut config.services, |e| e.name == name),
        EntityKind::Route => remove_from(&mut config.routes, |e| e.name == name),
        EntityKind::Consumer => remove_from(&mut config.consumers, |e| e.name == name),
        EntityKind::Plugin => remove_from(&mut config.plugins, |e| e.instance_name() == name),
        EntityKind::Certificate => remove_from(&mut config.certificates, |e| e.name == name),
    }
}
