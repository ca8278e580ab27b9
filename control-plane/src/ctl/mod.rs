//! `tollgatectl`, the operator CLI for the admin API.
//!
//! `apply -f FILE [--dry-run]`, `diff -f FILE`, `get <kind> [name] [-o ...]`,
//! `delete <kind> <name>`, `export`, `dataplanes`. Results go to stdout;
//! errors go to stderr as one readable line (`error: route "orders-api":
//! service "ordrs" does not exist`) with a non-zero exit. The server's
//! responses are already redacted, so nothing printed here can hold a secret;
//! the token flag hides its environment value from `--help`.

pub mod client;
pub mod input;
pub mod output;

use std::io::Write;
use std::process::ExitCode;

use tollgate_shared::model::GatewayConfig;
use tollgate_shared::proto::admin::{
    ApplyRequest, ChangeAction, EntityRef, ExportRequest, ListDataPlanesRequest, ListRequest,
    PurgeCacheRequest,
};
use tollgate_shared::proto::config as pb_config;

use crate::entity::Entity;
use crate::error::CpError;
use crate::kind::EntityKind;
use output::Format;

#[derive(Debug, clap::Parser)]
#[command(
    name = "tollgatectl",
    version,
    about = "Operate a Tollgate control plane"
)]
pub struct CtlArgs {
    /// Admin API of the control plane.
    #[arg(
        long,
        env = "TOLLGATE_SERVER",
        default_value = "http://127.0.0.1:7070",
        global = true
    )]
    pub server: String,

    /// Admin token, if the control plane requires one.
    #[arg(
        long,
        env = "TOLLGATE_ADMIN_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub token: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Make the gateway match a file: creates, updates, and deletes what the file omits.
    Apply {
        /// The desired state (YAML or JSON); `-` reads stdin.
        #[arg(short = 'f', long = "file")]
        file: String,
        /// Show the changes without making them.
        #[arg(long)]
        dry_run: bool,
    },
    /// Show what `apply -f FILE` would change.
    Diff {
        #[arg(short = 'f', long = "file")]
        file: String,
    },
    /// List entities of a kind, or show one.
    Get {
        /// service(s), route(s), consumer(s), plugin(s), certificate(s).
        kind: String,
        name: Option<String>,
        #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
        output: Format,
    },
    /// Delete one entity.
    Delete { kind: String, name: String },
    /// Print the whole state as YAML (secrets as fingerprints); re-appliable.
    Export,
    /// List the data planes that subscribed to the config stream.
    Dataplanes {
        #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
        output: Format,
    },
    /// Cached responses (proxy-cache).
    Cache {
        #[command(subcommand)]
        action: CacheAction,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum CacheAction {
    /// Drop a route's cached responses on every connected data plane (and
    /// in Redis): all of them, or one by its X-Cache-Key.
    Purge {
        route: String,
        /// One entry: the X-Cache-Key a response showed (32 hex digits).
        #[arg(long)]
        key: Option<String>,
    },
}

/// Entry point of the `tollgatectl` binary.
pub fn main() -> ExitCode {
    let args = <CtlArgs as clap::Parser>::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match runtime.block_on(run(args, &mut out)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let _ = out.flush();
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

fn parse_kind(text: &str) -> Result<EntityKind, CpError> {
    EntityKind::parse(text).ok_or_else(|| {
        CpError::BadRequest(format!(
            "unknown kind {text:?}: use service(s), route(s), consumer(s), plugin(s) or \
             certificate(s)"
        ))
    })
}

/// Reads a config file (`-` = stdin), bounded in size, alias expansion and
/// depth ([`input`]).
fn read_config(path: &str) -> Result<GatewayConfig, CpError> {
    let file_error = |message: String| CpError::File {
        path: path.to_string(),
        message,
    };
    if path == "-" {
        return input::read_config(&mut std::io::stdin().lock()).map_err(file_error);
    }
    let mut file = std::fs::File::open(path).map_err(|e| file_error(e.to_string()))?;
    input::read_config(&mut file).map_err(file_error)
}

/// Runs one command, writing its result to `out`.
pub async fn run(args: CtlArgs, out: &mut dyn Write) -> Result<(), CpError> {
    // Check what can be checked before connecting.
    let kind = match &args.command {
        Command::Get { kind, .. } | Command::Delete { kind, .. } => Some(parse_kind(kind)?),
        _ => None,
    };
    let desired = match &args.command {
        Command::Apply { file, .. } | Command::Diff { file } => Some(read_config(file)?),
        _ => None,
    };
    let mut client = client::connect(&args.server, args.token.as_deref()).await?;

    match (args.command, kind, desired) {
        (Command::Apply { dry_run, .. }, _, Some(desired)) => {
            apply(&mut client, &desired, dry_run, out).await
        }
        (Command::Diff { .. }, _, Some(desired)) => apply(&mut client, &desired, true, out).await,
        (Command::Get { name, output, .. }, Some(kind), _) => {
            get(&mut client, kind, name, output, out).await
        }
        (Command::Delete { name, .. }, Some(kind), _) => {
            let response = client
                .delete(EntityRef {
                    kind: kind.to_pb() as i32,
                    name: name.clone(),
                })
                .await
                .map_err(CpError::from)?
                .into_inner();
            writeln!(out, "- {kind} {name}")?;
            writeln!(
                out,
                "deleted; {}",
                describe_version(response.version.as_ref())
            )?;
            Ok(())
        }
        (Command::Export, _, _) => {
            let response = client
                .export(ExportRequest {})
                .await
                .map_err(CpError::from)?
                .into_inner();
            let config = GatewayConfig::try_from(&response.config.unwrap_or_default())?;
            write!(out, "{}", config.to_yaml())?;
            Ok(())
        }
        (
            Command::Cache {
                action: CacheAction::Purge { route, key },
            },
            _,
            _,
        ) => {
            let response = client
                .purge_cache(PurgeCacheRequest {
                    route: route.clone(),
                    key: key.clone().unwrap_or_default(),
                })
                .await
                .map_err(CpError::from)?
                .into_inner();
            let what = key.map_or_else(|| "every entry".to_string(), |k| format!("entry {k}"));
            writeln!(
                out,
                "purged {what} of route {route} on {} data plane(s)",
                response.data_planes
            )?;
            Ok(())
        }
        (Command::Dataplanes { output }, _, _) => {
            let planes = client
                .list_data_planes(ListDataPlanesRequest {})
                .await
                .map_err(CpError::from)?
                .into_inner()
                .data_planes;
            match output {
                Format::Table if planes.is_empty() => {
                    writeln!(out, "no data planes")?;
                    Ok(())
                }
                Format::Table => {
                    let (headers, rows) = output::data_plane_rows(&planes);
                    output::table(out, &headers, &rows)
                }
                Format::Yaml | Format::Json => {
                    let views: Vec<output::DataPlaneView> = planes.iter().map(Into::into).collect();
                    print_structured(out, &views, output)
                }
            }
        }
        _ => Err(CpError::Internal("unreachable command combination".into())),
    }
}

fn describe_version(version: Option<&pb_config::ConfigVersion>) -> String {
    match version {
        Some(v) => format!("version {} (store {})", v.revision, v.store_id),
        None => "version unknown".to_string(),
    }
}

async fn apply(
    client: &mut client::Client,
    desired: &GatewayConfig,
    dry_run: bool,
    out: &mut dyn Write,
) -> Result<(), CpError> {
    let response = client
        .apply(ApplyRequest {
            config: Some(pb_config::GatewayConfig::from(desired)),
            dry_run,
        })
        .await
        .map_err(CpError::from)?
        .into_inner();
    for warning in &response.warnings {
        eprintln!("warning: {warning}");
    }
    for change in &response.changes {
        let marker = match ChangeAction::try_from(change.action) {
            Ok(ChangeAction::Create) => '+',
            Ok(ChangeAction::Update) => '~',
            Ok(ChangeAction::Delete) => '-',
            _ => '?',
        };
        let kind = EntityKind::from_pb(change.kind)
            .map(|k| k.label())
            .unwrap_or("entity");
        writeln!(out, "{marker} {kind} {}", change.name)?;
    }
    let version = describe_version(response.version.as_ref());
    let count = response.changes.len();
    let noun = if count == 1 { "change" } else { "changes" };
    if response.changes.is_empty() {
        writeln!(out, "no changes; {version}")?;
    } else if dry_run {
        writeln!(
            out,
            "dry run: {count} {noun}, nothing written; current {version}"
        )?;
    } else {
        writeln!(out, "applied {count} {noun}; {version}")?;
    }
    Ok(())
}

async fn get(
    client: &mut client::Client,
    kind: EntityKind,
    name: Option<String>,
    format: Format,
    out: &mut dyn Write,
) -> Result<(), CpError> {
    let single = name.is_some();
    let wire = match name {
        Some(name) => vec![client
            .get(EntityRef {
                kind: kind.to_pb() as i32,
                name,
            })
            .await
            .map_err(CpError::from)?
            .into_inner()],
        None => {
            client
                .list(ListRequest {
                    kind: kind.to_pb() as i32,
                })
                .await
                .map_err(CpError::from)?
                .into_inner()
                .entities
        }
    };
    let entities = wire
        .into_iter()
        .map(|e| Entity::from_pb(Some(e)))
        .collect::<Result<Vec<_>, _>>()?;
    match format {
        Format::Table => {
            if entities.is_empty() {
                writeln!(out, "no {}", kind.tree_name())?;
                return Ok(());
            }
            let (headers, rows) = output::entity_rows(&entities);
            output::table(out, &headers, &rows)
        }
        Format::Yaml | Format::Json if single => match entities.first() {
            Some(entity) => print_structured(out, entity, format),
            None => Ok(()),
        },
        Format::Yaml | Format::Json => print_structured(out, &entities, format),
    }
}

fn print_structured<T: serde::Serialize>(
    out: &mut dyn Write,
    value: &T,
    format: Format,
) -> Result<(), CpError> {
    let text = match format {
        Format::Json => serde_json::to_string_pretty(value)
            .map(|t| t + "\n")
            .map_err(|e| CpError::Internal(e.to_string()))?,
        _ => serde_yaml::to_string(value).map_err(|e| CpError::Internal(e.to_string()))?,
    };
    out.write_all(text.as_bytes())?;
    Ok(())
}
