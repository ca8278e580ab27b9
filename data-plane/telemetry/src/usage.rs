//! Usage reports for the control plane (issue 20), built from the metrics'
//! own counters off the request path.
//!
//! Why this shape: the request path already counts every request in atomic
//! counters ([`crate::metrics`]); a report must not add a lock or a channel
//! send per request. So the metrics register each series here once, when its
//! handle is created (the same moment they take the family lock anyway), and
//! the reporter task reads the counters every interval. Counts are sent
//! cumulative since the process started, with a random instance id and a
//! sequence number: the control plane adds the difference to its last report
//! of that instance, so a repeated report adds nothing and a lost one is
//! made up by the next.
//!
//! Bounded: the first [`MAX_ROUTES`] routes and [`MAX_CONSUMER_SERIES`]
//! (route, consumer) pairs to carry traffic are reported by name; later ones
//! are folded into `other` (always the same ones, so the cumulative counts of
//! `other` only grow). Status codes per route are bounded by HTTP (100-999).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use prometheus_client::metrics::counter::Counter;
use tollgate_shared::proto::stream as pb;

use crate::histogram::{LatencyHistogram, ReportBuckets};

/// Routes reported by name; later ones are counted as [`OTHER`].
pub const MAX_ROUTES: usize = 500;
/// (route, consumer) pairs reported by name; later ones as consumer [`OTHER`].
pub const MAX_CONSUMER_SERIES: usize = 2_000;
/// The route or consumer name that folded series are reported under.
pub const OTHER: &str = "other";

/// Every series a report reads, in the order they first carried traffic.
#[derive(Debug, Default)]
pub(crate) struct UsageIndex {
    inner: Mutex<Series>,
}

#[derive(Debug, Default)]
struct Series {
    routes: Vec<RouteSeries>,
    route_index: HashMap<Arc<str>, usize>,
    consumers: Vec<ConsumerSeries>,
    consumer_index: HashMap<(Arc<str>, Arc<str>), usize>,
}

#[derive(Debug)]
struct RouteSeries {
    route: Arc<str>,
    service: Arc<str>,
    /// (service, method, code) already registered.
    request_keys: HashSet<(Arc<str>, &'static str, u16)>,
    requests: Vec<(u16, Counter)>,
    total: Option<LatencyHistogram>,
    upstream: Option<LatencyHistogram>,
    bytes_in: Option<Counter>,
    bytes_out: Option<Counter>,
    refusals: BTreeMap<&'static str, Counter>,
}

#[derive(Debug)]
struct ConsumerSeries {
    route: Arc<str>,
    consumer: Arc<str>,
    /// (service, code) already registered.
    keys: HashSet<(Arc<str>, u16)>,
    codes: Vec<(u16, Counter)>,
}

/// Which latency of a route.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Latency {
    Total,
    Upstream,
}

/// Which byte counter of a route.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Bytes {
    In,
    Out,
}

