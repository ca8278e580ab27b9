//! One request through the gateway, start to end:
//!
//! 1. bounds: URI length (414), header count and bytes (431);
//! 2. `X-Request-Id` kept or generated;
//! 3. the snapshot in service is loaded once (503 `not_ready` without one);
//! 4. the path is normalized (400 when it cannot be) and routed on host,
//!    normalized path, method and headers (404 `no_route`);
//! 5. the upstream path is that normalized path (minus the matched prefix
//!    with `strip_path`) plus the original query;
//! 6. hop-by-hop headers and client-sent `X-Consumer-*` identity headers are
//!    dropped and `X-Forwarded-*` set;
//! 7. the route's plugin chain runs its request phases (any may answer now);
//! 8. a target is picked (503 when none has weight), the request is sent with
//!    its body streamed, bounded by `max_body_bytes` (413) and the body-idle
//!    timeout (408), and the response head awaited within the service's
//!    request timeout (504);
//! 9. the response is relayed with its body streamed (hop-by-hop headers
//!    dropped, `X-Request-Id` added when the upstream did not echo it), after
//!    the response and log phases.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use http::header::{HeaderValue, CONTENT_LENGTH, HOST};
use http::uri::PathAndQuery;
use http::{request, Request, Response, Uri, Version};
use hyper::body::Incoming;

use tollgate_shared::telemetry::{self, TRACE_TARGET};
use tracing::Instrument;

use tollgate_plugin_api::identity::{is_identity_header, strip_identity_headers};
use tollgate_plugin_api::request_id::{ensure_request_id, generate_request_id, RequestId};
use tollgate_plugin_api::{Outcome, Refusal, RefusalKind, RequestCtx};

use crate::body::{BodyLimits, Buffered, ResponseBody, UpstreamBody};
use crate::forward::{self, Peer, TrustedProxies};
use crate::observe::Exchange;
use crate::pool::SendFailure;
use crate::request_body::{self, RequestBody};
use crate::respond;
use crate::response_body;
use crate::router::{normalize_path, strip_prefix, PathPolicy};
use crate::snapshot::{CompiledRoute, SnapshotStore};
use crate::untrusted::UntrustedHeaders;
use crate::websocket;
use tollgate_telemetry::AccessLog;

/// Bounds on what a client may send, from the command line.
#[derive(Debug, Clone)]
pub struct RequestLimits {
    /// Sum over header fields of name + value + 4 bytes (`: ` and CRLF).
    pub max_header_bytes: usize,
    pub max_headers: usize,
    /// Length of the request target as received.
    pub max_uri_bytes: usize,
    /// Request body timeouts, minimum rate and read-ahead.
    pub body: BodyLimits,
    /// Longest a write to the client may make no progress (slow readers).
    pub send_timeout: Duration,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            max_header_bytes: 60 * 1024,
            max_headers: 100,
            max_uri_bytes: 8 * 1024,
            body: BodyLimits::default(),
            send_timeout: Duration::from_secs(60),
        }
    }
}

/// What every request of the proxy listener shares.
#[derive(Debug)]
pub struct ProxyState {
    pub store: std::sync::Arc<SnapshotStore>,
    /// Where each request's line goes (see [`crate::telemetry::request`]).
    pub access_log: std::sync::Arc<AccessLog>,
    /// Whether requests are counted in the per-route request metrics.
    pub request_metrics: bool,
    pub trusted_proxies: TrustedProxies,
    pub limits: RequestLimits,
    /// The `--tls-listen` port, for `https_redirect` locations (omitted
    /// when 443); `None` without a TLS listener.
    pub tls_port: Option<u16>,
    /// Encoded slashes and `;params` (routes may override).
    pub path_policy: PathPolicy,
    /// Headers dropped or rewritten from clients outside `trusted_proxies`.
    pub untrusted_headers: UntrustedHeaders,
}

