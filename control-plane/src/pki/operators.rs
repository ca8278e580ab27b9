//! Operator client certificates: an alternative to admin tokens on a TLS
//! admin API.
//!
//! An operator certificate names its holder and role in a URI SAN,
//! `urn:tollgate:operator:<name>:<role>` (role `viewer`, `editor` or
//! `admin`, as admin tokens have). The cluster CA issues them through
//! `CreateOperatorCert` (`tollgatectl operators cert create NAME --role
//! ROLE`): the key is made on the operator's machine and only a CSR is sent;
//! the certificate gets OU [`OPERATOR_OU`], EKU `clientAuth` only and the
//! lifetime asked for. Operators with a PKI of their own give its CA with
//! `--admin-client-ca` and issue certificates with the same URI SAN.
//!
//! Why a URI SAN rather than the subject: a SAN is the field a CA policy
//! controls (name constraints), and the same convention works for any CA.
//!
//! What is never an operator certificate: a data plane's (OU
//! [`DATA_PLANE_OU`]), even though it chains to the same CA; and operator
//! certificates never authenticate on the config stream (they name no data
//! plane). The handshake already checked the chain, validity and EKU; the
//! admin gate checks per call that the certificate is not revoked
//! ([`OperatorBook`], kept in sled, so a revocation applies from the very
//! next call, also on connections opened before) and not expired.

use std::collections::{BTreeMap, HashSet};
use std::sync::RwLock;

use tollgate_shared::cluster_pki::{DATA_PLANE_OU, OPERATOR_URI_PREFIX};
use tollgate_shared::proto::admin as pb;
use x509_parser::extensions::GeneralName;

use crate::access::tokens::{check_name, now_ms};
use crate::access::Role;
use crate::error::CpError;

/// The sled tree of issued operator certificates, keyed by serial (hex).
pub const OPERATOR_CERTS_TREE: &str = "operator_certs";
/// The sled tree of revoked serials (hex), issued here or by another CA.
pub const REVOKED_OPERATORS_TREE: &str = "revoked_operator_certs";

/// Longest and shortest lifetime of an operator certificate.
pub const MAX_TTL_SECS: u64 = 365 * 24 * 3600;
pub const MIN_TTL_SECS: u64 = 60;

/// Who an operator certificate names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorId {
    pub name: String,
    pub role: Role,
    /// The certificate's serial, lower-case hex.
    pub serial: String,
    /// Unix seconds.
    pub not_after: i64,
}

