//! The rolling window: counts by time bucket, in two tiers (10 s buckets for
//! the last hour, 5 min buckets for the last day). A report's difference is
//! added to the current bucket of both tiers, so each tier answers on its
//! own and nothing is rolled up later.
//!
//! A bucket keeps request counts by (data plane, route, status), consumer
//! counts by (route, consumer, status), and per route and per data plane the
//! bytes, refusals and latency histograms. Histograms are kept per route and
//! per data plane, not per (route, data plane): that bounds memory by routes
//! plus data planes rather than their product. Each bucket holds at most
//! [`MAX_KEYS`] request and consumer keys; beyond, routes count as `other`.

use std::collections::{BTreeMap, HashMap, VecDeque};

use tollgate_shared::proto::stream::{LatencyBuckets, UsageReport};
use tollgate_shared::usage::Histogram;

/// Distinct request (and consumer) keys per bucket.
pub const MAX_KEYS: usize = 100_000;
/// The route name of keys beyond [`MAX_KEYS`].
pub const OTHER: &str = "other";

/// Bytes, refusals and latencies of one route or one data plane.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Traffic {
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub total: Histogram,
    pub upstream: Histogram,
    pub refusals: BTreeMap<String, u64>,
}

impl Traffic {
    pub fn add(&mut self, other: &Traffic) {
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
        self.total.merge(&other.total);
        self.upstream.merge(&other.upstream);
        for (kind, count) in &other.refusals {
            *self.refusals.entry(kind.clone()).or_default() += count;
        }
    }

    fn minus(&self, old: &Traffic) -> Traffic {
        Traffic {
            bytes_in: self.bytes_in.saturating_sub(old.bytes_in),
            bytes_out: self.bytes_out.saturating_sub(old.bytes_out),
            total: histogram_minus(&self.total, &old.total),
            upstream: histogram_minus(&self.upstream, &old.upstream),
            refusals: self
                .refusals
                .iter()
                .map(|(kind, count)| {
                    let old = old.refusals.get(kind).copied().unwrap_or(0);
                    (kind.clone(), count.saturating_sub(old))
                })
                .filter(|(_, count)| *count > 0)
                .collect(),
        }
    }
}

fn histogram_minus(new: &Histogram, old: &Histogram) -> Histogram {
    let mut out = Histogram::default();
    for (index, count) in &new.buckets {
        let old = old.buckets.get(index).copied().unwrap_or(0);
        out.add(*index, count.saturating_sub(old));
    }
    out.sum_micros = new.sum_micros.saturating_sub(old.sum_micros);
    out
}

fn histogram_from(buckets: Option<&LatencyBuckets>) -> Histogram {
    let mut histogram = Histogram::default();
    if let Some(buckets) = buckets {
        for (index, count) in buckets.index.iter().zip(&buckets.count) {
            if let Ok(index) = u16::try_from(*index) {
                histogram.add(index, *count);
            }
        }
        histogram.sum_micros = buckets.sum_micros;
    }
    histogram
}

/// One data plane's counts: cumulative (a report) or a difference of two.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// (route, status) -> requests.
    pub requests: HashMap<(String, u16), u64>,
    /// (route, consumer, status) -> requests.
    pub consumers: HashMap<(String, String, u16), u64>,
    pub routes: HashMap<String, Traffic>,
}

impl Counts {
    pub fn from_report(report: &UsageReport) -> Counts {
        let mut counts = Counts::default();
        for route in &report.routes {
            for status in &route.statuses {
                if let Ok(code) = u16::try_from(status.code) {
                    *counts
                        .requests
                        .entry((route.route.clone(), code))
                        .or_default() += status.count;
                }
            }
            let traffic = Traffic {
                bytes_in: route.bytes_in,
                bytes_out: route.bytes_out,
                total: histogram_from(route.total_latency.as_ref()),
                upstream: histogram_from(route.upstream_latency.as_ref()),
                refusals: route
                    .refusals
                    .iter()
                    .map(|r| (r.kind.clone(), r.count))
                    .collect(),
            };
            counts
                .routes
                .entry(route.route.clone())
                .or_default()
                .add(&traffic);
        }
        for consumer in &report.consumers {
            for status in &consumer.statuses {
                if let Ok(code) = u16::try_from(status.code) {
                    *counts
                        .consumers
                        .entry((consumer.route.clone(), consumer.consumer.clone(), code))
                        .or_default() += status.count;
                }
            }
        }
        counts
    }

    /// What `self` (a later cumulative report) counted beyond `old`.
    pub fn minus(&self, old: &Counts) -> Counts {
        let requests = self
            .requests
            .iter()
            .map(|(key, count)| {
                let old = old.requests.get(key).copied().unwrap_or(0);
                (key.clone(), count.saturating_sub(old))
            })
            .filter(|(_, count)| *count > 0)
            .collect();
        let consumers = self
            .consumers
            .iter()
            .map(|(key, count)| {
                let old = old.consumers.get(key).copied().unwrap_or(0);
                (key.clone(), count.saturating_sub(old))
            })
            .filter(|(_, count)| *count > 0)
            .collect();
        let empty = Traffic::default();
        let routes = self
            .routes
            .iter()
            .map(|(route, traffic)| {
                (
                    route.clone(),
                    traffic.minus(old.routes.get(route).unwrap_or(&empty)),
                )
            })
            .filter(|(_, traffic)| *traffic != Traffic::default())
            .collect();
        Counts {
            requests,
            consumers,
            routes,
        }
    }
}

/// The counts that arrived within one bucket of time.
#[derive(Debug, Clone, Default)]
pub struct Bucket {
    pub start_ms: i64,
    /// (data plane, route, status) -> requests.
    pub requests: HashMap<(String, String, u16), u64>,
    /// (route, consumer, status) -> requests.
    pub consumers: HashMap<(String, String, u16), u64>,
    pub routes: HashMap<String, Traffic>,
    pub nodes: HashMap<String, Traffic>,
}