/// Handles one request; never fails (errors become responses). What the
/// metrics and the access log need is noted in `exchange`. `started`: when
/// the request was taken up (one clock read for the whole request).
pub async fn handle(
    state: &ProxyState,
    peer: &Peer,
    request: Request<Incoming>,
    exchange: &mut Exchange,
    started: Instant,
) -> Response<ResponseBody> {
    let (mut parts, body) = request.into_parts();
    exchange.grpc = respond::is_grpc(&parts);
    let client_host = client_host(&parts);
    exchange.set_host(client_host.as_ref());
    if let Err(kind) = check_head(&parts, &state.limits) {
        let request_id = generate_request_id();
        exchange.set_request_id(&request_id);
        return refuse(exchange, parts.uri, kind, &request_id);
    }
    let request_id = ensure_request_id(&mut parts.headers);
    exchange.set_request_id(&request_id);

    let Some(snapshot) = state.store.load() else {
        return refuse(exchange, parts.uri, RefusalKind::NotReady, &request_id);
    };

    // Route on the normalized path; compute the upstream path+query from it.
    let (route_index, upstream_path_and_query) = {
        let base = match normalize_path(parts.uri.path()) {
            Ok(path) => path,
            Err(err) => {
                tracing::debug!(error = %err, "rejecting a path that cannot be normalized");
                return refuse(exchange, parts.uri, RefusalKind::BadPath, &request_id);
            }
        };
        // Encoded slashes and `;params` are resolved before routing, so the
        // route matched, its plugins and the upstream see the same path. A
        // path the gateway's policy refuses is still looked up as written,
        // for a route that keeps such paths on purpose.
        let gateway_path = state.path_policy.apply(base.clone());
        // The router strips the port and lower-cases.
        let host = client_host
            .as_ref()
            .and_then(|host| host.to_str().ok())
            .unwrap_or("");
        let find = |path: &str| {
            snapshot
                .router
                .find(host, path, &parts.method, &parts.headers)
        };
        let candidate: &str = gateway_path.as_deref().unwrap_or(&base);
        let Some(mut matched) = find(candidate) else {
            let kind = match &gateway_path {
                Ok(_) => RefusalKind::NoRoute,
                Err(_) => RefusalKind::BadPath,
            };
            return refuse(exchange, parts.uri, kind, &request_id);
        };
        let Some(mut route) = snapshot.route(matched.route_index) else {
            return refuse(exchange, parts.uri, RefusalKind::NoRoute, &request_id);
        };
        // The route's own policy (the gateway's unless it overrides it) has
        // the last word; if its reading routes elsewhere, the request is
        // refused rather than sent somewhere its checks did not cover.
        let own = state
            .path_policy
            .with_overrides(route.encoded_slashes, route.path_parameters);
        let normalized = if own == state.path_policy {
            match gateway_path {
                Ok(path) => path,
                Err(err) => {
                    tracing::debug!(error = %err, "rejecting a path under the path policy");
                    return refuse(exchange, parts.uri, RefusalKind::BadPath, &request_id);
                }
            }
        } else {
            let Ok(path) = own.apply(base.clone()) else {
                return refuse(exchange, parts.uri, RefusalKind::BadPath, &request_id);
            };
            if path.as_ref() != candidate {
                match find(&path) {
                    Some(again) if again.route_index == matched.route_index => matched = again,
                    _ => return refuse(exchange, parts.uri, RefusalKind::BadPath, &request_id),
                }
            }
            path
        };
        if let Some(found) = snapshot.route(matched.route_index) {
            route = found;
        }
        let upstream_path: Cow<'_, str> = if route.strip_path {
            Cow::Owned(strip_prefix(&normalized, matched.matched_len).into_owned())
        } else {
            normalized
        };
        let path_and_query = match upstream_path {
            // Unchanged path: reuse the received path+query, no allocation.
            Cow::Borrowed(_) => parts.uri.path_and_query().cloned(),
            Cow::Owned(path) => {
                let text = match parts.uri.query() {
                    Some(query) => format!("{path}?{query}"),
                    None => path,
                };
                PathAndQuery::from_maybe_shared(bytes::Bytes::from(text)).ok()
            }
        };
        let Some(path_and_query) = path_and_query else {
            return refuse(exchange, parts.uri, RefusalKind::BadPath, &request_id);
        };
        (matched.route_index, path_and_query)
    };
    let Some(route) = snapshot.route(route_index) else {
        return refuse(exchange, parts.uri, RefusalKind::NoRoute, &request_id);
    };
    let service = &route.service;
    exchange.route = Some(route.metrics.clone());
    if route.https_only && peer.tls.is_none() {
        let refusal = match https_location(route, client_host.as_ref(), &parts.uri, state.tls_port)
        {
            Some(location) => Refusal::new(RefusalKind::HttpsRedirect)
                .with_header(http::header::LOCATION, location),
            None => Refusal::new(RefusalKind::HttpsRequired),
        };
        exchange.set_uri(parts.uri);
        exchange.refusal = Some(refusal.kind);
        return respond::answer(refusal, Some(request_id.header()), exchange.grpc);
    }

    exchange.set_uri(std::mem::replace(
        &mut parts.uri,
        Uri::from(upstream_path_and_query),
    ));
    // Only a route that opts in forwards a WebSocket upgrade; everywhere
    // else `Upgrade` goes with the other hop-by-hop headers.
    let upgrade = route
        .websocket
        .and_then(|idle_timeout| websocket::Upgrade::detect(&mut parts, idle_timeout));
    forward::remove_hop_by_hop(&mut parts.headers);
    let client_ip = forward::client_ip(peer, &parts.headers, &state.trusted_proxies);
    exchange.client_ip = Some(client_ip);
    forward::set_forwarded(&mut parts.headers, peer, client_host.as_ref());
    if !peer.trusted {
        state.untrusted_headers.apply(&mut parts.headers, client_ip);
    }
    // Only the gateway says who is calling: client copies of the identity
    // headers go on every route, authenticated or not.
    // (A scan of the names hashes nothing; the removal runs only when one
    // is present.)
    if parts.headers.keys().any(is_identity_header) {
        strip_identity_headers(&mut parts.headers);
    }

    // The connection's client certificate, for the route's `mtls-auth`
    // (an extension: the client cannot forge it the way it could a header).
    if let Some(certificate) = &peer.client_certificate {
        parts.extensions.insert(std::sync::Arc::clone(certificate));
    }
    let mut ctx = RequestCtx::new(
        client_ip,
        request_id.header(),
        &route.name,
        &service.name,
        started,
    );
    let response = forward_route(
        state,
        route,
        &mut ctx,
        (parts, body, upgrade),
        client_host,
        exchange,
    )
    .await;
    exchange.set_consumer(ctx.consumer.as_ref().map(|identity| &identity.consumer));
    let mut response = response;
    finish(route, &mut ctx, &mut response);
    // What plugins still hold (a concurrency slot) lives as long as the
    // response body; a client gone before the head drops it with `ctx`.
    exchange.hold(std::mem::take(&mut ctx.ext));
    response
}

