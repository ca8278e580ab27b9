//! Config deltas: what changed between two versions, entity by entity, and
//! the checksum that proves a data plane applied it to the right state.
//!
//! A version's state is a set of entities keyed by kind and name, each in its
//! model JSON (the same JSON [`crate::convert`] puts on the wire). Its
//! checksum is the sum, mod 2^128, of every entity's hash (the first 16 bytes
//! of SHA-256 over `kind 0 name 0 json`): a sum, so a delta updates it in
//! time proportional to the delta, not to the config, and the order of the
//! entities does not matter.
//!
//! The control plane computes a delta with [`EntityTable::diff`] and the
//! data plane applies it with [`apply`]; both sort the lists by name, so a
//! data plane fed deltas holds exactly the config of one fed full snapshots.

use std::collections::BTreeMap;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::model::{Certificate, Consumer, GatewayConfig, GlobalPlugin, Route, Service};
use crate::proto::config as pb_config;
use crate::proto::stream as pb;

/// The kinds of entity a config holds (the lists of [`GatewayConfig`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EntityKind {
    Service,
    Route,
    Consumer,
    Plugin,
    Certificate,
}

impl EntityKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntityKind::Service => "service",
            EntityKind::Route => "route",
            EntityKind::Consumer => "consumer",
            EntityKind::Plugin => "plugin",
            EntityKind::Certificate => "certificate",
        }
    }

    pub fn parse(kind: &str) -> Option<EntityKind> {
        Some(match kind {
            "service" => EntityKind::Service,
            "route" => EntityKind::Route,
            "consumer" => EntityKind::Consumer,
            "plugin" => EntityKind::Plugin,
            "certificate" => EntityKind::Certificate,
            _ => return None,
        })
    }
}

/// Why a delta was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    /// The delta itself is bad (an entity that does not parse): NACK it.
    #[error("{0}")]
    Invalid(String),
    /// The state it leads to is not the control plane's (another base, or
    /// another checksum): ask for a full snapshot.
    #[error("{0}")]
    Drift(String),
}

/// An entity's hash: the first 16 bytes of SHA-256(kind 0 name 0 json).
pub fn entity_hash(kind: EntityKind, name: &str, json: &str) -> u128 {
    let mut hasher = Sha256::new();
    hasher.update(kind.as_str().as_bytes());
    hasher.update([0]);
    hasher.update(name.as_bytes());
    hasher.update([0]);
    hasher.update(json.as_bytes());
    let digest = hasher.finalize();
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    u128::from_be_bytes(first)
}

/// The checksum as it travels (16 bytes, big-endian).
pub fn checksum_bytes(checksum: u128) -> Vec<u8> {
    checksum.to_be_bytes().to_vec()
}

fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// Every entity of `config` with its kind, name and JSON, calling `each`.
fn for_each_entity(config: &GatewayConfig, mut each: impl FnMut(EntityKind, &str, String)) {
    for s in &config.services {
        each(EntityKind::Service, &s.name, to_json(s));
    }
    for r in &config.routes {
        each(EntityKind::Route, &r.name, to_json(r));
    }
    for c in &config.consumers {
        each(EntityKind::Consumer, &c.name, to_json(c));
    }
    for p in &config.plugins {
        each(EntityKind::Plugin, p.instance_name(), to_json(p));
    }
    for c in &config.certificates {
        each(EntityKind::Certificate, &c.name, to_json(c));
    }
}

/// The JSON of one entity of `config` (lists sorted by name), if present.
pub fn entity_json(config: &GatewayConfig, kind: EntityKind, name: &str) -> Option<String> {
    fn find<'a, T>(items: &'a [T], name: &str, key: impl Fn(&T) -> &str) -> Option<&'a T> {
        items
            .binary_search_by(|item| key(item).cmp(name))
            .ok()
            .map(|i| &items[i])
            .or_else(|| items.iter().find(|item| key(item) == name))
    }
    match kind {
        EntityKind::Service => find(&config.services, name, |s| &s.name).map(to_json),
        EntityKind::Route => find(&config.routes, name, |r| &r.name).map(to_json),
        EntityKind::Consumer => find(&config.consumers, name, |c| &c.name).map(to_json),
        EntityKind::Plugin => find(&config.plugins, name, GlobalPlugin::instance_name).map(to_json),
        EntityKind::Certificate => find(&config.certificates, name, |c| &c.name).map(to_json),
    }
}

