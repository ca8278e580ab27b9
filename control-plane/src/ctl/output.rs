//! How `tollgatectl` shows things: aligned tables for people, YAML/JSON (the
//! same shapes as the config file) for scripts.

use std::io::Write;

use tollgate_shared::proto::admin::DataPlane;
use tollgate_shared::proto::config::ConfigVersion;

use crate::entity::Entity;
use crate::error::CpError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Yaml,
    Json,
}

/// Prints rows under headers, columns padded to the widest cell.
pub fn table(out: &mut dyn Write, headers: &[&str], rows: &[Vec<String>]) -> Result<(), CpError> {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(width) = widths.get_mut(i) {
                *width = (*width).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                let pad = widths[i].saturating_sub(cell.chars().count());
                text.push_str(cell);
                text.push_str(&" ".repeat(pad + 3));
            }
        }
        text.trim_end().to_string()
    };
    writeln!(out, "{}", line(headers.to_vec()))?;
    for row in rows {
        writeln!(out, "{}", line(row.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

fn join(items: &[String]) -> String {
    if items.is_empty() {
        "*".to_string()
    } else {
        items.join(",")
    }
}

/// Headers and one row per entity, for `get <kind>`.
pub fn entity_rows(entities: &[Entity]) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let Some(first) = entities.first() else {
        return (vec!["NAME"], Vec::new());
    };
    let headers = match first {
        Entity::Service(_) => vec!["NAME", "TARGETS", "LOAD BALANCING", "PROTOCOL", "PLUGINS"],
        Entity::Route(_) => vec!["NAME", "SERVICE", "HOSTS", "PATHS", "METHODS", "PLUGINS"],
        Entity::Consumer(_) => vec!["NAME", "GROUPS", "CREDENTIALS"],
        Entity::Plugin(_) => vec!["INSTANCE", "PLUGIN", "ENABLED"],
        Entity::Certificate(_) => vec!["NAME", "SNIS", "DEFAULT", "EXPIRES IN", "NOT AFTER"],
    };
    let plugin_names = |plugins: &[tollgate_shared::model::PluginInstance]| {
        plugins
            .iter()
            .map(|p| p.name.clone())
            .collect::<Vec<_>>()
            .join(",")
    };
    let rows = entities
        .iter()
        .map(|entity| match entity {
            Entity::Service(s) => vec![
                s.name.clone(),
                s.upstream
                    .targets
                    .iter()
                    .map(|t| format!("{}(w{})", t.address, t.weight))
                    .collect::<Vec<_>>()
                    .join(","),
                s.upstream.load_balancing.as_str().to_string(),
                s.protocol.as_str().to_string(),
                plugin_names(&s.plugins),
            ],
            Entity::Route(r) => vec![
                r.name.clone(),
                r.service.clone(),
                join(&r.hosts),
                join(&r.paths),
                join(&r.methods),
                plugin_names(&r.plugins),
            ],
            Entity::Consumer(c) => vec![
                c.name.clone(),
                c.groups.join(","),
                c.credentials
                    .iter()
                    .map(|cred| cred.kind_label())
                    .collect::<Vec<_>>()
                    .join(","),
            ],
            Entity::Plugin(p) => vec![
                p.instance_name().to_string(),
                p.name.clone(),
                p.enabled.to_string(),
            ],
            Entity::Certificate(c) => {
                let info = c.info.as_ref();
                vec![
                    c.name.clone(),
                    c.snis.join(","),
                    c.default.to_string(),
                    info.map_or_else(
                        || "?".to_string(),
                        |info| {
                            let seconds = info.not_after_unix - tollgate_shared::certs::unix_now();
                            if seconds < 0 {
                                "expired".to_string()
                            } else {
                                format!("{}d", seconds / 86_400)
                            }
                        },
                    ),
                    info.map_or_else(String::new, |info| info.not_after.clone()),
                ]
            }
        })
        .collect();
    (headers, rows)
}

/// `<first 8 of store id>:<revision>`, or `-`.
pub fn short_version(version: Option<&ConfigVersion>) -> String {
    match version {
        Some(v) => {
            let store: String = v.store_id.chars().take(8).collect();
            format!("{store}:{}", v.revision)
        }
        None => "-".to_string(),
    }
}

/// Unix milliseconds as RFC 3339 UTC, without a date library.
pub fn timestamp(ms: i64) -> String {
    if ms <= 0 {
        return "-".to_string();
    }
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (year, month, day) = tollgate_shared::calendar::civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Headers and rows for `dataplanes`.
pub fn data_plane_rows(planes: &[DataPlane]) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let headers = vec![
        "NODE ID",
        "HOSTNAME",
        "ADDRESS",
        "STATUS",
        "CONNECTED SINCE",
        "LAST SEEN",
        "APPLIED",
        "REJECTED",
        "LAST REJECTION",
    ];
    let rows = planes
        .iter()
        .map(|p| {
            vec![
                p.node_id.clone(),
                p.hostname.clone(),
                p.address.clone(),
                if p.connected {
                    "connected"
                } else {
                    "disconnected"
                }
                .to_string(),
                timestamp(p.connected_since_ms),
                timestamp(p.last_seen_ms),
                short_version(p.applied_version.as_ref()),
                short_version(p.rejected_version.as_ref()),
                p.last_rejection.replace(['\n', '\r'], " "),
            ]
        })
        .collect();
    (headers, rows)
}

/// A data plane as YAML/JSON shows it.
#[derive(serde::Serialize)]
pub struct DataPlaneView {
    pub node_id: String,
    pub hostname: String,
    pub address: String,
    pub build_version: String,
    pub connected: bool,
    pub connected_since: String,
    pub last_seen: String,
    pub applied_version: Option<VersionView>,
    pub rejected_version: Option<VersionView>,
    pub last_rejection: String,
}

#[derive(serde::Serialize)]
pub struct VersionView {
    pub store_id: String,
    pub revision: u64,
}

impl From<&DataPlane> for DataPlaneView {
    fn from(p: &DataPlane) -> Self {
        let version = |v: &Option<ConfigVersion>| {
            v.as_ref().map(|v| VersionView {
                store_id: v.store_id.clone(),
                revision: v.revision,
            })
        };
        DataPlaneView {
            node_id: p.node_id.clone(),
            hostname: p.hostname.clone(),
            address: p.address.clone(),
            build_version: p.build_version.clone(),
            connected: p.connected,
            connected_since: timestamp(p.connected_since_ms),
            last_seen: timestamp(p.last_seen_ms),
            applied_version: version(&p.applied_version),
            rejected_version: version(&p.rejected_version),
            last_rejection: p.last_rejection.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_timestamps() {
        assert_eq!(timestamp(0), "-");
        assert_eq!(timestamp(1_000), "1970-01-01T00:00:01Z");
        assert_eq!(timestamp(1_709_251_199_000), "2024-02-29T23:59:59Z");
    }

    #[test]
    fn aligns_tables() {
        let mut out = Vec::new();
        table(
            &mut out,
            &["NAME", "SERVICE"],
            &[vec!["orders-api".into(), "orders".into()]],
        )
        .expect("writes");
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "NAME         SERVICE\norders-api   orders\n"
        );
    }
}
