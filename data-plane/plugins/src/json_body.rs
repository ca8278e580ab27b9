//! JSON body edits shared by `request-transformer` and
//! `response-transformer`: which bodies are JSON worth parsing, and the
//! remove / rename / replace / add edits of an object's top-level fields.

use bytes::Bytes;
use http::header::{HeaderMap, CONTENT_ENCODING, CONTENT_TYPE};
use tollgate_shared::plugins::JsonEdits;

/// Whether a message with these headers has an uncompressed JSON body
/// (`application/json`, `application/*+json`).
pub fn is_plain_json(headers: &HeaderMap) -> bool {
    if headers.contains_key(CONTENT_ENCODING) {
        return false;
    }
    let Some(content_type) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Edits a JSON object body in the order remove, rename, replace (only
/// present fields), add (only absent ones); anything but an object is left
/// as it is.
pub fn edit(edits: &JsonEdits, body: &mut Bytes) {
    let Ok(serde_json::Value::Object(mut object)) =
        serde_json::from_slice::<serde_json::Value>(body)
    else {
        return;
    };
    for field in &edits.remove {
        object.remove(field);
    }
    for (from, to) in &edits.rename {
        if let Some(value) = object.remove(from) {
            object.insert(to.clone(), value);
        }
    }
    for (field, value) in &edits.replace {
        if let Some(slot) = object.get_mut(field) {
            *slot = value.clone();
        }
    }
    for (field, value) in &edits.add {
        if !object.contains_key(field) {
            object.insert(field.clone(), value.clone());
        }
    }
    if let Ok(edited) = serde_json::to_vec(&serde_json::Value::Object(object)) {
        *body = Bytes::from(edited);
    }
}