/// The operator a client certificate (DER) names, or why it names none.
pub fn identify(leaf: &[u8]) -> Result<OperatorId, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|_| "the client certificate does not parse".to_string())?;
    if cert
        .subject()
        .iter_organizational_unit()
        .any(|ou| ou.as_str().ok() == Some(DATA_PLANE_OU))
    {
        return Err("a data plane's certificate is not an operator certificate".into());
    }
    let uris: Vec<&str> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::URI(uri) => Some(*uri),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let mut named = uris
        .iter()
        .filter_map(|uri| uri.strip_prefix(OPERATOR_URI_PREFIX));
    let (Some(rest), None) = (named.next(), named.next()) else {
        return Err(format!(
            "the client certificate must name exactly one operator in a URI SAN \
             {OPERATOR_URI_PREFIX}<name>:<role>"
        ));
    };
    let (name, role) = rest
        .rsplit_once(':')
        .ok_or_else(|| format!("{OPERATOR_URI_PREFIX}{rest}: expected <name>:<role>"))?;
    check_name(name).map_err(|e| format!("operator certificate: {e}"))?;
    let role = Role::parse(role).ok_or_else(|| {
        format!("operator certificate: role must be viewer, editor or admin (got {role:?})")
    })?;
    Ok(OperatorId {
        name: name.to_string(),
        role,
        serial: serial_hex(cert.raw_serial()),
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// A serial as lower-case hex without leading zero bytes.
pub fn serial_hex(raw: &[u8]) -> String {
    let start = raw.iter().position(|b| *b != 0).unwrap_or(raw.len());
    hex::encode(&raw[start..])
}

/// A serial as an operator types it: hex, with or without colons, `0x` or
/// leading zeros, any case.
fn normalize_serial(text: &str) -> Option<String> {
    let text = text.trim().trim_start_matches("0x").replace(':', "");
    if text.is_empty() || text.len() > 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let text = text.to_ascii_lowercase();
    let text = text.trim_start_matches('0');
    let padded = if text.len() % 2 == 1 {
        format!("0{text}")
    } else {
        text.to_string()
    };
    Some(padded)
}

/// One issued certificate (never the key: it never reaches the server).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct StoredCert {
    name: String,
    role: Role,
    serial: String,
    created_ms: i64,
    expires_ms: i64,
    created_by: String,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct StoredRevocation {
    revoked_ms: i64,
    revoked_by: String,
}

impl StoredCert {
    fn to_pb(&self, revoked: bool) -> pb::OperatorCert {
        pb::OperatorCert {
            name: self.name.clone(),
            role: self.role.to_pb() as i32,
            serial: self.serial.clone(),
            created_ms: self.created_ms,
            expires_ms: self.expires_ms,
            created_by: self.created_by.clone(),
            revoked,
        }
    }
}

/// Issued operator certificates and the revoked serials.
pub struct OperatorBook {
    certs: sled::Tree,
    revoked_tree: sled::Tree,
    revoked: RwLock<HashSet<String>>,
}

fn unreadable(e: serde_json::Error) -> CpError {
    CpError::Internal(format!("unreadable operator certificate record: {e}"))
}

impl OperatorBook {
    /// Loads the revoked serials. Blocking (reads sled).
    pub fn open(certs: sled::Tree, revoked_tree: sled::Tree) -> Result<OperatorBook, CpError> {
        let mut revoked = HashSet::new();
        for item in revoked_tree.iter() {
            let (key, _) = item?;
            revoked.insert(String::from_utf8_lossy(&key).into_owned());
        }
        Ok(OperatorBook {
            certs,
            revoked_tree,
            revoked: RwLock::new(revoked),
        })
    }

    /// Whether the certificate with this serial is revoked.
    pub fn is_revoked(&self, serial: &str) -> bool {
        self.revoked
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(serial)
    }

    /// Records an issued certificate.
    pub async fn record(
        &self,
        id: &OperatorId,
        created_by: &str,
    ) -> Result<pb::OperatorCert, CpError> {
        let stored = StoredCert {
            name: id.name.clone(),
            role: id.role,
            serial: id.serial.clone(),
            created_ms: now_ms(),
            expires_ms: id.not_after.saturating_mul(1000),
            created_by: created_by.to_string(),
        };
        let value = serde_json::to_vec(&stored)
            .map_err(|e| CpError::Internal(format!("cannot encode a certificate record: {e}")))?;
        self.certs.insert(stored.serial.as_bytes(), value)?;
        self.certs.flush_async().await?;
        Ok(stored.to_pb(false))
    }

    /// The issued certificates (by name, then newest first) and the revoked
    /// serials issued elsewhere.
    pub fn list(&self) -> Result<pb::ListOperatorCertsResponse, CpError> {
        let revoked = self
            .revoked
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut by_name: BTreeMap<(String, std::cmp::Reverse<i64>, String), pb::OperatorCert> =
            BTreeMap::new();
        let mut known = HashSet::new();
        for item in self.certs.iter() {
            let (_, value) = item?;
            let stored: StoredCert = serde_json::from_slice(&value).map_err(unreadable)?;
            known.insert(stored.serial.clone());
            let view = stored.to_pb(revoked.contains(&stored.serial));
            by_name.insert(
                (
                    stored.name,
                    std::cmp::Reverse(stored.created_ms),
                    stored.serial,
                ),
                view,
            );
        }
        let mut revoked_serials: Vec<String> = revoked.difference(&known).cloned().collect();
        revoked_serials.sort();
        Ok(pb::ListOperatorCertsResponse {
            certs: by_name.into_values().collect(),
            revoked_serials,
        })
    }

    /// Revokes every certificate issued to an operator name, or one serial
    /// (also one another CA issued). Refused from the next call on.
    pub async fn revoke(
        &self,
        name_or_serial: &str,
        by: &str,
    ) -> Result<Vec<pb::OperatorCert>, CpError> {
        let mut serials = Vec::new();
        let mut revoked = Vec::new();
        for item in self.certs.iter() {
            let (_, value) = item?;
            let stored: StoredCert = serde_json::from_slice(&value).map_err(unreadable)?;
            if stored.name == name_or_serial {
                serials.push(stored.serial.clone());
                revoked.push(stored.to_pb(true));
            }
        }
        if serials.is_empty() {
            let Some(serial) = normalize_serial(name_or_serial) else {
                return Err(CpError::BadRequest(format!(
                    "name_or_serial: no operator certificate named {}, and not a serial (hex)",
                    tollgate_shared::limits::show(name_or_serial)
                )));
            };
            if let Some(value) = self.certs.get(serial.as_bytes())? {
                let stored: StoredCert = serde_json::from_slice(&value).map_err(unreadable)?;
                revoked.push(stored.to_pb(true));
            }
            serials.push(serial);
        }
        let record = serde_json::to_vec(&StoredRevocation {
            revoked_ms: now_ms(),
            revoked_by: by.to_string(),
        })
        .map_err(|e| CpError::Internal(format!("cannot encode a revocation: {e}")))?;
        for serial in &serials {
            self.revoked_tree
                .insert(serial.as_bytes(), record.as_slice())?;
        }
        self.revoked_tree.flush_async().await?;
        self.revoked
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .extend(serials);
        Ok(revoked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_normalized() {
        assert_eq!(serial_hex(&[0, 0x0a, 0xff]), "0aff");
        assert_eq!(normalize_serial("0A:FF").as_deref(), Some("0aff"));
        assert_eq!(normalize_serial("0x00aff").as_deref(), Some("0aff"));
        assert_eq!(normalize_serial("alice"), None);
        assert_eq!(normalize_serial(""), None);
    }

    #[tokio::test]
    async fn revocation_by_name_or_serial_is_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::open(dir.path()).expect("sled");
        let open = || {
            OperatorBook::open(
                db.open_tree(OPERATOR_CERTS_TREE).expect("tree"),
                db.open_tree(REVOKED_OPERATORS_TREE).expect("tree"),
            )
            .expect("open")
        };
        let book = open();
        let id = |name: &str, serial: &str| OperatorId {
            name: name.into(),
            role: Role::Viewer,
            serial: serial.into(),
            not_after: 4_000_000_000,
        };
        book.record(&id("alice", "0a01"), "bootstrap")
            .await
            .expect("record");
        book.record(&id("alice", "0a02"), "bootstrap")
            .await
            .expect("record");
        book.record(&id("bob", "0b01"), "bootstrap")
            .await
            .expect("record");
        assert!(!book.is_revoked("0a01"));
        let revoked = book.revoke("alice", "root").await.expect("revoke");
        assert_eq!(revoked.len(), 2);
        assert!(book.is_revoked("0a01") && book.is_revoked("0a02"));
        assert!(!book.is_revoked("0b01"));
        book.revoke("0xFFEE", "root").await.expect("foreign serial");
        assert!(book.revoke("nobody", "root").await.is_err());
        let again = open();
        assert!(again.is_revoked("0a02") && again.is_revoked("ffee"));
        let list = again.list().expect("list");
        assert_eq!(list.certs.len(), 3);
        assert_eq!(list.revoked_serials, vec!["ffee".to_string()]);
    }
}
