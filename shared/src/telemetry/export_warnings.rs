//! Warnings for span batches the OTLP exporter could not deliver.
//!
//! Why a wrapper around the exporter: opentelemetry 0.27 removed
//! `global::set_error_handler`; the SDK now reports a failed export only
//! through its `internal-logs` feature, as an error-level `tracing` event per
//! failed batch (up to twice a second here, with the collector down), and we
//! build the SDK without that feature. Wrapping the exporter gives one place
//! that sees every export result, so an operator gets one warning at most per
//! [`WARN_INTERVAL`] saying that spans are being lost, how many, and why, and
//! one line when exports work again. Nothing here runs on the request path:
//! exports run on the batch processor's task.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_sdk::export::trace::{ExportResult, SpanData, SpanExporter};
use opentelemetry_sdk::Resource;

/// Shortest time between two warnings about failing exports.
pub const WARN_INTERVAL: Duration = Duration::from_secs(60);

/// An exporter that reports its failures in the log, rate-limited.
#[derive(Debug)]
pub struct WarnOnFailure<E> {
    inner: E,
    log: Arc<FailureLog>,
}

impl<E> WarnOnFailure<E> {
    pub fn new(inner: E) -> Self {
        Self {
            inner,
            log: Arc::new(FailureLog::new(WARN_INTERVAL)),
        }
    }
}

impl<E: SpanExporter> SpanExporter for WarnOnFailure<E> {
    fn export(
        &mut self,
        batch: Vec<SpanData>,
    ) -> Pin<Box<dyn Future<Output = ExportResult> + Send + 'static>> {
        let spans = batch.len() as u64;
        let export = self.inner.export(batch);
        let log = Arc::clone(&self.log);
        Box::pin(async move {
            let result = export.await;
            let error = result.as_ref().err().map(ToString::to_string);
            if let Some(report) = log.record(error, spans, Instant::now()) {
                report.emit();
            }
            result
        })
    }

    fn shutdown(&mut self) {
        self.inner.shutdown();
    }

    fn force_flush(&mut self) -> Pin<Box<dyn Future<Output = ExportResult> + Send + 'static>> {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// What to log after an export, if anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// Exports fail: the latest error and what was lost since the last warning.
    Failing {
        error: String,
        batches: u64,
        spans: u64,
    },
    /// An export succeeded after a warning.
    Recovered,
}

impl Report {
    fn emit(&self) {
        match self {
            Report::Failing {
                error,
                batches,
                spans,
            } => tracing::warn!(
                error = %error,
                failed_batches = batches,
                lost_spans = spans,
                "cannot export traces to the OTLP endpoint; spans are being dropped \
                 (warning at most once a minute)"
            ),
            Report::Recovered => tracing::info!("trace export to the OTLP endpoint works again"),
        }
    }
}

/// Counts failed exports and decides when to warn.
#[derive(Debug)]
struct FailureLog {
    interval: Duration,
    state: Mutex<FailureState>,
}

#[derive(Debug, Default)]
struct FailureState {
    last_warning: Option<Instant>,
    /// Failures not yet reported in a warning.
    batches: u64,
    spans: u64,
    /// A warning was logged and no export has succeeded since.
    warned: bool,
}

impl FailureLog {
    fn new(interval: Duration) -> Self {
        Self {
            interval,
            state: Mutex::new(FailureState::default()),
        }
    }

    /// Records one export's outcome (`error`: `None` when it succeeded).
    fn record(&self, error: Option<String>, spans: u64, now: Instant) -> Option<Report> {
        // A poisoned lock only means a panic while counting; the counts are
        // still usable.
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(error) = error else {
            return std::mem::take(&mut state.warned).then_some(Report::Recovered);
        };
        state.batches += 1;
        state.spans += spans;
        let due = match state.last_warning {
            Some(last) => now.saturating_duration_since(last) >= self.interval,
            None => true,
        };
        if !due {
            return None;
        }
        state.last_warning = Some(now);
        state.warned = true;
        Some(Report::Failing {
            error,
            batches: std::mem::take(&mut state.batches),
            spans: std::mem::take(&mut state.spans),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failing(batches: u64, spans: u64) -> Option<Report> {
        Some(Report::Failing {
            error: "down".into(),
            batches,
            spans,
        })
    }

    #[test]
    fn failures_warn_at_most_once_per_interval_with_what_was_lost() {
        let log = FailureLog::new(Duration::from_secs(60));
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        let down = || Some("down".to_string());
        assert_eq!(log.record(down(), 3, at(0)), failing(1, 3));
        assert_eq!(log.record(down(), 4, at(1)), None);
        assert_eq!(log.record(down(), 5, at(59)), None);
        assert_eq!(log.record(down(), 6, at(60)), failing(3, 15));
        assert_eq!(log.record(None, 1, at(61)), Some(Report::Recovered));
        assert_eq!(log.record(None, 1, at(62)), None, "recovery said once");
        // Failing again within the interval of the last warning: counted,
        // reported with the next warning.
        assert_eq!(log.record(down(), 2, at(70)), None);
        assert_eq!(log.record(None, 1, at(71)), None, "no warning, no recovery");
        assert_eq!(log.record(down(), 2, at(120)), failing(2, 4));
    }

    /// An exporter whose results are scripted, recording the resource it is given.
    #[derive(Debug, Default)]
    struct Scripted {
        fail: bool,
        resource: Option<Resource>,
    }

    impl SpanExporter for Scripted {
        fn export(
            &mut self,
            _batch: Vec<SpanData>,
        ) -> Pin<Box<dyn Future<Output = ExportResult> + Send + 'static>> {
            let fail = self.fail;
            Box::pin(async move {
                if fail {
                    Err(opentelemetry::trace::TraceError::Other("refused".into()))
                } else {
                    Ok(())
                }
            })
        }

        fn set_resource(&mut self, resource: &Resource) {
            self.resource = Some(resource.clone());
        }
    }

    #[tokio::test]
    async fn the_wrapper_passes_results_and_the_resource_through() {
        let mut exporter = WarnOnFailure::new(Scripted {
            fail: true,
            resource: None,
        });
        assert!(exporter.export(Vec::new()).await.is_err());
        exporter.inner.fail = false;
        assert!(exporter.export(Vec::new()).await.is_ok());
        let resource = Resource::new([opentelemetry::KeyValue::new("service.name", "t")]);
        exporter.set_resource(&resource);
        assert_eq!(exporter.inner.resource, Some(resource));
    }
}
