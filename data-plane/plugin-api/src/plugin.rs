//! The [`Plugin`] trait: a plugin's hooks into the phases of a request.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use http::{request, response, HeaderMap, StatusCode};

use crate::auth::Authenticator;
use crate::context::RequestCtx;
use crate::refusal::Refusal;

/// The phases of a request, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// Cheap checks that need no identity and run first: `ip-restriction`,
    /// CORS preflights (a browser sends them without credentials).
    Admit,
    /// Who is calling (`key-auth`, `jwt`: run as one any-of set).
    Authenticate,
    /// May they (`acl`).
    Authorize,
    /// Within their quota (`rate-limit`).
    RateLimit,
    /// Answer from a cache, or note what to store (`proxy-cache`): after
    /// every check, before the request is edited for the upstream.
    Cache,
    /// Edit what goes upstream (`request-transformer`).
    TransformRequest,
    /// Edit what goes back (response headers).
    TransformResponse,
    /// Runs once the response is known.
    Log,
}

impl Phase {
    pub const fn as_str(self) -> &'static str {
        match self {
            Phase::Admit => "admit",
            Phase::Authenticate => "authenticate",
            Phase::Authorize => "authorize",
            Phase::RateLimit => "rate_limit",
            Phase::Cache => "cache",
            Phase::TransformRequest => "transform_request",
            Phase::TransformResponse => "transform_response",
            Phase::Log => "log",
        }
    }
}

/// A small answer a plugin makes itself that is not a refusal (a CORS
/// preflight's 204).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// What a request-phase hook decided.
#[derive(Debug)]
pub enum Outcome {
    /// Go on with the next plugin, then the upstream.
    Continue,
    /// Refuse the request; the core answers from the refusal table.
    Refuse(Refusal),
    /// Answer the client with this reply now; the upstream is not called.
    Reply(Reply),
}

/// A hook's result: decided now, or after waiting (a Redis round trip).
/// Only waiting allocates (the boxed future).
pub enum Step<'a> {
    Done(Outcome),
    Wait(Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>),
}

impl Step<'_> {
    pub const CONTINUE: Step<'static> = Step::Done(Outcome::Continue);
}

impl From<Outcome> for Step<'_> {
    fn from(outcome: Outcome) -> Self {
        Step::Done(outcome)
    }
}

impl From<Result<(), Refusal>> for Step<'_> {
    fn from(result: Result<(), Refusal>) -> Self {
        Step::Done(match result {
            Ok(()) => Outcome::Continue,
            Err(refusal) => Outcome::Refuse(refusal),
        })
    }
}

/// One compiled plugin instance. Every hook is a no-op by default; a plugin
/// implements the phases it takes part in. Instances are built once per
/// snapshot (see [`crate::PluginFactory`]) and shared by the requests of
/// every route whose chain holds them.
pub trait Plugin: Send + Sync + std::fmt::Debug {
    /// The plugin's registered name (`key-auth`).
    fn name(&self) -> &'static str;

    /// The phase whose position in the chain this plugin takes.
    fn phase(&self) -> Phase;

    /// The request-side hook (phases up to `transform_request`).
    fn on_request<'a>(
        &'a self,
        _ctx: &'a mut RequestCtx<'_>,
        _request: &'a mut request::Parts,
    ) -> Step<'a> {
        Step::CONTINUE
    }

    /// The response-side hook, before the response head goes to the client;
    /// runs for every routed request, whoever produced the response.
    fn on_response(&self, _ctx: &mut RequestCtx<'_>, _response: &mut response::Parts) {}

    /// Whether this plugin wants the client's request body whole, and up to
    /// how many bytes: asked after the request phases, for bodies with a
    /// declared `Content-Length` within the largest such cap (a chunked or
    /// larger body streams upstream untouched).
    fn request_body_limit(
        &self,
        _ctx: &RequestCtx<'_>,
        _request: &request::Parts,
    ) -> Option<usize> {
        None
    }

    /// The request-body hook: the buffered body, which the plugin may
    /// replace (a transformer editing JSON fields); `Content-Length`
    /// follows the body. Called in chain order on plugins whose
    /// [`Plugin::request_body_limit`] the body fits.
    fn on_request_body(
        &self,
        _ctx: &mut RequestCtx<'_>,
        _request: &mut request::Parts,
        _body: &mut Bytes,
    ) {
    }

    /// Whether [`Plugin::request_body_limit`] can ever answer `Some`.
    fn has_request_body_hook(&self) -> bool {
        false
    }

    /// Whether this plugin wants the upstream response's body whole, and up
    /// to how many bytes: asked after the upstream's head arrives (never
    /// for answers the gateway made itself). The core buffers the body when
    /// some plugin wants it and it fits the largest such cap; a body over
    /// the cap (declared or found while reading) streams through untouched
    /// and [`Plugin::on_response_body`] is not called.
    fn response_body_limit(
        &self,
        _ctx: &RequestCtx<'_>,
        _response: &response::Parts,
    ) -> Option<usize> {
        None
    }

    /// The response-body hook: the buffered upstream body, which the plugin
    /// may read (a cache stores it) or replace (a transformer); the core sets
    /// `Content-Length` from the final body. Called, in reverse chain order
    /// (the response unwinds the request phases), only on plugins whose
    /// [`Plugin::response_body_limit`] the body fits.
    fn on_response_body(
        &self,
        _ctx: &mut RequestCtx<'_>,
        _response: &mut response::Parts,
        _body: &mut Bytes,
    ) {
    }

    /// Whether [`Plugin::response_body_limit`] can ever answer `Some`, so
    /// chains without body hooks never ask.
    fn has_response_body_hook(&self) -> bool {
        false
    }

    /// The `log` hook, run once per routed request with the final status.
    fn on_log(&self, _ctx: &RequestCtx<'_>, _status: StatusCode) {}

    /// Whether [`Plugin::on_response`] / [`Plugin::on_log`] do anything, so
    /// chains without such hooks skip those loops entirely.
    fn has_response_hook(&self) -> bool {
        false
    }

    /// An authentication method: the chain merges the authenticate-phase
    /// plugins of a route into one any-of set ([`crate::AuthSet`]).
    fn authenticator(&self) -> Option<&dyn Authenticator> {
        None
    }

    /// The CA certificates (DER) whose client certificates this plugin
    /// checks. When any plugin of a snapshot names some, the TLS listener
    /// asks clients for a certificate (requests, never requires: routes
    /// differ per request, a certificate is per connection) and lists their
    /// subjects as the acceptable authorities.
    fn client_ca_certificates(&self) -> &[Vec<u8>] {
        &[]
    }
}
