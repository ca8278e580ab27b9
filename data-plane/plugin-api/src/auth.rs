//! The authenticate phase as a whole: a route's authentication methods
//! (`key-auth`, `jwt`, whichever plugins provide them, from any level) run as
//! one set.
//!
//! Semantics, in order:
//!
//! 1. Headers the methods set upstream (JWT claims) are removed from the
//!    client's request first; `X-Consumer-*` are removed by the core from
//!    every request.
//! 2. Each method looks for its credential. The first that authenticates a
//!    consumer wins; the rest do not run (a cheap key check spares a
//!    signature check).
//! 3. If none authenticates but some credential was presented and is wrong,
//!    the request is refused for that credential, even if an `anonymous`
//!    consumer is configured: a client with a broken key hears about it
//!    instead of being silently downgraded.
//! 4. If no credential was presented at all, the first method's `anonymous`
//!    consumer (if any) is used; otherwise 401, with one `WWW-Authenticate`
//!    challenge per scheme the route accepts, in the methods' order.

use std::sync::Arc;

use http::header::{HeaderName, HeaderValue, WWW_AUTHENTICATE};
use http::request;

use crate::context::{Identity, RequestCtx};
use crate::identity::X_ANONYMOUS_CONSUMER;
use crate::plugin::{Phase, Plugin, Step};
use crate::refusal::{Refusal, RefusalKind};

/// What one authentication method found.
#[derive(Debug)]
pub enum AuthAttempt {
    /// A consumer proven by a credential; its identity headers are set.
    Authenticated(Identity),
    /// The request carries no credential for this method.
    NoCredential,
    /// A credential was presented and is not valid.
    Rejected(Refusal),
}

/// One authentication method.
pub trait Authenticator: Send + Sync + std::fmt::Debug {
    /// Looks for this method's credential; on success writes the identity
    /// headers (and any claim headers) on `request`.
    fn authenticate(&self, request: &mut request::Parts) -> AuthAttempt;

    /// The `WWW-Authenticate` challenge of this method's scheme.
    fn challenge(&self) -> HeaderValue;

    /// The `anonymous` consumer of this method, if configured: writes its
    /// identity headers and returns its identity.
    fn anonymous(&self, _request: &mut request::Parts) -> Option<Identity> {
        None
    }

    /// Whether [`Authenticator::anonymous`] has a consumer.
    fn has_anonymous(&self) -> bool {
        false
    }

    /// Headers this method sets upstream, removed from client requests.
    fn owned_headers(&self) -> &[HeaderName] {
        &[]
    }

    /// See [`Plugin::client_ca_certificates`].
    fn client_ca_certificates(&self) -> &[Vec<u8>] {
        &[]
    }
}

/// The authentication methods of one route, run as one phase. Built when
/// the snapshot compiles.
#[derive(Debug, Clone)]
pub struct AuthSet {
    methods: Box<[Arc<dyn Plugin>]>,
    name: &'static str,
    challenges: Box<[HeaderValue]>,
    /// Index of the first method with an anonymous consumer.
    anonymous: Option<usize>,
    owned_headers: Box<[HeaderName]>,
    /// The union of the methods' client-certificate CAs (DER).
    client_ca_certificates: Box<[Vec<u8>]>,
}

const ANONYMOUS_TRUE: HeaderValue = HeaderValue::from_static("true");

impl AuthSet {
    /// A set of the given plugins (each must provide an authenticator), in
    /// the order they are tried.
    pub fn new(methods: Vec<Arc<dyn Plugin>>) -> AuthSet {
        let mut challenges: Vec<HeaderValue> = Vec::new();
        let mut owned_headers: Vec<HeaderName> = Vec::new();
        let mut anonymous = None;
        let mut names: Vec<&'static str> = Vec::new();
        let mut client_ca_certificates: Vec<Vec<u8>> = Vec::new();
        for (i, method) in methods.iter().enumerate() {
            let Some(auth) = method.authenticator() else {
                continue;
            };
            if !names.contains(&method.name()) {
                names.push(method.name());
            }
            for subject in auth.client_ca_certificates() {
                if !client_ca_certificates.contains(subject) {
                    client_ca_certificates.push(subject.clone());
                }
            }
            // An empty challenge: the method has no HTTP scheme (a TLS
            // client certificate), so nothing is announced for it.
            let challenge = auth.challenge();
            if !challenge.is_empty() && !challenges.contains(&challenge) {
                challenges.push(challenge);
            }
            for name in auth.owned_headers() {
                if !owned_headers.contains(name) {
                    owned_headers.push(name.clone());
                }
            }
            if anonymous.is_none() && auth.has_anonymous() {
                anonymous = Some(i);
            }
        }
        AuthSet {
            name: match names.as_slice() {
                [single] => single,
                _ => "authenticate",
            },
            methods: methods.into_boxed_slice(),
            challenges: challenges.into_boxed_slice(),
            anonymous,
            owned_headers: owned_headers.into_boxed_slice(),
            client_ca_certificates: client_ca_certificates.into_boxed_slice(),
        }
    }

    pub fn len(&self) -> usize {
        self.methods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.methods.is_empty()
    }

    /// Runs the methods; on success the identity headers are set on the
    /// request and the identity is returned for the request context.
    pub fn authenticate(&self, request: &mut request::Parts) -> Result<Identity, Refusal> {
        for name in self.owned_headers.iter() {
            request.headers.remove(name);
        }
        let mut refusal = None;
        for method in self.methods.iter() {
            let Some(auth) = method.authenticator() else {
                continue;
            };
            match auth.authenticate(request) {
                AuthAttempt::Authenticated(identity) => return Ok(identity),
                AuthAttempt::NoCredential => {}
                AuthAttempt::Rejected(error) => {
                    refusal.get_or_insert(error);
                }
            }
        }
        if let Some(error) = refusal {
            return Err(error);
        }
        let anonymous = self
            .anonymous
            .and_then(|i| self.methods.get(i))
            .and_then(|method| method.authenticator())
            .and_then(|auth| auth.anonymous(request));
        match anonymous {
            Some(identity) => {
                request.headers.insert(X_ANONYMOUS_CONSUMER, ANONYMOUS_TRUE);
                Ok(identity)
            }
            None => {
                let mut refusal = Refusal::new(RefusalKind::MissingCredential);
                for challenge in self.challenges.iter() {
                    refusal = refusal.with_header(WWW_AUTHENTICATE, challenge.clone());
                }
                Err(refusal)
            }
        }
    }
}

impl Plugin for AuthSet {
    fn name(&self) -> &'static str {
        self.name
    }

    fn phase(&self) -> Phase {
        Phase::Authenticate
    }

    fn client_ca_certificates(&self) -> &[Vec<u8>] {
        &self.client_ca_certificates
    }

    fn on_request<'a>(
        &'a self,
        ctx: &'a mut RequestCtx<'_>,
        request: &'a mut request::Parts,
    ) -> Step<'a> {
        match self.authenticate(request) {
            Ok(identity) => {
                ctx.consumer = Some(identity);
                Step::CONTINUE
            }
            Err(refusal) => Err(refusal).into(),
        }
    }
}
