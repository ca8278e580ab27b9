//! `tollgatectl`, the operator CLI for the admin API.
//!
//! `apply -f FILE [--dry-run] [--select-tag TAG] [--wait [--timeout 30s]]`,
//! `diff -f FILE [--select-tag TAG]`,
//! `get <kind> [name] [-o ...]`, `delete <kind> <name> [--wait]`, `export`,
//! `dataplanes`, `history`, `diff --from REV [--to REV]`,
//! `export [--revision REV]`, `rollback --to REV [--wait]`,
//! `tokens create|list|revoke`, `audit [--since 24h]`, `stats`, `health SERVICE
//! --data-plane URL...` (read from the data planes themselves, see
//! [`health`]). Results go to stdout;
//! errors go to stderr as one readable line (`error: route "orders-api":
//! service "ordrs" does not exist`) with a non-zero exit. The server's
//! responses are already redacted, so nothing printed here can hold a secret;
//! the token flag hides its environment value from `--help`.

pub mod access;
pub mod client;
pub mod cluster;
pub mod fields;
pub mod health;
pub mod history;
pub mod input;
pub mod operators;
pub mod output;
pub mod stats;
pub mod wait;

use std::io::Write;
use std::process::ExitCode;

use tollgate_shared::model::GatewayConfig;
use tollgate_shared::proto::admin::{
    ApplyRequest, ApplyResponse, ChangeAction, EntityRef, GetStatsRequest, ListDataPlanesRequest,
    ListRequest, PurgeCacheRequest, RollbackRequest,
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

    #[command(flatten)]
    pub tls: client::TlsArgs,

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
        /// Accept a file without any entity (it deletes everything).
        #[arg(long)]
        allow_empty: bool,
        /// Apply only the entities carrying this tag: every entity in the
        /// file must carry it; entities without it are left untouched.
        #[arg(long)]
        select_tag: Option<String>,
        #[command(flatten)]
        wait: wait::WaitArgs,
    },
    /// Check a file offline (no server needed), with the server's messages.
    Validate {
        #[arg(short = 'f', long = "file")]
        file: String,
    },
    /// Print a shell completion script: `tollgatectl completion bash > ...`.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Show what `apply -f FILE` would change, or what changed between two
    /// revisions (`--from REV [--to REV]`, `--to` defaulting to the current one).
    Diff {
        #[arg(
            short = 'f',
            long = "file",
            required_unless_present = "from",
            conflicts_with = "from"
        )]
        file: Option<String>,
        /// An earlier revision (see `history`).
        #[arg(long)]
        from: Option<u64>,
        /// A later revision [default: the current one].
        #[arg(long, requires = "from")]
        to: Option<u64>,
        /// Exit 1 when there are changes, 0 when there are none, 2 on an
        /// error (for CI drift checks).
        #[arg(long)]
        exit_code: bool,
        /// Compare only the entities carrying this tag, as apply does with it.
        #[arg(long, requires = "file")]
        select_tag: Option<String>,
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
    Delete {
        kind: String,
        name: String,
        #[command(flatten)]
        wait: wait::WaitArgs,
    },
    /// Print the whole state as YAML (secrets as fingerprints); re-appliable.
    Export {
        /// Export an earlier revision still in the history instead.
        #[arg(long)]
        revision: Option<u64>,
    },
    /// List the newest revisions: who wrote each, when, what changed.
    History {
        /// At most this many, newest first.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Make a new revision equal to an earlier one (history is kept).
    Rollback {
        /// The revision to return to (see `history`).
        #[arg(long = "to")]
        to: u64,
        /// Show the changes without making them.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        wait: wait::WaitArgs,
    },
    /// List the data planes that subscribed to the config stream; or make
    /// join tokens (`dataplanes token create --ttl 1h`) and revoke one
    /// (`dataplanes revoke NODE`).
    Dataplanes {
        #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
        output: Format,
        #[command(subcommand)]
        command: Option<cluster::DataplanesCommand>,
    },
    /// Named admin tokens with roles (needs role admin).
    Tokens {
        #[command(subcommand)]
        command: access::TokensCommand,
    },
    /// Operator client certificates for a TLS admin API (needs role admin):
    /// `operators cert create NAME --role ROLE --out DIR`, `list`, `revoke`.
    Operators {
        #[command(subcommand)]
        command: operators::OperatorsCommand,
    },
    /// The audit log: who changed what, when, from where.
    Audit {
        /// How far back, e.g. 30m, 24h, 7d.
        #[arg(long, default_value = "24h", value_parser = access::parse_duration)]
        since: std::time::Duration,
        #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
        output: Format,
    },
    /// Show each target of a service as data planes see it (healthy,
    /// ejected, unhealthy), read from their status listeners.
    Health {
        service: String,
        /// A data plane's status address (`http://host:port`); repeat for several.
        #[arg(long = "data-plane", required = true)]
        data_planes: Vec<String>,
        #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
        output: Format,
    },
    /// Fleet usage from the data planes' reports: requests, RPS, errors,
    /// p50/p95/p99 and refusals, busiest first.
    Stats {
        /// Group rows by route, consumer, dataplane or status.
        #[arg(long, default_value = "route", value_parser = ["route", "consumer", "dataplane", "status"])]
        by: String,
        /// The window: 90s, 15m, 2h, 1d (at most 1d).
        #[arg(long, default_value = "15m")]
        since: String,
        /// Only this route.
        #[arg(long)]
        route: Option<String>,
        /// At most this many rows (0: all).
        #[arg(long, default_value_t = 0)]
        top: u32,
        /// Refresh in place every 2 s until interrupted.
        #[arg(long)]
        watch: bool,
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
    // `diff --exit-code`: 1 means "there are changes", so errors say 2.
    let server = client::server_url(&args.server);
    let with_client_cert = args.tls.client_cert.is_some();
    let drift_check = matches!(
        args.command,
        Command::Diff {
            exit_code: true,
            ..
        }
    );
    match runtime.block_on(run(args, &mut out)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(CpError::Drift) => ExitCode::from(1),
        Err(err) => {
            let _ = out.flush();
            match &err {
                CpError::Rpc(status)
                    if server.starts_with("https://")
                        && with_client_cert
                        && client::broken_connection(status) =>
                {
                    eprintln!(
                        "error: the admin API closed the connection ({err}): it refuses a client \
                         certificate that is not an operator certificate from the cluster CA or \
                         --admin-client-ca, or that has expired; check --client-cert"
                    )
                }
                CpError::Rpc(status) if client::answered_by_non_grpc(status) => eprintln!(
                    "error: {server} is not a Tollgate admin API (is it a data plane's proxy or \
                     status port? tollgate-cp's admin API listens on 127.0.0.1:7070 by default; \
                     if it serves TLS, use https:// with --ca-cert; the answer was: {err})"
                ),
                _ => eprintln!("error: {err}"),
            }
            if drift_check {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
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
    // Commands that need no server.
    match &args.command {
        Command::Validate { file } => return validate(file, out),
        Command::Completion { shell } => {
            let mut command = <CtlArgs as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut command, "tollgatectl", out);
            return Ok(());
        }
        _ => {}
    }
    // Check what can be checked before connecting.
    let kind = match &args.command {
        Command::Get { kind, .. } | Command::Delete { kind, .. } => Some(parse_kind(kind)?),
        _ => None,
    };
    let desired = match &args.command {
        Command::Apply { file, .. }
        | Command::Diff {
            file: Some(file), ..
        } => Some(read_config(file)?),
        _ => None,
    };
    if let Command::Health {
        service,
        data_planes,
        output,
    } = &args.command
    {
        // Health lives in the data planes: no control plane call.
        return health::run(service, data_planes, *output, out).await;
    }
    if let (
        Command::Apply {
            file,
            allow_empty: false,
            ..
        },
        Some(desired),
    ) = (&args.command, &desired)
    {
        if entity_count(desired) == 0 {
            return Err(CpError::File {
                path: file.clone(),
                message: "the file has no entities: applying it would delete everything; \
                          pass --allow-empty to do that"
                    .into(),
            });
        }
    }
    let since = match &args.command {
        Command::Stats { since, .. } => Some(
            crate::usage::parse_since(since)
                .map_err(|e| CpError::BadRequest(format!("--since: {e}")))?,
        ),
        _ => None,
    };
    let mut client = client::connect(&args.server, args.token.as_deref(), &args.tls).await?;

    match (args.command, kind, desired) {
        (
            Command::Apply {
                dry_run,
                wait,
                select_tag,
                ..
            },
            _,
            Some(desired),
        ) => {
            let version = apply(&mut client, &desired, dry_run, select_tag, out).await?;
            match version {
                Some(version) if wait.wait && !dry_run => {
                    wait::rollout(&mut client, version, wait.timeout, out).await
                }
                _ => Ok(()),
            }
        }
        (
            Command::Diff {
                exit_code,
                select_tag,
                ..
            },
            _,
            Some(desired),
        ) => {
            let changes = diff_file(&mut client, &desired, select_tag, out).await?;
            drift(exit_code, changes)
        }
        (
            Command::Diff {
                from: Some(from),
                to,
                exit_code,
                ..
            },
            _,
            None,
        ) => {
            let changes = history::diff_revisions(&mut client, from, to, out).await?;
            drift(exit_code, changes)
        }
        (Command::History { limit }, _, _) => history::list(&mut client, limit, out).await,
        (
            Command::Rollback {
                to, dry_run, wait, ..
            },
            _,
            _,
        ) => {
            let response = client
                .rollback(RollbackRequest {
                    revision: to,
                    dry_run,
                })
                .await
                .map_err(CpError::from)?
                .into_inner();
            let version = print_changes(&response, dry_run, out)?;
            match version {
                Some(version) if wait.wait && !dry_run => {
                    wait::rollout(&mut client, version, wait.timeout, out).await
                }
                _ => Ok(()),
            }
        }
        (Command::Get { name, output, .. }, Some(kind), _) => {
            get(&mut client, kind, name, output, out).await
        }
        (Command::Delete { name, wait, .. }, Some(kind), _) => {
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
            match response.version {
                Some(version) if wait.wait => {
                    wait::rollout(&mut client, version, wait.timeout, out).await
                }
                _ => Ok(()),
            }
        }
        (Command::Export { revision }, _, _) => {
            let config = history::export(&mut client, revision.unwrap_or(0)).await?;
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
        (
            Command::Dataplanes {
                command: Some(command),
                ..
            },
            _,
            _,
        ) => cluster::run(&mut client, command, out).await,
        (Command::Dataplanes { output, .. }, _, _) => {
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
        (Command::Tokens { command }, _, _) => access::tokens(&mut client, command, out).await,
        (Command::Operators { command }, _, _) => operators::run(&mut client, command, out).await,
        (Command::Audit { since, output }, _, _) => {
            access::audit(&mut client, since, output, out).await
        }
        (
            Command::Stats {
                by,
                route,
                top,
                watch,
                output,
                ..
            },
            _,
            _,
        ) => {
            let request = GetStatsRequest {
                by,
                since_seconds: since.map_or(0, |s| s.as_secs()),
                route: route.unwrap_or_default(),
                top,
            };
            if watch {
                stats::watch(&mut client, request, output, out).await
            } else {
                let report = stats::fetch(&mut client, request).await?;
                stats::print(out, &report, output)
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

/// `validate -f FILE`: the server's checks that need no stored state (the
/// whole-config validation, certificates, size), with its messages. A secret
/// given only by fingerprint cannot be checked offline: said, not guessed.
fn validate(path: &str, out: &mut dyn Write) -> Result<(), CpError> {
    let config = read_config(path)?;
    for warning in crate::model::check_offline(&config)? {
        eprintln!("warning: {warning}");
    }
    let by_fingerprint = config
        .consumers
        .iter()
        .flat_map(|c| &c.credentials)
        .filter(|c| {
            c.jwt
                .as_ref()
                .is_some_and(|j| j.secret.is_none() && j.secret_fingerprint.is_some())
        })
        .count()
        + config
            .certificates
            .iter()
            .filter(|c| c.key_pem.is_none() && c.key_fingerprint.is_some())
            .count();
    writeln!(out, "{path}: valid ({} entities)", entity_count(&config))?;
    if by_fingerprint > 0 {
        writeln!(
            out,
            "note: {by_fingerprint} secret(s) given by fingerprint; the server checks that it still holds them"
        )?;
    }
    Ok(())
}

fn entity_count(config: &GatewayConfig) -> usize {
    config.services.len()
        + config.routes.len()
        + config.consumers.len()
        + config.plugins.len()
        + config.certificates.len()
}

/// `diff --exit-code` found changes: exit 1 (no error line).
fn drift(exit_code: bool, changes: usize) -> Result<(), CpError> {
    if exit_code && changes > 0 {
        Err(CpError::Drift)
    } else {
        Ok(())
    }
}

/// `diff -f FILE`: the server's dry run (its validation, its change list),
/// each update shown field by field against the current export. Returns the
/// number of changes.
async fn diff_file(
    client: &mut client::Client,
    desired: &GatewayConfig,
    select_tag: Option<String>,
    out: &mut dyn Write,
) -> Result<usize, CpError> {
    let response = client
        .apply(ApplyRequest {
            config: Some(pb_config::GatewayConfig::from(desired)),
            dry_run: true,
            select_tag: select_tag.unwrap_or_default(),
        })
        .await
        .map_err(CpError::from)?
        .into_inner();
    for warning in &response.warnings {
        eprintln!("warning: {warning}");
    }
    let current = history::export(client, 0).await?;
    history::print_changes(&current, &desired.redacted(), &response.changes, out)?;
    let version = describe_version(response.version.as_ref());
    let count = response.changes.len();
    if count == 0 {
        writeln!(out, "no changes; {version}")?;
    } else {
        let noun = if count == 1 { "change" } else { "changes" };
        writeln!(
            out,
            "dry run: {count} {noun}, nothing written; current {version}"
        )?;
    }
    Ok(count)
}

/// Applies (or, with `dry_run`, diffs) `desired` and prints the changes;
/// returns the version in force afterwards.
async fn apply(
    client: &mut client::Client,
    desired: &GatewayConfig,
    dry_run: bool,
    select_tag: Option<String>,
    out: &mut dyn Write,
) -> Result<Option<pb_config::ConfigVersion>, CpError> {
    let response = client
        .apply(ApplyRequest {
            config: Some(pb_config::GatewayConfig::from(desired)),
            dry_run,
            select_tag: select_tag.unwrap_or_default(),
        })
        .await
        .map_err(CpError::from)?
        .into_inner();
    print_changes(&response, dry_run, out)
}

/// Prints an Apply's (or Rollback's) changes and outcome; returns the version
/// in force afterwards.
fn print_changes(
    response: &ApplyResponse,
    dry_run: bool,
    out: &mut dyn Write,
) -> Result<Option<pb_config::ConfigVersion>, CpError> {
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
    Ok(response.version.clone())
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