/// A version's state as entity hashes, with their checksum.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntityTable {
    hashes: BTreeMap<(EntityKind, String), u128>,
    checksum: u128,
}

/// What [`EntityTable::diff`] found: keys to upsert and keys to remove.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub upserts: Vec<(EntityKind, String)>,
    pub removals: Vec<(EntityKind, String)>,
}

impl EntityTable {
    /// Hashes every entity of `config` (serializes each once).
    pub fn of(config: &GatewayConfig) -> EntityTable {
        let mut table = EntityTable::default();
        for_each_entity(config, |kind, name, json| {
            table.put(kind, name.to_string(), entity_hash(kind, name, &json));
        });
        table
    }

    /// The table of `config` from the table of `previous` (an earlier
    /// version's config): only the entities that differ (by value) are
    /// serialized and hashed, so a one-route write costs one hash, not one
    /// per entity. Lists sorted by name (as the control plane publishes
    /// them); otherwise it hashes everything, like [`EntityTable::of`].
    pub fn of_from(
        config: &GatewayConfig,
        previous: &GatewayConfig,
        previous_table: &EntityTable,
    ) -> EntityTable {
        let mut table = previous_table.clone();
        let sorted = follow(
            &mut table,
            EntityKind::Service,
            &config.services,
            &previous.services,
            |s| &s.name,
        ) && follow(
            &mut table,
            EntityKind::Route,
            &config.routes,
            &previous.routes,
            |r| &r.name,
        ) && follow(
            &mut table,
            EntityKind::Consumer,
            &config.consumers,
            &previous.consumers,
            |c| &c.name,
        ) && follow(
            &mut table,
            EntityKind::Plugin,
            &config.plugins,
            &previous.plugins,
            GlobalPlugin::instance_name,
        ) && follow(
            &mut table,
            EntityKind::Certificate,
            &config.certificates,
            &previous.certificates,
            |c| &c.name,
        );
        if sorted {
            table
        } else {
            EntityTable::of(config)
        }
    }

    fn put(&mut self, kind: EntityKind, name: String, hash: u128) {
        if let Some(old) = self.hashes.insert((kind, name), hash) {
            self.checksum = self.checksum.wrapping_sub(old);
        }
        self.checksum = self.checksum.wrapping_add(hash);
    }

    fn remove(&mut self, kind: EntityKind, name: &str) {
        if let Some(old) = self.hashes.remove(&(kind, name.to_string())) {
            self.checksum = self.checksum.wrapping_sub(old);
        }
    }

    pub fn checksum(&self) -> u128 {
        self.checksum
    }

    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// What turns `self` into `target`: one merge over both sorted tables.
    pub fn diff(&self, target: &EntityTable) -> Changes {
        let mut changes = Changes::default();
        let mut old = self.hashes.iter().peekable();
        let mut new = target.hashes.iter().peekable();
        loop {
            match (old.peek(), new.peek()) {
                (None, None) => break,
                (Some((key, _)), None) => {
                    changes.removals.push((*key).clone());
                    old.next();
                }
                (None, Some((key, _))) => {
                    changes.upserts.push((*key).clone());
                    new.next();
                }
                (Some((ok, oh)), Some((nk, nh))) => match ok.cmp(nk) {
                    std::cmp::Ordering::Less => {
                        changes.removals.push((*ok).clone());
                        old.next();
                    }
                    std::cmp::Ordering::Greater => {
                        changes.upserts.push((*nk).clone());
                        new.next();
                    }
                    std::cmp::Ordering::Equal => {
                        if oh != nh {
                            changes.upserts.push((*nk).clone());
                        }
                        old.next();
                        new.next();
                    }
                },
            }
        }
        changes
    }

