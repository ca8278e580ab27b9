//! The on-disk format, versioned from day one.
//!
//! Each entity is stored under its name in the tree of its kind as a JSON
//! envelope `{"format":1,"kind":"route","entity":{...}}` holding the shared
//! model's serde form, so a later build can tell which shape it is reading and
//! migrate it. The `meta` tree holds the format of the whole store
//! ([`META_FORMAT`]), the store's identity ([`META_STORE_ID`], a UUID made at
//! creation) and the revision counter ([`META_REVISION`], big-endian u64).
//!
//! A build refuses to open a store (or an entity) whose format is newer than
//! [`FORMAT_VERSION`]: guessing at a newer layout could silently drop fields.

use serde::{Deserialize, Serialize};

use crate::entity::Entity;
use crate::kind::EntityKind;

/// The format this build writes, and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;

pub const META_TREE: &str = "meta";
pub const META_FORMAT: &[u8] = b"format";
pub const META_STORE_ID: &[u8] = b"store_id";
pub const META_REVISION: &[u8] = b"revision";

#[derive(Serialize)]
struct EnvelopeOut<'a> {
    format: u32,
    kind: &'static str,
    entity: &'a serde_json::Value,
}

#[derive(Deserialize)]
struct EnvelopeIn {
    format: u32,
    entity: serde_json::Value,
}

/// Encodes an entity as a current-format envelope.
pub fn encode(entity: &Entity) -> Result<Vec<u8>, serde_json::Error> {
    let value = entity.to_json()?;
    serde_json::to_vec(&EnvelopeOut {
        format: FORMAT_VERSION,
        kind: entity.kind().label(),
        entity: &value,
    })
}

/// Decodes a stored envelope of `kind`. The error text names no value, only
/// what is wrong, because it ends up in a log.
pub fn decode(kind: EntityKind, bytes: &[u8]) -> Result<Entity, String> {
    let envelope: EnvelopeIn =
        serde_json::from_slice(bytes).map_err(|e| format!("not a format envelope: {e}"))?;
    if envelope.format > FORMAT_VERSION {
        return Err(format!(
            "written in format {} by a newer tollgate-cp (this build reads up to {FORMAT_VERSION})",
            envelope.format
        ));
    }
    if envelope.format == 0 {
        return Err("format 0 does not exist".into());
    }
    Entity::from_json(kind, envelope.entity).map_err(|e| format!("invalid {kind}: {e}"))
}

/// The store-wide format marker as stored.
pub fn encode_format(format: u32) -> Vec<u8> {
    format.to_string().into_bytes()
}

pub fn decode_format(bytes: &[u8]) -> Option<u32> {
    std::str::from_utf8(bytes).ok()?.trim().parse().ok()
}

pub fn decode_revision(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}
