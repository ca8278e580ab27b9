//! `tollgatectl health SERVICE --data-plane URL...`: each target's health as
//! the data planes see it.
//!
//! Health is per data plane (each one ejects and probes on its own; two data
//! planes can honestly disagree about a target), and data planes do not
//! report it to the control plane, so the view asks the data planes
//! themselves: it reads `GET /status` from each status listener given
//! (`--status-listen`, loopback by default, so run it where it can reach
//! them) and prints one row per data plane and target. A data plane that
//! does not answer gets a row saying so; the command fails only when none
//! answered.

use std::io::Write;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::output::{self, Format};
use crate::error::CpError;

/// Time allowed per data plane (connect, ask, read).
const TIMEOUT: Duration = Duration::from_secs(5);
/// The largest `/status` answer read.
const MAX_STATUS_BYTES: u64 = 8 * 1024 * 1024;

/// One row: a target as one data plane sees it.
#[derive(Debug, serde::Serialize)]
pub struct TargetHealthView {
    pub data_plane: String,
    pub target: String,
    pub state: String,
    pub weight: u64,
    pub ejections: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ejected_for_ms: Option<u64>,
}

pub async fn run(
    service: &str,
    data_planes: &[String],
    format: Format,
    out: &mut dyn Write,
) -> Result<(), CpError> {
    if data_planes.is_empty() {
        return Err(CpError::BadRequest(
            "health: name at least one --data-plane (a data plane's status address, e.g. \
             http://127.0.0.1:9100)"
                .into(),
        ));
    }
    let mut rows = Vec::new();
    let mut answered = 0;
    for url in data_planes {
        match fetch_status(url).await {
            Ok(status) => {
                answered += 1;
                let node = status["node_id"].as_str().unwrap_or(url).to_string();
                match status["upstreams"][service]["targets"].as_array() {
                    Some(targets) => {
                        for target in targets {
                            rows.push(TargetHealthView {
                                data_plane: node.clone(),
                                target: target["address"].as_str().unwrap_or("?").to_string(),
                                state: target["state"].as_str().unwrap_or("?").to_string(),
                                weight: target["weight"].as_u64().unwrap_or(0),
                                ejections: target["ejections"].as_u64().unwrap_or(0),
                                ejected_for_ms: target["ejected_for_ms"].as_u64(),
                            });
                        }
                    }
                    None => rows.push(TargetHealthView {
                        data_plane: node,
                        target: "-".into(),
                        state: format!("service {service:?} is not in its config"),
                        weight: 0,
                        ejections: 0,
                        ejected_for_ms: None,
                    }),
                }
            }
            Err(message) => rows.push(TargetHealthView {
                data_plane: url.clone(),
                target: "-".into(),
                state: format!("unreachable: {message}"),
                weight: 0,
                ejections: 0,
                ejected_for_ms: None,
            }),
        }
    }
    match format {
        Format::Table => {
            let table: Vec<Vec<String>> = rows
                .iter()
                .map(|row| {
                    vec![
                        row.data_plane.clone(),
                        row.target.clone(),
                        match row.ejected_for_ms {
                            Some(ms) => format!("{} ({} s left)", row.state, ms.div_ceil(1_000)),
                            None => row.state.clone(),
                        },
                        row.weight.to_string(),
                        row.ejections.to_string(),
                    ]
                })
                .collect();
            output::table(
                out,
                &["DATA PLANE", "TARGET", "STATE", "WEIGHT", "EJECTIONS"],
                &table,
            )?;
        }
        Format::Yaml => write!(
            out,
            "{}",
            serde_yaml::to_string(&rows).map_err(|e| CpError::Internal(e.to_string()))?
        )?,
        Format::Json => writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&rows).map_err(|e| CpError::Internal(e.to_string()))?
        )?,
    }
    if answered == 0 {
        return Err(CpError::Connect {
            server: data_planes.join(", "),
            message: "no data plane answered".into(),
        });
    }
    Ok(())
}

/// `GET /status` from a status listener (`http://host:port`), as JSON.
async fn fetch_status(url: &str) -> Result<serde_json::Value, String> {
    let uri: http::Uri = url.parse().map_err(|_| "not a URL".to_string())?;
    if uri.scheme_str().is_some_and(|s| s != "http") {
        return Err("only http:// status addresses are supported".into());
    }
    let authority = uri
        .authority()
        .ok_or_else(|| "no host:port in the URL".to_string())?;
    let port = authority.port_u16().unwrap_or(80);
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| e.to_string())?;
        let request = format!(
            "GET /status HTTP/1.1\r\nHost: {authority}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut data = Vec::new();
        stream
            .take(MAX_STATUS_BYTES)
            .read_to_end(&mut data)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<Vec<u8>, String>(data)
    };
    let data = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no answer within {} s", TIMEOUT.as_secs()))??;
    let head_end = data
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| "not an HTTP response".to_string())?;
    let status_line = data[..head_end]
        .split(|b| *b == b'\r')
        .next()
        .and_then(|line| std::str::from_utf8(line).ok())
        .unwrap_or("");
    if status_line.split_whitespace().nth(1) != Some("200") {
        return Err(format!("answered {status_line:?}"));
    }
    serde_json::from_slice(&data[head_end + 4..]).map_err(|e| format!("not JSON: {e}"))
}