/// From a matched route to a response: body limit, request phases, target
/// choice, the upstream call. Every outcome (plugin answer, gateway error,
/// upstream response) comes back as a response for [`finish`].
async fn forward_route(
    state: &ProxyState,
    route: &CompiledRoute,
    ctx: &mut RequestCtx<'_>,
    (mut parts, body, upgrade): (request::Parts, Incoming, Option<websocket::Upgrade>),
    client_host: Option<HeaderValue>,
    exchange: &mut Exchange,
) -> Response<ResponseBody> {
    let service = &route.service;
    if let Some(limit) = route.max_body_bytes {
        let declared = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|length| length > limit) {
            return refused(exchange, ctx, RefusalKind::BodyTooLarge.into());
        }
    }

    if !route.plugins.is_empty() {
        match route
            .plugins
            .run_request(ctx, &mut parts, &*route.metrics)
            .await
        {
            Outcome::Continue => {}
            Outcome::Refuse(refusal) => return refused(exchange, ctx, refusal),
            Outcome::Reply(reply) => return respond::reply(reply, Some(ctx.request_id)),
        }
    }

    let pool = &*service.upstream;
    let hash = pool
        .hash_on
        .as_ref()
        .map(|key| key.hash(&parts.headers, ctx.client_ip, parts.uri.path()));
    // hyper's client connection writes the URI as is: origin form
    // (`/path?query`), which `parts.uri` already is.
    let client_http1 = parts.version < Version::HTTP_2;
    parts.version = Version::HTTP_11;
    let host_from_target = match (&service.host_header, client_host) {
        (Some(host), _) => {
            parts.headers.insert(HOST, host.clone());
            false
        }
        (None, Some(host)) => {
            parts.headers.insert(HOST, host);
            false
        }
        (None, None) => !parts.headers.contains_key(HOST),
    };

    // A body a plugin reads (and may edit) is read whole by
    // `request_body.rs`; otherwise a small body is read whole before a
    // connection is taken: a slow sender holds no upstream connection, and
    // the body can be replayed.
    let body = if route.plugins.has_request_body_hooks() {
        match request_body::run(
            &route.plugins,
            ctx,
            &mut parts,
            body,
            route.max_body_bytes,
            state.limits.body.idle_timeout,
        )
        .await
        {
            Ok(body) => body,
            Err(kind) => return refused(exchange, ctx, kind.into()),
        }
    } else {
        RequestBody::Streamed(body)
    };
    let mut body = match body {
        RequestBody::Streamed(body) => {
            UpstreamBody::new(body, route.max_body_bytes, state.limits.body)
        }
        RequestBody::Buffered(bytes) => UpstreamBody::Buffered(Some(bytes)),
    };
    if body.has_body() {
        body = match body.buffer().await {
            Ok(Buffered::Whole(bytes)) => {
                exchange
                    .body_counter()
                    .fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
                if bytes.is_empty() {
                    UpstreamBody::Empty
                } else {
                    UpstreamBody::Buffered(Some(bytes))
                }
            }
            Ok(Buffered::Streaming(mut streaming)) => {
                streaming.count_into(exchange.body_counter());
                streaming
            }
            Err(err) => {
                let kind = crate::upstream::classify(&err);
                tracing::debug!(route = %route.name, error = %err, "request body refused before connecting upstream");
                return body_refused(exchange, ctx, kind, client_http1);
            }
        };
    }
    if let Some(upgrade) = upgrade {
        let Some(target) = pool.pick_for(hash, 0).and_then(|index| pool.target(index)) else {
            return refused(exchange, ctx, RefusalKind::NoHealthyTarget.into());
        };
        exchange.set_upstream(&target.authority);
        let upstream_started = Instant::now();
        // Boxed: the upgrade's future is the largest this function awaits
        // (about 5 KiB); inline, every request's future would carry that
        // space and every move of it would copy it (callgrind: ~9k
        // instructions of `memcpy` per plain request).
        let result = Box::pin(websocket::forward(
            &service.upstream,
            target,
            Request::from_parts(parts, body),
            upgrade,
            service.request_timeout,
        ))
        .await;
        exchange.upstream_latency = Some(upstream_started.elapsed());
        return match result {
            Ok((response, tunnel)) => {
                exchange.tunnel = tunnel;
                response
            }
            Err(kind) => refused(exchange, ctx, kind.into()),
        };
    }
    // The upstream call's span; its context replaces the client's
    // `traceparent` (tracing off: the client's passes through untouched).
    let span = tracing::info_span!(
        target: TRACE_TARGET,
        "upstream",
        otel.kind = "client",
        server.address = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        tollgate.tries = tracing::field::Empty,
    );
    telemetry::inject_context(&span, &mut parts.headers);
    // A gRPC call's own deadline, when shorter than the service's timeout.
    let timeout = if exchange.grpc {
        grpc_timeout(&parts.headers)
            .map_or(service.request_timeout, |t| t.min(service.request_timeout))
    } else {
        service.request_timeout
    };
    let retry_on_status = route.retry_non_idempotent || is_idempotent(&parts.method);
    let max_tries = 1 + route.retries;
    pool.health.budget.deposit();
    let upstream_started = Instant::now();
    let mut tried: u64 = 0;
    let mut next = Some(Request::from_parts(parts, body));
    let mut failure = RefusalKind::NoHealthyTarget;
    while let Some(mut request) = next.take() {
        // Another target than those tried when there is one; once every
        // target has been tried, any of them again.
        let Some(index) = pool
            .pick_for(hash, tried)
            .or_else(|| pool.pick_for(hash, 0))
        else {
            break;
        };
        let Some(target) = pool.target(index) else {
            break;
        };
        exchange.tries += 1;
        if index < 64 {
            tried |= 1 << index;
        }
        exchange.set_upstream(&target.authority);
        span.record("server.address", target.address.as_str());
        if host_from_target {
            request.headers_mut().insert(HOST, target.host.clone());
        }
        let more_tries = exchange.tries < max_tries;
        // A copy for a retry after an answer (the request itself is gone
        // then): only a replayable body, an idempotent request, and while
        // the budget has room (checked without taking it).
        let copy = if more_tries && retry_on_status && pool.health.budget.available() {
            request.body().replay().map(|body| {
                let mut copy = Request::new(body);
                *copy.method_mut() = request.method().clone();
                *copy.uri_mut() = request.uri().clone();
                *copy.version_mut() = request.version();
                *copy.headers_mut() = request.headers().clone();
                copy
            })
        } else {
            None
        };
        let result = pool
            .send_try(index, request, timeout)
            .instrument(span.clone())
            .await;
        match result {
            Ok(response) => {
                let status = response.status();
                let failed = matches!(status.as_u16(), 502..=504);
                if status.is_server_error() {
                    eject_note(pool, index, route, target);
                } else {
                    pool.health.record_success(index);
                }
                if failed && copy.is_some() && pool.health.budget.withdraw() {
                    tracing::debug!(route = %route.name, upstream = %target.address, status = status.as_u16(), "retrying on another target");
                    tollgate_telemetry::metrics::global().retried(&route.service.name);
                    next = copy;
                    failure = RefusalKind::UpstreamUnavailable;
                    continue;
                }
                exchange.upstream_latency = Some(upstream_started.elapsed());
                span.record("http.response.status_code", status.as_u16());
                span.record("tollgate.tries", exchange.tries);
                drop(span);
                return relay(
                    exchange,
                    ctx,
                    route,
                    target,
                    response,
                    service.request_timeout,
                )
                .await;
            }
            Err(SendFailure { kind, unsent }) => {
                if !is_upstream_failure(kind) {
                    // The client's body failed (too large, too slow): not
                    // the target's fault, and nothing to retry.
                    exchange.upstream_latency = Some(upstream_started.elapsed());
                    return body_refused(exchange, ctx, kind, client_http1);
                }
                eject_note(pool, index, route, target);
                tracing::warn!(
                    route = %route.name,
                    upstream = %target.address,
                    error = kind.code(),
                    request_id = ?ctx.request_id,
                    "upstream request failed"
                );
                failure = kind;
                // Never written (connect failed): always safe to retry, with
                // the request itself, streamed body included.
                let retry = unsent.or(copy);
                if more_tries && retry.is_some() && pool.health.budget.withdraw() {
                    tollgate_telemetry::metrics::global().retried(&route.service.name);
                    next = retry;
                }
            }
        }
    }
    exchange.upstream_latency = Some(upstream_started.elapsed());
    span.record("tollgate.tries", exchange.tries);
    refused(exchange, ctx, failure.into())
}

