//! The three admin roles and the least role each admin call needs.

use tollgate_shared::proto::admin as pb;

use crate::error::CpError;

/// What a caller may do; each role includes the ones before it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads: get, list, export, dataplanes, history, audit, dry runs.
    Viewer,
    /// Writes: create, update, delete, apply, rollback, cache purges.
    Editor,
    /// Tokens and cluster operations.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Editor, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Editor => "editor",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.as_str() == text)
    }

    pub fn to_pb(self) -> pb::Role {
        match self {
            Role::Viewer => pb::Role::Viewer,
            Role::Editor => pb::Role::Editor,
            Role::Admin => pb::Role::Admin,
        }
    }

    pub fn from_pb(raw: i32) -> Result<Role, CpError> {
        match pb::Role::try_from(raw) {
            Ok(pb::Role::Viewer) => Ok(Role::Viewer),
            Ok(pb::Role::Editor) => Ok(Role::Editor),
            Ok(pb::Role::Admin) => Ok(Role::Admin),
            _ => Err(CpError::BadRequest(
                "role: must be one of viewer, editor, admin".into(),
            )),
        }
    }

    /// Refuses a caller whose role is below `needed`, naming both.
    pub fn require(self, needed: Role, what: &str) -> Result<(), CpError> {
        if self >= needed {
            Ok(())
        } else {
            Err(CpError::PermissionDenied(format!(
                "{what} needs role {}; this token has role {}",
                needed.as_str(),
                self.as_str()
            )))
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The least role an admin call (the last segment of its gRPC path) needs.
/// Anything not listed needs `admin`: closed by default.
pub fn required(method: &str) -> Role {
    match method {
        // Reads. Apply is listed here because its dry run (`tollgatectl
        // diff`) is a read: the handler requires `editor` for a real one.
        "Get" | "List" | "Export" | "ListDataPlanes" | "ListAudit" | "History" | "GetRevision"
        | "GetStats" | "WaitForVersion" | "Apply" | "ListJoinTokens" => Role::Viewer,
        "Create" | "Update" | "Delete" | "Rollback" | "PurgeCache" => Role::Editor,
        // Tokens, join tokens, revocations, operator certificates
        // (CreateOperatorCert, ListOperatorCerts, RevokeOperatorCert).
        _ => Role::Admin,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_and_unknown_calls_are_closed() {
        assert!(Role::Admin > Role::Editor && Role::Editor > Role::Viewer);
        assert_eq!(required("Get"), Role::Viewer);
        assert_eq!(required("Delete"), Role::Editor);
        assert_eq!(required("CreateToken"), Role::Admin);
        assert_eq!(required("CreateJoinToken"), Role::Admin);
        assert_eq!(required("RevokeDataPlane"), Role::Admin);
        assert_eq!(required("ListJoinTokens"), Role::Viewer);
        // Operator certificates are admin business, as tokens are.
        assert_eq!(required("CreateOperatorCert"), Role::Admin);
        assert_eq!(required("ListOperatorCerts"), Role::Admin);
        assert_eq!(required("RevokeOperatorCert"), Role::Admin);
        assert_eq!(required("SomethingAddedLater"), Role::Admin);
        let refused = Role::Viewer
            .require(Role::Editor, "Delete")
            .expect_err("viewer cannot write");
        assert_eq!(
            refused.to_string(),
            "Delete needs role editor; this token has role viewer"
        );
        assert!(Role::Admin.require(Role::Editor, "Delete").is_ok());
        for role in Role::ALL {
            assert_eq!(Role::parse(role.as_str()), Some(role));
            assert_eq!(Role::from_pb(role.to_pb() as i32).ok(), Some(role));
        }
        assert!(Role::from_pb(0).is_err());
    }
}
