//! Answers over the window: one table of rows grouped by route, consumer,
//! data plane or status (`tollgatectl stats`, `GET /api/stats`), and one
//! series over time (`GET /api/series`, the dashboard's charts).
//!
//! Definitions: `rps` is requests over the window's length (the requested
//! span, or the control plane's uptime when shorter); `errors_5xx` /
//! `error_ratio` count 5xx answers (4xx, refusals included, are counted
//! apart); quantiles are in milliseconds from the merged histograms, within
//! `latency_relative_error` of the exact value. Latency is kept per route and
//! per data plane: rows by consumer or status have none, nor have rows by
//! data plane filtered to one route.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tollgate_shared::usage::{Histogram, RELATIVE_ERROR};

use super::window::{Bucket, Traffic, Window};
use crate::error::CpError;

/// Longest window a query may ask for (the coarse tier's span).
pub const MAX_SINCE: Duration = Duration::from_secs(24 * 3600);
/// Default window.
pub const DEFAULT_SINCE: Duration = Duration::from_secs(15 * 60);

/// What rows are grouped by.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Grouping {
    #[default]
    Route,
    Consumer,
    Dataplane,
    Status,
}

impl Grouping {
    pub fn parse(text: &str) -> Option<Grouping> {
        match text {
            "" | "route" | "routes" => Some(Grouping::Route),
            "consumer" | "consumers" => Some(Grouping::Consumer),
            "dataplane" | "dataplanes" | "data-plane" | "node" => Some(Grouping::Dataplane),
            "status" | "code" => Some(Grouping::Status),
            _ => None,
        }
    }
}

/// A stats question.
#[derive(Debug, Clone)]
pub struct StatsQuery {
    pub by: Grouping,
    pub since: Duration,
    pub route: Option<String>,
    /// At most this many rows, busiest first (0: all).
    pub top: usize,
}

impl StatsQuery {
    /// A query from the admin API's fields (`since_seconds` 0: the default);
    /// a bad field is named in the error.
    pub fn from_request(
        by: &str,
        since_seconds: u64,
        route: &str,
        top: u32,
    ) -> Result<StatsQuery, CpError> {
        let by = Grouping::parse(by).ok_or_else(|| {
            CpError::BadRequest(format!(
                "by: {:?} is not one of route, consumer, dataplane, status",
                crate::stream::registry::truncate(by, 64)
            ))
        })?;
        let since = match since_seconds {
            0 => DEFAULT_SINCE,
            s if s > MAX_SINCE.as_secs() => {
                return Err(CpError::BadRequest(format!(
                    "since_seconds: {s} is more than the window kept ({} s)",
                    MAX_SINCE.as_secs()
                )))
            }
            s => Duration::from_secs(s),
        };
        Ok(StatsQuery {
            by,
            since,
            route: (!route.is_empty()).then(|| route.to_string()),
            top: top as usize,
        })
    }
}

/// Parses a window length: `90s`, `15m`, `2h`, `1d` or plain seconds.
pub fn parse_since(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 90s, 15m, 2h or 1d"))?;
    let seconds = match unit {
        "s" => number,
        "m" => number.saturating_mul(60),
        "h" => number.saturating_mul(3600),
        "d" => number.saturating_mul(86_400),
        _ => {
            return Err(format!(
                "{text:?} is not a duration like 90s, 15m, 2h or 1d"
            ))
        }
    };
    if seconds == 0 || seconds > MAX_SINCE.as_secs() {
        return Err(format!("{text:?} must be between 1s and 1d"));
    }
    Ok(Duration::from_secs(seconds))
}

impl Default for StatsQuery {
    fn default() -> Self {
        StatsQuery {
            by: Grouping::Route,
            since: DEFAULT_SINCE,
            route: None,
            top: 0,
        }
    }
}

