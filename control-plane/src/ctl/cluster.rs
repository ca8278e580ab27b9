//! `tollgatectl dataplanes token create|list` and `dataplanes revoke`: the
//! operator's side of the cluster PKI (see `crate::pki`).

use std::io::Write;
use std::time::Duration;

use tollgate_shared::proto::admin::{
    CreateJoinTokenRequest, ListJoinTokensRequest, RevokeDataPlaneRequest,
};

use super::access::parse_duration;
use super::client::Client;
use super::output::{self, Format};
use crate::error::CpError;

#[derive(Debug, clap::Subcommand)]
pub enum DataplanesCommand {
    /// One-time join tokens for new data planes (`create` needs role admin).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Refuse a data plane's certificate from now on and close its stream
    /// (needs role admin). Its node id cannot join again.
    Revoke { node_id: String },
}

#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Print a new join token (shown once) for `tollgate-dp --join-token`.
    Create {
        /// How long the token can be used: 30m, 1h, 7d (at most 7d).
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        ttl: Duration,
    },
    /// The join tokens (never their secrets) and the revoked node ids.
    List {
        #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
        output: Format,
    },
}

#[derive(serde::Serialize)]
struct JoinTokenView {
    id: String,
    created: String,
    expires: String,
    used_by: String,
    created_by: String,
}

#[derive(serde::Serialize)]
struct JoinTokensView {
    tokens: Vec<JoinTokenView>,
    revoked_nodes: Vec<String>,
}

pub async fn run(
    client: &mut Client,
    command: DataplanesCommand,
    out: &mut dyn Write,
) -> Result<(), CpError> {
    match command {
        DataplanesCommand::Token {
            command: TokenCommand::Create { ttl },
        } => {
            let response = client
                .create_join_token(CreateJoinTokenRequest {
                    ttl_seconds: ttl.as_secs(),
                })
                .await?
                .into_inner();
            let info = response.info.unwrap_or_default();
            eprintln!(
                "join token {} expires {}; it works once and is shown once:",
                info.id,
                output::timestamp(info.expires_ms)
            );
            writeln!(out, "{}", response.token)?;
        }
        DataplanesCommand::Token {
            command: TokenCommand::List { output },
        } => {
            let list = client
                .list_join_tokens(ListJoinTokensRequest {})
                .await?
                .into_inner();
            let view = JoinTokensView {
                tokens: list
                    .tokens
                    .iter()
                    .map(|t| JoinTokenView {
                        id: t.id.clone(),
                        created: output::timestamp(t.created_ms),
                        expires: output::timestamp(t.expires_ms),
                        used_by: if t.used {
                            t.used_by_node.clone()
                        } else {
                            "-".into()
                        },
                        created_by: t.created_by.clone(),
                    })
                    .collect(),
                revoked_nodes: list.revoked_nodes,
            };
            match output {
                Format::Table => {
                    let rows: Vec<Vec<String>> = view
                        .tokens
                        .iter()
                        .map(|t| {
                            vec![
                                t.id.clone(),
                                t.created.clone(),
                                t.expires.clone(),
                                t.used_by.clone(),
                                t.created_by.clone(),
                            ]
                        })
                        .collect();
                    if rows.is_empty() {
                        writeln!(out, "no join tokens")?;
                    } else {
                        output::table(
                            out,
                            &["ID", "CREATED", "EXPIRES", "USED BY", "CREATED BY"],
                            &rows,
                        )?;
                    }
                    if !view.revoked_nodes.is_empty() {
                        writeln!(out, "revoked: {}", view.revoked_nodes.join(", "))?;
                    }
                }
                Format::Yaml | Format::Json => super::print_structured(out, &view, output)?,
            }
        }
        DataplanesCommand::Revoke { node_id } => {
            let response = client
                .revoke_data_plane(RevokeDataPlaneRequest {
                    node_id: node_id.clone(),
                })
                .await?
                .into_inner();
            writeln!(
                out,
                "revoked data plane {node_id:?}; closed {} open stream(s)",
                response.closed_streams
            )?;
        }
    }
    Ok(())
}
