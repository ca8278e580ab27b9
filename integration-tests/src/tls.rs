//! TLS fixtures: a private CA that issues certificates (rcgen), an HTTPS
//! upstream that counts its handshakes, and a real TLS client (Python's `ssl`
//! module, driven through [`python_tls`]) that reports what it negotiated.
//!
//! Why Python for the client: the tests must show what a real, independent
//! TLS stack sees (version, ALPN, the certificate presented, alerts), and
//! Python's `ssl` (OpenSSL) does SNI, version pinning and fingerprints in a
//! few lines; curl and `openssl s_client` are used beside it where their own
//! behaviour is the point (`--resolve`, `-alpn h2`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SignatureAlgorithm,
};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A private certificate authority.
pub struct Ca {
    key: KeyPair,
    cert: rcgen::Certificate,
    /// The CA certificate, PEM.
    pub pem: String,
}

/// A certificate and its key, PEM, with the leaf's SHA-256 (hex).
#[derive(Debug, Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub fingerprint: String,
}

/// Days since the Unix epoch, today (UTC).
fn today() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    i64::try_from(now / 86_400).unwrap_or(0)
}

/// Sets `params` valid from `from` to `to` days from today.
fn set_validity(params: &mut CertificateParams, from: i64, to: i64) {
    let date = |days: i64| {
        let (year, month, day) = tollgate_shared::calendar::civil_from_days(today() + days);
        rcgen::date_time_ymd(
            i32::try_from(year).unwrap_or(2000),
            u8::try_from(month).unwrap_or(1),
            u8::try_from(day).unwrap_or(1),
        )
    };
    params.not_before = date(from);
    params.not_after = date(to);
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, -1, 3650);
        let cert = params.self_signed(&key).expect("CA certificate");
        Ca {
            pem: cert.pem(),
            key,
            cert,
        }
    }

    /// A leaf for `names` (DNS SANs) with an ECDSA P-256 key, valid from
    /// yesterday for a year.
    pub fn issue(&self, names: &[&str]) -> Leaf {
        self.issue_with(names, &rcgen::PKCS_ECDSA_P256_SHA256, -1, 365)
    }

    /// A leaf for `names` with a key of `algorithm`, valid from `from` days
    /// to `to` days from today.
    pub fn issue_with(
        &self,
        names: &[&str],
        algorithm: &'static SignatureAlgorithm,
        from: i64,
        to: i64,
    ) -> Leaf {
        let key = KeyPair::generate_for(algorithm).expect("leaf key");
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or("leaf"));
        set_validity(&mut params, from, to);
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("leaf certificate");
        Leaf {
            fingerprint: hex::encode(Sha256::digest(cert.der())),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

impl Ca {
    /// A client certificate (extended key usage `clientAuth`) for subject
    /// CN `cn`, with serial `serial` (for CRLs), valid from yesterday for a
    /// year; `sans` become DNS SANs.
    pub fn issue_client(&self, cn: &str, sans: &[&str], serial: u64) -> Leaf {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("client key");
        let mut params =
            CertificateParams::new(sans.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("client params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.serial_number = Some(rcgen::SerialNumber::from(serial));
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        set_validity(&mut params, -1, 365);
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("client certificate");
        Leaf {
            fingerprint: hex::encode(Sha256::digest(cert.der())),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A CRL (PEM) of this CA revoking the certificates with these serials.
    pub fn crl(&self, serials: &[u64]) -> String {
        let date = |days: i64| {
            let (year, month, day) = tollgate_shared::calendar::civil_from_days(today() + days);
            rcgen::date_time_ymd(
                i32::try_from(year).unwrap_or(2000),
                u8::try_from(month).unwrap_or(1),
                u8::try_from(day).unwrap_or(1),
            )
        };
        rcgen::CertificateRevocationListParams {
            this_update: date(-1),
            next_update: date(30),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|serial| rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from(*serial),
                    revocation_time: date(-1),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&self.cert, &self.key)
        .expect("CRL")
        .pem()
        .expect("CRL PEM")
    }
}

/// An HTTPS/1.1 upstream on 127.0.0.1 presenting `leaf`, answering
/// `{"name":"tls-upstream"}` to everything; counts completed handshakes.
pub struct TlsUpstream {
    addr: SocketAddr,
    handshakes: Arc<AtomicU64>,
    requests: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl TlsUpstream {
    pub async fn start(leaf: &Leaf) -> TlsUpstream {
        let chain: Vec<rustls_pki_types::CertificateDer<'static>> =
            rustls_pki_types::pem::PemObject::pem_slice_iter(leaf.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .expect("chain");
        let key: rustls_pki_types::PrivateKeyDer<'static> =
            rustls_pki_types::pem::PemObject::from_pem_slice(leaf.key_pem.as_bytes()).expect("key");
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let handshakes = Arc::new(AtomicU64::new(0));
        let requests = Arc::new(AtomicU64::new(0));
        let (h, r) = (handshakes.clone(), requests.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (acceptor, h, r) = (acceptor.clone(), h.clone(), r.clone());
                tokio::spawn(async move {
                    let Ok(Ok(tls)) =
                        tokio::time::timeout(Duration::from_secs(5), acceptor.accept(stream)).await
                    else {
                        return;
                    };
                    h.fetch_add(1, Ordering::SeqCst);
                    let service = service_fn(move |_request| {
                        r.fetch_add(1, Ordering::SeqCst);
                        async {
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                                Bytes::from_static(b"{\"name\":\"tls-upstream\"}"),
                            )))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        TlsUpstream {
            addr,
            handshakes,
            requests,
            task,
        }
    }

    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// Completed TLS handshakes (= connections the gateway opened).
    pub fn handshakes(&self) -> u64 {
        self.handshakes.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The client behind [`python_tls`]: one JSON spec in `argv[1]`, one JSON
/// line out per request. Spec: `port`, `sni` (null: none sent), `host`,
/// `path`, `ca` (file), `check_hostname` (default true), `version` (`TLSv1`, `TLSv1_1`, `TLSv1_2`, `TLSv1_3`),
/// `alpn` (list), and for a loop `seconds` and `max` (new connection per
/// request) plus `keepalive` (one more connection reused for every request);
/// `resume`: a second connection resuming the first one's session; `cert`
/// and `key` (files): a client certificate to present; `paths`: several
/// requests on one kept-alive connection (one line with their `statuses`
/// and `bodies`).
pub const PYTHON_CLIENT: &str = r#"
import hashlib, json, socket, ssl, sys, time

spec = json.loads(sys.argv[1])

def context():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=spec["ca"])
    ctx.check_hostname = spec.get("sni") is not None and spec.get("check_hostname", True)
    version = spec.get("version")
    if version:
        if version in ("TLSv1", "TLSv1_1"):
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        v = getattr(ssl.TLSVersion, version)
        ctx.minimum_version = v
        ctx.maximum_version = v
    if spec.get("alpn"):
        ctx.set_alpn_protocols(spec["alpn"])
    if spec.get("cert"):
        ctx.load_cert_chain(spec["cert"], spec["key"])
    return ctx

CTX = context()

def connect():
    sock = socket.create_connection(("127.0.0.1", spec["port"]), timeout=5)
    return CTX.wrap_socket(sock, server_hostname=spec.get("sni"))

def request(tls, close):
    head = "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: %s\r\n\r\n" % (
        spec.get("path", "/"), spec.get("host", "localhost"), "close" if close else "keep-alive")
    tls.sendall(head.encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = tls.recv(65536)
        if not chunk:
            raise EOFError("closed before the response head")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "-1"))
    while (length < 0 and close) or len(body) < length:
        chunk = tls.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body.decode("utf-8", "replace")

def describe(tls):
    return {"version": tls.version(), "alpn": tls.selected_alpn_protocol(),
            "fingerprint": hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest()}

def once():
    started = time.time()
    try:
        tls = connect()
        out = describe(tls)
        status, headers, body = request(tls, True)
        tls.close()
        out.update({"ok": True, "status": status, "body": body, "t": started})
        return out
    except Exception as e:
        return {"ok": False, "error": "%s: %s" % (type(e).__name__, e), "t": started}

if spec.get("resume"):
    # Two connections, the second offering the first's session (a ticket).
    try:
        first = connect()
        request(first, True)
        session = first.session
        first.close()
        sock = socket.create_connection(("127.0.0.1", spec["port"]), timeout=5)
        second = CTX.wrap_socket(sock, server_hostname=spec.get("sni"), session=session)
        status, _, _ = request(second, True)
        out = describe(second)
        out.update({"ok": True, "status": status, "reused": second.session_reused})
    except Exception as e:
        out = {"ok": False, "error": "%s: %s" % (type(e).__name__, e)}
    print(json.dumps(out), flush=True)
    sys.exit(0)

if spec.get("paths"):
    try:
        tls = connect()
        statuses, bodies = [], []
        for path in spec["paths"]:
            spec["path"] = path
            status, _, body = request(tls, False)
            statuses.append(status)
            bodies.append(body)
        tls.close()
        out = {"ok": True, "statuses": statuses, "bodies": bodies}
    except Exception as e:
        out = {"ok": False, "error": "%s: %s" % (type(e).__name__, e)}
    print(json.dumps(out), flush=True)
    sys.exit(0)

if "seconds" not in spec:
    print(json.dumps(once()), flush=True)
    sys.exit(0)

deadline = time.time() + spec["seconds"]
kept = None
count = 0
while time.time() < deadline and count < spec.get("max", 100000):
    count += 1
    line = once()
    line["kind"] = "new"
    print(json.dumps(line), flush=True)
    if spec.get("keepalive"):
        started = time.time()
        try:
            if kept is None:
                kept = connect()
                kept_info = describe(kept)
            status, _, _ = request(kept, False)
            out = dict(kept_info)
            out.update({"ok": True, "status": status, "t": started, "kind": "kept"})
        except Exception as e:
            out = {"ok": False, "error": "%s: %s" % (type(e).__name__, e), "t": started, "kind": "kept"}
        print(json.dumps(out), flush=True)
"#;

/// Runs [`PYTHON_CLIENT`] with `spec`, bounded by `timeout`; one JSON value
/// per line of its output.
pub fn python_tls(spec: &serde_json::Value, timeout: Duration) -> Vec<serde_json::Value> {
    let output = run_bounded(
        Command::new("python3")
            .arg("-c")
            .arg(PYTHON_CLIENT)
            .arg(spec.to_string()),
        timeout,
    );
    output
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

/// Runs a command with stdin closed and its output in temporary files,
/// killing it (by its own PID) after `timeout`; returns stdout then stderr.
pub fn run_bounded(command: &mut Command, timeout: Duration) -> String {
    let stdout = tempfile::NamedTempFile::new().expect("temp file");
    let stderr = tempfile::NamedTempFile::new().expect("temp file");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(stdout.reopen().expect("reopen"))
        .stderr(stderr.reopen().expect("reopen"))
        .spawn()
        .unwrap_or_else(|err| panic!("cannot run {command:?}: {err}"));
    let started = std::time::Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => break,
            Ok(None) if started.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    format!(
        "{}{}",
        std::fs::read_to_string(stdout.path()).unwrap_or_default(),
        std::fs::read_to_string(stderr.path()).unwrap_or_default()
    )
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap_or_else(|err| panic!("write {}: {err}", path.display()));
    path
}

impl Ca {
    /// A client certificate naming an operator the way the control plane's
    /// admin API reads it: a URI SAN `uri` (e.g.
    /// `urn:tollgate:operator:bob:editor`), EKU `clientAuth`.
    pub fn issue_operator(&self, cn: &str, uri: Option<&str>) -> Leaf {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("client key");
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, cn);
        if let Some(uri) = uri {
            params.subject_alt_names = vec![rcgen::SanType::URI(
                uri.to_string().try_into().expect("uri"),
            )];
        }
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        set_validity(&mut params, -1, 365);
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("operator certificate");
        Leaf {
            fingerprint: hex::encode(Sha256::digest(cert.der())),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// A rustls client config for gRPC (ALPN h2) trusting `ca_pem`, presenting
/// `client` (certificate and key PEM) when given.
pub fn grpc_client_config(ca_pem: &[u8], client: Option<(&[u8], &[u8])>) -> rustls::ClientConfig {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem).expect("CA PEM"))
        .expect("root");
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(cert)
                    .collect::<Result<_, _>>()
                    .expect("client certificate PEM"),
                PrivateKeyDer::from_pem_slice(key).expect("client key PEM"),
            )
            .expect("client certificate and key"),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    config
}

/// Dials a gRPC server on 127.0.0.1 over TLS for tonic's
/// `Endpoint::connect_with_connector` (tonic is built without TLS), checking
/// the server's certificate for `server_name`.
#[derive(Clone)]
pub struct GrpcTls {
    pub config: Arc<rustls::ClientConfig>,
    pub server_name: &'static str,
}

type GrpcTlsStream = TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tonic::codegen::Service<tonic::transport::Uri> for GrpcTls {
    type Response = GrpcTlsStream;
    type Error = BoxError;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<GrpcTlsStream, BoxError>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: tonic::transport::Uri) -> Self::Future {
        let config = self.config.clone();
        let name = self.server_name;
        Box::pin(async move {
            let port = uri.port_u16().ok_or("port")?;
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            let name = rustls::pki_types::ServerName::try_from(name)?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok(TokioIo::new(tls))
        })
    }
}

/// A gRPC channel to `127.0.0.1:port` over TLS.
pub async fn grpc_tls_channel(
    port: u16,
    connector: GrpcTls,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect_with_connector(connector)
        .await
}
