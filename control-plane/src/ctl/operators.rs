//! `tollgatectl operators cert create|list|revoke`: operator client
//! certificates for a TLS admin API (see `crate::pki::operators`).
//!
//! `create` makes the key here (ECDSA P-256) and sends only a CSR; the key
//! is written owner-only next to the certificate and the cluster CA, ready
//! for `--client-cert`, `--client-key` and `--ca-cert`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{CertificateParams, DnType, KeyPair};
use tollgate_shared::private_files as files;
use tollgate_shared::proto::admin::{
    CreateOperatorCertRequest, ListOperatorCertsRequest, RevokeOperatorCertRequest,
};

use super::access::{parse_duration, parse_role, role_label};
use super::client::Client;
use super::output::{self, Format};
use crate::access::Role;
use crate::error::CpError;

#[derive(Debug, clap::Subcommand)]
pub enum OperatorsCommand {
    /// Operator client certificates from the cluster CA (need role admin).
    Cert {
        #[command(subcommand)]
        command: CertCommand,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum CertCommand {
    /// Make a key here, have the control plane sign it for NAME with ROLE,
    /// and write DIR/NAME.key (0600), DIR/NAME.crt and DIR/ca.pem.
    Create {
        name: String,
        /// viewer (reads), editor (writes), admin (tokens, cluster operations).
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// Lifetime: 1h, 30d, at most 365d.
        #[arg(long, default_value = "30d", value_parser = parse_duration)]
        ttl: Duration,
        /// Directory for the key and certificates (created 0700).
        #[arg(long)]
        out: PathBuf,
    },
    /// The issued certificates (never keys) and revoked serials.
    List {
        #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
        output: Format,
    },
    /// Refuse an operator's certificates (by name) or one certificate (by
    /// serial, also one another CA issued) from the next call on.
    Revoke { name_or_serial: String },
}

#[derive(serde::Serialize)]
struct CertView {
    name: String,
    role: &'static str,
    serial: String,
    created: String,
    expires: String,
    created_by: String,
    revoked: bool,
}

fn file_error(path: &Path, message: String) -> CpError {
    CpError::File {
        path: path.display().to_string(),
        message,
    }
}

pub async fn run(
    client: &mut Client,
    command: OperatorsCommand,
    out: &mut dyn Write,
) -> Result<(), CpError> {
    let OperatorsCommand::Cert { command } = command;
    match command {
        CertCommand::Create {
            name,
            role,
            ttl,
            out: dir,
        } => create(client, &name, role, ttl, &dir, out).await,
        CertCommand::List { output } => {
            let list = client
                .list_operator_certs(ListOperatorCertsRequest {})
                .await?
                .into_inner();
            let views: Vec<CertView> = list
                .certs
                .iter()
                .map(|c| CertView {
                    name: c.name.clone(),
                    role: role_label(c.role),
                    serial: c.serial.clone(),
                    created: output::timestamp(c.created_ms),
                    expires: output::timestamp(c.expires_ms),
                    created_by: c.created_by.clone(),
                    revoked: c.revoked,
                })
                .collect();
            match output {
                Format::Table => {
                    if views.is_empty() {
                        writeln!(out, "no operator certificates")?;
                    } else {
                        let rows: Vec<Vec<String>> = views
                            .iter()
                            .map(|v| {
                                vec![
                                    v.name.clone(),
                                    v.role.to_string(),
                                    v.serial.clone(),
                                    v.expires.clone(),
                                    v.created_by.clone(),
                                    if v.revoked { "revoked" } else { "-" }.to_string(),
                                ]
                            })
                            .collect();
                        output::table(
                            out,
                            &["NAME", "ROLE", "SERIAL", "EXPIRES", "CREATED BY", "REVOKED"],
                            &rows,
                        )?;
                    }
                    if !list.revoked_serials.is_empty() {
                        writeln!(
                            out,
                            "revoked serials (other CAs): {}",
                            list.revoked_serials.join(", ")
                        )?;
                    }
                    Ok(())
                }
                Format::Yaml | Format::Json => super::print_structured(out, &views, output),
            }
        }
        CertCommand::Revoke { name_or_serial } => {
            let revoked = client
                .revoke_operator_cert(RevokeOperatorCertRequest {
                    name_or_serial: name_or_serial.clone(),
                })
                .await?
                .into_inner()
                .revoked;
            if revoked.is_empty() {
                writeln!(out, "revoked serial {name_or_serial}")?;
            }
            for cert in revoked {
                writeln!(
                    out,
                    "revoked the certificate of {:?} (role {}, serial {})",
                    cert.name,
                    role_label(cert.role),
                    cert.serial
                )?;
            }
            Ok(())
        }
    }
}

async fn create(
    client: &mut Client,
    name: &str,
    role: Role,
    ttl: Duration,
    dir: &Path,
    out: &mut dyn Write,
) -> Result<(), CpError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| CpError::Internal(format!("generating a key: {e}")))?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    let csr = params
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .map_err(|e| CpError::Internal(format!("making the CSR: {e}")))?;
    // Fail before asking the server if the files cannot be written.
    files::create_private_dir(dir).map_err(|e| file_error(dir, e))?;
    let key_path = dir.join(format!("{name}.key"));
    let cert_path = dir.join(format!("{name}.crt"));
    let ca_path = dir.join("ca.pem");
    let response = client
        .create_operator_cert(CreateOperatorCertRequest {
            name: name.to_string(),
            role: role.to_pb() as i32,
            ttl_seconds: ttl.as_secs(),
            csr_pem: csr,
        })
        .await?
        .into_inner();
    files::write_private(&key_path, key.serialize_pem().as_bytes())
        .map_err(|e| file_error(&key_path, e))?;
    files::write_private(&cert_path, response.cert_pem.as_bytes())
        .map_err(|e| file_error(&cert_path, e))?;
    files::write_private(&ca_path, response.ca_pem.as_bytes())
        .map_err(|e| file_error(&ca_path, e))?;
    let info = response.info.unwrap_or_default();
    writeln!(
        out,
        "operator certificate for {name:?} (role {role}, serial {}) expires {}\n\
         key:         {}\ncertificate: {}\nCA:          {}\n\
         use: tollgatectl --server https://HOST:PORT --ca-cert {} --client-cert {} --client-key {} ...",
        info.serial,
        output::timestamp(info.expires_ms),
        key_path.display(),
        cert_path.display(),
        ca_path.display(),
        ca_path.display(),
        cert_path.display(),
        key_path.display(),
    )?;
    Ok(())
}
