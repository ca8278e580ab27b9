//! Size limits of the configuration, and the bounded helpers validation uses
//! before anything recursive or allocating touches admin input.
//!
//! Why: the gRPC message cap (64 MiB) was the only bound on a config, so one
//! 50 MiB header value was stored and streamed to every data plane, a 48 MiB
//! name came back in a 428 MB error, and a 27 KB DER of 5,000 nested
//! SEQUENCEs overflowed the stack of the key parser. Every field now has a
//! maximum well below the message cap (the table in the README lists them),
//! echoed values are cut to [`MAX_ECHO_CHARS`], and key material is checked
//! for nesting depth iteratively before any parser sees it.
//!
//! The same constants are enforced by [`crate::validate::validate`], which
//! the control plane runs on every write and a data plane on every snapshot,
//! so what one accepts the other serves.

use std::fmt;

/// Longest entity name (service, route, consumer, plugin instance,
/// certificate) and consumer group.
pub const MAX_NAME_LEN: usize = 128;
/// Services in one config.
pub const MAX_SERVICES: usize = 10_000;
/// Routes in one config.
pub const MAX_ROUTES: usize = 100_000;
/// Consumers in one config.
pub const MAX_CONSUMERS: usize = 100_000;
/// Global plugin instances in one config.
pub const MAX_GLOBAL_PLUGINS: usize = 1_000;
/// Certificates in one config.
pub const MAX_CERTIFICATES: usize = 10_000;
/// Targets of one service.
pub const MAX_TARGETS: usize = 1_024;
/// Longest target address: a 253-byte DNS name, `:` and a 5-digit port.
pub const MAX_ADDRESS_LEN: usize = 259;
/// Longest host name or host pattern (DNS limit).
pub const MAX_HOST_LEN: usize = 253;
/// `hosts` of one route, and `snis` of one certificate.
pub const MAX_HOSTS: usize = 64;
/// `paths` of one route.
pub const MAX_PATHS: usize = 64;
/// Longest route path (without the leading `=` of an exact path).
pub const MAX_PATH_LEN: usize = 512;
/// `headers` conditions of one route.
pub const MAX_HEADER_MATCHES: usize = 32;
/// Longest header name (route conditions, plugin header fields).
pub const MAX_HEADER_NAME_LEN: usize = 256;
/// Longest header value (route conditions, `request-transformer` adds,
/// `host_header`).
pub const MAX_HEADER_VALUE_LEN: usize = 4_096;
/// Longest query parameter name in `request-transformer`.
pub const MAX_QUERY_NAME_LEN: usize = 256;
/// Longest query parameter value in `request-transformer`.
pub const MAX_QUERY_VALUE_LEN: usize = 4_096;
/// Plugins attached to one route or service.
pub const MAX_PLUGINS_PER_ENTITY: usize = 32;
/// A plugin's `config`, encoded as JSON.
pub const MAX_PLUGIN_CONFIG_BYTES: usize = 64 * 1024;
/// Nesting depth of a plugin's `config` (objects and arrays).
pub const MAX_PLUGIN_CONFIG_DEPTH: usize = 16;
/// `groups` of one consumer.
pub const MAX_GROUPS: usize = 64;
/// Tags per entity (`tags`).
pub const MAX_TAGS: usize = 16;
/// `credentials` of one consumer.
pub const MAX_CREDENTIALS: usize = 32;
/// Longest JWT HMAC secret.
pub const MAX_SECRET_LEN: usize = 4_096;
/// Longest PEM public key (JWT) or private key (certificate).
pub const MAX_KEY_PEM_BYTES: usize = 16 * 1024;
/// Longest PEM certificate chain.
pub const MAX_CERT_PEM_BYTES: usize = 64 * 1024;
/// A CA's revocation list (`crl_pem`): room for tens of thousands of serials.
pub const MAX_CRL_PEM_BYTES: usize = 1024 * 1024;
/// Deepest nesting of DER structures inside a PEM block. Real keys and
/// certificates nest fewer than 10 levels.
pub const MAX_DER_DEPTH: usize = 32;
/// Largest gRPC message either way (Apply, Export, a snapshot).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// Largest encoded config (snapshot or export): the message cap less room
/// for the envelope (version, store id).
pub const MAX_SNAPSHOT_BYTES: usize = MAX_MESSAGE_BYTES - 64 * 1024;
/// Characters of an input value echoed in an error message.
pub const MAX_ECHO_CHARS: usize = 128;

