//! The per-request context every plugin phase sees.
//!
//! Borrowed from the compiled snapshot the request holds (route and service
//! names), so building one costs no allocation. Authentication (next issue)
//! fills [`RequestContext::consumer`]; rate limiting keys its counters from
//! the consumer, the route, the service or [`RequestContext::client_ip`].

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use http::HeaderValue;

use super::rate_limit::Quota;

/// Who is calling, once an authentication plugin has decided.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The consumer's name (forwarded as `X-Consumer-Name`).
    pub consumer: Arc<str>,
    /// The consumer's groups (for `acl`, forwarded as `X-Consumer-Groups`).
    pub groups: Arc<[Arc<str>]>,
    /// A stable, non-secret id of the credential used (rate-limit scope
    /// `credential`); never the secret itself.
    pub credential: Option<Arc<str>>,
    /// Whether this is the route's `anonymous` consumer.
    pub anonymous: bool,
}

/// State shared by the phases of one request.
#[derive(Debug)]
pub struct RequestContext<'a> {
    /// The client's address, resolved through `--trusted-proxies`.
    pub client_ip: IpAddr,
    /// The request id sent upstream and echoed in gateway-made responses.
    pub request_id: &'a HeaderValue,
    pub route_name: &'a str,
    pub service_name: &'a str,
    /// Set by the authenticate phase; `None` until then (or when no
    /// authentication plugin runs on the route).
    pub consumer: Option<Identity>,
    /// The rate-limit quota to report on the response the client gets,
    /// whoever produced it (upstream, gateway error or a plugin).
    pub quota: Option<Quota>,
    pub started: Instant,
}