/// Methods safe to send twice (RFC 9110 §9.2.2).
fn is_idempotent(method: &http::Method) -> bool {
    matches!(
        *method,
        http::Method::GET
            | http::Method::HEAD
            | http::Method::OPTIONS
            | http::Method::PUT
            | http::Method::DELETE
            | http::Method::TRACE
    )
}

/// Failures that are the target's (count against its health, may be
/// retried), as opposed to the client's body failing.
fn is_upstream_failure(kind: RefusalKind) -> bool {
    matches!(
        kind,
        RefusalKind::UpstreamUnavailable
            | RefusalKind::UpstreamMalformed
            | RefusalKind::UpstreamTimeout
            | RefusalKind::UpstreamTlsError
    )
}

/// Records a failure of target `index`, logging an ejection it causes.
fn eject_note(
    pool: &crate::upstream::UpstreamPool,
    index: usize,
    route: &CompiledRoute,
    target: &crate::upstream::UpstreamTarget,
) {
    if let Some(duration) = pool.health.record_failure(index) {
        tracing::warn!(
            service = %route.service.name,
            upstream = %target.address,
            ejected_for_ms = duration.as_millis() as u64,
            "upstream target ejected after consecutive failures"
        );
        tollgate_telemetry::metrics::global().target_ejected(&route.service.name, &target.address);
    }
}