/// An input value as errors show it: `Debug`-quoted, cut after
/// [`MAX_ECHO_CHARS`] characters with `…` and the full length.
pub struct Shown<'a>(pub &'a str);

/// Shorthand for [`Shown`].
pub fn show(value: &str) -> Shown<'_> {
    Shown(value)
}

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.char_indices().nth(MAX_ECHO_CHARS) {
            None => write!(f, "{:?}", self.0),
            Some((cut, _)) => write!(f, "{:?}… ({} bytes)", &self.0[..cut], self.0.len()),
        }
    }
}

/// Cuts `text` to at most `max` bytes on a character boundary, marking the
/// cut with `…`.
pub fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut cut = max.saturating_sub('…'.len_utf8());
    while cut > 0 && !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &text[..cut])
}

/// `Err` naming the limit when `len > max`.
pub fn check_len(len: usize, max: usize, unit: &str) -> Result<(), String> {
    if len > max {
        Err(format!("at most {max} {unit} allowed (got {len})"))
    } else {
        Ok(())
    }
}

/// Size (compact JSON bytes, strings counted unescaped) and nesting depth
/// (objects and arrays; a scalar is depth 0) of a JSON value, computed
/// iteratively: a value nested deeper than any stack allows is still measured.
pub fn json_size_and_depth(value: &serde_json::Value) -> (usize, usize) {
    let mut size = 0usize;
    let mut max_depth = 0usize;
    let mut stack: Vec<(&serde_json::Value, usize)> = vec![(value, 1)];
    while let Some((value, depth)) = stack.pop() {
        if value.is_array() || value.is_object() {
            max_depth = max_depth.max(depth);
        }
        let own = match value {
            serde_json::Value::Null => 4,
            serde_json::Value::Bool(b) => 4 + usize::from(!*b),
            serde_json::Value::Number(n) => n.to_string().len(),
            serde_json::Value::String(s) => s.len() + 2,
            serde_json::Value::Array(items) => {
                stack.extend(items.iter().map(|v| (v, depth + 1)));
                2 + items.len().saturating_sub(1)
            }
            serde_json::Value::Object(map) => {
                let mut keys = 0usize;
                for (key, v) in map {
                    keys = keys.saturating_add(key.len() + 3);
                    stack.push((v, depth + 1));
                }
                keys.saturating_add(2 + map.len().saturating_sub(1))
            }
        };
        size = size.saturating_add(own);
    }
    (size, max_depth)
}

/// Checks a plugin `config` against [`MAX_PLUGIN_CONFIG_BYTES`] and
/// [`MAX_PLUGIN_CONFIG_DEPTH`].
pub fn check_plugin_config_size(value: &serde_json::Value) -> Result<(), String> {
    let (size, depth) = json_size_and_depth(value);
    if size > MAX_PLUGIN_CONFIG_BYTES {
        return Err(format!(
            "config: at most {MAX_PLUGIN_CONFIG_BYTES} bytes of JSON allowed (got {size})"
        ));
    }
    if depth > MAX_PLUGIN_CONFIG_DEPTH {
        return Err(format!(
            "config: nested at most {MAX_PLUGIN_CONFIG_DEPTH} levels deep (got {depth})"
        ));
    }
    Ok(())
}

