//! The read-only web dashboard (`/dashboard/`) and its JSON API (`/api/`),
//! served on the `--metrics-listen` listener beside `/metrics` (issue 20).
//!
//! Why here: operators without Prometheus and Grafana get the fleet's
//! traffic from the control plane alone, with nothing else to run. The page
//! is static (HTML, CSS and a small script embedded with `include_str!`, no
//! CDN, no build step; charts are SVG drawn by the script) and polls the
//! JSON API, which `curl` can use as well:
//!
//! - `GET /api/stats?by=route|consumer|dataplane|status&since=15m&route=NAME&top=N`:
//!   the same document as `tollgatectl stats -o json` ([`crate::usage::StatsReport`]);
//! - `GET /api/series?since=15m&route=NAME`: requests/s, 5xx, rate-limit
//!   refusals and p99 per bucket;
//! - `GET /api/fleet`: the data planes (version, connected, last rejection,
//!   last usage report) and the config version in force.
//!
//! Exposure: the API shows route and consumer names and traffic, so it
//! answers only on a loopback listener unless `--admin-token` is set; with a
//! token, every API call must carry it (`Authorization: Bearer`, the page
//! takes it from `#token=...` in its address, which browsers never send).

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::auth::BearerAuth;
use crate::model::Model;
use crate::stream::registry::Registry;
use crate::usage::{self, StatsQuery, Usage};

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

