//! `tollgatectl stats`: the fleet's usage as a table (or JSON), from the
//! admin API's `GetStats` (the same document as the dashboard's
//! `/api/stats`), optionally refreshing in place with `--watch`.

use std::io::Write;
use std::time::Duration;

use tollgate_shared::proto::admin::GetStatsRequest;

use super::client::Client;
use super::output::{self, Format};
use crate::error::CpError;
use crate::usage::query::{Row, StatsReport};

/// How often `--watch` refreshes.
pub const WATCH_EVERY: Duration = Duration::from_secs(2);

/// One `GetStats` call, decoded.
pub async fn fetch(client: &mut Client, request: GetStatsRequest) -> Result<StatsReport, CpError> {
    let response = client
        .get_stats(request)
        .await
        .map_err(CpError::from)?
        .into_inner();
    serde_json::from_str(&response.json)
        .map_err(|e| CpError::Internal(format!("undecodable stats from the server: {e}")))
}

/// Prints `report` in `format`.
pub fn print(out: &mut dyn Write, report: &StatsReport, format: Format) -> Result<(), CpError> {
    match format {
        Format::Json => {
            let text = serde_json::to_string_pretty(report)
                .map_err(|e| CpError::Internal(e.to_string()))?;
            writeln!(out, "{text}")?;
            Ok(())
        }
        Format::Yaml => {
            let text =
                serde_yaml::to_string(report).map_err(|e| CpError::Internal(e.to_string()))?;
            write!(out, "{text}")?;
            Ok(())
        }
        Format::Table => {
            let by = serde_json::to_value(report.by)
                .ok()
                .and_then(|v| v.as_str().map(str::to_uppercase))
                .unwrap_or_default();
            let headers = [
                by.as_str(),
                "REQUESTS",
                "RPS",
                "4XX",
                "5XX %",
                "P50 MS",
                "P95 MS",
                "P99 MS",
                "REFUSALS",
            ];
            let mut rows: Vec<Vec<String>> = report.rows.iter().map(row).collect();
            rows.push(row(&report.totals));
            writeln!(
                out,
                "last {} (rates over {:.0} s), latency within {:.0}%",
                human(report.since_seconds),
                report.window_seconds,
                report.latency_relative_error * 100.0
            )?;
            output::table(out, &headers, &rows)
        }
    }
}

fn row(row: &Row) -> Vec<String> {
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
    let refusals = if row.refusals.is_empty() {
        "-".to_string()
    } else {
        row.refusals
            .iter()
            .map(|(kind, n)| format!("{kind}={n}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    vec![
        row.key.clone(),
        row.requests.to_string(),
        format!("{:.2}", row.rps),
        row.errors_4xx.to_string(),
        format!("{:.2}", row.error_ratio * 100.0),
        ms(row.p50_ms),
        ms(row.p95_ms),
        ms(row.p99_ms),
        refusals,
    ]
}

fn human(seconds: u64) -> String {
    match seconds {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// `--watch`: clears the terminal and prints again every [`WATCH_EVERY`]
/// until interrupted.
pub async fn watch(
    client: &mut Client,
    request: GetStatsRequest,
    format: Format,
    out: &mut dyn Write,
) -> Result<(), CpError> {
    loop {
        let report = fetch(client, request.clone()).await?;
        if format == Format::Table {
            // Home the cursor and clear the screen: the table refreshes in place.
            write!(out, "\x1b[H\x1b[2J")?;
        }
        print(out, &report, format)?;
        out.flush()?;
        tokio::select! {
            () = tokio::time::sleep(WATCH_EVERY) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}