/// Decodes every PEM block of `pem` and checks its DER nesting depth without
/// recursion. `Err` says why (not base64, truncated DER, too deep); `Ok` does
/// not mean the key is valid, only that a parser can look at it safely.
pub fn check_pem_der_depth(pem: &str) -> Result<(), String> {
    let mut rest = pem;
    let mut blocks = 0usize;
    while let Some(begin) = rest.find("-----BEGIN ") {
        let after_begin = &rest[begin + "-----BEGIN ".len()..];
        let header_end = after_begin
            .find("-----")
            .ok_or("PEM block without a complete BEGIN line")?;
        let body_and_more = &after_begin[header_end + "-----".len()..];
        let end = body_and_more
            .find("-----END ")
            .ok_or("PEM block without an END line")?;
        let body = &body_and_more[..end];
        // Header lines such as "Proc-Type:" (legacy PEM) carry no DER.
        let base64: String = body
            .lines()
            .filter(|line| !line.contains(':'))
            .flat_map(|line| line.chars())
            .filter(|c| !c.is_ascii_whitespace())
            .collect();
        let der = decode_base64(&base64).ok_or("PEM body is not valid base64")?;
        check_der_depth(&der, MAX_DER_DEPTH)?;
        blocks += 1;
        rest = &body_and_more[end + "-----END ".len()..];
    }
    if blocks == 0 {
        return Err("no PEM block found".into());
    }
    Ok(())
}

/// Walks DER TLVs with an explicit stack and refuses nesting deeper than
/// `max_depth`. Only depth is judged: where the DER is malformed (truncated,
/// indefinite length) the walk stops and the
/// real parser rejects it later, reaching no deeper than this walk did.
pub fn check_der_depth(der: &[u8], max_depth: usize) -> Result<(), String> {
    match walk_der(der, max_depth) {
        Err(DerStop::TooDeep) => Err(format!("DER nested more than {max_depth} levels deep")),
        Ok(()) | Err(DerStop::Malformed) => Ok(()),
    }
}

enum DerStop {
    TooDeep,
    Malformed,
}

fn walk_der(der: &[u8], max_depth: usize) -> Result<(), DerStop> {
    let byte_at = |pos: usize| der.get(pos).copied().ok_or(DerStop::Malformed);
    // End offsets of the constructed values we are inside.
    let mut ends: Vec<usize> = Vec::new();
    let mut pos = 0usize;
    let mut end = der.len();
    loop {
        while pos == end {
            match ends.pop() {
                Some(outer) => end = outer,
                None => return Ok(()),
            }
        }
        let tag = byte_at(pos)?;
        pos += 1;
        if tag & 0x1f == 0x1f {
            // High tag number: base-128 continuation bytes.
            let mut count = 0;
            loop {
                let byte = byte_at(pos)?;
                pos += 1;
                count += 1;
                if count > 4 {
                    return Err(DerStop::Malformed);
                }
                if byte & 0x80 == 0 {
                    break;
                }
            }
        }
        let first = byte_at(pos)?;
        pos += 1;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let bytes = usize::from(first & 0x7f);
            if bytes == 0 || bytes > 4 {
                return Err(DerStop::Malformed);
            }
            let mut len = 0usize;
            for _ in 0..bytes {
                len = (len << 8) | usize::from(byte_at(pos)?);
                pos += 1;
            }
            len
        };
        // A value claiming more than its container holds is measured as far
        // as the bytes go: lenient parsers would read that far too.
        let value_end = pos.saturating_add(len).min(end);
        if tag & 0x20 != 0 {
            if ends.len() + 1 > max_depth {
                return Err(DerStop::TooDeep);
            }
            ends.push(end);
            end = value_end;
        } else {
            pos = value_end;
        }
    }
}

