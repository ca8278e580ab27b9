//! Tollgate's control plane: the source of truth for the gateway's
//! configuration, its admin API, and the stream that feeds data planes.
//!
//! The binaries are thin (`src/bin/tollgate-cp.rs` parses flags and calls
//! [`run`]; `src/bin/tollgatectl.rs` calls [`ctl::main`]), so tests and
//! embedders can start the whole server from this library.
//!
//! A write travels down this list, a read only touches [`model`]:
//!
//! - [`admin`]: the gRPC admin API (CRUD, Apply with dry-run diff, Export,
//!   ListDataPlanes, tokens, audit), behind [`access`]: named admin tokens
//!   with roles, checked per call; every write recorded in [`audit`].
//! - [`model`]: the current state in a `watch` channel, and the single,
//!   serialized write path (change, [`secrets`], validate, [`diff`], commit,
//!   publish).
//! - [`store`]: sled, the durable truth; versioned on-disk format.
//! - [`stream`]: the config stream to data planes, and the registry of who is
//!   connected.
//! - [`pki`]: the cluster CA, join tokens, and the TLS (mutually
//!   authenticated) config stream.
//! - [`usage`]: the data planes' usage reports in a rolling window, answered
//!   as stats (`GetStats`, `tollgatectl stats`, the dashboard's `/api/`).
//!
//! Around them: [`entity`] and [`kind`] (the five entity kinds and their
//! names), [`config`] (flags and exposure checks), [`server`] (listeners and
//! graceful shutdown), [`listener`] (the accept loop: connection cap,
//! handshake and idle timeouts, status codes of tonic's own errors), [`error`] (one error type, one mapping to gRPC status),
//! [`metrics`] (Prometheus metrics on `--metrics-listen`, traced admin calls),
//! [`dashboard`] (the web dashboard and JSON API on the same listener)
//! and [`ctl`] (the `tollgatectl` operator CLI).

pub mod access;
pub mod admin;
pub mod audit;
pub mod auth;
pub mod config;
pub mod ctl;
pub mod dashboard;
pub mod diff;
pub mod entity;
pub mod error;
pub mod kind;
pub mod listener;
pub mod metrics;
pub mod model;
pub mod pki;
pub mod secrets;
pub mod select_tag;
pub mod server;
pub mod store;
pub mod stream;
pub mod usage;

pub use config::{CpArgs, CpConfig};
pub use error::CpError;
pub use server::{bind, run, Bound};
