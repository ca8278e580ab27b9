//! The admin API's front door: authenticates the bearer token or the
//! operator client certificate (on a TLS admin listener,
//! `crate::pki::operators`), checks the role the call needs, and hands the
//! handler an [`Actor`].
//!
//! A token, when sent, decides (a certificate is per connection, a token per
//! call: the explicit one wins). Without a token, a verified operator
//! certificate identifies the caller as `cert:<name>` with its role, unless
//! it is revoked or expired; a client certificate that names no operator (a
//! data plane's, or one without the operator URI SAN) is refused rather than
//! ignored, even on a tokenless loopback admin API.
//!
//! It is a tower service around the generated `AdminServer` rather than a
//! tonic interceptor because the role depends on the call, and only the
//! HTTP request knows the gRPC method's path.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::body::BoxBody;
use tonic::server::NamedService;
use tonic::transport::server::TcpConnectInfo;

use super::{roles, TokenBook};
use crate::auth::{bearer_token, Actor};
use crate::error::CpError;
use crate::listener::PeerOperator;
use crate::metrics::CpMetrics;
use crate::pki::operators::OperatorBook;

#[derive(Clone)]
pub struct AdminGate<S> {
    inner: S,
    tokens: Arc<TokenBook>,
    metrics: Arc<CpMetrics>,
    operators: Option<Arc<OperatorBook>>,
}

impl<S> AdminGate<S> {
    pub fn new(inner: S, tokens: Arc<TokenBook>, metrics: Arc<CpMetrics>) -> Self {
        AdminGate {
            inner,
            tokens,
            metrics,
            operators: None,
        }
    }

    /// Checks operator certificates against `operators`' revocations.
    pub fn with_operators(mut self, operators: Arc<OperatorBook>) -> Self {
        self.operators = Some(operators);
        self
    }

    /// The actor of a verified operator certificate, if the connection
    /// presented one.
    fn certificate_actor(
        &self,
        request: &http::Request<BoxBody>,
        peer: Option<std::net::SocketAddr>,
    ) -> Option<Result<Actor, Refusal>> {
        let PeerOperator(operator) = request.extensions().get::<PeerOperator>()?;
        let refused = |message: String| {
            Some(Err(Refusal::unauthenticated(CpError::CertificateRefused(
                message,
            ))))
        };
        let operator = match operator.as_ref() {
            Ok(operator) => operator,
            Err(reason) => return refused(reason.clone()),
        };
        let revoked = self
            .operators
            .as_ref()
            .is_none_or(|book| book.is_revoked(&operator.serial));
        if revoked {
            return refused(format!(
                "the operator certificate of {:?} (serial {}) is revoked",
                operator.name, operator.serial
            ));
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        if operator.not_after < now {
            return refused(format!(
                "the operator certificate of {:?} (serial {}) has expired",
                operator.name, operator.serial
            ));
        }
        Some(Ok(Actor {
            name: format!("cert:{}", operator.name),
            role: operator.role,
            peer,
        }))
    }

    /// Who calls, and whether they may make this call.
    fn admit(&self, request: &http::Request<BoxBody>) -> Result<Actor, Refusal> {
        let peer = request
            .extensions()
            .get::<TcpConnectInfo>()
            .and_then(|info| info.remote_addr());
        let call = request.uri().path().rsplit('/').next().unwrap_or_default();
        let actor = match request.headers().get(http::header::AUTHORIZATION) {
            None => match self.certificate_actor(request, peer) {
                Some(actor) => actor?,
                None if !self.tokens.required() => Actor::local(peer),
                None => {
                    return Err(Refusal::unauthenticated(CpError::Unauthenticated(
                        "missing authorization metadata (Bearer token) or operator client \
                         certificate",
                    )))
                }
            },
            Some(value) => {
                let token = bearer_token(value.as_bytes()).map_err(Refusal::unauthenticated)?;
                match self.tokens.identify(token) {
                    Some(holder) => Actor {
                        name: holder.name,
                        role: holder.role,
                        peer,
                    },
                    // Tokenless loopback mode: a token that names nobody
                    // (a stale TOLLGATE_ADMIN_TOKEN) changes nothing.
                    None if !self.tokens.required() => Actor::local(peer),
                    None => {
                        return Err(Refusal::unauthenticated(CpError::Unauthenticated(
                            "invalid token",
                        )))
                    }
                }
            }
        };
        if let Err(error) = actor.require(roles::required(call), call) {
            return Err(Refusal {
                error,
                reason: "permission_denied",
                caller: Some(actor.name),
            });
        }
        Ok(actor)
    }
}

/// Why the gate refused a call.
struct Refusal {
    error: CpError,
    /// The metric label.
    reason: &'static str,
    /// The token's name, when the token was valid but its role too low.
    caller: Option<String>,
}

impl Refusal {
    fn unauthenticated(error: CpError) -> Refusal {
        Refusal {
            error,
            reason: "unauthenticated",
            caller: None,
        }
    }
}

impl<S: NamedService> NamedService for AdminGate<S> {
    const NAME: &'static str = S::NAME;
}

type GateFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<BoxBody>, Infallible>> + Send + 'static>>;

impl<S> tonic::codegen::Service<http::Request<BoxBody>> for AdminGate<S>
where
    S: tonic::codegen::Service<
            http::Request<BoxBody>,
            Response = http::Response<BoxBody>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<BoxBody>;
    type Error = Infallible;
    type Future = GateFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<BoxBody>) -> Self::Future {
        match self.admit(&request) {
            Ok(actor) => {
                request.extensions_mut().insert(actor);
                // The clone that was made ready serves this call (tower's contract).
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Box::pin(inner.call(request))
            }
            Err(Refusal {
                error,
                reason,
                caller,
            }) => {
                let peer = request
                    .extensions()
                    .get::<TcpConnectInfo>()
                    .and_then(|info| info.remote_addr())
                    .map_or_else(|| "-".to_string(), |p| p.to_string());
                tracing::warn!(
                    %peer,
                    call = request.uri().path(),
                    reason,
                    caller = caller.as_deref().unwrap_or("-"),
                    error = %error,
                    "admin call refused"
                );
                self.metrics.admin_refused(reason);
                let status = tonic::Status::from(error);
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}