/// One row (or the totals).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub key: String,
    pub requests: u64,
    pub rps: f64,
    /// Status code -> requests.
    pub statuses: BTreeMap<String, u64>,
    pub errors_4xx: u64,
    pub errors_5xx: u64,
    /// 5xx answers over requests.
    pub error_ratio: f64,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub mean_ms: Option<f64>,
    pub upstream_p99_ms: Option<f64>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Refusal kind (rate_limited, missing_credential, ...) -> requests.
    pub refusals: BTreeMap<String, u64>,
}

/// The answer to a [`StatsQuery`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsReport {
    pub by: Grouping,
    pub since_seconds: u64,
    pub route: Option<String>,
    /// The span rates are computed over.
    pub window_seconds: f64,
    pub generated_at_ms: i64,
    /// Bound on the relative error of the quantiles.
    pub latency_relative_error: f64,
    /// Everything in the window (after the route filter).
    pub totals: Row,
    pub rows: Vec<Row>,
}

/// One point of a series: one bucket of the tier covering the span.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SeriesPoint {
    pub t_ms: i64,
    pub seconds: f64,
    pub requests: u64,
    pub rps: f64,
    pub errors_5xx: u64,
    pub rate_limited: u64,
    pub p99_ms: Option<f64>,
}

/// Accumulates a row.
#[derive(Default)]
struct Acc {
    statuses: BTreeMap<u16, u64>,
    traffic: Traffic,
    has_latency: bool,
}

impl Acc {
    fn row(&self, key: String, window_seconds: f64) -> Row {
        let requests: u64 = self.statuses.values().sum();
        let class = |range: std::ops::Range<u16>| -> u64 {
            self.statuses
                .iter()
                .filter(|(code, _)| range.contains(code))
                .map(|(_, n)| n)
                .sum()
        };
        let errors_5xx = class(500..600);
        let ms = |h: &Histogram, q: f64| {
            if self.has_latency {
                h.quantile(q).map(|us| us / 1000.0)
            } else {
                None
            }
        };
        Row {
            key,
            requests,
            rps: requests as f64 / window_seconds,
            statuses: self
                .statuses
                .iter()
                .map(|(code, n)| (code.to_string(), *n))
                .collect(),
            errors_4xx: class(400..500),
            errors_5xx,
            error_ratio: if requests == 0 {
                0.0
            } else {
                errors_5xx as f64 / requests as f64
            },
            p50_ms: ms(&self.traffic.total, 0.5),
            p95_ms: ms(&self.traffic.total, 0.95),
            p99_ms: ms(&self.traffic.total, 0.99),
            mean_ms: self
                .has_latency
                .then(|| self.traffic.total.mean().map(|us| us / 1000.0))
                .flatten(),
            upstream_p99_ms: ms(&self.traffic.upstream, 0.99),
            bytes_in: self.traffic.bytes_in,
            bytes_out: self.traffic.bytes_out,
            refusals: self.traffic.refusals.clone(),
        }
    }
}

fn since_ms(since: Duration) -> i64 {
    i64::try_from(since.min(MAX_SINCE).as_millis()).unwrap_or(i64::MAX)
}

/// The table for `query` at `now_ms`.
pub fn stats(window: &Window, query: &StatsQuery, now_ms: i64, uptime: Duration) -> StatsReport {
    let span = since_ms(query.since).max(1000);
    let tier = window.tier_for(span);
    let from = now_ms - span;
    let window_seconds =
        (span.min(i64::try_from(uptime.as_millis()).unwrap_or(i64::MAX)) as f64 / 1000.0).max(1.0);
    let route_filter = query.route.as_deref().filter(|r| !r.is_empty());
    let wanted = |route: &str| route_filter.is_none_or(|r| r == route);

    let mut totals = Acc {
        has_latency: true,
        ..Acc::default()
    };
    let mut rows: HashMap<String, Acc> = HashMap::new();
    for bucket in tier.since(from) {
        add_bucket(
            bucket,
            query.by,
            &wanted,
            route_filter,
            &mut totals,
            &mut rows,
        );
    }
    let mut rows: Vec<Row> = rows
        .into_iter()
        .map(|(key, acc)| acc.row(key, window_seconds))
        .collect();
    rows.sort_by(|a, b| b.requests.cmp(&a.requests).then_with(|| a.key.cmp(&b.key)));
    if query.top > 0 {
        rows.truncate(query.top);
    }
    StatsReport {
        by: query.by,
        since_seconds: query.since.min(MAX_SINCE).as_secs(),
        route: route_filter.map(str::to_string),
        window_seconds,
        generated_at_ms: now_ms,
        latency_relative_error: RELATIVE_ERROR,
        totals: totals.row("total".to_string(), window_seconds),
        rows,
    }
}

