//! What the control plane and the data planes agree on for the cluster PKI
//! (issue 17): the join token's format, how the cluster CA is pinned, the
//! name the control plane's stream certificate carries, and how a node id is
//! read from a data plane's certificate.
//!
//! A join token is `tgjoin.<secret>.<pin>`: the secret is 32 random bytes
//! (base64url), which the control plane keeps only as a SHA-256 digest; the
//! pin is the SHA-256 of the cluster CA certificate (DER, 64 hex digits), as
//! kubeadm's `--discovery-token-ca-cert-hash` does. A data plane that joins
//! checks the pin against the CA the control plane presents *before* it
//! sends the secret, so a token never reaches an impostor.

use sha2::{Digest, Sha256};

/// The DNS name in the control plane's generated stream certificate, and
/// the name data planes check by default (whatever address they dial).
pub const SERVER_NAME: &str = "tollgate-control-plane";
/// Organizational unit of every certificate the cluster CA issues to a data
/// plane; operators' certificates carry [`OPERATOR_OU`].
pub const DATA_PLANE_OU: &str = "tollgate-data-plane";
/// Organizational unit of the operator certificates the cluster CA issues.
pub const OPERATOR_OU: &str = "tollgate-operator";
/// The URI SAN prefix naming an operator and its role:
/// `urn:tollgate:operator:<name>:<role>`.
pub const OPERATOR_URI_PREFIX: &str = "urn:tollgate:operator:";
/// The token's prefix.
pub const TOKEN_PREFIX: &str = "tgjoin";
/// Longest node id (as the stream's hello allows).
pub const MAX_NODE_ID_BYTES: usize = 256;

/// A parsed join token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// The whole token's secret part, as sent to the control plane.
    pub secret: String,
    /// SHA-256 of the cluster CA certificate's DER.
    pub ca_pin: [u8; 32],
}

/// Why a token does not parse. Never quotes the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a join token (expected tgjoin.<secret>.<64 hex digits of the CA hash>)")]
pub struct BadToken;

impl JoinToken {
    pub fn parse(text: &str) -> Result<JoinToken, BadToken> {
        let mut parts = text.trim().split('.');
        let (Some(TOKEN_PREFIX), Some(secret), Some(pin), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(BadToken);
        };
        if secret.len() < 16
            || !secret
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(BadToken);
        }
        let mut ca_pin = [0u8; 32];
        hex::decode_to_slice(pin, &mut ca_pin).map_err(|_| BadToken)?;
        Ok(JoinToken {
            secret: secret.to_string(),
            ca_pin,
        })
    }

    /// The printable token.
    pub fn format(secret: &str, ca_pin: &[u8; 32]) -> String {
        format!("{TOKEN_PREFIX}.{secret}.{}", hex::encode(ca_pin))
    }

    /// What the control plane stores and looks the token up by.
    pub fn digest(&self) -> [u8; 32] {
        secret_digest(&self.secret)
    }
}

/// SHA-256 of a token's secret part.
pub fn secret_digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// The pin of a CA certificate: SHA-256 of its DER.
pub fn ca_pin(ca_der: &[u8]) -> [u8; 32] {
    Sha256::digest(ca_der).into()
}

/// Whether `id` can be a node id: 1 to 256 bytes, no control characters, no
/// surrounding spaces.
pub fn valid_node_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_NODE_ID_BYTES
        && id.trim() == id
        && !id.chars().any(char::is_control)
}

/// The node id a data-plane certificate names (its subject CN), if it is a
/// data-plane certificate (OU [`DATA_PLANE_OU`]).
pub fn node_id_of(cert_der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let subject = cert.subject();
    let is_data_plane = subject
        .iter_organizational_unit()
        .any(|ou| ou.as_str().ok() == Some(DATA_PLANE_OU));
    if !is_data_plane {
        return None;
    }
    let cn = subject.iter_common_name().next()?.as_str().ok()?;
    valid_node_id(cn).then(|| cn.to_string())
}

/// Validity of a certificate as Unix seconds (not before, not after).
pub fn validity_of(cert_der: &[u8]) -> Option<(i64, i64)> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let validity = cert.validity();
    Some((
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_bad_ones_do_not_parse() {
        let pin = ca_pin(b"ca");
        let text = JoinToken::format("abcdefghijklmnopqrstuvwxyz012345", &pin);
        let token = JoinToken::parse(&text).expect("parses");
        assert_eq!(token.ca_pin, pin);
        assert_eq!(
            token.digest(),
            secret_digest("abcdefghijklmnopqrstuvwxyz012345")
        );
        for bad in [
            "",
            "tgjoin",
            "tgjoin.short.00",
            "other.abcdefghijklmnopqrstuvwxyz012345.00",
            &format!("tgjoin.abcdefghijklmnop qrst.{}", hex::encode(pin)),
            &format!("tgjoin.abcdefghijklmnopqrst.{}.x", hex::encode(pin)),
            "tgjoin.abcdefghijklmnopqrst.zz",
        ] {
            assert_eq!(JoinToken::parse(bad), Err(BadToken), "{bad}");
        }
        assert!(!BadToken.to_string().contains("abcdefgh"));
    }

    #[test]
    fn node_ids() {
        assert!(valid_node_id("dp-1"));
        assert!(!valid_node_id(""));
        assert!(!valid_node_id(" dp"));
        assert!(!valid_node_id("a\nb"));
        assert!(!valid_node_id(&"x".repeat(257)));
    }
}