/// A response: status, content type, body.
pub type Answer = (http::StatusCode, &'static str, String);

const JSON: &str = "application/json";
const TEXT: &str = "text/plain; charset=utf-8";

/// What the dashboard reads, and who may read it.
pub struct Dashboard {
    model: Arc<Model>,
    registry: Arc<Registry>,
    usage: Arc<Usage>,
    auth: BearerAuth,
    token_set: bool,
    loopback: bool,
}

#[derive(Serialize)]
struct Fleet {
    config_version: Option<Version>,
    generated_at_ms: i64,
    dataplanes: Vec<Plane>,
}

#[derive(Serialize)]
struct Version {
    store_id: String,
    revision: u64,
}

#[derive(Serialize)]
struct Plane {
    node_id: String,
    hostname: String,
    address: String,
    build_version: String,
    connected: bool,
    connected_since_ms: i64,
    last_seen_ms: i64,
    applied_revision: Option<u64>,
    rejected_revision: Option<u64>,
    last_rejection: String,
    last_report_ms: Option<i64>,
}

#[derive(Serialize)]
struct Series {
    since_seconds: u64,
    route: Option<String>,
    points: Vec<usage::SeriesPoint>,
}

impl Dashboard {
    pub fn new(
        model: Arc<Model>,
        registry: Arc<Registry>,
        usage: Arc<Usage>,
        admin_token: Option<&str>,
        loopback: bool,
    ) -> Dashboard {
        Dashboard {
            model,
            registry,
            usage,
            auth: BearerAuth::new(admin_token),
            token_set: admin_token.is_some(),
            loopback,
        }
    }

    /// Whether `path` is the dashboard's.
    pub fn serves(path: &str) -> bool {
        path == "/dashboard" || path.starts_with("/dashboard/") || path.starts_with("/api/")
    }

    /// Answers a GET of one of [`Dashboard::serves`]'s paths.
    pub fn answer(&self, path: &str, query: Option<&str>, headers: &http::HeaderMap) -> Answer {
        match path {
            "/dashboard" | "/dashboard/" | "/dashboard/index.html" => (
                http::StatusCode::OK,
                "text/html; charset=utf-8",
                INDEX_HTML.into(),
            ),
            "/dashboard/app.js" => (
                http::StatusCode::OK,
                "text/javascript; charset=utf-8",
                APP_JS.into(),
            ),
            "/dashboard/style.css" => (
                http::StatusCode::OK,
                "text/css; charset=utf-8",
                STYLE_CSS.into(),
            ),
            _ if path.starts_with("/api/") => match self.allowed(headers) {
                Ok(()) => self.api(path, query),
                Err(answer) => answer,
            },
            _ => (http::StatusCode::NOT_FOUND, TEXT, "not found\n".into()),
        }
    }

    fn allowed(&self, headers: &http::HeaderMap) -> Result<(), Answer> {
        if !self.token_set {
            if self.loopback {
                return Ok(());
            }
            return Err((
                http::StatusCode::FORBIDDEN,
                TEXT,
                "the dashboard API answers on a loopback --metrics-listen only, unless \
                 --admin-token is set\n"
                    .into(),
            ));
        }
        let request = tonic::Request::from_parts(
            tonic::metadata::MetadataMap::from_headers(headers.clone()),
            tonic::Extensions::default(),
            (),
        );
        self.auth.check(&request).map_err(|err| {
            (
                http::StatusCode::UNAUTHORIZED,
                TEXT,
                format!("{}\n", err.to_string().replace('\n', " ")),
            )
        })
    }

    fn api(&self, path: &str, query: Option<&str>) -> Answer {
        let params = Params::parse(query.unwrap_or_default());
        let result = match path {
            "/api/stats" => self.stats(&params),
            "/api/series" => self.series(&params),
            "/api/fleet" => Ok(self.fleet()),
            _ => {
                return (
                    http::StatusCode::NOT_FOUND,
                    TEXT,
                    "not found; try /api/stats, /api/series, /api/fleet\n".into(),
                )
            }
        };
        match result {
            Ok(body) => (http::StatusCode::OK, JSON, body),
            Err(message) => (http::StatusCode::BAD_REQUEST, TEXT, format!("{message}\n")),
        }
    }

    fn stats(&self, params: &Params) -> Result<String, String> {
        let since = params.since()?;
        let top = match params.get("top") {
            None => 0,
            Some(text) => text
                .parse::<u32>()
                .map_err(|_| format!("top: {:?} is not a number", cut(text)))?,
        };
        let query = StatsQuery::from_request(
            params.get("by").unwrap_or_default(),
            since.as_secs(),
            params.get("route").unwrap_or_default(),
            top,
        )
        .map_err(|e| e.to_string())?;
        to_json(&self.usage.stats(&query))
    }

    fn series(&self, params: &Params) -> Result<String, String> {
        let since = params.since()?;
        let route = params.get("route").filter(|r| !r.is_empty());
        to_json(&Series {
            since_seconds: since.as_secs(),
            route: route.map(str::to_string),
            points: self.usage.series(since, route),
        })
    }

    fn fleet(&self) -> String {
        let published = self.model.subscribe().borrow().clone();
        let fleet = Fleet {
            config_version: (published.version.revision > 0).then(|| Version {
                store_id: published.version.store_id.clone(),
                revision: published.version.revision,
            }),
            generated_at_ms: usage::now_ms(),
            dataplanes: self
                .registry
                .list()
                .into_iter()
                .map(|plane| Plane {
                    last_report_ms: self.usage.last_report_ms(&plane.node_id),
                    node_id: plane.node_id,
                    hostname: plane.hostname,
                    address: plane.address,
                    build_version: plane.build_version,
                    connected: plane.connected,
                    connected_since_ms: plane.connected_since_ms,
                    last_seen_ms: plane.last_seen_ms,
                    applied_revision: plane.applied_version.map(|v| v.revision),
                    rejected_revision: plane.rejected_version.map(|v| v.revision),
                    last_rejection: plane.last_rejection,
                })
                .collect(),
        };
        to_json(&fleet).unwrap_or_else(|e| e)
    }
}

fn to_json<T: Serialize>(value: &T) -> Result<String, String> {
    serde_json::to_string(value).map_err(|e| format!("encoding: {e}"))
}

fn cut(text: &str) -> String {
    crate::stream::registry::truncate(text, 64)
}

/// Query parameters (`a=b&c=d`, percent-decoded).
struct Params(Vec<(String, String)>);

impl Params {
    fn parse(query: &str) -> Params {
        Params(
            query
                .split('&')
                .filter(|pair| !pair.is_empty())
                .take(32)
                .map(|pair| {
                    let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                    (decode(key), decode(value))
                })
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn since(&self) -> Result<Duration, String> {
        match self.get("since") {
            None | Some("") => Ok(usage::query::DEFAULT_SINCE),
            Some(text) => usage::parse_since(text).map_err(|e| format!("since: {e}")),
        }
    }
}

fn decode(text: &str) -> String {
    percent_encoding::percent_decode_str(&text.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}
