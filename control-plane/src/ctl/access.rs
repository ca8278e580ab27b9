//! `tollgatectl tokens ...` and `tollgatectl audit`: named admin tokens and
//! the audit log of writes.

use std::io::Write;
use std::time::Duration;

use tollgate_shared::proto::admin::{
    AuditEntry, ChangeAction, CreateTokenRequest, ListAuditRequest, ListTokensRequest,
    RevokeTokenRequest,
};

use super::client::Client;
use super::output::{self, Format};
use crate::access::tokens::now_ms;
use crate::access::Role;
use crate::error::CpError;
use crate::kind::EntityKind;

#[derive(Debug, clap::Subcommand)]
pub enum TokensCommand {
    /// Create a named token; prints the token once (only its hash is kept).
    Create {
        name: String,
        /// viewer (reads), editor (writes), admin (tokens, cluster operations).
        #[arg(long, value_parser = parse_role)]
        role: Role,
    },
    /// List the named tokens (never the tokens themselves).
    List {
        #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
        output: Format,
    },
    /// Revoke a named token: refused from its next call on.
    Revoke { name: String },
}

pub(crate) fn parse_role(text: &str) -> Result<Role, String> {
    Role::parse(text).ok_or_else(|| "must be one of viewer, editor, admin".to_string())
}

/// A duration such as `90s`, `15m`, `24h` or `7d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a number and a unit, e.g. 30s, 15m, 24h, 7d"))?;
    let seconds = match unit {
        "ms" => return Ok(Duration::from_millis(number)),
        "s" | "" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: the unit must be ms, s, m, h or d")),
    };
    Ok(Duration::from_secs(number.saturating_mul(seconds)))
}

pub async fn tokens(
    client: &mut Client,
    command: TokensCommand,
    out: &mut dyn Write,
) -> Result<(), CpError> {
    match command {
        TokensCommand::Create { name, role } => {
            let response = client
                .create_token(CreateTokenRequest {
                    name,
                    role: role.to_pb() as i32,
                })
                .await?
                .into_inner();
            let token = response.token.unwrap_or_default();
            eprintln!(
                "created token {:?} with role {role}; it is shown once, store it now:",
                token.name
            );
            writeln!(out, "{}", response.secret)?;
        }
        TokensCommand::List { output } => {
            let tokens = client
                .list_tokens(ListTokensRequest {})
                .await?
                .into_inner()
                .tokens;
            let views: Vec<TokenView> = tokens
                .iter()
                .map(|t| TokenView {
                    name: t.name.clone(),
                    role: role_label(t.role),
                    created: output::timestamp(t.created_ms),
                    created_by: t.created_by.clone(),
                    fingerprint: t.fingerprint.clone(),
                })
                .collect();
            match output {
                Format::Table if views.is_empty() => writeln!(out, "no admin tokens")?,
                Format::Table => {
                    let rows: Vec<Vec<String>> = views
                        .iter()
                        .map(|v| {
                            vec![
                                v.name.clone(),
                                v.role.to_string(),
                                v.created.clone(),
                                v.created_by.clone(),
                                v.fingerprint.clone(),
                            ]
                        })
                        .collect();
                    output::table(
                        out,
                        &["NAME", "ROLE", "CREATED", "CREATED BY", "FINGERPRINT"],
                        &rows,
                    )?;
                }
                Format::Yaml | Format::Json => super::print_structured(out, &views, output)?,
            }
        }
        TokensCommand::Revoke { name } => {
            client
                .revoke_token(RevokeTokenRequest { name: name.clone() })
                .await?;
            writeln!(out, "revoked token {name:?}")?;
        }
    }
    Ok(())
}

#[derive(serde::Serialize)]
struct TokenView {
    name: String,
    role: &'static str,
    created: String,
    created_by: String,
    fingerprint: String,
}

pub(crate) fn role_label(raw: i32) -> &'static str {
    Role::from_pb(raw).map_or("?", Role::as_str)
}

#[derive(serde::Serialize)]
struct AuditView {
    seq: u64,
    at: String,
    actor: String,
    role: &'static str,
    peer: String,
    call: String,
    revision: u64,
    changes: Vec<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    detail: String,
}

impl From<&AuditEntry> for AuditView {
    fn from(entry: &AuditEntry) -> AuditView {
        AuditView {
            seq: entry.seq,
            at: output::timestamp(entry.at_ms),
            actor: entry.actor.clone(),
            role: role_label(entry.role),
            peer: entry.peer.clone(),
            call: entry.call.clone(),
            revision: entry.revision,
            changes: entry
                .changes
                .iter()
                .map(|c| {
                    let marker = match ChangeAction::try_from(c.action) {
                        Ok(ChangeAction::Create) => '+',
                        Ok(ChangeAction::Update) => '~',
                        Ok(ChangeAction::Delete) => '-',
                        _ => '?',
                    };
                    let kind = EntityKind::from_pb(c.kind).map_or("entity", |k| k.label());
                    if c.fields.is_empty() {
                        format!("{marker} {kind} {}", c.name)
                    } else {
                        format!("{marker} {kind} {}: {}", c.name, c.fields.join(", "))
                    }
                })
                .collect(),
            detail: entry.detail.clone(),
        }
    }
}

pub async fn audit(
    client: &mut Client,
    since: Duration,
    format: Format,
    out: &mut dyn Write,
) -> Result<(), CpError> {
    let since_ms = now_ms().saturating_sub(since.as_millis().min(i64::MAX as u128) as i64);
    let entries = client
        .list_audit(ListAuditRequest { since_ms, limit: 0 })
        .await?
        .into_inner()
        .entries;
    let views: Vec<AuditView> = entries.iter().map(AuditView::from).collect();
    match format {
        Format::Table if views.is_empty() => writeln!(out, "no audit entries")?,
        Format::Table => {
            let rows: Vec<Vec<String>> = views
                .iter()
                .map(|v| {
                    let what = if v.changes.is_empty() {
                        v.detail.clone()
                    } else {
                        v.changes.join("; ")
                    };
                    vec![
                        v.at.clone(),
                        v.actor.clone(),
                        v.role.to_string(),
                        v.peer.clone(),
                        v.call.clone(),
                        if v.revision == 0 {
                            "-".into()
                        } else {
                            v.revision.to_string()
                        },
                        what,
                    ]
                })
                .collect();
            output::table(
                out,
                &["TIME", "WHO", "ROLE", "FROM", "CALL", "REVISION", "WHAT"],
                &rows,
            )?;
        }
        Format::Yaml | Format::Json => super::print_structured(out, &views, format)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("5y").is_err());
    }
}