impl Bucket {
    fn add(&mut self, node: &str, delta: &Counts) {
        for ((route, code), count) in &delta.requests {
            let mut key = (node.to_string(), route.clone(), *code);
            if self.requests.len() >= MAX_KEYS && !self.requests.contains_key(&key) {
                key.1 = OTHER.to_string();
            }
            *self.requests.entry(key).or_default() += count;
        }
        for (key, count) in &delta.consumers {
            let mut key = key.clone();
            if self.consumers.len() >= MAX_KEYS && !self.consumers.contains_key(&key) {
                key.0 = OTHER.to_string();
            }
            *self.consumers.entry(key).or_default() += count;
        }
        let node_traffic = self.nodes.entry(node.to_string()).or_default();
        for traffic in delta.routes.values() {
            node_traffic.add(traffic);
        }
        for (route, traffic) in &delta.routes {
            let route = if self.routes.len() >= MAX_KEYS && !self.routes.contains_key(route) {
                OTHER.to_string()
            } else {
                route.clone()
            };
            self.routes.entry(route).or_default().add(traffic);
        }
    }
}

/// Buckets of one resolution, oldest first.
#[derive(Debug, Clone)]
pub struct Tier {
    pub resolution_ms: i64,
    keep: usize,
    pub buckets: VecDeque<Bucket>,
}

impl Tier {
    fn new(resolution_ms: i64, keep: usize) -> Tier {
        Tier {
            resolution_ms,
            keep,
            buckets: VecDeque::new(),
        }
    }

    /// How far back this tier reaches.
    pub fn span_ms(&self) -> i64 {
        self.resolution_ms * self.keep as i64
    }

    fn add(&mut self, node: &str, delta: &Counts, at_ms: i64) {
        let start = at_ms - at_ms.rem_euclid(self.resolution_ms);
        let current = match self.buckets.back() {
            // A clock that stepped back keeps adding to the newest bucket.
            Some(last) if last.start_ms >= start => self.buckets.back_mut(),
            _ => {
                self.buckets.push_back(Bucket {
                    start_ms: start,
                    ..Bucket::default()
                });
                self.buckets.back_mut()
            }
        };
        if let Some(bucket) = current {
            bucket.add(node, delta);
        }
        let oldest = start - self.span_ms();
        while self
            .buckets
            .front()
            .is_some_and(|b| b.start_ms <= oldest || self.buckets.len() > self.keep)
        {
            self.buckets.pop_front();
        }
    }

    /// The buckets that overlap `[from_ms, now]`.
    pub fn since(&self, from_ms: i64) -> impl Iterator<Item = &Bucket> {
        let resolution = self.resolution_ms;
        self.buckets
            .iter()
            .filter(move |b| b.start_ms + resolution > from_ms)
    }
}

/// Both tiers.
#[derive(Debug, Clone)]
pub struct Window {
    pub fine: Tier,
    pub coarse: Tier,
}

/// 10 s buckets for an hour, 5 min buckets for a day.
impl Default for Window {
    fn default() -> Self {
        Window {
            fine: Tier::new(10_000, 360),
            coarse: Tier::new(300_000, 288),
        }
    }
}

impl Window {
    pub fn add(&mut self, node: &str, delta: &Counts, at_ms: i64) {
        self.fine.add(node, delta, at_ms);
        self.coarse.add(node, delta, at_ms);
    }

    /// The tier that covers the last `since_ms` at the finest resolution.
    pub fn tier_for(&self, since_ms: i64) -> &Tier {
        if since_ms <= self.fine.span_ms() {
            &self.fine
        } else {
            &self.coarse
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(route: &str, n: u64) -> Counts {
        let mut counts = Counts::default();
        counts.requests.insert((route.into(), 200), n);
        counts
    }

    #[test]
    fn buckets_roll_and_expire() {
        let mut window = Window::default();
        let hour = 3_600_000;
        window.add("dp", &delta("a", 1), 0);
        window.add("dp", &delta("a", 2), 5_000);
        window.add("dp", &delta("a", 4), 10_000);
        assert_eq!(window.fine.buckets.len(), 2);
        assert_eq!(window.coarse.buckets.len(), 1);
        window.add("dp", &delta("a", 8), hour + 10_000);
        // The fine tier keeps 360 buckets: the first two are an hour old.
        let fine: u64 = window.fine.since(0).flat_map(|b| b.requests.values()).sum();
        assert_eq!(fine, 8);
        let coarse: u64 = window
            .coarse
            .since(0)
            .flat_map(|b| b.requests.values())
            .sum();
        assert_eq!(coarse, 15);
        assert!(std::ptr::eq(window.tier_for(hour), &window.fine));
        assert!(std::ptr::eq(window.tier_for(hour + 1), &window.coarse));
    }

    #[test]
    fn differences_of_cumulative_counts() {
        let mut old = delta("a", 5);
        old.routes.insert(
            "a".into(),
            Traffic {
                bytes_in: 10,
                ..Traffic::default()
            },
        );
        let mut new = delta("a", 7);
        new.requests.insert(("b".into(), 404), 1);
        new.routes.insert(
            "a".into(),
            Traffic {
                bytes_in: 15,
                ..Traffic::default()
            },
        );
        let diff = new.minus(&old);
        assert_eq!(diff.requests.get(&("a".to_string(), 200)), Some(&2));
        assert_eq!(diff.requests.get(&("b".to_string(), 404)), Some(&1));
        assert_eq!(diff.routes.get("a").map(|t| t.bytes_in), Some(5));
        assert!(new.minus(&new).requests.is_empty());
    }
}
