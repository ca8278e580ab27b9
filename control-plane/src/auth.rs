//! Bearer-token checks for the admin API (`--admin-token`) and the config
//! stream (`--cluster-token`).
//!
//! A call carries `authorization: Bearer <token>` metadata. Accepted is
//! exactly: the scheme `Bearer` (any letter case, as RFC 6750 allows), one
//! space, and the configured token byte for byte; nothing is trimmed, so the
//! token followed by a space, a tab or anything else is refused. The
//! comparison is on SHA-256 digests in constant time (`subtle`), so neither
//! the token's content nor its length leaks through timing. The token itself
//! is never logged or echoed in an error.

use subtle::ConstantTimeEq;
use tollgate_shared::secrets::api_key_digest;
use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::error::CpError;

/// Who made an admin call, as the interceptor established it: handlers read it
/// from the request's extensions (`Actor::of`) to record who wrote a revision.
/// "local" when the admin API runs without a token (loopback only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor {
    pub name: String,
}

impl Actor {
    /// The actor of an admin call; "local" if the call bypassed the interceptor.
    pub fn of<T>(request: &Request<T>) -> Actor {
        request
            .extensions()
            .get::<Actor>()
            .cloned()
            .unwrap_or_else(|| Actor {
                name: "local".into(),
            })
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
        let value = presented.as_bytes();
        let token = match value.split_at_checked(7) {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case(b"Bearer ") => token,
            _ => {
                return Err(CpError::Unauthenticated(
                    "authorization metadata must be \"Bearer <token>\"",
                ))
            }
        };
        if bool::from(api_key_digest(token).ct_eq(expected)) {
            Ok(())
        } else {
            Err(CpError::Unauthenticated("invalid token"))
        }
    }
}

impl Interceptor for BearerAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        self.check(&request)?;
        let name = if self.expected.is_some() {
            "admin"
        } else {
            "local"
        };
        request.extensions_mut().insert(Actor { name: name.into() });
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
