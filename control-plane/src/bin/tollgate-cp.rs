//! `tollgate-cp`: the control plane server. Flags are parsed here; everything
//! else lives in the library ([`tollgate_control_plane::run`]).

use std::process::ExitCode;

use clap::Parser;
use tollgate_control_plane::{CpArgs, CpConfig};
use tollgate_shared::telemetry::{self, TelemetryConfig};

const THREAD_STACK_BYTES: usize = 8 * 1024 * 1024;

fn main() -> ExitCode {
    let args = CpArgs::parse();
    // A known, generous stack for every runtime thread: config writes are
    // validated on the blocking threads (see `model`), and nothing they run
    // recurses on request input beyond small fixed bounds.
    // (Apply calls run on a runtime of their own: see `listener`.)
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(THREAD_STACK_BYTES)
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("tollgate-cp: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let telemetry_config = TelemetryConfig {
        service_name: "tollgate-cp".to_owned(),
        instance_id: instance_id(&args),
        json_logs: args.log_json,
        otlp_endpoint: args.otlp_endpoint.clone().filter(|e| !e.is_empty()),
        sample_ratio: args.trace_sample_ratio,
    };
    let config = CpConfig::from(args);
    runtime.block_on(async move {
        // Trace export runs its batch task on this runtime, so it starts here.
        let telemetry = match telemetry::init(&telemetry_config) {
            Ok(guard) => guard,
            Err(err) => {
                eprintln!("tollgate-cp: {err}");
                return ExitCode::FAILURE;
            }
        };
        let result = tollgate_control_plane::run(config, shutdown_signal()).await;
        telemetry.shutdown().await;
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                tracing::error!("{err}");
                ExitCode::FAILURE
            }
        }
    })
}

/// `service.instance.id`: this host and admin address, unique per instance.
fn instance_id(args: &CpArgs) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{host}/{}", args.admin_listen)
}

/// Resolves on SIGTERM or ctrl-c.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %err, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
