//! Process lifecycle: SIGTERM or SIGINT starts a drain.
//!
//! Draining means: `/readyz` turns 503 at once (load balancers stop sending),
//! the proxy stops accepting, in-flight requests finish up to
//! `--drain-timeout-s`, then the process exits 0. The deadline, not a second
//! signal, ends the drain.

use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::error::DpError;

/// Installed signal handlers (installed before serving, so an early signal
/// is not lost).
#[derive(Debug)]
pub struct Signals {
    terminate: Signal,
    interrupt: Signal,
}

impl Signals {
    pub fn install() -> Result<Signals, DpError> {
        Ok(Signals {
            terminate: signal(SignalKind::terminate()).map_err(DpError::Signal)?,
            interrupt: signal(SignalKind::interrupt()).map_err(DpError::Signal)?,
        })
    }

    /// Resolves on the first SIGTERM or SIGINT, naming it.
    pub async fn recv(mut self) -> &'static str {
        tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
        }
    }
}
