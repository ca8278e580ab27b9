//! `--wait`: after a write, follow `WaitForVersion` and print each data plane
//! as it answers; fail naming every data plane that rejected the version
//! (with its reason) or did not answer in time.

use std::io::Write;
use std::time::Duration;

use tollgate_shared::proto::admin::{RolloutOutcome, WaitForVersionRequest};
use tollgate_shared::proto::config::ConfigVersion;

use super::client::Client;
use crate::error::CpError;
use crate::stream::rollout::show_duration;

#[derive(Debug, Clone, clap::Args)]
pub struct WaitArgs {
    /// Wait until every connected data plane serves the new version; exit
    /// non-zero naming each one that rejected it or did not answer in time.
    #[arg(long)]
    pub wait: bool,
    /// How long `--wait` waits, e.g. `30s`, `500ms`, `2m`.
    #[arg(long, default_value = "30s", value_parser = parse_duration, requires = "wait")]
    pub timeout: Duration,
}

/// `30s`, `500ms`, `2m`, `1h`; a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 30s, 500ms, 2m)"))?;
    let duration = match unit {
        "ms" => Duration::from_millis(value),
        "" | "s" => Duration::from_secs(value),
        "m" => Duration::from_secs(value.saturating_mul(60)),
        "h" => Duration::from_secs(value.saturating_mul(3600)),
        _ => return Err(format!("{text:?}: unit must be ms, s, m or h")),
    };
    if duration.is_zero() || duration > Duration::from_secs(3600) {
        return Err(format!("{text:?}: must be more than 0 and at most 1h"));
    }
    Ok(duration)
}

/// Waits for `version` on every connected data plane.
pub async fn rollout(
    client: &mut Client,
    version: ConfigVersion,
    timeout: Duration,
    out: &mut dyn Write,
) -> Result<(), CpError> {
    let revision = version.revision;
    let mut events = client
        .wait_for_version(WaitForVersionRequest {
            version: Some(version),
            timeout_ms: timeout.as_millis() as u64,
        })
        .await
        .map_err(CpError::from)?
        .into_inner();
    let (mut confirmed, mut failed) = (0usize, Vec::new());
    while let Some(event) = events.message().await.map_err(CpError::from)? {
        let elapsed = show_duration(Duration::from_millis(event.elapsed_ms.max(0) as u64));
        match RolloutOutcome::try_from(event.outcome) {
            Ok(RolloutOutcome::Acked) => {
                confirmed += 1;
                let serving = event.version.map(|v| v.revision).unwrap_or(revision);
                writeln!(
                    out,
                    "✓ {} serves version {serving} ({elapsed})",
                    event.node_id
                )?;
            }
            Ok(RolloutOutcome::Rejected) => {
                writeln!(
                    out,
                    "✗ {} rejected version {}: {}",
                    event.node_id,
                    event.version.map(|v| v.revision).unwrap_or(revision),
                    event.reason
                )?;
                failed.push(format!("{} rejected it: {}", event.node_id, event.reason));
            }
            _ => {
                writeln!(out, "✗ {}: {}", event.node_id, event.reason)?;
                failed.push(format!("{}: {}", event.node_id, event.reason));
            }
        }
        out.flush()?;
    }
    if failed.is_empty() {
        if confirmed == 0 {
            writeln!(
                out,
                "no data plane connected; nothing to wait for (version {revision})"
            )?;
        } else {
            writeln!(
                out,
                "version {revision} confirmed by {confirmed} data plane{}",
                if confirmed == 1 { "" } else { "s" }
            )?;
        }
        return Ok(());
    }
    Err(CpError::Rollout(format!(
        "version {revision} is not served by {} of {} data planes: {}",
        failed.len(),
        failed.len() + confirmed,
        failed.join("; ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("2d").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("2h").is_err());
    }
}
