//! One request as operators see it: its server span, its metrics and its
//! access-log line.
//!
//! [`serve`] wraps the proxy handler. Before it runs, the request span is
//! opened (continuing a W3C `traceparent` when the client sent one); while it
//! runs, the handler fills an [`Exchange`] (matched route, client IP,
//! consumer, upstream address and latency, and for the log the host, request
//! id and the URI as received, handed over by move once the upstream URI
//! replaces it); when it returns, the response body is wrapped in an
//! [`ObservedBody`], which counts the bytes sent and, when the body ends (or is
//! dropped), records the request's metrics, closes its span and queues its
//! access-log line. Recording at the end is what makes the duration and byte
//! counts cover the whole streamed response.
//!
//! Costs on the hot path when tracing and the access log are off: two
//! `Instant`s, a disabled span (one atomic load), one `Arc` clone of the
//! route's metric handles, and atomic increments. With the access log on,
//! add three reference-counted clones (host, upstream address, the log
//! handle), a copy of the request id, and the line's formatting into the
//! worker's log buffer (see [`super::access_log`]).

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::Authority;
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tollgate_shared::telemetry::{self as shared, TRACE_TARGET};
use tracing::Instrument;

use tollgate_plugin_api::request_id::{KeptRequestId, RequestId};
use tollgate_plugin_api::RefusalKind;
use tollgate_telemetry::access_log::{AccessLog, AccessLogRecord};
use tollgate_telemetry::metrics::{self, RouteMetrics};

use crate::body::ResponseBody;
use crate::forward::Peer;
use crate::handler::{handle, ProxyState};

/// The access log's `error` for a response whose body broke off mid-stream.
pub const UPSTREAM_BODY_ERROR: &str = "upstream_body_error";

/// What the handler learns about a request that the metrics and the access
/// log need. Fields the access log alone needs are only kept when it is on.
#[derive(Debug, Default)]
pub struct Exchange {
    log: bool,
    /// The matched route's metric handles (`None`: nothing matched).
    pub route: Option<Arc<RouteMetrics>>,
    pub client_ip: Option<IpAddr>,
    /// What the client's TLS connection negotiated (`None`: plaintext).
    pub tls: Option<crate::tls::TlsInfo>,
    pub upstream_latency: Option<Duration>,
    /// Upstream tries made (1 + retries; 0 when none was made).
    pub tries: u32,
    /// Why the gateway answered itself, when it did (never read from the body).
    pub refusal: Option<RefusalKind>,
    request_id: Option<KeptRequestId>,
    /// The `Host` the client addressed, as received.
    host: Option<HeaderValue>,
    /// The URI as received (moved here once the upstream URI replaces it).
    uri: Option<Uri>,
    consumer: Option<Arc<str>>,
    upstream: Option<Authority>,
    bytes_in: Option<Arc<AtomicU64>>,
    /// A gRPC call: the gateway's own answers are gRPC errors.
    pub grpc: bool,
    /// The WebSocket tunnel to open once the `101` has been sent.
    pub tunnel: Option<crate::websocket::Tunnel>,
    /// The plugins' request state, kept until the response body is done or
    /// abandoned (a `concurrency-limit` slot is released when this drops).
    held: tollgate_plugin_api::Extensions,
}

impl Exchange {
    /// Keeps the plugins' request state until the response is finished.
    pub fn hold(&mut self, ext: tollgate_plugin_api::Extensions) {
        if !ext.is_empty() {
            self.held = ext;
        }
    }

    /// An exchange for a request; `log`: whether the access log is on.
    pub fn new(log: bool) -> Self {
        Self {
            log,
            ..Self::default()
        }
    }

    /// Notes the request id (kept only for the access log).
    #[inline]
    pub fn set_request_id(&mut self, id: &RequestId) {
        if self.log {
            self.request_id = Some(KeptRequestId::new(id));
        }
    }

    /// Notes the host the client addressed (kept only for the access log).
    #[inline]
    pub fn set_host(&mut self, host: Option<&HeaderValue>) {
        if self.log {
            self.host = host.cloned();
        }
    }

    /// Hands over the URI as received, once the request no longer needs it
    /// (kept only for the access log: moved, not copied).
    #[inline]
    pub fn set_uri(&mut self, uri: Uri) {
        if self.log {
            self.uri = Some(uri);
        }
    }