/// The upstream's response on its way to the client (through the plugins'
/// response-body hooks when the route has any).
async fn relay(
    exchange: &mut Exchange,
    ctx: &mut RequestCtx<'_>,
    route: &CompiledRoute,
    target: &crate::upstream::UpstreamTarget,
    response: Response<crate::pool::PooledBody>,
    timeout: Duration,
) -> Response<ResponseBody> {
    let (mut response_parts, response_body) = response.into_parts();
    // A body that is already broken when its head arrives (bad chunked
    // framing in the same packet) gets a 502 the client can act on, instead
    // of a head followed by a dead connection.
    let body = match ResponseBody::upstream(response_body) {
        Ok(body) => body,
        Err(err) => {
            let kind = crate::upstream::classify(&err);
            tracing::warn!(
                route = %route.name,
                upstream = %target.address,
                error = kind.code(),
                reason = %err,
                request_id = ?ctx.request_id,
                "upstream response body broken before anything was sent"
            );
            return refused(exchange, ctx, kind.into());
        }
    };
    forward::remove_hop_by_hop(&mut response_parts.headers);
    if route.plugins.has_response_body_hooks() {
        return match response_body::run(&route.plugins, ctx, response_parts, body, timeout).await {
            Ok(response) => response,
            Err(kind) => refused(exchange, ctx, kind.into()),
        };
    }
    Response::from_parts(response_parts, body)
}

