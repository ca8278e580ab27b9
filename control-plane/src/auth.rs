//! Bearer-token checks for the config stream (`--cluster-token`), the
//! parsing shared with the admin API's gate (`crate::access`), and the
//! [`Actor`] an admin call is made by.
//!
//! A call carries `authorization: Bearer <token>` metadata. Accepted is
//! exactly: the scheme `Bearer` (any letter case, as RFC 6750 allows), one
//! space, and the configured token byte for byte; nothing is trimmed, so the
//! token followed by a space, a tab or anything else is refused. The
//! comparison is on SHA-256 digests in constant time (`subtle`), so neither
//! the token's content nor its length leaks through timing. The token itself
//! is never logged or echoed in an error.

use std::net::SocketAddr;

use subtle::ConstantTimeEq;
use tollgate_shared::secrets::api_key_digest;
use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::access::Role;
use crate::error::CpError;

/// Who made an admin call, as the access gate established it
/// (`crate::access::gate`): handlers read it from the request's extensions
/// ([`Actor::of`]) to check a role and to record who wrote what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor {
    /// The token's name; `bootstrap` for `--admin-token`, `local` for a
    /// tokenless call on a loopback-only admin API, `cert:<name>` for an
    /// operator certificate.
    pub name: String,
    pub role: Role,
    /// The caller's address, when the listener knows it.
    pub peer: Option<SocketAddr>,
}

impl Actor {
    /// The caller of a tokenless, loopback-only admin API.
    pub fn local(peer: Option<SocketAddr>) -> Actor {
        Actor {
            name: "local".into(),
            role: Role::Admin,
            peer,
        }
    }

    /// The actor of an admin call; `local` if the call bypassed the gate
    /// (only tests that call a handler directly).
    pub fn of<T>(request: &Request<T>) -> Actor {
        request
            .extensions()
            .get::<Actor>()
            .cloned()
            .unwrap_or_else(|| Actor::local(request.remote_addr()))
    }

    /// Refuses the call unless the actor has at least `needed`; the message
    /// names the operator certificate when one authenticated the call.
    pub fn require(&self, needed: Role, what: &str) -> Result<(), CpError> {
        match (
            self.role.require(needed, what),
            self.name.strip_prefix("cert:"),
        ) {
            (Err(_), Some(operator)) => Err(CpError::PermissionDenied(format!(
                "{what} needs role {needed}; the operator certificate of {operator:?} has role {}",
                self.role
            ))),
            (result, _) => result,
        }
    }

    /// The peer as text for logs and the audit log ("-" when unknown).
    pub fn peer_text(&self) -> String {
        self.peer.map_or_else(|| "-".into(), |p| p.to_string())
    }
}

/// The token of an `authorization` value: exactly the scheme `Bearer` (any
/// letter case), one space, and the token; nothing trimmed.
pub fn bearer_token(value: &[u8]) -> Result<&[u8], CpError> {
    match value.split_at_checked(7) {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case(b"Bearer ") => Ok(token),
        _ => Err(CpError::Unauthenticated(
            "authorization metadata must be \"Bearer <token>\"",
        )),
    }
}

/// An interceptor that lets a call through only with the right token; with no
/// token configured it lets everything through.
#[derive(Clone)]
pub struct BearerAuth {
    expected: Option<[u8; 32]>,
}

impl BearerAuth {
    pub fn new(token: Option<&str>) -> BearerAuth {
        BearerAuth {
            expected: token.map(|t| api_key_digest(t.as_bytes())),
        }
    }

    /// Checks the `authorization` metadata of a call.
    pub fn check<T>(&self, request: &Request<T>) -> Result<(), CpError> {
        let Some(expected) = &self.expected else {
            return Ok(());
        };
        let presented = request
            .metadata()
            .get("authorization")
            .ok_or(CpError::Unauthenticated(
                "missing authorization metadata (Bearer token)",
            ))?;
        let token = bearer_token(presented.as_bytes())?;
        if bool::from(api_key_digest(token).ct_eq(expected)) {
            Ok(())
        } else {
            Err(CpError::Unauthenticated("invalid token"))
        }
    }
}

impl Interceptor for BearerAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        self.check(&request)?;
        Ok(request)
    }
}

/// Checks a configured token: it must fit in a header value.
pub fn check_token_text(flag: &str, token: &str) -> Result<(), CpError> {
    if token.is_empty() || !token.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        return Err(CpError::Startup(format!(
            "{flag}: the token must be printable ASCII without spaces"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(value: Option<&str>) -> Request<()> {
        let mut request = Request::new(());
        if let Some(value) = value {
            request
                .metadata_mut()
                .insert("authorization", value.parse().expect("ascii"));
        }
        request
    }

    #[test]
    fn checks_the_bearer_token() {
        let auth = BearerAuth::new(Some("s3cret-token"));
        assert!(auth.check(&request(Some("Bearer s3cret-token"))).is_ok());
        assert!(auth.check(&request(Some("bearer s3cret-token"))).is_ok());
        for bad in [
            None,
            Some("Bearer nope"),
            Some("s3cret-token"),
            Some("Basic x"),
            Some("Bearer s3cret-token "),
            Some("Bearer s3cret-token\t"),
            Some("Bearer  s3cret-token"),
            Some("Bearer s3cret-tokenX"),
            Some("Bearer s3cret-toke"),
            Some("Bearer"),
            Some(""),
        ] {
            let err = auth.check(&request(bad)).expect_err("must fail");
            assert!(matches!(err, CpError::Unauthenticated(_)));
            assert!(!err.to_string().contains("s3cret"));
        }
        assert!(BearerAuth::new(None).check(&request(None)).is_ok());
    }
}
