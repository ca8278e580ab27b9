//! The control-plane fixture: the real `tollgate-cp` binary on a temp data
//! dir and a free port, its admin API through the generated gRPC client, the
//! real `tollgatectl`, and a raw config-stream subscriber.
//!
//! ```no_run
//! # async fn demo() {
//! use tollgate_integration_tests::cp::ControlPlane;
//! let mut cp = ControlPlane::start().await;
//! let output = cp.ctl(&["get", "routes"]);
//! assert!(output.status.success());
//! cp.restart().await; // SIGTERM, then start again on the same dir and port
//! # }
//! ```

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};
use std::time::{Duration, Instant};

use futures::channel::mpsc;
use futures::SinkExt;
use tollgate_shared::proto::admin::admin_client::AdminClient;
use tollgate_shared::proto::config::ConfigVersion;
use tollgate_shared::proto::stream::config_stream_client::ConfigStreamClient;
use tollgate_shared::proto::stream::{
    control_plane_message, data_plane_message, Ack, ControlPlaneMessage, DataPlaneMessage, Hello,
    Nack, Snapshot,
};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status, Streaming};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::process::{bin_path, free_port, ChildProcess};

/// gRPC message limit of the fixture's clients (as large as the server's).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// How long a start (or restart) may take until health answers SERVING.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Adds `authorization: Bearer <token>` to every call, when a token is set.
#[derive(Clone)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl BearerToken {
    pub fn new(token: Option<&str>) -> BearerToken {
        BearerToken(token.map(|t| {
            format!("Bearer {t}")
                .parse()
                .expect("test tokens are ASCII")
        }))
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// The admin client the fixture hands out.
pub type Admin = AdminClient<InterceptedService<Channel, BearerToken>>;

/// Options for [`ControlPlane::start_with`].
#[derive(Debug, Clone, Default)]
pub struct CpOptions {
    /// `TOLLGATE_ADMIN_TOKEN` for the server (and the fixture's clients).
    pub admin_token: Option<String>,
    /// `TOLLGATE_CLUSTER_TOKEN` for the server (and [`ControlPlane::subscribe`]).
    pub cluster_token: Option<String>,
    /// Serve the config stream on its own port (`--stream-listen`).
    pub separate_stream_port: bool,
    /// Extra environment, e.g. `RUST_LOG`.
    pub env: Vec<(String, String)>,
    /// Run the server under this `RLIMIT_NOFILE` (through `prlimit`).
    pub nofile_limit: Option<u64>,
    /// More flags, appended as given (e.g. `--stream-tls`).
    pub args: Vec<String>,
    /// Serve the admin API over TLS (`--admin-tls`, needs
    /// `separate_stream_port`): the fixture's health checks, admin clients
    /// and `tollgatectl` then trust the cluster CA (`https://`, `--ca-cert`).
    pub admin_tls: bool,
}

/// A running `tollgate-cp`.
pub struct ControlPlane {
    options: CpOptions,
    port: u16,
    stream_port: Option<u16>,
    dir: tempfile::TempDir,
    process: Option<ChildProcess>,
    /// Output of the processes that came before the current one.
    past_logs: String,
}

impl ControlPlane {
    /// Starts a control plane with default options; returns once it is healthy.
    pub async fn start() -> ControlPlane {
        ControlPlane::start_with(CpOptions::default()).await
    }

    pub async fn start_with(options: CpOptions) -> ControlPlane {
        let stream_port = options.separate_stream_port.then(free_port);
        let mut cp = ControlPlane {
            options,
            port: free_port(),
            stream_port,
            dir: tempfile::tempdir().expect("temp dir for the control plane"),
            process: None,
            past_logs: String::new(),
        };
        cp.start_process().await;
        cp
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<admin port>` (`https://` with `admin_tls`).
    pub fn url(&self) -> String {
        let scheme = if self.options.admin_tls {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The cluster CA certificate the server made in its data dir.
    pub fn ca_path(&self) -> PathBuf {
        self.data_dir().join("pki/ca.pem")
    }

    /// A channel to the TLS admin API trusting the cluster CA, presenting
    /// `client` (certificate and key PEM) when given.
    pub async fn admin_tls_channel(
        &self,
        client: Option<(&[u8], &[u8])>,
    ) -> Result<Channel, tonic::transport::Error> {
        let ca = std::fs::read(self.ca_path()).expect("the cluster CA");
        let connector = crate::tls::GrpcTls {
            config: std::sync::Arc::new(crate::tls::grpc_client_config(&ca, client)),
            server_name: "localhost",
        };
        crate::tls::grpc_tls_channel(self.port, connector).await
    }

    /// Where data planes subscribe: the admin port unless separate.
    pub fn stream_port(&self) -> u16 {
        self.stream_port.unwrap_or(self.port)
    }

    pub fn stream_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.stream_port())
    }

    /// The `--data-dir` given to the server.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A scratch directory that lives as long as the fixture.
    pub fn scratch_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(ChildProcess::pid)
    }

    fn args(&self) -> Vec<String> {
        let mut args = vec![
            "--admin-listen".to_string(),
            format!("127.0.0.1:{}", self.port),
            "--data-dir".to_string(),
            self.data_dir().display().to_string(),
        ];
        if let Some(port) = self.stream_port {
            args.push("--stream-listen".into());
            args.push(format!("127.0.0.1:{port}"));
        }
        if self.options.admin_tls {
            args.push("--admin-tls".into());
        }
        args.extend(self.options.args.iter().cloned());
        args
    }

    fn env(&self) -> Vec<(String, String)> {
        let mut env = self.options.env.clone();
        if let Some(token) = &self.options.admin_token {
            env.push(("TOLLGATE_ADMIN_TOKEN".into(), token.clone()));
        }
        if let Some(token) = &self.options.cluster_token {
            env.push(("TOLLGATE_CLUSTER_TOKEN".into(), token.clone()));
        }
        env
    }

    async fn start_process(&mut self) {
        if let Some(old) = self.process.take() {
            self.past_logs.push_str(&old.logs());
        }
        let process = match self.options.nofile_limit {
            None => ChildProcess::spawn(
                "tollgate-cp",
                &bin_path("tollgate-cp"),
                &self.args(),
                &self.env(),
            ),
            // prlimit execs the server: the child's PID is the server's.
            Some(limit) => {
                let mut args = vec![
                    format!("--nofile={limit}:{limit}"),
                    "--".to_string(),
                    bin_path("tollgate-cp").display().to_string(),
                ];
                args.extend(self.args());
                ChildProcess::spawn(
                    "tollgate-cp",
                    std::path::Path::new("prlimit"),
                    &args,
                    &self.env(),
                )
            }
        };
        self.process = Some(process);
        self.wait_healthy().await;
    }

    /// Polls the standard gRPC health service (bounded) until it says SERVING;
    /// panics with the server's output if the process exits or time runs out.
    async fn wait_healthy(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(process) = self.process.as_mut() {
                if !process.is_running() {
                    panic!("tollgate-cp exited during startup:\n{}", process.logs());
                }
            }
            if self.health().await == Some(ServingStatus::Serving) {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "tollgate-cp not healthy after {START_TIMEOUT:?}:\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The overall health status, or `None` if it does not answer.
    pub async fn health(&self) -> Option<ServingStatus> {
        let channel = if self.options.admin_tls {
            if !self.ca_path().exists() {
                return None;
            }
            self.admin_tls_channel(None).await.ok()?
        } else {
            Endpoint::from_shared(self.url())
                .ok()?
                .connect_timeout(Duration::from_millis(500))
                .timeout(Duration::from_secs(2))
                .connect()
                .await
                .ok()?
        };
        let response = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .ok()?;
        ServingStatus::try_from(response.into_inner().status).ok()
    }

    async fn channel(url: String) -> Channel {
        Endpoint::from_shared(url)
            .expect("valid URL")
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .expect("connect to tollgate-cp")
    }

    /// An admin client carrying the configured admin token.
    pub async fn admin(&self) -> Admin {
        self.admin_with_token(self.options.admin_token.as_deref())
            .await
    }

    /// An admin client carrying `token` (or none).
    pub async fn admin_with_token(&self, token: Option<&str>) -> Admin {
        let channel = if self.options.admin_tls {
            self.admin_tls_channel(None)
                .await
                .expect("connect to tollgate-cp over TLS")
        } else {
            Self::channel(self.url()).await
        };
        AdminClient::with_interceptor(channel, BearerToken::new(token))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Runs the real `tollgatectl --server <this> ARGS...` with the admin token
    /// in `TOLLGATE_ADMIN_TOKEN` when one is configured.
    /// Applies `config` through the admin gRPC API; panics when it is
    /// rejected (a test's own config is expected to be valid).
    pub async fn apply(
        &self,
        config: &tollgate_shared::model::GatewayConfig,
    ) -> tollgate_shared::proto::admin::ApplyResponse {
        let mut admin = self.admin().await;
        admin
            .apply(tollgate_shared::proto::admin::ApplyRequest {
                select_tag: String::new(),
                config: Some(config.into()),
                dry_run: false,
            })
            .await
            .unwrap_or_else(|status| panic!("Apply rejected: {status}"))
            .into_inner()
    }

    /// Applies `config` (or dry-runs it); the committed revision, or the
    /// status of the refusal.
    pub async fn try_apply(
        &self,
        config: &tollgate_shared::model::GatewayConfig,
        dry_run: bool,
    ) -> Result<u64, Status> {
        let mut admin = self.admin().await;
        admin
            .apply(tollgate_shared::proto::admin::ApplyRequest {
                select_tag: String::new(),
                config: Some(config.into()),
                dry_run,
            })
            .await
            .map(|r| r.into_inner().version.map(|v| v.revision).unwrap_or(0))
    }

    /// [`ControlPlane::apply`], returning the committed revision.
    pub async fn apply_revision(&self, config: &tollgate_shared::model::GatewayConfig) -> u64 {
        self.apply(config)
            .await
            .version
            .expect("Apply returns a version")
            .revision
    }

    pub fn ctl(&self, args: &[&str]) -> Output {
        let mut env = Vec::new();
        if let Some(token) = &self.options.admin_token {
            env.push(("TOLLGATE_ADMIN_TOKEN", token.as_str()));
        }
        self.ctl_with_env(args, &env)
    }

    /// Runs `tollgatectl` with exactly the given extra environment (no token
    /// unless given).
    pub fn ctl_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut command = Command::new(bin_path("tollgatectl"));
        command
            .env_remove("TOLLGATE_ADMIN_TOKEN")
            .env_remove("TOLLGATE_SERVER")
            .arg("--server")
            .arg(self.url());
        if self.options.admin_tls {
            command.arg("--ca-cert").arg(self.ca_path());
        }
        command.args(args);
        for (key, value) in env {
            command.env(key, value);
        }
        command.output().expect("run tollgatectl")
    }

    /// SIGTERM (waiting, bounded, for a clean exit) if running, then starts
    /// again on the same data dir and port. After [`ControlPlane::kill_9`]
    /// it just starts again.
    pub async fn restart(&mut self) {
        if let Some(status) = self.stop() {
            assert!(
                status.success(),
                "tollgate-cp did not exit cleanly on SIGTERM ({status}):\n{}",
                self.logs()
            );
        }
        self.start_process().await;
    }

    /// SIGTERM and wait (bounded) for the exit; `None` if it was not running.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let process = self.process.as_mut()?;
        if !process.is_running() {
            return None;
        }
        process.sigterm();
        let status = process.wait_exit(Duration::from_secs(20));
        assert!(
            status.is_some(),
            "tollgate-cp ignored SIGTERM:\n{}",
            process.logs()
        );
        status
    }

    /// `kill -9` the server (no chance to flush or clean up).
    pub fn kill_9(&mut self) {
        if let Some(process) = self.process.as_mut() {
            process.kill_9();
        }
    }

    /// Freezes the server (SIGSTOP): it keeps its sockets but answers nothing.
    pub fn sigstop(&self) {
        if let Some(process) = self.process.as_ref() {
            process.sigstop();
        }
    }

    /// Resumes the server after [`ControlPlane::sigstop`].
    pub fn sigcont(&self) {
        if let Some(process) = self.process.as_ref() {
            process.sigcont();
        }
    }

    /// Everything every server process of this fixture wrote so far.
    pub fn logs(&self) -> String {
        let current = self
            .process
            .as_ref()
            .map(ChildProcess::logs)
            .unwrap_or_default();
        format!("{}{current}", self.past_logs)
    }

    /// Opens a config stream as data plane `node_id`, holding `held`, with the
    /// configured cluster token.
    pub async fn subscribe(
        &self,
        node_id: &str,
        held: Option<ConfigVersion>,
    ) -> Result<StreamSubscriber, Status> {
        StreamSubscriber::connect(
            &self.stream_url(),
            self.options.cluster_token.as_deref(),
            node_id,
            held,
        )
        .await
    }
}

impl ControlPlane {
    /// Opens a config stream with the test's own `hello` (deltas, checksum).
    pub async fn subscribe_with(&self, hello: Hello) -> Result<StreamSubscriber, Status> {
        StreamSubscriber::connect_with(
            &self.stream_url(),
            self.options.cluster_token.as_deref(),
            hello,
        )
        .await
    }

    /// Sends `body` as the raw protobuf of a unary call to `path` (no token):
    /// lets a test send what no generated client would.
    pub async fn raw_call(&self, path: &'static str, body: Vec<u8>) -> Result<Vec<u8>, Status> {
        let channel = Self::channel(self.url()).await;
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        grpc.unary(
            Request::new(body),
            tonic::codegen::http::uri::PathAndQuery::from_static(path),
            RawCodec,
        )
        .await
        .map(tonic::Response::into_inner)
    }
}

/// Bytes in, bytes out: a gRPC codec for raw protobuf.
#[derive(Debug, Clone, Copy)]
pub struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        use bytes::Buf;
        let mut out = vec![0u8; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

/// A raw data-plane side of the config stream, through the generated client.
pub struct StreamSubscriber {
    outbound: mpsc::Sender<DataPlaneMessage>,
    inbound: Streaming<ControlPlaneMessage>,
}

impl StreamSubscriber {
    /// Connects to `url`, sends the hello of a data plane that does not
    /// speak deltas, and returns once the stream is open.
    pub async fn connect(
        url: &str,
        token: Option<&str>,
        node_id: &str,
        held: Option<ConfigVersion>,
    ) -> Result<StreamSubscriber, Status> {
        let hello = Hello {
            node_id: node_id.to_string(),
            hostname: "test-host".into(),
            build_version: "test".into(),
            held_version: held,
            ..Hello::default()
        };
        StreamSubscriber::connect_with(url, token, hello).await
    }

    /// Connects to `url` with the test's own `hello` (deltas, checksum).
    pub async fn connect_with(
        url: &str,
        token: Option<&str>,
        hello: Hello,
    ) -> Result<StreamSubscriber, Status> {
        let channel = ControlPlane::channel(url.to_string()).await;
        let mut client = ConfigStreamClient::with_interceptor(channel, BearerToken::new(token))
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
        let (mut outbound, receiver) = mpsc::channel(16);
        outbound
            .send(DataPlaneMessage {
                kind: Some(data_plane_message::Kind::Hello(hello)),
            })
            .await
            .expect("queue hello");
        let inbound = client.subscribe(receiver).await?.into_inner();
        Ok(StreamSubscriber { outbound, inbound })
    }

    /// The next snapshot, or `None` if none comes within `timeout`. Panics if
    /// the stream fails or ends.
    pub async fn next_snapshot(&mut self, timeout: Duration) -> Option<Snapshot> {
        match tokio::time::timeout(timeout, self.inbound.message()).await {
            Err(_) => None,
            Ok(Ok(Some(ControlPlaneMessage {
                kind: Some(control_plane_message::Kind::Snapshot(snapshot)),
                ..
            }))) => Some(snapshot),
            Ok(Ok(Some(other))) => panic!("unexpected stream message {other:?}"),
            Ok(Ok(None)) => panic!("the control plane ended the stream"),
            Ok(Err(status)) => panic!("stream failed: {status}"),
        }
    }

    /// The next message or error as the client sees it (for error tests).
    pub async fn next_raw(
        &mut self,
        timeout: Duration,
    ) -> Option<Result<Option<ControlPlaneMessage>, Status>> {
        tokio::time::timeout(timeout, self.inbound.message())
            .await
            .ok()
    }

    pub async fn ack(&mut self, version: ConfigVersion) {
        self.send(data_plane_message::Kind::Ack(Ack {
            version: Some(version),
        }))
        .await;
    }

    pub async fn nack(&mut self, version: ConfigVersion, error: &str) {
        self.send(data_plane_message::Kind::Nack(Nack {
            version: Some(version),
            error: error.to_string(),
        }))
        .await;
    }

    /// Sends any data-plane message.
    pub async fn send(&mut self, kind: data_plane_message::Kind) {
        self.outbound
            .send(DataPlaneMessage { kind: Some(kind) })
            .await
            .expect("stream to the control plane is open");
    }
}

/// A config written as JSON in the model's shape (tests build configs with
/// `json!`); panics when it does not match the model.
pub fn config_from_json(value: serde_json::Value) -> tollgate_shared::model::GatewayConfig {
    serde_json::from_value(value).expect("test config matches the model")
}

/// One service `orders` and one route `orders-api`: the base config of the
/// control-plane load and hardening tests.
pub fn orders_config() -> tollgate_shared::model::GatewayConfig {
    tollgate_shared::model::GatewayConfig::from_yaml(
        r#"
services:
  - name: orders
    upstream: { targets: [{ address: "127.0.0.1:9001" }] }
routes:
  - { name: orders-api, service: orders, paths: ["/v1/orders"] }
"#,
    )
    .unwrap_or_default()
}

/// [`orders_config`] with `count` routes (`route-000000` on `/v1/orders/0`, ...).
pub fn many_routes(count: usize) -> tollgate_shared::model::GatewayConfig {
    let mut config = orders_config();
    let template = config.routes[0].clone();
    config.routes = (0..count)
        .map(|i| tollgate_shared::model::Route {
            name: format!("route-{i:06}"),
            paths: vec![format!("/v1/orders/{i}")],
            ..template.clone()
        })
        .collect();
    config
}