fn add_bucket(
    bucket: &Bucket,
    by: Grouping,
    wanted: &dyn Fn(&str) -> bool,
    route_filter: Option<&str>,
    totals: &mut Acc,
    rows: &mut HashMap<String, Acc>,
) {
    for ((node, route, code), count) in &bucket.requests {
        if !wanted(route) {
            continue;
        }
        *totals.statuses.entry(*code).or_default() += count;
        let key = match by {
            Grouping::Route => route.clone(),
            Grouping::Dataplane => node.clone(),
            Grouping::Status => code.to_string(),
            Grouping::Consumer => continue,
        };
        *rows
            .entry(key)
            .or_default()
            .statuses
            .entry(*code)
            .or_default() += count;
    }
    for (route, traffic) in &bucket.routes {
        if !wanted(route) {
            continue;
        }
        totals.traffic.add(traffic);
        if by == Grouping::Route {
            let acc = rows.entry(route.clone()).or_default();
            acc.traffic.add(traffic);
            acc.has_latency = true;
        }
    }
    if by == Grouping::Dataplane && route_filter.is_none() {
        for (node, traffic) in &bucket.nodes {
            let acc = rows.entry(node.clone()).or_default();
            acc.traffic.add(traffic);
            acc.has_latency = true;
        }
    }
    if by == Grouping::Consumer {
        for ((route, consumer, code), count) in &bucket.consumers {
            if !wanted(route) {
                continue;
            }
            *rows
                .entry(consumer.clone())
                .or_default()
                .statuses
                .entry(*code)
                .or_default() += count;
        }
    }
}

