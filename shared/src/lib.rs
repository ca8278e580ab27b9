//! `tollgate-shared`: what Tollgate's control plane and data plane agree on.
//!
//! - [`model`]: the configuration model (services, routes, consumers, plugins,
//!   certificates) as operators write it in YAML and as both planes hold it.
//! - [`plugins`]: the typed configuration schema of every plugin.
//! - [`validate`]: the checks every write passes, with errors naming the entity
//!   and field.
//! - [`limits`]: the size limit of every field and of the whole config.
//! - [`secrets`]: API-key hashing and secret fingerprints.
//! - [`calendar`]: UTC dates from Unix time (no date-time dependency).
//! - [`convert`]: model <-> protobuf conversion (the wire types live in [`proto`]).
//! - [`telemetry`]: logging and OpenTelemetry trace setup shared by the binaries.
//!
//! The protobuf definitions live in `proto/` at the workspace root; the code is
//! generated at build time with a vendored `protoc`.

pub mod calendar;
pub mod certs;
pub mod cluster_pki;
pub mod convert;
pub mod delta;
pub mod json_schema;
pub mod limits;
pub mod model;
pub mod plugins;
pub mod private_files;
pub mod secrets;
pub mod telemetry;
pub mod usage;
pub mod validate;

pub use validate::ConfigError;

/// Code generated from `proto/*.proto`.
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    /// Module tree mirroring the protobuf packages, so cross-package references resolve.
    pub mod tollgate {
        pub mod config {
            pub mod v1 {
                tonic::include_proto!("tollgate.config.v1");
            }
        }
        pub mod admin {
            pub mod v1 {
                tonic::include_proto!("tollgate.admin.v1");
            }
        }
        pub mod stream {
            pub mod v1 {
                tonic::include_proto!("tollgate.stream.v1");
            }
        }
    }
    pub use tollgate::admin::v1 as admin;
    pub use tollgate::config::v1 as config;
    pub use tollgate::stream::v1 as stream;
    /// Encoded file descriptors, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("tollgate_descriptor");
}

/// The build version both binaries report (stream hello, status endpoints).
pub const BUILD_VERSION: &str = env!("CARGO_PKG_VERSION");
