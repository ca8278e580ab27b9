//! Where the fleet's counters live: one Redis or a Redis Cluster, over TCP
//! or TLS, as `--redis-url` says.
//!
//! - `redis://[user:password@]host:port/db`: one Redis (as before).
//! - `rediss://...`: the same over TLS. The server is checked against the
//!   system's roots, or only against `--redis-ca-file` (a private CA) when
//!   given; `--redis-client-cert`/`--redis-client-key` answer a Redis that
//!   asks for client certificates (`tls-auth-clients yes`, its default).
//! - `redis+cluster://[user:password@]host1:port1,host2:port2` (or
//!   `rediss+cluster://` for TLS), or a comma-separated list of `redis://`
//!   URLs: a Redis Cluster, reached through any of the listed nodes (the
//!   rest of the topology is discovered). Clusters have only database 0.
//!
//! Both kinds give a [`Connection`] that the store calls through alike (it
//! implements the `redis` crate's `ConnectionLike`): a single Redis through a
//! reconnecting [`ConnectionManager`], a cluster through the crate's cluster
//! connection, which follows `MOVED`/`ASK` redirections and rediscovers the
//! slots after a failover by itself. The one difference callers see is that
//! a cluster refuses a pipeline spanning slots ([`Connection::is_cluster`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{Client, ClientTlsConfig, Cmd, Pipeline, RedisFuture, TlsCertificates, Value};

/// What the data plane was told about its Redis (`--redis-url` and the TLS
/// files that go with it).
#[derive(Debug, Clone, Default)]
pub struct RedisOptions {
    pub url: String,
    /// `--redis-ca-file`: PEM roots that replace the system's for `rediss://`.
    pub ca_file: Option<PathBuf>,
    /// `--redis-client-cert` and `--redis-client-key`: PEM, for a Redis
    /// that asks for client certificates.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

impl RedisOptions {
    pub fn new(url: impl Into<String>) -> RedisOptions {
        RedisOptions {
            url: url.into(),
            ..RedisOptions::default()
        }
    }
}

/// A Redis to connect to.
#[derive(Clone)]
pub(crate) enum Target {
    Single(Client),
    Cluster(ClusterClient),
}

/// A connection to a [`Target`]; cheap to clone (both kinds multiplex).
#[derive(Clone)]
pub(crate) enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Connection {
    /// Whether pipelines must stay within one slot.
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Connection::Cluster(_))
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(connection) => connection.req_packed_command(cmd),
            Connection::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(connection) => connection.req_packed_commands(cmd, offset, count),
            Connection::Cluster(connection) => connection.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(connection) => connection.get_db(),
            Connection::Cluster(connection) => connection.get_db(),
        }
    }
}

/// Timeouts and retries of a connection.
pub(crate) struct ConnectOptions {
    pub connect_timeout: Duration,
}

impl Target {
    /// Parses `options` and reads the TLS files it names. The error names
    /// the flag at fault and never contains a password.
    pub(crate) fn open(options: &RedisOptions) -> Result<Target, String> {
        let url = options.url.trim();
        let (scheme, rest) = url.split_once("://").ok_or(
            "--redis-url: expected redis://, rediss://, redis+cluster:// or rediss+cluster://",
        )?;
        let cluster_nodes = match scheme {
            "redis+cluster" | "rediss+cluster" => Some(cluster_nodes(
                &scheme[..scheme.len() - "+cluster".len()],
                rest,
            )?),
            _ if url.contains(',') => Some(url_list(url)?),
            _ => None,
        };
        let tls = match &cluster_nodes {
            Some(nodes) => nodes.iter().all(|node| node.starts_with("rediss://")),
            None => scheme == "rediss",
        };
        let certificates = certificates(options)?;
        if certificates.is_some() && !tls {
            return Err(
                "--redis-ca-file, --redis-client-cert and --redis-client-key need a rediss:// (TLS) --redis-url"
                    .into(),
            );
        }
        let invalid = |err: redis::RedisError| format!("--redis-url: {err}");
        match cluster_nodes {
            Some(nodes) => {
                let mut builder = ClusterClientBuilder::new(nodes);
                if let Some(certificates) = certificates {
                    builder = builder.certs(certificates);
                }
                builder.build().map(Target::Cluster).map_err(invalid)
            }
            None => match certificates {
                Some(certificates) => Client::build_with_tls(url, certificates),
                None => Client::open(url),
            }
            .map(Target::Single)
            .map_err(invalid),
        }
    }

