//! API-key hashing and secret fingerprints.
//!
//! API keys are stored only as `sha256:<hex>` of the key: deterministic, so a
//! data plane finds the consumer by hashing the key a client presents. Secrets
//! that must reach the data planes in clear (JWT HMAC secrets, private keys)
//! are shown everywhere else as a fingerprint of the same form.

use sha2::{Digest, Sha256};

pub const HASH_PREFIX: &str = "sha256:";

/// `sha256:<hex>` of an API key.
pub fn hash_api_key(key: &str) -> String {
    fingerprint(key)
}

/// `sha256:<hex>` of a secret.
pub fn fingerprint(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    format!("{HASH_PREFIX}{}", hex::encode(digest))
}

/// The raw 32-byte SHA-256 of an API key, for hot-path lookups without
/// formatting a string.
pub fn api_key_digest(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

/// Parses `sha256:<64 hex>` into its 32 bytes.
pub fn parse_hash(text: &str) -> Option<[u8; 32]> {
    let hex_part = text.strip_prefix(HASH_PREFIX)?;
    let bytes = hex::decode(hex_part).ok()?;
    bytes.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_round_trips_through_parse() {
        let hash = hash_api_key("alice-secret-key");
        assert!(hash.starts_with("sha256:"));
        assert_eq!(parse_hash(&hash), Some(api_key_digest(b"alice-secret-key")));
        assert_eq!(parse_hash("sha256:zz"), None);
        assert_eq!(parse_hash("md5:00"), None);
    }
}