    /// Test hook for drift detection: pretend an entity holds other content.
    #[doc(hidden)]
    pub fn corrupt(&mut self, kind: EntityKind, name: &str) {
        let hash = entity_hash(kind, name, "corrupted");
        self.put(kind, name.to_string(), hash);
    }
}

/// Brings the `kind` entries of `table` (those of `old`) to `new`: one merge
/// over both name-sorted lists, hashing only what was added or differs.
/// `false` (table half done) when a list is not sorted by name.
fn follow<T: PartialEq + Serialize>(
    table: &mut EntityTable,
    kind: EntityKind,
    new: &[T],
    old: &[T],
    key: impl Fn(&T) -> &str,
) -> bool {
    let sorted = |items: &[T]| items.windows(2).all(|w| key(&w[0]) < key(&w[1]));
    if !sorted(new) || !sorted(old) {
        return false;
    }
    let put = |table: &mut EntityTable, item: &T| {
        let name = key(item);
        table.put(
            kind,
            name.to_string(),
            entity_hash(kind, name, &to_json(item)),
        );
    };
    let (mut i, mut j) = (0, 0);
    while i < new.len() || j < old.len() {
        match (new.get(i), old.get(j)) {
            (Some(n), Some(o)) => match key(n).cmp(key(o)) {
                std::cmp::Ordering::Equal => {
                    if n != o {
                        put(table, n);
                    }
                    i += 1;
                    j += 1;
                }
                std::cmp::Ordering::Less => {
                    put(table, n);
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    table.remove(kind, key(o));
                    j += 1;
                }
            },
            (Some(n), None) => {
                put(table, n);
                i += 1;
            }
            (None, Some(o)) => {
                table.remove(kind, key(o));
                j += 1;
            }
            (None, None) => break,
        }
    }
    true
}

/// The delta message from `base` to `target` (`target_config` is the
/// target's config, for the JSON of what changed).
pub fn build(
    base: &pb_config::ConfigVersion,
    base_table: &EntityTable,
    target: &pb_config::ConfigVersion,
    target_table: &EntityTable,
    target_config: &GatewayConfig,
) -> pb::Delta {
    let changes = base_table.diff(target_table);
    pb::Delta {
        base: Some(base.clone()),
        target: Some(target.clone()),
        upserts: changes
            .upserts
            .into_iter()
            .filter_map(|(kind, name)| {
                let json = entity_json(target_config, kind, &name)?;
                Some(pb::EntityUpsert {
                    kind: kind.as_str().to_string(),
                    name,
                    json,
                })
            })
            .collect(),
        removals: changes
            .removals
            .into_iter()
            .map(|(kind, name)| pb::EntityKey {
                kind: kind.as_str().to_string(),
                name,
            })
            .collect(),
        checksum: checksum_bytes(target_table.checksum()),
    }
}

/// Puts `item` into the name-sorted `items`, replacing one of the same name;
/// returns the one replaced.
fn upsert_sorted<T>(items: &mut Vec<T>, item: T, key: impl Fn(&T) -> &str) -> Option<T> {
    let name = key(&item).to_string();
    match items.binary_search_by(|probe| key(probe).cmp(&name)) {
        Ok(i) => Some(std::mem::replace(&mut items[i], item)),
        Err(i) => {
            items.insert(i, item);
            None
        }
    }
}

fn remove_sorted<T>(items: &mut Vec<T>, name: &str, key: impl Fn(&T) -> &str) -> Option<T> {
    items
        .binary_search_by(|probe| key(probe).cmp(name))
        .ok()
        .map(|i| items.remove(i))
}

