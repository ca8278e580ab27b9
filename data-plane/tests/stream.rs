//! The data plane against a stand-in control plane (a tiny tonic server) and
//! a real upstream, all in process on 127.0.0.1: hello with the cluster
//! token, 503 before any config, ACK only once a snapshot serves, NACK of an
//! unimplemented feature with the old config still serving whole, and the
//! config cache written for the next boot.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, Mutex};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tollgate_data_plane::snapshot::ConfigCache;
use tollgate_data_plane::{DataPlane, DpConfig};
use tollgate_shared::model::GatewayConfig;
use tollgate_shared::proto::config::{self as pb, ConfigVersion};
use tollgate_shared::proto::stream::config_stream_server::{ConfigStream, ConfigStreamServer};
use tollgate_shared::proto::stream::{
    control_plane_message, data_plane_message, ControlPlaneMessage, DataPlaneMessage, Snapshot,
};
use tonic::{Request, Response, Status, Streaming};

type Outbound = mpsc::Receiver<Result<ControlPlaneMessage, Status>>;

/// A control plane that forwards what data planes say and streams what the
/// test sends.
struct MockControlPlane {
    outbound: Mutex<Option<Outbound>>,
    events: mpsc::Sender<(Option<String>, DataPlaneMessage)>,
}

#[tonic::async_trait]
impl ConfigStream for MockControlPlane {
    type SubscribeStream = ReceiverStream<Result<ControlPlaneMessage, Status>>;

    /// This stand-in speaks plaintext only: no cluster PKI.
    async fn join(
        &self,
        _request: Request<tollgate_shared::proto::stream::JoinRequest>,
    ) -> Result<Response<tollgate_shared::proto::stream::CertificateResponse>, Status> {
        Err(Status::failed_precondition("plaintext stream"))
    }

    async fn renew(
        &self,
        _request: Request<tollgate_shared::proto::stream::RenewRequest>,
    ) -> Result<Response<tollgate_shared::proto::stream::CertificateResponse>, Status> {
        Err(Status::failed_precondition("plaintext stream"))
    }

    async fn subscribe(
        &self,
        request: Request<Streaming<DataPlaneMessage>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut inbound = request.into_inner();
        let events = self.events.clone();
        tokio::spawn(async move {
            while let Ok(Some(message)) = inbound.message().await {
                if events.send((authorization.clone(), message)).await.is_err() {
                    return;
                }
            }
        });
        let outbound = self
            .outbound
            .lock()
            .await
            .take()
            .ok_or_else(|| Status::unavailable("one session only"))?;
        Ok(Response::new(ReceiverStream::new(outbound)))
    }
}

/// An upstream answering `<path>|<x-added header>|<x-forwarded-for>`.
async fn start_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(|request: http::Request<Incoming>| async move {
                        let header = |name: &str| {
                            request
                                .headers()
                                .get(name)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("-")
                                .to_string()
                        };
                        let text = format!(
                            "{}|{}|{}",
                            request.uri(),
                            header("x-added"),
                            header("x-forwarded-for")
                        );
                        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(text))))
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn snapshot(revision: u64, yaml: &str) -> ControlPlaneMessage {
    let config = GatewayConfig::from_yaml(yaml).expect("yaml");
    ControlPlaneMessage {
        kind: Some(control_plane_message::Kind::Snapshot(Snapshot {
            version: Some(version(revision)),
            config: Some(pb::GatewayConfig::from(&config)),
        })),
        trace_context: Default::default(),
    }
}

fn version(revision: u64) -> ConfigVersion {
    ConfigVersion {
        store_id: "test-store".into(),
        revision,
    }
}

async fn next_event(
    events: &mut mpsc::Receiver<(Option<String>, DataPlaneMessage)>,
) -> (Option<String>, data_plane_message::Kind) {
    // Usage reports and heartbeats come on their own schedule: skipped.
    loop {
        let (authorization, message) = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .expect("the data plane answers within 10 s")
            .expect("event channel open");
        match message.kind.expect("message kind") {
            data_plane_message::Kind::Usage(_) | data_plane_message::Kind::Heartbeat(_) => {}
            kind => return (authorization, kind),
        }
    }
}