    /// Makes a connection (on the current runtime, which then drives it).
    pub(crate) async fn connect(&self, options: &ConnectOptions) -> redis::RedisResult<Connection> {
        match self {
            Target::Single(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(options.connect_timeout)
                    .set_number_of_retries(1)
                    .set_factor(100)
                    .set_max_delay(1_000);
                ConnectionManager::new_with_config(client.clone(), config)
                    .await
                    .map(Connection::Single)
            }
            Target::Cluster(client) => {
                let config = redis::cluster::ClusterConfig::new()
                    .set_connection_timeout(options.connect_timeout)
                    .set_response_timeout(options.connect_timeout);
                client
                    .get_async_connection_with_config(config)
                    .await
                    .map(Connection::Cluster)
            }
        }
    }
}

/// `host1:port1,host2:port2` (after `redis+cluster://[userinfo@]`) as node URLs.
fn cluster_nodes(scheme: &str, rest: &str) -> Result<Vec<String>, String> {
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if !matches!(path, "" | "/" | "/0") {
        return Err("--redis-url: a Redis Cluster has only database 0".into());
    }
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (format!("{userinfo}@"), hosts),
        None => (String::new(), authority),
    };
    let nodes: Vec<String> = hosts
        .split(',')
        .map(str::trim)
        .filter(|host| !host.is_empty())
        .map(|host| format!("{scheme}://{userinfo}{host}"))
        .collect();
    if nodes.is_empty() {
        return Err(
            "--redis-url: a cluster URL names no node (redis+cluster://host:port,host:port)".into(),
        );
    }
    Ok(nodes)
}

/// `redis://a:1,redis://b:2`: a cluster given as a list of node URLs.
fn url_list(url: &str) -> Result<Vec<String>, String> {
    let nodes: Vec<String> = url
        .split(',')
        .map(str::trim)
        .filter(|node| !node.is_empty())
        .map(str::to_string)
        .collect();
    let schemes_agree = nodes.iter().all(|node| node.starts_with("redis://"))
        || nodes.iter().all(|node| node.starts_with("rediss://"));
    if !schemes_agree {
        return Err(
            "--redis-url: a list of nodes (a Redis Cluster) must be all redis:// or all rediss:// URLs"
                .into(),
        );
    }
    Ok(nodes)
}

fn read(path: &Path, flag: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|err| format!("{flag} {}: {err}", path.display()))
}

fn certificates(options: &RedisOptions) -> Result<Option<TlsCertificates>, String> {
    let root_cert = match &options.ca_file {
        Some(path) => Some(read(path, "--redis-ca-file")?),
        None => None,
    };
    let client_tls = match (&options.client_cert, &options.client_key) {
        (Some(cert), Some(key)) => Some(ClientTlsConfig {
            client_cert: read(cert, "--redis-client-cert")?,
            client_key: read(key, "--redis-client-key")?,
        }),
        (None, None) => None,
        _ => {
            return Err(
                "--redis-client-cert and --redis-client-key go together: give both or neither"
                    .into(),
            )
        }
    };
    Ok(
        (root_cert.is_some() || client_tls.is_some()).then_some(TlsCertificates {
            client_tls,
            root_cert,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(url: &str) -> Result<Target, String> {
        Target::open(&RedisOptions::new(url))
    }

    #[test]
    fn urls_pick_single_or_cluster() {
        assert!(matches!(
            open("redis://127.0.0.1:6379/0"),
            Ok(Target::Single(_))
        ));
        assert!(matches!(
            open("rediss://cache.internal:6380"),
            Ok(Target::Single(_))
        ));
        assert!(matches!(
            open("redis+cluster://:pw@10.0.0.1:7000,10.0.0.2:7000"),
            Ok(Target::Cluster(_))
        ));
        assert!(matches!(
            open("redis://10.0.0.1:7000, redis://10.0.0.2:7000"),
            Ok(Target::Cluster(_))
        ));
        assert_eq!(
            cluster_nodes("rediss", "app:pw@a:1,b:2/").unwrap(),
            ["rediss://app:pw@a:1", "rediss://app:pw@b:2"]
        );
    }

    #[test]
    fn bad_urls_name_the_flag_and_hide_the_password() {
        for url in [
            "hunter2",
            "redis+cluster://:hunter2@a:1,b:2/3",
            "redis+cluster://:hunter2@",
            "redis://:hunter2@a:1,rediss://b:2",
        ] {
            let err = open(url).err().unwrap_or_else(|| panic!("{url} accepted"));
            assert!(err.starts_with("--redis-url"), "{err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
        let options = RedisOptions {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..RedisOptions::new("rediss://a:1")
        };
        let err = Target::open(&options).err().unwrap();
        assert!(
            err.starts_with("--redis-ca-file /nonexistent/ca.pem"),
            "{err}"
        );
        let options = RedisOptions {
            client_cert: Some("/tmp/c.pem".into()),
            ..RedisOptions::new("rediss://a:1")
        };
        assert!(Target::open(&options)
            .err()
            .unwrap()
            .contains("go together"));
    }
}