/// Requests, 5xx, rate-limit refusals and p99 per bucket over the last
/// `since` (one route or all), every bucket of the span present (zeros when
/// nothing came), oldest first.
pub fn series(
    window: &Window,
    since: Duration,
    route: Option<&str>,
    now_ms: i64,
) -> Vec<SeriesPoint> {
    let span = since_ms(since).max(1000);
    let tier = window.tier_for(span);
    let resolution = tier.resolution_ms;
    let route = route.filter(|r| !r.is_empty());
    let wanted = |r: &str| route.is_none_or(|want| want == r);
    let by_start: HashMap<i64, &Bucket> =
        tier.since(now_ms - span).map(|b| (b.start_ms, b)).collect();
    let last = now_ms - now_ms.rem_euclid(resolution);
    let first = (now_ms - span) - (now_ms - span).rem_euclid(resolution);
    let mut points = Vec::new();
    let mut start = first;
    while start <= last {
        let mut point = SeriesPoint {
            t_ms: start,
            seconds: resolution as f64 / 1000.0,
            ..SeriesPoint::default()
        };
        if let Some(bucket) = by_start.get(&start) {
            let mut latency = Histogram::default();
            for ((_, r, code), count) in &bucket.requests {
                if wanted(r) {
                    point.requests += count;
                    if (500..600).contains(code) {
                        point.errors_5xx += count;
                    }
                }
            }
            for (r, traffic) in &bucket.routes {
                if wanted(r) {
                    latency.merge(&traffic.total);
                    point.rate_limited +=
                        traffic.refusals.get("rate_limited").copied().unwrap_or(0);
                }
            }
            point.p99_ms = latency.quantile(0.99).map(|us| us / 1000.0);
        }
        point.rps = point.requests as f64 / point.seconds;
        points.push(point);
        start += resolution;
    }
    points
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::window::Counts;

    #[test]
    fn windows_parse_and_bad_fields_are_named() {
        assert_eq!(parse_since("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_since("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_since("1d"), Ok(Duration::from_secs(86_400)));
        assert!(parse_since("2d").is_err());
        assert!(parse_since("0s").is_err());
        assert!(parse_since("5 minutes").is_err());
        let err = StatsQuery::from_request("colour", 0, "", 0).map(|_| ());
        assert!(format!("{err:?}").contains("by:"), "{err:?}");
        let err = StatsQuery::from_request("route", 100_000, "", 0).map(|_| ());
        assert!(format!("{err:?}").contains("since_seconds"), "{err:?}");
    }

    #[test]
    fn rows_by_each_grouping() {
        let mut window = Window::default();
        let now = 1_000_000_000;
        let mut delta = Counts::default();
        delta.requests.insert(("orders".into(), 200), 8);
        delta.requests.insert(("orders".into(), 502), 2);
        delta.requests.insert(("users".into(), 429), 5);
        delta
            .consumers
            .insert(("users".into(), "alice".into(), 429), 5);
        let mut traffic = Traffic::default();
        for ms in 1..=10u64 {
            traffic
                .total
                .add(tollgate_shared::usage::bucket_of(ms * 1000) as u16, 1);
        }
        traffic.refusals.insert("rate_limited".into(), 5);
        delta.routes.insert("orders".into(), traffic);
        window.add("dp-1", &delta, now - 5_000);
        window.add("dp-2", &delta, now - 5_000);

        let report = stats(
            &window,
            &StatsQuery::default(),
            now,
            Duration::from_secs(100),
        );
        assert_eq!(report.totals.requests, 30);
        assert_eq!(report.window_seconds, 100.0);
        assert_eq!(report.rows[0].key, "orders");
        assert_eq!(report.rows[0].requests, 20);
        assert_eq!(report.rows[0].errors_5xx, 4);
        assert!((report.rows[0].error_ratio - 0.2).abs() < 1e-9);
        let p99 = report.rows[0].p99_ms.unwrap_or_default();
        assert!((p99 - 10.0).abs() / 10.0 <= RELATIVE_ERROR, "{p99}");
        assert_eq!(report.rows[1].refusals.len(), 0);
        assert_eq!(report.rows[0].refusals.get("rate_limited"), Some(&10));

        let by_node = stats(
            &window,
            &StatsQuery {
                by: Grouping::Dataplane,
                ..StatsQuery::default()
            },
            now,
            Duration::from_secs(100),
        );
        assert_eq!(by_node.rows.len(), 2);
        assert_eq!(by_node.rows[0].requests, 15);
        let by_consumer = stats(
            &window,
            &StatsQuery {
                by: Grouping::Consumer,
                ..StatsQuery::default()
            },
            now,
            Duration::from_secs(100),
        );
        assert_eq!(by_consumer.rows[0].key, "alice");
        assert_eq!(by_consumer.rows[0].statuses.get("429"), Some(&10));
        let by_status = stats(
            &window,
            &StatsQuery {
                by: Grouping::Status,
                route: Some("orders".into()),
                ..StatsQuery::default()
            },
            now,
            Duration::from_secs(100),
        );
        assert_eq!(by_status.totals.requests, 20);
        assert_eq!(by_status.rows.len(), 2);

        let points = series(&window, Duration::from_secs(60), Some("orders"), now);
        assert!(points.len() >= 6);
        let sum: u64 = points.iter().map(|p| p.requests).sum();
        assert_eq!(sum, 20);
        assert_eq!(points.iter().map(|p| p.errors_5xx).sum::<u64>(), 4);
    }
}