/// The answer to a routed request the gateway refuses itself; its kind
/// goes to the exchange for metrics and the access log.
fn refused(
    exchange: &mut Exchange,
    ctx: &RequestCtx<'_>,
    refusal: Refusal,
) -> Response<ResponseBody> {
    exchange.refusal = Some(refusal.kind);
    respond::answer(refusal, Some(ctx.request_id), exchange.grpc)
}

/// A refusal of a request whose body was not read to its end (too large,
/// too slow, broken): on HTTP/1.x the connection cannot carry another
/// request, so the answer says `Connection: close` and a client does not
/// reuse it (nginx answers a 413 the same way).
fn body_refused(
    exchange: &mut Exchange,
    ctx: &RequestCtx<'_>,
    kind: RefusalKind,
    client_http1: bool,
) -> Response<ResponseBody> {
    let mut response = refused(exchange, ctx, kind.into());
    if client_http1 {
        response
            .headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// The last step of every routed request, whoever produced the response:
/// `X-Request-Id` when missing, then the response and `log` phases (the
/// rate limiter's `RateLimit-*` headers among them).
/// (In place: a response is a few hundred bytes, and taking it apart and
/// back costs two copies of it.)
fn finish(route: &CompiledRoute, ctx: &mut RequestCtx<'_>, response: &mut Response<ResponseBody>) {
    response
        .headers_mut()
        .entry(forward::X_REQUEST_ID)
        .or_insert_with(|| ctx.request_id.clone());
    if !route.plugins.has_response_hooks() {
        return;
    }
    // The hooks take `response::Parts`; only routes with response hooks pay
    // for taking the response apart.
    let placeholder = Response::new(ResponseBody::Empty);
    let (mut parts, body) = std::mem::replace(response, placeholder).into_parts();
    route.plugins.run_response(ctx, &mut parts);
    route.plugins.run_log(ctx, parts.status);
    *response = Response::from_parts(parts, body);
}

/// The answer to a request refused before it was routed; its URI goes to
/// the exchange (moved) for the access log.
fn refuse(
    exchange: &mut Exchange,
    uri: Uri,
    kind: RefusalKind,
    request_id: &RequestId,
) -> Response<ResponseBody> {
    exchange.set_uri(uri);
    exchange.refusal = Some(kind);
    respond::answer(kind, Some(request_id.header()), exchange.grpc)
}

/// Where an `https_redirect` route sends a plaintext request: the same
/// host (port replaced by the TLS listener's) and path; `None` (426) when
/// the route does not redirect, there is no TLS listener or no usable Host.
fn https_location(
    route: &CompiledRoute,
    host: Option<&HeaderValue>,
    uri: &Uri,
    tls_port: Option<u16>,
) -> Option<HeaderValue> {
    if !route.https_redirect {
        return None;
    }
    let port = tls_port?;
    let host = host?.to_str().ok()?;
    let authority: http::uri::Authority = host.parse().ok()?;
    let name = authority.host();
    let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let location = if port == 443 {
        format!("https://{name}{path}")
    } else {
        format!("https://{name}:{port}{path}")
    };
    HeaderValue::from_str(&location).ok()
}

/// A gRPC call's `grpc-timeout` (1 to 8 digits and a unit: `H`ours,
/// `M`inutes, `S`econds, `m`illi-, `u`micro-, `n`anoseconds); `None` when
/// absent or malformed (the service's timeout applies).
fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.as_bytes();
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let amount = digits
        .iter()
        .fold(0u64, |n, digit| n * 10 + u64::from(digit - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(amount.saturating_mul(3600)),
        b'M' => Duration::from_secs(amount.saturating_mul(60)),
        b'S' => Duration::from_secs(amount),
        b'm' => Duration::from_millis(amount),
        b'u' => Duration::from_micros(amount),
        b'n' => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// URI length, header count and header bytes.
fn check_head(parts: &request::Parts, limits: &RequestLimits) -> Result<(), RefusalKind> {
    let uri_len = parts.uri.path_and_query().map_or(0, |pq| pq.as_str().len())
        + parts.uri.authority().map_or(0, |a| a.as_str().len());
    if uri_len > limits.max_uri_bytes {
        return Err(RefusalKind::UriTooLong);
    }
    if parts.headers.len() > limits.max_headers {
        return Err(RefusalKind::HeadersTooLarge);
    }
    let header_bytes: usize = parts
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if header_bytes > limits.max_header_bytes {
        return Err(RefusalKind::HeadersTooLarge);
    }
    Ok(())
}

/// The Host the client addressed: the `:authority` / absolute-form authority
/// when present (HTTP/2, proxies), else the `Host` header.
fn client_host(parts: &request::Parts) -> Option<HeaderValue> {
    match parts.uri.authority() {
        Some(authority) => HeaderValue::from_str(authority.as_str()).ok(),
        None => parts.headers.get(HOST).cloned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        let of = |value: &'static str| {
            let mut headers = http::HeaderMap::new();
            headers.insert("grpc-timeout", HeaderValue::from_static(value));
            grpc_timeout(&headers)
        };
        assert_eq!(of("100m"), Some(Duration::from_millis(100)));
        assert_eq!(of("2S"), Some(Duration::from_secs(2)));
        assert_eq!(of("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(of("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "m", "100", "123456789S", "-1S", "1x", "1.5S"] {
            assert_eq!(of(bad), None, "{bad}");
        }
        assert_eq!(grpc_timeout(&http::HeaderMap::new()), None);
    }

    #[test]
    fn head_limits() {
        let limits = RequestLimits {
            max_header_bytes: 100,
            max_headers: 2,
            max_uri_bytes: 20,
            body: BodyLimits::default(),
            send_timeout: Duration::from_secs(60),
        };
        let ok = Request::builder()
            .uri("/short")
            .header("a", "b")
            .body(())
            .expect("request")
            .into_parts()
            .0;
        assert_eq!(check_head(&ok, &limits), Ok(()));
        let long_uri = Request::builder()
            .uri("/a-very-long-path-indeed")
            .body(())
            .expect("request")
            .into_parts()
            .0;
        assert_eq!(check_head(&long_uri, &limits), Err(RefusalKind::UriTooLong));
        let many = Request::builder()
            .uri("/")
            .header("a", "1")
            .header("b", "2")
            .header("c", "3")
            .body(())
            .expect("request")
            .into_parts()
            .0;
        assert_eq!(
            check_head(&many, &limits),
            Err(RefusalKind::HeadersTooLarge)
        );
        let big = Request::builder()
            .uri("/")
            .header("a", "x".repeat(200))
            .body(())
            .expect("request")
            .into_parts()
            .0;
        assert_eq!(check_head(&big, &limits), Err(RefusalKind::HeadersTooLarge));
    }
}
