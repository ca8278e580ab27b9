//! `rate-limit` as a plugin: its factory (which owns what outlives
//! snapshots: the Redis store and the in-process counters) and its hooks.
//! The quota to report travels in the request's extensions from the
//! rate-limit phase to the response hook, which writes the `RateLimit-*`
//! headers once, whoever produced the response.

use std::sync::Arc;

use http::{request, response};
use tollgate_plugin_api::{BuildCtx, Outcome, Phase, Plugin, PluginFactory, RequestCtx, Step};

use super::{too_many_requests, unavailable, Quota, RateLimit, RateLimiters, Subject, Verdict};
use tollgate_shared::plugins::{parse, RateLimitConfig};

/// Builds `rate-limit` instances over the data plane's shared limiters.
pub struct RateLimitFactory {
    limiters: Arc<RateLimiters>,
}

impl RateLimitFactory {
    pub fn new(limiters: Arc<RateLimiters>) -> Self {
        RateLimitFactory { limiters }
    }
}

impl PluginFactory for RateLimitFactory {
    fn name(&self) -> &'static str {
        "rate-limit"
    }

    fn phase(&self) -> Phase {
        Phase::RateLimit
    }

    fn stackable(&self) -> bool {
        true
    }

    fn build(
        &self,
        config: &serde_json::Value,
        ctx: &BuildCtx<'_>,
    ) -> Result<Arc<dyn Plugin>, String> {
        let config = parse::<RateLimitConfig>(config)?;
        Ok(Arc::new(RateLimit::new(
            ctx.instance,
            &config,
            &self.limiters,
        )))
    }
}

impl RateLimit {
    /// What the phase does with a verdict: queue the quota for the
    /// response, or refuse (429 / 503).
    fn settle(&self, ctx: &mut RequestCtx<'_>, verdict: Verdict) -> Outcome {
        match verdict {
            Verdict::Continue(None) => Outcome::Continue,
            Verdict::Continue(Some(decision)) => {
                merge_quota(ctx, self.quota(decision), false);
                Outcome::Continue
            }
            Verdict::TooManyRequests { decision, headers } => {
                if headers {
                    merge_quota(ctx, self.quota(decision), true);
                } else {
                    // An earlier limit's quota would be misleading on this 429.
                    ctx.ext.remove::<Quota>();
                }
                Outcome::Refuse(too_many_requests(&decision))
            }
            Verdict::Unavailable => Outcome::Refuse(unavailable()),
        }
    }
}

fn merge_quota(ctx: &mut RequestCtx<'_>, next: Quota, force: bool) {
    match ctx.ext.get_mut::<Quota>() {
        Some(current) => current.merge_with(next, force),
        None => {
            ctx.ext.insert(next);
        }
    }
}

pub(crate) fn subject<'a>(ctx: &'a RequestCtx<'_>, request: &'a request::Parts) -> Subject<'a> {
    let identity = ctx.consumer.as_ref().filter(|identity| !identity.anonymous);
    Subject {
        client_ip: ctx.client_ip,
        consumer: identity.map(|identity| &*identity.consumer),
        credential: identity.and_then(|identity| identity.credential.as_deref()),
        route: ctx.route_name,
        service: ctx.service_name,
        headers: &request.headers,
    }
}

impl Plugin for RateLimit {
    fn name(&self) -> &'static str {
        "rate-limit"
    }

    fn phase(&self) -> Phase {
        Phase::RateLimit
    }

    fn on_request<'a>(
        &'a self,
        ctx: &'a mut RequestCtx<'_>,
        request: &'a mut request::Parts,
    ) -> Step<'a> {
        if self.is_local() {
            let verdict = self.check_local(&subject(ctx, request));
            return Step::Done(self.settle(ctx, verdict));
        }
        Step::Wait(Box::pin(async move {
            let verdict = self.check(&subject(ctx, request)).await;
            self.settle(ctx, verdict)
        }))
    }

    fn on_response(&self, ctx: &mut RequestCtx<'_>, response: &mut response::Parts) {
        if let Some(quota) = ctx.ext.remove::<Quota>() {
            quota.write(&mut response.headers);
        }
    }

    fn has_response_hook(&self) -> bool {
        true
    }
}