/// One entity of any kind.
#[derive(Debug, Clone)]
enum Entity {
    Service(Service),
    Route(Route),
    Consumer(Consumer),
    Plugin(GlobalPlugin),
    Certificate(Certificate),
}

impl Entity {
    fn parse(kind: EntityKind, json: &str) -> Result<(Entity, String), crate::ConfigError> {
        let json = json.to_string();
        Ok(match kind {
            EntityKind::Service => {
                let s = Service::try_from(&pb_config::Service { json })?;
                let name = s.name.clone();
                (Entity::Service(s), name)
            }
            EntityKind::Route => {
                let r = Route::try_from(&pb_config::Route { json })?;
                let name = r.name.clone();
                (Entity::Route(r), name)
            }
            EntityKind::Consumer => {
                let c = Consumer::try_from(&pb_config::Consumer { json })?;
                let name = c.name.clone();
                (Entity::Consumer(c), name)
            }
            EntityKind::Plugin => {
                let p = GlobalPlugin::try_from(&pb_config::GlobalPlugin { json })?;
                let name = p.instance_name().to_string();
                (Entity::Plugin(p), name)
            }
            EntityKind::Certificate => {
                let c = Certificate::try_from(&pb_config::Certificate { json })?;
                let name = c.name.clone();
                (Entity::Certificate(c), name)
            }
        })
    }

    /// Puts it into `config` (lists sorted by name); the entity it replaced.
    fn upsert(self, config: &mut GatewayConfig) -> Option<Entity> {
        match self {
            Entity::Service(s) => {
                upsert_sorted(&mut config.services, s, |s| &s.name).map(Entity::Service)
            }
            Entity::Route(r) => {
                upsert_sorted(&mut config.routes, r, |r| &r.name).map(Entity::Route)
            }
            Entity::Consumer(c) => {
                upsert_sorted(&mut config.consumers, c, |c| &c.name).map(Entity::Consumer)
            }
            Entity::Plugin(p) => upsert_sorted(&mut config.plugins, p, GlobalPlugin::instance_name)
                .map(Entity::Plugin),
            Entity::Certificate(c) => {
                upsert_sorted(&mut config.certificates, c, |c| &c.name).map(Entity::Certificate)
            }
        }
    }
}

/// Takes the entity `kind`/`name` out of `config` (lists sorted by name).
fn remove_entity(config: &mut GatewayConfig, kind: EntityKind, name: &str) -> Option<Entity> {
    match kind {
        EntityKind::Service => {
            remove_sorted(&mut config.services, name, |s| &s.name).map(Entity::Service)
        }
        EntityKind::Route => {
            remove_sorted(&mut config.routes, name, |r| &r.name).map(Entity::Route)
        }
        EntityKind::Consumer => {
            remove_sorted(&mut config.consumers, name, |c| &c.name).map(Entity::Consumer)
        }
        EntityKind::Plugin => remove_sorted(&mut config.plugins, name, GlobalPlugin::instance_name)
            .map(Entity::Plugin),
        EntityKind::Certificate => {
            remove_sorted(&mut config.certificates, name, |c| &c.name).map(Entity::Certificate)
        }
    }
}

/// What [`apply_in_place`] changed, in order, with what each step replaced:
/// [`Undo::revert`] puts the config and table back as they were.
#[derive(Debug, Default)]
pub struct Undo {
    config: Vec<(EntityKind, String, Option<Entity>)>,
    table: Vec<(EntityKind, String, Option<u128>)>,
}

impl Undo {
    /// Reverts the steps, last first.
    pub fn revert(self, config: &mut GatewayConfig, table: &mut EntityTable) {
        for (kind, name, old) in self.config.into_iter().rev() {
            match old {
                Some(entity) => {
                    entity.upsert(config);
                }
                None => {
                    remove_entity(config, kind, &name);
                }
            }
        }
        revert_table(table, self.table);
    }