impl UsageIndex {
    fn lock(&self) -> MutexGuard<'_, Series> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn request(
        &self,
        route: &Arc<str>,
        service: &Arc<str>,
        method: &'static str,
        code: u16,
        counter: &Counter,
    ) {
        let mut series = self.lock();
        let entry = series.route(route, service);
        if entry
            .request_keys
            .insert((Arc::clone(service), method, code))
        {
            entry.requests.push((code, counter.clone()));
        }
    }

    pub(crate) fn consumer_request(
        &self,
        route: &Arc<str>,
        service: &Arc<str>,
        consumer: &Arc<str>,
        code: u16,
        counter: &Counter,
    ) {
        let mut series = self.lock();
        let key = (Arc::clone(route), Arc::clone(consumer));
        let index = match series.consumer_index.get(&key) {
            Some(index) => *index,
            None => {
                let index = series.consumers.len();
                series.consumers.push(ConsumerSeries {
                    route: Arc::clone(route),
                    consumer: Arc::clone(consumer),
                    keys: HashSet::new(),
                    codes: Vec::new(),
                });
                series.consumer_index.insert(key, index);
                index
            }
        };
        if let Some(entry) = series.consumers.get_mut(index) {
            if entry.keys.insert((Arc::clone(service), code)) {
                entry.codes.push((code, counter.clone()));
            }
        }
    }

    pub(crate) fn latency(
        &self,
        route: &Arc<str>,
        service: &Arc<str>,
        which: Latency,
        histogram: &LatencyHistogram,
    ) {
        let mut series = self.lock();
        let entry = series.route(route, service);
        let slot = match which {
            Latency::Total => &mut entry.total,
            Latency::Upstream => &mut entry.upstream,
        };
        slot.get_or_insert_with(|| histogram.clone());
    }

    pub(crate) fn bytes(&self, route: &Arc<str>, service: &Arc<str>, which: Bytes, c: &Counter) {
        let mut series = self.lock();
        let entry = series.route(route, service);
        let slot = match which {
            Bytes::In => &mut entry.bytes_in,
            Bytes::Out => &mut entry.bytes_out,
        };
        slot.get_or_insert_with(|| c.clone());
    }

    pub(crate) fn refusal(
        &self,
        route: &Arc<str>,
        service: &Arc<str>,
        kind: &'static str,
        c: &Counter,
    ) {
        let mut series = self.lock();
        series
            .route(route, service)
            .refusals
            .entry(kind)
            .or_insert_with(|| c.clone());
    }

    /// Reads every registered counter into a report (cumulative counts).
    pub(crate) fn report(&self, instance_id: &str, sequence: u64) -> pb::UsageReport {
        let series = self.lock();
        let mut folded = 0u64;
        let mut routes: Vec<RouteUsage> = Vec::new();
        let mut other_route: Option<RouteUsage> = None;
        for (position, entry) in series.routes.iter().enumerate() {
            let target = if position < MAX_ROUTES {
                routes.push(RouteUsage::new(&entry.route, &entry.service));
                routes.last_mut()
            } else {
                folded += 1;
                Some(other_route.get_or_insert_with(|| RouteUsage::new(OTHER, OTHER)))
            };
            if let Some(target) = target {
                target.add(entry);
            }
        }
        let mut route_usage: Vec<pb::RouteUsage> = routes.into_iter().map(Into::into).collect();
        route_usage.extend(other_route.map(Into::into));

        let reported: HashSet<&str> = series
            .routes
            .iter()
            .take(MAX_ROUTES)
            .map(|r| &*r.route)
            .collect();
        let mut consumers: BTreeMap<(String, String), BTreeMap<u16, u64>> = BTreeMap::new();
        for (position, entry) in series.consumers.iter().enumerate() {
            let route = if reported.contains(&*entry.route) {
                entry.route.to_string()
            } else {
                OTHER.to_string()
            };
            let consumer = if position < MAX_CONSUMER_SERIES {
                entry.consumer.to_string()
            } else {
                folded += 1;
                OTHER.to_string()
            };
            let codes = consumers.entry((route, consumer)).or_default();
            for (code, counter) in &entry.codes {
                *codes.entry(*code).or_default() += counter.get();
            }
        }
        drop(series);
        pb::UsageReport {
            instance_id: instance_id.to_string(),
            sequence,
            routes: route_usage,
            consumers: consumers
                .into_iter()
                .map(|((route, consumer), codes)| pb::ConsumerUsage {
                    route,
                    consumer,
                    statuses: statuses(codes),
                })
                .collect(),
            folded_series: folded,
        }
    }
}

impl Series {
    fn route(&mut self, route: &Arc<str>, service: &Arc<str>) -> &mut RouteSeries {
        let index = match self.route_index.get(route) {
            Some(index) => *index,
            None => {
                let index = self.routes.len();
                self.routes.push(RouteSeries {
                    route: Arc::clone(route),
                    service: Arc::clone(service),
                    request_keys: HashSet::new(),
                    requests: Vec::new(),
                    total: None,
                    upstream: None,
                    bytes_in: None,
                    bytes_out: None,
                    refusals: BTreeMap::new(),
                });
                self.route_index.insert(Arc::clone(route), index);
                index
            }
        };
        // `index` came from the map of this vector; entries are never removed.
        let entry = &mut self.routes[index];
        entry.service = Arc::clone(service);
        entry
    }
}

/// One route's counts while a report is assembled.
struct RouteUsage {
    route: String,
    service: String,
    codes: BTreeMap<u16, u64>,
    bytes_in: u64,
    bytes_out: u64,
    total: ReportBuckets,
    upstream: ReportBuckets,
    refusals: BTreeMap<&'static str, u64>,
}

impl RouteUsage {
    fn new(route: &str, service: &str) -> Self {
        Self {
            route: route.to_string(),
            service: service.to_string(),
            codes: BTreeMap::new(),
            bytes_in: 0,
            bytes_out: 0,
            total: ReportBuckets::default(),
            upstream: ReportBuckets::default(),
            refusals: BTreeMap::new(),
        }
    }

    fn add(&mut self, entry: &RouteSeries) {
        for (code, counter) in &entry.requests {
            *self.codes.entry(*code).or_default() += counter.get();
        }
        self.bytes_in += entry.bytes_in.as_ref().map_or(0, Counter::get);
        self.bytes_out += entry.bytes_out.as_ref().map_or(0, Counter::get);
        for (histogram, into) in [
            (&entry.total, &mut self.total),
            (&entry.upstream, &mut self.upstream),
        ] {
            if let Some(buckets) = histogram
                .as_ref()
                .and_then(LatencyHistogram::report_buckets)
            {
                merge(into, &buckets);
            }
        }
        for (kind, counter) in &entry.refusals {
            *self.refusals.entry(kind).or_default() += counter.get();
        }
    }
}

fn merge(into: &mut ReportBuckets, from: &ReportBuckets) {
    let mut all: BTreeMap<u32, u64> = into.buckets.iter().copied().collect();
    for (index, count) in &from.buckets {
        *all.entry(*index).or_default() += count;
    }
    into.buckets = all.into_iter().collect();
    into.sum_micros += from.sum_micros;
}

