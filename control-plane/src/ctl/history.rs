//! `history`, `diff --from REV [--to REV]` and `export --revision REV`.

use std::io::Write;

use tollgate_shared::model::GatewayConfig;
use tollgate_shared::proto::admin::{ChangeAction, ExportRequest, HistoryRequest};

use super::client::Client;
use super::fields;
use super::output;
use crate::diff::{self, Action};
use crate::entity;
use crate::error::CpError;
use crate::kind::EntityKind;

/// The state at `revision` (0: current), redacted, as the server exports it.
pub async fn export(client: &mut Client, revision: u64) -> Result<GatewayConfig, CpError> {
    let response = client
        .export(ExportRequest { revision })
        .await
        .map_err(CpError::from)?
        .into_inner();
    Ok(GatewayConfig::try_from(
        &response.config.unwrap_or_default(),
    )?)
}

/// `history`: one line per revision, newest first.
pub async fn list(client: &mut Client, limit: u32, out: &mut dyn Write) -> Result<(), CpError> {
    let response = client
        .history(HistoryRequest { limit })
        .await
        .map_err(CpError::from)?
        .into_inner();
    if response.revisions.is_empty() {
        writeln!(out, "no history yet")?;
        return Ok(());
    }
    let rows: Vec<Vec<String>> = response
        .revisions
        .iter()
        .map(|revision| {
            let changes = revision
                .changes
                .iter()
                .map(|change| {
                    let marker = match ChangeAction::try_from(change.action) {
                        Ok(ChangeAction::Create) => '+',
                        Ok(ChangeAction::Delete) => '-',
                        _ => '~',
                    };
                    let kind = EntityKind::from_pb(change.kind)
                        .map(|k| k.label())
                        .unwrap_or("entity");
                    format!("{marker}{kind} {}", change.name)
                })
                .collect::<Vec<_>>();
            let mut summary = if changes.len() > 4 {
                format!("{}, … ({} changes)", changes[..4].join(", "), changes.len())
            } else {
                changes.join(", ")
            };
            if !revision.note.is_empty() {
                summary = format!("[{}] {summary}", revision.note);
            }
            vec![
                revision.revision.to_string(),
                output::timestamp(revision.at_ms),
                revision.actor.clone(),
                summary,
            ]
        })
        .collect();
    output::table(out, &["REVISION", "WHEN", "BY", "CHANGES"], &rows)
}

/// `diff --from REV [--to REV]`: entity and field changes between two
/// revisions (secrets as fingerprints on both sides).
pub async fn diff_revisions(
    client: &mut Client,
    from: u64,
    to: Option<u64>,
    out: &mut dyn Write,
) -> Result<usize, CpError> {
    let old = export(client, from).await?;
    let new = export(client, to.unwrap_or(0)).await?;
    let changes = diff::diff(&old, &new);
    let count = changes.len();
    print_diff(&old, &new, &changes, out)?;
    let to = to.map_or_else(|| "the current revision".to_string(), |r| r.to_string());
    if count == 0 {
        writeln!(out, "no changes from revision {from} to {to}")?;
    } else {
        writeln!(
            out,
            "{count} change{} from revision {from} to {to}",
            if count == 1 { "" } else { "s" }
        )?;
    }
    Ok(count)
}

/// [`print_diff`] for a change list in the admin API's form.
pub fn print_changes(
    old: &GatewayConfig,
    new: &GatewayConfig,
    changes: &[tollgate_shared::proto::admin::Change],
    out: &mut dyn Write,
) -> Result<(), CpError> {
    let changes: Vec<diff::Change> = changes
        .iter()
        .filter_map(|c| {
            Some(diff::Change {
                kind: EntityKind::from_pb(c.kind)?,
                name: c.name.clone(),
                action: match ChangeAction::try_from(c.action).ok()? {
                    ChangeAction::Create => Action::Create,
                    ChangeAction::Delete => Action::Delete,
                    _ => Action::Update,
                },
            })
        })
        .collect();
    print_diff(old, new, &changes, out)
}

/// Prints `changes` (from `old` to `new`), updates field by field.
pub fn print_diff(
    old: &GatewayConfig,
    new: &GatewayConfig,
    changes: &[diff::Change],
    out: &mut dyn Write,
) -> Result<(), CpError> {
    let colour = fields::colour();
    let (old_index, new_index) = (entity::NameIndex::new(old), entity::NameIndex::new(new));
    for change in changes {
        let marker = change.action.marker();
        let head = format!("{marker} {} {}", change.kind, change.name);
        if change.action != Action::Update {
            writeln!(out, "{}", fields::paint(marker, &head, colour))?;
            continue;
        }
        let json = |index: &entity::NameIndex<'_>| {
            index
                .get(change.kind, &change.name)
                .map(|e| e.redacted().to_json())
                .transpose()
                .map_err(|e| CpError::Internal(e.to_string()))
        };
        let (before, after) = (json(&old_index)?, json(&new_index)?);
        let lines = match (before, after) {
            (Some(before), Some(after)) => fields::changes(&before, &after),
            _ => Vec::new(),
        };
        if lines.is_empty() {
            writeln!(out, "{}", fields::paint(marker, &head, colour))?;
        }
        for line in lines {
            writeln!(
                out,
                "{}",
                fields::paint(marker, &format!("{head}: {line}"), colour)
            )?;
        }
    }
    Ok(())
}