/// Standard base64 (with or without `=` padding); `None` on any other byte.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        })
    }
    let trimmed = text.trim_end_matches('=');
    if text.len() - trimmed.len() > 2 {
        return None;
    }
    let mut out = Vec::with_capacity(trimmed.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0u32;
    for &c in trimmed.as_bytes() {
        acc = (acc << 6) | value(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xff) as u8);
        }
    }
    if bits >= 6 {
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested_sequences(depth: usize) -> Vec<u8> {
        // Built inside out: each level wraps the previous in a SEQUENCE.
        let mut der = vec![0x05, 0x00]; // NULL
        for _ in 0..depth {
            let len = der.len();
            let mut wrapped = vec![0x30];
            if len < 0x80 {
                wrapped.push(len as u8);
            } else {
                let bytes = len.to_be_bytes();
                let skip = bytes.iter().take_while(|b| **b == 0).count();
                wrapped.push(0x80 | (bytes.len() - skip) as u8);
                wrapped.extend_from_slice(&bytes[skip..]);
            }
            wrapped.extend_from_slice(&der);
            der = wrapped;
        }
        der
    }

    fn pem_of(der: &[u8]) -> String {
        const TABLE: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut text = String::new();
        for chunk in der.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    text.push(TABLE[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    text.push('=');
                }
            }
        }
        format!("-----BEGIN PUBLIC KEY-----\n{text}\n-----END PUBLIC KEY-----\n")
    }

    #[test]
    fn der_depth_at_the_limit_passes_and_beyond_fails() {
        assert!(check_der_depth(&nested_sequences(MAX_DER_DEPTH), MAX_DER_DEPTH).is_ok());
        let err = check_der_depth(&nested_sequences(MAX_DER_DEPTH + 1), MAX_DER_DEPTH)
            .expect_err("too deep");
        assert!(err.contains("nested"), "{err}");
        // The reported attack: 5,000 levels, checked without recursion.
        let pem = pem_of(&nested_sequences(5_000));
        assert!(check_pem_der_depth(&pem).is_err());
        assert!(check_pem_der_depth(&pem_of(&nested_sequences(3))).is_ok());
    }

    #[test]
    fn malformed_der_is_left_to_the_parser_and_bad_pem_is_an_error() {
        for der in [
            &[0x30][..],
            &[0x30, 0x80],
            &[0x30, 0x85, 1, 2, 3, 4, 5],
            &[0x30, 0x05, 0x00],
            &[0x1f, 0xff, 0xff, 0xff, 0xff, 0xff],
        ] {
            assert!(check_der_depth(der, MAX_DER_DEPTH).is_ok(), "{der:?}");
        }
        // Truncated below the limit: still too deep where it got to.
        let mut deep = nested_sequences(MAX_DER_DEPTH + 5);
        deep.truncate(deep.len() - 1);
        assert!(check_der_depth(&deep, MAX_DER_DEPTH).is_err());
        assert!(check_pem_der_depth("no pem").is_err());
        assert!(check_pem_der_depth("-----BEGIN X-----\n@@@@\n-----END X-----").is_err());
        assert!(check_pem_der_depth("-----BEGIN X").is_err());
    }

    #[test]
    fn shown_values_are_cut() {
        let long = "é".repeat(1_000);
        let text = show(&long).to_string();
        assert!(text.chars().count() < MAX_ECHO_CHARS + 40, "{text}");
        assert!(text.contains('…') && text.contains("2000 bytes"));
        assert_eq!(show("abc").to_string(), "\"abc\"");
        assert_eq!(truncate("abcdef", 100), "abcdef");
        let cut = truncate(&long, 10);
        assert!(cut.len() <= 10 && cut.ends_with('…'));
    }

    #[test]
    fn json_size_matches_serde_json() {
        let value =
            serde_json::json!({"a": [1, 2, {"b": null, "c": true, "d": false}], "e": "x\"y"});
        let (size, depth) = json_size_and_depth(&value);
        // Escapes make serde_json's output longer; the count is a lower bound.
        assert!(size <= serde_json::to_string(&value).map(|s| s.len()).unwrap_or(0));
        assert_eq!(depth, 3);
        let plain =
            serde_json::json!({"a": [1, 22, {"b": null, "c": true, "d": false}], "e": "xy"});
        let text = serde_json::to_string(&plain).unwrap_or_default();
        assert_eq!(json_size_and_depth(&plain).0, text.len(), "{text}");
    }
}