fn statuses(codes: BTreeMap<u16, u64>) -> Vec<pb::StatusCount> {
    codes
        .into_iter()
        .map(|(code, count)| pb::StatusCount {
            code: u32::from(code),
            count,
        })
        .collect()
}

fn buckets(report: ReportBuckets) -> Option<pb::LatencyBuckets> {
    if report.buckets.is_empty() {
        return None;
    }
    let (index, count) = report.buckets.into_iter().unzip();
    Some(pb::LatencyBuckets {
        index,
        count,
        sum_micros: report.sum_micros,
    })
}

impl From<RouteUsage> for pb::RouteUsage {
    fn from(usage: RouteUsage) -> Self {
        pb::RouteUsage {
            route: usage.route,
            service: usage.service,
            statuses: statuses(usage.codes),
            bytes_in: usage.bytes_in,
            bytes_out: usage.bytes_out,
            total_latency: buckets(usage.total),
            upstream_latency: buckets(usage.upstream),
            refusals: usage
                .refusals
                .into_iter()
                .map(|(kind, count)| pb::RefusalCount {
                    kind: kind.to_string(),
                    count,
                })
                .collect(),
        }
    }
}

/// A random id for this process's reports.
pub fn new_instance_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    // Two independently seeded std hashers: 128 random bits without a
    // dependency (RandomState is seeded from the OS per process).
    let mut id = String::with_capacity(32);
    for salt in [0u64, 1] {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(salt);
        hasher.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default(),
        );
        id.push_str(&format!("{:016x}", hasher.finish()));
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{ConsumerNames, Metrics, RateLimitResult};
    use std::time::Duration;

    #[test]
    fn a_report_reads_the_request_counters() {
        crate::histogram::enable_report_buckets();
        let metrics = Metrics::new();
        let orders = metrics.route("orders", "svc");
        let names = ConsumerNames::new(["alice"]);
        let users = metrics.route_with_consumers("users", "svc", &names);
        for _ in 0..3 {
            orders.record_request(&http::Method::GET, 200, Duration::from_millis(2));
        }
        orders.record_request(&http::Method::POST, 200, Duration::from_millis(2));
        orders.record_request(&http::Method::GET, 404, Duration::from_millis(1));
        orders.record_rate_limit(RateLimitResult::Limited);
        orders.record_rate_limit(RateLimitResult::Allowed);
        orders.add_bytes_out(10);
        // A recompiled route continues the same series: nothing counted twice.
        let orders_again = metrics.route("orders", "svc");
        orders_again.record_request(&http::Method::GET, 200, Duration::from_millis(2));
        users.record_request(&http::Method::GET, 200, Duration::from_millis(1));
        users.record_consumer_request(Some("alice"), 200);
        users.record_consumer_request(None, 401);

        let report = metrics.usage_report("instance", 7);
        assert_eq!(report.sequence, 7);
        let orders = report
            .routes
            .iter()
            .find(|r| r.route == "orders")
            .cloned()
            .unwrap_or_default();
        let counts: Vec<(u32, u64)> = orders.statuses.iter().map(|s| (s.code, s.count)).collect();
        assert_eq!(counts, vec![(200, 5), (404, 1)]);
        assert_eq!(orders.bytes_out, 10);
        assert_eq!(
            orders.total_latency.map(|h| h.count.iter().sum::<u64>()),
            Some(6)
        );
        assert_eq!(orders.refusals.len(), 1);
        assert_eq!(orders.refusals[0].kind, "rate_limited");
        let consumers: Vec<(String, u32, u64)> = report
            .consumers
            .iter()
            .flat_map(|c| {
                c.statuses
                    .iter()
                    .map(|s| (c.consumer.clone(), s.code, s.count))
            })
            .collect();
        assert_eq!(
            consumers,
            vec![("alice".into(), 200, 1), ("anonymous".into(), 401, 1)]
        );
        assert_eq!(report.folded_series, 0);
    }

    #[test]
    fn routes_beyond_the_cap_fold_into_other() {
        let metrics = Metrics::new();
        for i in 0..MAX_ROUTES + 3 {
            metrics.route(&format!("r{i}"), "s").record_request(
                &http::Method::GET,
                200,
                Duration::ZERO,
            );
        }
        let report = metrics.usage_report("i", 1);
        assert_eq!(report.routes.len(), MAX_ROUTES + 1);
        let other = report.routes.iter().find(|r| r.route == OTHER);
        assert_eq!(other.map(|o| o.statuses[0].count), Some(3));
        assert_eq!(report.folded_series, 3);
        let total: u64 = report.routes.iter().map(|r| r.statuses[0].count).sum();
        assert_eq!(total, MAX_ROUTES as u64 + 3);
    }

    #[test]
    fn instance_ids_differ() {
        assert_ne!(new_instance_id(), new_instance_id());
        assert_eq!(new_instance_id().len(), 32);
    }
}
