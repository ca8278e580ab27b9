//! The per-request context every plugin phase sees.
//!
//! Borrowed from the compiled snapshot the request holds (route and service
//! names), so building one costs no allocation. The authenticate phase fills
//! [`RequestCtx::consumer`], which the core and several plugins read (ACL,
//! rate-limit scopes, metrics, the access log); state only one plugin needs
//! (the rate limiter's quota) goes in [`RequestCtx::ext`].

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use http::HeaderValue;

use crate::extensions::Extensions;

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
pub struct RequestCtx<'a> {
    /// The client's address, resolved through `--trusted-proxies`.
    pub client_ip: IpAddr,
    /// The request id sent upstream and echoed in gateway-made responses.
    pub request_id: &'a HeaderValue,
    pub route_name: &'a str,
    pub service_name: &'a str,
    /// Set by the authenticate phase; `None` until then (or when no
    /// authentication plugin runs on the route).
    pub consumer: Option<Identity>,
    pub started: Instant,
    /// Per-plugin request state, by type.
    pub ext: Extensions,
}

impl<'a> RequestCtx<'a> {
    /// A context for one request (no consumer, no extensions yet).
    pub fn new(
        client_ip: IpAddr,
        request_id: &'a HeaderValue,
        route_name: &'a str,
        service_name: &'a str,
        started: Instant,
    ) -> Self {
        RequestCtx {
            client_ip,
            request_id,
            route_name,
            service_name,
            consumer: None,
            started,
            ext: Extensions::new(),
        }
    }
}