async fn get(proxy: SocketAddr, path: &str) -> (u16, String) {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let uri: http::Uri = format!("http://{proxy}{path}").parse().expect("uri");
    let response = client.get(uri).await.expect("proxy answers");
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_are_acked_once_serving_and_nacked_when_unimplemented() {
    let upstream = start_upstream().await;

    let (to_data_plane, outbound) = mpsc::channel(4);
    let (events_tx, mut events) = mpsc::channel(16);
    let control_plane = MockControlPlane {
        outbound: Mutex::new(Some(outbound)),
        events: events_tx,
    };
    let cp_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind cp");
    let cp_addr = cp_listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ConfigStreamServer::new(control_plane))
            .serve_with_incoming(TcpListenerStream::new(cp_listener)),
    );

    let cache_dir = tempfile::tempdir().expect("tempdir");
    let cache_path = cache_dir.path().join("snapshot.bin");
    let config = DpConfig {
        control_plane: format!("http://{cp_addr}"),
        listen: "127.0.0.1:0".parse().expect("addr"),
        status_listen: "127.0.0.1:0".parse().expect("addr"),
        node_id: Some("dp-test".into()),
        config_cache: Some(cache_path.clone()),
        cluster_token: Some("cluster-s3cret".into()),
        ..DpConfig::default()
    };
    let data_plane = DataPlane::bind(config).await.expect("bind");
    let proxy = data_plane.proxy_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = tokio::spawn(data_plane.serve(async {
        let _ = stopped.await;
    }));

    // Hello first, with the cluster token.
    let (authorization, hello) = next_event(&mut events).await;
    assert_eq!(authorization.as_deref(), Some("Bearer cluster-s3cret"));
    let data_plane_message::Kind::Hello(hello) = hello else {
        panic!("expected hello, got {hello:?}");
    };
    assert_eq!(hello.node_id, "dp-test");
    assert_eq!(hello.held_version, None);

    // No config yet: 503, never 404.
    let (status, body) = get(proxy, "/svc/hello").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"not_ready\""), "{body}");

    let good = format!(
        r#"
services:
  - name: svc
    upstream: {{ targets: [{{ address: "{upstream}" }}] }}
routes:
  - name: svc
    service: svc
    paths: ["/svc"]
    strip_path: true
    plugins:
      - name: request-transformer
        config: {{ add: {{ headers: {{ x-added: "yes" }} }} }}
"#
    );
    to_data_plane
        .send(Ok(snapshot(1, &good)))
        .await
        .expect("send");
    let (_, ack) = next_event(&mut events).await;
    assert!(
        matches!(&ack, data_plane_message::Kind::Ack(a) if a.version == Some(version(1))),
        "{ack:?}"
    );
    // ACK means in service: the very next request uses it.
    let (status, body) = get(proxy, "/svc/hello?x=1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, "/hello?x=1|yes|127.0.0.1");

    // A snapshot the data plane's own validation refuses (consistent_hash
    // without its key): NACK, and revision 1 keeps serving whole (no
    // half-applied route table).
    let hashed_service = format!(
        "services:\n  - name: hashed\n    upstream: {{ targets: [{{ address: \"{upstream}\" }}], load_balancing: consistent_hash }}\n"
    );
    let bad = format!("{good}  - name: other\n    service: hashed\n    paths: [\"/other\"]\n")
        .replacen("services:\n", &hashed_service, 1);
    to_data_plane
        .send(Ok(snapshot(2, &bad)))
        .await
        .expect("send");
    let (_, nack) = next_event(&mut events).await;
    let data_plane_message::Kind::Nack(nack) = nack else {
        panic!("expected a NACK, got {nack:?}");
    };
    assert_eq!(nack.version, Some(version(2)));
    assert!(
        nack.error
            .contains("upstream.hash_on: required with consistent_hash"),
        "{}",
        nack.error
    );
    let (status, body) = get(proxy, "/other").await;
    assert_eq!(
        status, 404,
        "the rejected snapshot's path is not served: {body}"
    );
    let (status, body) = get(proxy, "/svc/again").await;
    assert_eq!((status, body.as_str()), (200, "/again|yes|127.0.0.1"));

    // The applied snapshot (not the rejected one) is in the cache.
    let cached = ConfigCache::new(cache_path)
        .load()
        .expect("readable cache")
        .expect("cache written");
    assert_eq!(cached.version, Some(version(1)));

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), serving)
        .await
        .expect("drains promptly")
        .expect("task")
        .expect("clean exit");
}
