//! A field-level diff of two entities, for `tollgatectl diff`:
//! `~ route orders-api: plugins[1].config.limit 3 -> 5`.
//!
//! Entities are compared in their JSON (the config file's) form, redacted on
//! both sides, so secrets show as fingerprints and never in clear. Lines are
//! coloured only when stdout is a terminal and `NO_COLOR` is unset.

use std::io::IsTerminal;

use serde_json::Value;

/// Longest value shown in full; longer ones are cut with `…`.
const MAX_VALUE_CHARS: usize = 80;

/// Whether to colour output (a terminal, and no `NO_COLOR`).
pub fn colour() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// `text` in the ANSI colour of `marker` (`+` green, `-` red, `~` yellow).
pub fn paint(marker: char, text: &str, colour: bool) -> String {
    if !colour {
        return text.to_string();
    }
    let code = match marker {
        '+' => "32",
        '-' => "31",
        _ => "33",
    };
    format!("\u{1b}[{code}m{text}\u{1b}[0m")
}

fn show(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() <= MAX_VALUE_CHARS {
        return text;
    }
    let cut: String = text.chars().take(MAX_VALUE_CHARS).collect();
    format!("{cut}…")
}

/// Every changed field from `old` to `new`: `path old -> new`, `path: + new`
/// (added) or `path: - old` (removed); sorted by path.
pub fn changes(old: &Value, new: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk(old, new, String::new(), &mut out);
    out
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn walk(old: &Value, new: &Value, path: String, out: &mut Vec<String>) {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                let here = join(&path, key);
                match (a.get(key), b.get(key)) {
                    (Some(x), Some(y)) => walk(x, y, here, out),
                    (Some(x), None) => out.push(format!("{here}: - {}", show(x))),
                    (None, Some(y)) => out.push(format!("{here}: + {}", show(y))),
                    (None, None) => {}
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for i in 0..a.len().max(b.len()) {
                let here = format!("{path}[{i}]");
                match (a.get(i), b.get(i)) {
                    (Some(x), Some(y)) => walk(x, y, here, out),
                    (Some(x), None) => out.push(format!("{here}: - {}", show(x))),
                    (None, Some(y)) => out.push(format!("{here}: + {}", show(y))),
                    (None, None) => {}
                }
            }
        }
        (a, b) if a != b => {
            let name = if path.is_empty() { "value" } else { &path };
            out.push(format!("{name} {} -> {}", show(a), show(b)));
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_each_changed_field() {
        let old = json!({"name": "orders-api", "paths": ["/a"], "plugins": [
            {"name": "key-auth"},
            {"name": "rate-limit", "config": {"limit": 3, "window": "1m"}}]});
        let new = json!({"name": "orders-api", "paths": ["/a", "/b"], "strip_path": true, "plugins": [
            {"name": "key-auth"},
            {"name": "rate-limit", "config": {"limit": 5, "window": "1m"}}]});
        assert_eq!(
            changes(&old, &new),
            vec![
                "paths[1]: + \"/b\"",
                "plugins[1].config.limit 3 -> 5",
                "strip_path: + true",
            ]
        );
        assert!(changes(&old, &old).is_empty());
    }

    #[test]
    fn colour_only_when_asked() {
        assert_eq!(paint('+', "x", false), "x");
        assert_eq!(paint('-', "x", true), "\u{1b}[31mx\u{1b}[0m");
    }
}
