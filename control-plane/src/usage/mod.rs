//! Fleet usage: the data planes' usage reports, kept in a rolling window in
//! memory and answered as stats (issue 20).
//!
//! - Reports arrive on the config stream (`UsageReport`, one every
//!   `--usage-report-interval-ms` per data plane). Their counts are
//!   cumulative since the data-plane process started; [`Usage::ingest`] keeps
//!   the last report of each instance (its random `instance_id`) and adds
//!   only the difference. A repeated or reordered report (sequence not above
//!   the last) adds nothing, a lost one is made up by the next, a reconnect
//!   of the same process continues from its last counts, and a restarted
//!   data plane is a new instance that counts from zero: nothing is counted
//!   twice, and what a data plane reported before it died stays.
//! - [`window`]: the differences land in two tiers of time buckets, 10 s for
//!   the last hour and 5 min for the last day, by arrival time.
//! - [`query`]: totals, rates, error ratios, quantiles (from the mergeable
//!   log-linear histograms of `tollgate_shared::usage`, within 3%), grouped
//!   by route, consumer, data plane or status, and one series over time.
//!
//! In memory only: a control-plane restart starts an empty window (the first
//! report of each running data plane then carries its counts since it
//! started, which land in the current bucket).

pub mod query;
pub mod window;

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tollgate_shared::proto::stream::UsageReport;

pub use query::{parse_since, Grouping, SeriesPoint, StatsQuery, StatsReport};
use window::{Counts, Window};

/// Instances not heard from for this long are forgotten (their counts stay
/// in the window; a report of theirs after that would count from zero).
const INSTANCE_TTL: Duration = Duration::from_secs(24 * 3600);
/// At most this many instances are remembered; the one heard from longest
/// ago is forgotten first.
const MAX_INSTANCES: usize = 10_000;

/// The window and the last report of each data-plane instance.
#[derive(Debug)]
pub struct Usage {
    inner: Mutex<Inner>,
    started: Instant,
}

#[derive(Debug, Default)]
struct Inner {
    instances: HashMap<String, Instance>,
    window: Window,
    /// Node id -> Unix ms of its last report.
    last_report_ms: HashMap<String, i64>,
}

#[derive(Debug)]
struct Instance {
    sequence: u64,
    seen: Instant,
    totals: Counts,
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Default for Usage {
    fn default() -> Self {
        Usage {
            inner: Mutex::default(),
            started: Instant::now(),
        }
    }
}

impl Usage {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds what `report` counted since the instance's previous report.
    pub fn ingest(&self, node_id: &str, report: &UsageReport) {
        self.ingest_at(node_id, report, now_ms());
    }

    fn ingest_at(&self, node_id: &str, report: &UsageReport, at_ms: i64) {
        if report.instance_id.is_empty() || report.instance_id.len() > 128 {
            tracing::debug!(node_id, "usage report without a valid instance id ignored");
            return;
        }
        let totals = Counts::from_report(report);
        let mut inner = self.lock();
        inner.last_report_ms.insert(node_id.to_string(), at_ms);
        let delta = match inner.instances.get_mut(&report.instance_id) {
            Some(instance) if report.sequence <= instance.sequence => {
                tracing::debug!(
                    node_id,
                    sequence = report.sequence,
                    "usage report repeated or out of order; ignored"
                );
                instance.seen = Instant::now();
                return;
            }
            Some(instance) => {
                let delta = totals.minus(&instance.totals);
                instance.sequence = report.sequence;
                instance.seen = Instant::now();
                instance.totals = totals;
                delta
            }
            None => {
                let delta = totals.clone();
                inner.forget_old_instances();
                inner.instances.insert(
                    report.instance_id.clone(),
                    Instance {
                        sequence: report.sequence,
                        seen: Instant::now(),
                        totals,
                    },
                );
                delta
            }
        };
        inner.window.add(node_id, &delta, at_ms);
    }

    /// Stats over the query's window.
    pub fn stats(&self, query: &StatsQuery) -> StatsReport {
        let now = now_ms();
        let uptime = self.started.elapsed();
        query::stats(&self.lock().window, query, now, uptime)
    }

    /// One series over time (requests, 5xx, p99 per bucket).
    pub fn series(&self, since: Duration, route: Option<&str>) -> Vec<SeriesPoint> {
        query::series(&self.lock().window, since, route, now_ms())
    }

    /// Unix ms of the last report of `node_id`.
    pub fn last_report_ms(&self, node_id: &str) -> Option<i64> {
        self.lock().last_report_ms.get(node_id).copied()
    }
}

impl Inner {
    fn forget_old_instances(&mut self) {
        self.instances
            .retain(|_, instance| instance.seen.elapsed() < INSTANCE_TTL);
        if self.instances.len() >= MAX_INSTANCES {
            let oldest = self
                .instances
                .iter()
                .min_by_key(|(_, instance)| instance.seen)
                .map(|(id, _)| id.clone());
            if let Some(id) = oldest {
                self.instances.remove(&id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_shared::proto::stream as pb;

    fn report(instance: &str, sequence: u64, ok: u64, not_found: u64) -> UsageReport {
        UsageReport {
            instance_id: instance.into(),
            sequence,
            routes: vec![pb::RouteUsage {
                route: "orders".into(),
                service: "svc".into(),
                statuses: vec![
                    pb::StatusCount {
                        code: 200,
                        count: ok,
                    },
                    pb::StatusCount {
                        code: 404,
                        count: not_found,
                    },
                ],
                ..Default::default()
            }],
            consumers: vec![],
            folded_series: 0,
        }
    }

    fn total(usage: &Usage) -> (u64, u64) {
        let stats = usage.stats(&StatsQuery::default());
        (
            stats.totals.statuses.get("200").copied().unwrap_or(0),
            stats.totals.statuses.get("404").copied().unwrap_or(0),
        )
    }

    #[test]
    fn cumulative_reports_count_once() {
        let usage = Usage::default();
        usage.ingest("dp-1", &report("a", 1, 10, 1));
        usage.ingest("dp-1", &report("a", 2, 15, 1));
        // Resent and out-of-order reports add nothing.
        usage.ingest("dp-1", &report("a", 2, 15, 1));
        usage.ingest("dp-1", &report("a", 1, 10, 1));
        assert_eq!(total(&usage), (15, 1));
        // The same node restarted: a new instance counting from zero.
        usage.ingest("dp-1", &report("b", 1, 4, 2));
        assert_eq!(total(&usage), (19, 3));
        // Another node.
        usage.ingest("dp-2", &report("c", 5, 1, 0));
        assert_eq!(total(&usage), (20, 3));
        assert!(usage.last_report_ms("dp-2").is_some());
        assert!(usage.last_report_ms("dp-3").is_none());
    }

    #[test]
    fn reports_without_an_instance_are_ignored() {
        let usage = Usage::default();
        usage.ingest("dp-1", &report("", 1, 10, 1));
        assert_eq!(total(&usage), (0, 0));
    }
}
