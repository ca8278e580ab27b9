//! Reading a config file for `apply`/`diff`, with bounds.
//!
//! Why: a 140 KB YAML file with one anchor of 20,000 items referenced 20,000
//! times expands to 400 million values, and `tollgatectl` grew to 6 GB before
//! it was stopped (serde_yaml refuses only the deep "billion laughs" form).
//! So before the real parse, a counting pass walks the document as serde_yaml
//! expands it, storing nothing, and stops at [`MAX_YAML_NODES`] values or
//! [`MAX_YAML_DEPTH`] levels; the file itself may be at most
//! [`MAX_FILE_BYTES`] (what one Apply message can carry).

use std::cell::Cell;
use std::fmt;
use std::io::Read;

use serde::de::{DeserializeSeed, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor};
use tollgate_shared::limits::MAX_MESSAGE_BYTES;
use tollgate_shared::model::GatewayConfig;

/// Largest config file read (the Apply message limit).
pub const MAX_FILE_BYTES: u64 = MAX_MESSAGE_BYTES as u64;
/// Values (scalars, lists, maps) the document may expand to, aliases counted
/// each time they are used. 100,000 routes take about 2 million.
pub const MAX_YAML_NODES: usize = 5_000_000;
/// Nesting of lists and maps.
pub const MAX_YAML_DEPTH: usize = 64;

/// Reads and parses a config from `input`. The error is one readable sentence.
pub fn read_config(input: &mut dyn Read) -> Result<GatewayConfig, String> {
    let mut bytes = Vec::new();
    input
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(format!(
            "larger than {MAX_FILE_BYTES} bytes, the most one Apply can carry"
        ));
    }
    let text = String::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_string())?;
    parse_bounded(&text)
}

/// Parses YAML (or JSON) after checking its expanded size and depth.
pub fn parse_bounded(text: &str) -> Result<GatewayConfig, String> {
    let budget = Budget {
        nodes: Cell::new(0),
    };
    Counted {
        budget: &budget,
        depth: 0,
    }
    .deserialize(serde_yaml::Deserializer::from_str(text))
    .map_err(|e| e.to_string())?;
    GatewayConfig::from_yaml(text).map_err(|e| e.to_string())
}

struct Budget {
    nodes: Cell<usize>,
}

/// One value of the document, counted with its children.
#[derive(Clone, Copy)]
struct Counted<'a> {
    budget: &'a Budget,
    depth: usize,
}

impl Counted<'_> {
    fn tick<E: serde::de::Error>(self) -> Result<(), E> {
        let nodes = self.budget.nodes.get() + 1;
        self.budget.nodes.set(nodes);
        if nodes > MAX_YAML_NODES {
            return Err(E::custom(format!(
                "the document expands to more than {MAX_YAML_NODES} values (YAML aliases such \
                 as *name repeat their anchor each time); write it out without aliases"
            )));
        }
        Ok(())
    }

    fn child<E: serde::de::Error>(self) -> Result<Self, E> {
        if self.depth + 1 > MAX_YAML_DEPTH {
            return Err(E::custom(format!(
                "nested more than {MAX_YAML_DEPTH} levels deep"
            )));
        }
        Ok(Counted {
            budget: self.budget,
            depth: self.depth + 1,
        })
    }
}

impl<'de> DeserializeSeed<'de> for Counted<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

macro_rules! scalar {
    ($($name:ident: $ty:ty),*) => {
        $(fn $name<E: serde::de::Error>(self, _: $ty) -> Result<(), E> {
            self.tick()
        })*
    };
}

impl<'de> Visitor<'de> for Counted<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    scalar!(visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_f64: f64,
            visit_i128: i128, visit_u128: u128, visit_str: &str, visit_bytes: &[u8]);

    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.tick()
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<(), E> {
        self.tick()
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        self.child()?.deserialize(d)
    }

    fn visit_newtype_struct<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        self.child()?.deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.tick()?;
        let child = self.child()?;
        while seq.next_element_seed(child)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.tick()?;
        let child = self.child()?;
        while map.next_key_seed(child)?.is_some() {
            map.next_value_seed(child)?;
        }
        Ok(())
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        // A tagged value (`!Tag value`): count the value.
        self.tick()?;
        let (_, variant) = data.variant::<serde::de::IgnoredAny>()?;
        variant.newtype_variant_seed(self.child()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wide_alias_expansion_is_refused_quickly() {
        // An anchor of 2,000 items referenced 20,000 times: 40 million values.
        let mut text = String::from("services: []\nx: &a [");
        text.push_str(&vec!["1"; 2_000].join(","));
        text.push_str("]\ny: [");
        text.push_str(&vec!["*a"; 20_000].join(","));
        text.push_str("]\n");
        let started = std::time::Instant::now();
        let err = parse_bounded(&text).expect_err("refused");
        assert!(err.contains("expands to more than"), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
    }

    #[test]
    fn deep_nesting_is_refused() {
        let deep = format!("{}1{}", "[".repeat(100), "]".repeat(100));
        assert!(parse_bounded(&deep).is_err());
        let ok = format!(
            "x: {}1{}",
            "[".repeat(MAX_YAML_DEPTH - 1),
            "]".repeat(MAX_YAML_DEPTH - 1)
        );
        // Within the depth bound the counting pass passes; the model then
        // refuses the unknown field `x`, naming it.
        let err = parse_bounded(&ok).expect_err("unknown field");
        assert!(err.contains("unknown field"), "{err}");
    }

    #[test]
    fn ordinary_files_and_small_aliases_pass() {
        let text = r#"
services:
  - name: orders
    upstream: &up { targets: [{ address: "127.0.0.1:9001" }] }
  - name: users
    upstream: *up
"#;
        let config = parse_bounded(text).expect("parses");
        assert_eq!(config.services.len(), 2);
    }

    #[test]
    fn oversized_input_is_refused_before_parsing() {
        let mut big = std::io::repeat(b' ').take(MAX_FILE_BYTES + 10);
        let err = read_config(&mut big).expect_err("refused");
        assert!(err.contains("larger than"), "{err}");
    }
}