    /// The entities the delta touched (removed or upserted), in order.
    pub fn touched(&self) -> impl Iterator<Item = (EntityKind, &str)> {
        self.config
            .iter()
            .map(|(kind, name, _)| (*kind, name.as_str()))
    }
}

fn revert_table(table: &mut EntityTable, steps: Vec<(EntityKind, String, Option<u128>)>) {
    for (kind, name, old) in steps.into_iter().rev() {
        match old {
            Some(hash) => table.put(kind, name, hash),
            None => table.remove(kind, &name),
        }
    }
}

/// Applies `delta` to `config` (lists sorted by name) and its `table` in
/// place, in time proportional to the delta. The checksum is checked before
/// the config is touched: on any error both are as they were. On success the
/// [`Undo`] can still put them back (when the result fails to compile).
pub fn apply_in_place(
    config: &mut GatewayConfig,
    table: &mut EntityTable,
    delta: &pb::Delta,
) -> Result<Undo, DeltaError> {
    let mut removals = Vec::with_capacity(delta.removals.len());
    for removal in &delta.removals {
        let kind = EntityKind::parse(&removal.kind).ok_or_else(|| {
            DeltaError::Invalid(format!("delta: unknown kind {:?}", removal.kind))
        })?;
        removals.push((kind, removal.name.as_str()));
    }
    let mut upserts = Vec::with_capacity(delta.upserts.len());
    for upsert in &delta.upserts {
        let kind = EntityKind::parse(&upsert.kind)
            .ok_or_else(|| DeltaError::Invalid(format!("delta: unknown kind {:?}", upsert.kind)))?;
        let (entity, name) =
            Entity::parse(kind, &upsert.json).map_err(|e| DeltaError::Invalid(e.to_string()))?;
        if name != upsert.name {
            return Err(DeltaError::Invalid(format!(
                "delta: {} {:?} carries an entity named {:?}",
                upsert.kind, upsert.name, name
            )));
        }
        upserts.push((
            kind,
            name,
            entity,
            entity_hash(kind, &upsert.name, &upsert.json),
        ));
    }

    // The table first: its checksum decides whether the config is touched.
    let mut table_steps = Vec::with_capacity(removals.len() + upserts.len());
    for &(kind, name) in &removals {
        let old = table.hashes.get(&(kind, name.to_string())).copied();
        table.remove(kind, name);
        table_steps.push((kind, name.to_string(), old));
    }
    for (kind, name, _, hash) in &upserts {
        let old = table.hashes.get(&(*kind, name.clone())).copied();
        table.put(*kind, name.clone(), *hash);
        table_steps.push((*kind, name.clone(), old));
    }
    let expected = checksum_bytes(table.checksum());
    if delta.checksum != expected {
        revert_table(table, table_steps);
        return Err(DeltaError::Drift(format!(
            "delta checksum {} does not match the state it leads to ({})",
            hex::encode(&delta.checksum),
            hex::encode(&expected)
        )));
    }

    let mut undo = Undo {
        config: Vec::with_capacity(table_steps.len()),
        table: table_steps,
    };
    for (kind, name) in removals {
        let old = remove_entity(config, kind, name);
        undo.config.push((kind, name.to_string(), old));
    }
    for (kind, name, entity, _) in upserts {
        let old = entity.upsert(config);
        undo.config.push((kind, name, old));
    }
    Ok(undo)
}

/// Applies `delta` to `config` (the state whose table is `table`), giving the
/// target's config and table. The checksum is checked before anything is
/// returned: on [`DeltaError::Drift`] the caller asks for a full snapshot.
pub fn apply(
    config: &GatewayConfig,
    table: &EntityTable,
    delta: &pb::Delta,
) -> Result<(GatewayConfig, EntityTable), DeltaError> {
    let mut next = config.clone();
    let mut next_table = table.clone();
    // Lists sorted by name, as the control plane publishes them.
    next.sort();
    apply_in_place(&mut next, &mut next_table, delta)?;
    Ok((next, next_table))
}

#[cfg(test)]
mod tests;