    /// Notes the authenticated consumer (kept only for the access log and
    /// routes that count requests by consumer).
    #[inline]
    pub fn set_consumer(&mut self, consumer: Option<&Arc<str>>) {
        if self.log || self.route.as_ref().is_some_and(|r| r.counts_consumers()) {
            self.consumer = consumer.cloned();
        }
    }

    /// Notes the upstream target chosen (kept only for the access log).
    #[inline]
    pub fn set_upstream(&mut self, authority: &Authority) {
        if self.log {
            self.upstream = Some(authority.clone());
        }
    }

    /// A counter for the request body bytes relayed upstream; only requests
    /// that have a body ask for one.
    pub fn body_counter(&mut self) -> Arc<AtomicU64> {
        self.bytes_in
            .get_or_insert_with(|| Arc::new(AtomicU64::new(0)))
            .clone()
    }
}

/// Runs the proxy handler for one request with its span, metrics and log.
pub async fn serve(
    state: &ProxyState,
    peer: &Peer,
    request: Request<Incoming>,
) -> Response<ObservedBody> {
    let started = Instant::now();
    let span = tracing::info_span!(
        target: TRACE_TARGET,
        "request",
        otel.kind = "server",
        http.request.method = %request.method(),
        url.path = request.uri().path(),
        http.route = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    if !span.is_disabled() {
        shared::set_parent_from_headers(&span, request.headers());
    }
    let method = request.method().clone();
    let access_log = state.access_log.is_enabled().then(|| LogFacts {
        log: Arc::clone(&state.access_log),
        trace_id: if span.is_disabled() {
            shared::traceparent_trace_id(request.headers())
        } else {
            None
        },
    });

    let mut exchange = Exchange::new(access_log.is_some());
    // The peer, until the handler knows better (trusted `X-Forwarded-For`).
    exchange.client_ip = Some(peer.ip);
    exchange.tls = peer.tls;
    // The handler's future is several KiB (the upstream call's state
    // nested in it). Boxed, it is written once, to the heap; inline, it was
    // copied at each level that wraps or stores it (`instrument`, this
    // future, the service future hyper keeps): about 19k instructions of
    // `memcpy` per request under callgrind, against one allocation.
    let response = Box::pin(handle(state, peer, request, &mut exchange, started))
        .instrument(span.clone())
        .await;

    let status = response.status();
    if !span.is_disabled() {
        span.record("http.response.status_code", status.as_u16());
        if let Some(route) = &exchange.route {
            span.record("http.route", &**route.route());
        }
        if status.is_server_error() {
            span.record("otel.status_code", "ERROR");
        }
    }
    if let (true, Some(route), Some(latency)) = (
        state.request_metrics,
        &exchange.route,
        exchange.upstream_latency,
    ) {
        route.record_upstream(latency);
    }
    let access_log = access_log.map(|mut facts| {
        if facts.trace_id.is_none() && !span.is_disabled() {
            facts.trace_id = shared::span_trace_id(&span);
        }
        facts
    });
    let tunnel = exchange.tunnel.take();
    let pending = Pending {
        started,
        method,
        status,
        exchange,
        access_log,
        request_metrics: state.request_metrics,
        _span: span,
    };
    let (parts, body) = response.into_parts();
    let pending = match tunnel {
        None => Some(pending),
        Some(tunnel) => {
            // The 101 goes out now; the request is recorded when its tunnel
            // closes, with the tunnel's duration and bytes.
            tokio::spawn(async move {
                let open_gauge = pending.exchange.route.as_ref().map(|r| r.tunnel_opened());
                let outcome = tunnel.run().await;
                drop(open_gauge);
                tracing::debug!(
                    seconds = outcome.open_for.as_secs_f64(),
                    from_client = outcome.from_client,
                    to_client = outcome.to_client,
                    idle_timeout = outcome.idle_timeout,
                    "websocket tunnel closed"
                );
                pending.record(outcome.to_client, false, Some(outcome));
            });
            None
        }
    };
    Response::from_parts(
        parts,
        ObservedBody {
            inner: body,
            sent: 0,
            pending,
        },
    )
}

/// What is recorded once the response has been sent.
#[derive(Debug)]
struct Pending {
    started: Instant,
    method: http::Method,
    status: StatusCode,
    exchange: Exchange,
    access_log: Option<LogFacts>,
    /// Whether to count the request in the per-route request metrics.
    request_metrics: bool,
    /// Held so the request span covers the whole response.
    _span: tracing::Span,
}

/// What the access-log line needs that the handler does not note.
#[derive(Debug)]
struct LogFacts {
    log: Arc<AccessLog>,
    trace_id: Option<u128>,
}

/// The response body as sent to the client, counted and observed.
#[derive(Debug)]
pub struct ObservedBody {
    inner: ResponseBody,
    sent: u64,
    pending: Option<Pending>,
}

impl ObservedBody {
    /// Records the request (once): metrics, then the access-log line; the
    /// span ends when `pending` drops. `broken`: the response body failed
    /// mid-stream (the upstream died or sent bad framing after its head), so
    /// the client got a cut response under a status that says otherwise.
    fn finish(&mut self, broken: bool) {
        if let Some(pending) = self.pending.take() {
            pending.record(self.sent, broken, None);
        }
    }
}

impl Pending {
    /// Records the request: metrics, then the access-log line; the span
    /// ends when `self` drops. `sent`: response body bytes sent; with a
    /// `tunnel`, its bytes stand for the bodies'.
    fn record(self, sent: u64, broken: bool, tunnel: Option<crate::websocket::TunnelOutcome>) {
        let pending = self;
        // A tunnel's line is written when it closes; its total latency is
        // the time from the request to the tunnel's end.
        let elapsed = pending.started.elapsed();
        let exchange = pending.exchange;
        let bytes_in = match tunnel {
            Some(tunnel) => tunnel.from_client,
            None => exchange
                .bytes_in
                .as_ref()
                .map_or(0, |counter| counter.load(Ordering::Relaxed)),
        };
        if pending.request_metrics {
            let route = exchange
                .route
                .as_ref()
                .unwrap_or_else(|| metrics::global().unmatched());
            route.record_request(&pending.method, pending.status.as_u16(), elapsed);
            route.record_consumer_request(exchange.consumer.as_deref(), pending.status.as_u16());
            if bytes_in > 0 {
                route.add_bytes_in(bytes_in);
            }
            if sent > 0 {
                route.add_bytes_out(sent);
            }
            if broken {
                route.record_upstream_body_error();
            }
        }
        if let Some(facts) = &pending.access_log {
            let mut record = AccessLogRecord::new(pending.started, &pending.method);
            record.request_id = exchange.request_id.as_ref();
            record.trace_id = facts.trace_id;
            record.client_ip = exchange.client_ip;
            record.host = exchange.host.as_ref().map(HeaderValue::as_bytes);
            // The path only: the query string may carry a credential.
            record.path = exchange
                .uri
                .as_ref()
                .map(Uri::path)
                .filter(|path| !path.is_empty());
            record.route = exchange.route.as_deref().map(RouteMetrics::log_fields);
            record.consumer = exchange.consumer.as_deref();
            record.status = pending.status.as_u16();
            record.error = match (exchange.refusal, broken) {
                (Some(kind), _) => Some(kind.code()),
                (None, true) => Some(UPSTREAM_BODY_ERROR),
                (None, false) => None,
            };
            record.tls_version = exchange.tls.map(|tls| tls.version);
            record.alpn = exchange
                .tls
                .map(|tls| tls.alpn)
                .filter(|alpn| !alpn.is_empty());
            record.upstream_addr = exchange.upstream.as_ref().map(Authority::as_str);
            record.upstream_latency = exchange.upstream_latency;
            record.tries = exchange.tries;
            record.total_latency = elapsed;
            record.bytes_in = bytes_in;
            record.bytes_out = sent;
            record.tunnel = tunnel.map(|tunnel| tunnel.open_for);
            facts.log.log(&record);
        }
    }
}

impl Body for ObservedBody {
    type Data = Bytes;
    type Error = crate::pool::BodyReadError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, crate::pool::BodyReadError>>> {
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.sent += data.len() as u64;
                }
            }
            Poll::Ready(Some(Err(_))) => this.finish(true),
            Poll::Ready(None) => this.finish(false),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        // Bodies hyper never polls (HEAD, 204, an empty body) and responses
        // the client abandoned are recorded here.
        self.finish(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_counter_is_shared() {
        let mut exchange = Exchange::new(false);
        let counter = exchange.body_counter();
        counter.fetch_add(5, Ordering::Relaxed);
        assert_eq!(exchange.body_counter().load(Ordering::Relaxed), 5);
        exchange.set_request_id(&tollgate_plugin_api::request_id::generate_request_id());
        assert!(exchange.request_id.is_none(), "kept only when logging");
    }
}
