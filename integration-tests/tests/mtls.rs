//! End-to-end tests of `mtls-auth` (issue 17) with the real `tollgate-cp`,
//! `tollgatectl` and `tollgate-dp` binaries and real TLS clients: curl with
//! `--cert/--key`, Python's `ssl`, and a rustls + hyper client that keeps one
//! connection open across a config change. Certificates are made with rcgen
//! (`tollgate_integration_tests::tls::Ca`).
//!
//! What is shown: a mapped certificate reaches the upstream as its consumer;
//! no certificate, another CA's, a revoked one (after the CRL's snapshot is
//! in service, also on a connection opened before) and a valid but unmapped
//! one each get their 401; ACL and per-consumer rate limits apply to mTLS
//! consumers; routes without the plugin and the anonymous consumer work
//! without a certificate on the same listener; requests for different
//! routes on one connection (HTTP/1.1 keep-alive and HTTP/2) are each
//! checked; and with `--tls-refuse-untrusted-client-certs` another CA's
//! certificate fails the handshake instead.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{json, Value};
use tollgate_integration_tests::cp::ControlPlane;
use tollgate_integration_tests::dp::DataPlane;
use tollgate_integration_tests::process::free_port;
use tollgate_integration_tests::tls::{python_tls, run_bounded, write, Ca, Leaf};
use tollgate_integration_tests::upstream::Upstream;

const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);
const HOST: &str = "api.example.com";

struct Pki {
    server_ca: Ca,
    server: Leaf,
    partners: Ca,
    other: Ca,
    alice: Leaf,
    carol: Leaf,
    bob: Leaf,
    mallory: Leaf,
    stranger: Leaf,
}

fn pki() -> Pki {
    let server_ca = Ca::new("Tollgate Test Server CA");
    let server = server_ca.issue(&[HOST]);
    let partners = Ca::new("Partners CA");
    let other = Ca::new("Other CA");
    Pki {
        alice: partners.issue_client("alice", &["alice.partners.example"], 101),
        carol: partners.issue_client("carol", &[], 102),
        bob: partners.issue_client("bob", &[], 103),
        mallory: partners.issue_client("mallory", &[], 104),
        // Same CN as a mapped consumer, but from a CA the route does not trust.
        stranger: other.issue_client("alice", &[], 101),
        server_ca,
        server,
        partners,
        other,
    }
}

fn gateway_yaml(upstream: &Upstream, pki: &Pki, crl: Option<&str>) -> String {
    let crl = crl
        .map(|pem| format!("    crl_pem: {pem:?}\n"))
        .unwrap_or_default();
    format!(
        r#"services:
  - name: echo
    upstream: {{ targets: [{{ address: "{upstream}" }}] }}
routes:
  - name: partners
    service: echo
    paths: ["/partners"]
    plugins:
      - name: mtls-auth
        config: {{ ca_certificates: [partners-ca] }}
      - name: acl
        config: {{ allow: [partners] }}
  - name: limited
    service: echo
    paths: ["/limited"]
    plugins:
      - name: mtls-auth
        config: {{ ca_certificates: [partners-ca] }}
      - name: rate-limit
        config: {{ limit: 2, window: 1h, scope: consumer }}
  - name: guests
    service: echo
    paths: ["/guests"]
    plugins:
      - name: mtls-auth
        config: {{ ca_certificates: [partners-ca], anonymous: guest }}
  - name: open
    service: echo
    paths: ["/open"]
consumers:
  - name: alice
    groups: [partners]
    credentials: [{{ mtls: {{ subject_cn: alice }} }}]
  - name: carol
    groups: [partners]
    credentials: [{{ mtls: {{ san_dns: CAROL.partners.example }} }}, {{ mtls: {{ subject_cn: carol }} }}]
  - name: bob
    groups: [vendors]
    credentials: [{{ mtls: {{ fingerprint_sha256: "sha256:{bob}" }} }}]
  - name: guest
certificates:
  - name: server
    cert_pem: {server:?}
    key_pem: {server_key:?}
    snis: [{HOST}]
  - name: partners-ca
    cert_pem: {partners:?}
{crl}"#,
        upstream = upstream.address(),
        bob = pki.bob.fingerprint.to_uppercase(),
        server = pki.server.cert_pem,
        server_key = pki.server.key_pem,
        partners = pki.partners.pem,
    )
}

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new(pki: &Pki) -> Files {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "server-ca.pem", &pki.server_ca.pem);
        for (name, leaf) in [
            ("alice", &pki.alice),
            ("carol", &pki.carol),
            ("bob", &pki.bob),
            ("mallory", &pki.mallory),
            ("stranger", &pki.stranger),
        ] {
            write(dir.path(), &format!("{name}.crt"), &leaf.cert_pem);
            write(dir.path(), &format!("{name}.key"), &leaf.key_pem);
        }
        Files { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().into_owned()
    }
}

/// curl over TLS (`--resolve` to 127.0.0.1) with the client certificate
/// `who` (or none), one or more URLs on one connection; per URL
/// `status consumer-error num_connects http_version`, and the bodies.
fn curl(files: &Files, port: u16, who: Option<&str>, paths: &[&str], extra: &[&str]) -> String {
    let mut command = Command::new("curl");
    command.args([
        "-sS",
        "--max-time",
        "10",
        "--resolve",
        &format!("{HOST}:{port}:127.0.0.1"),
        "--cacert",
        &files.path("server-ca.pem"),
        "-w",
        "\n%{http_code} %{num_connects} %{http_version}\n",
    ]);
    if let Some(who) = who {
        command.args([
            "--cert",
            &files.path(&format!("{who}.crt")),
            "--key",
            &files.path(&format!("{who}.key")),
        ]);
    }
    command.args(extra);
    for path in paths {
        command.arg(format!("https://{HOST}:{port}{path}"));
    }
    run_bounded(&mut command, CLIENT_TIMEOUT)
}

/// `(status, body JSON)` of each response curl printed.
fn answers(out: &str) -> Vec<(u16, Value, String)> {
    let lines: Vec<&str> = out.lines().filter(|l| !l.is_empty()).collect();
    lines
        .chunks(2)
        .filter_map(|pair| match pair {
            [body, status] => {
                let mut fields = status.split(' ');
                let code = fields.next()?.parse().ok()?;
                let rest = fields.collect::<Vec<_>>().join(" ");
                Some((
                    code,
                    serde_json::from_str(body).unwrap_or(Value::Null),
                    rest,
                ))
            }
            _ => None,
        })
        .collect()
}

fn one(out: &str) -> (u16, Value) {
    let got = answers(out);
    assert_eq!(got.len(), 1, "one answer expected: {out}");
    (got[0].0, got[0].1.clone())
}

/// A client that keeps one HTTP/1.1 connection over TLS (rustls) open.
async fn keep_alive_client(
    port: u16,
    server_ca: &str,
    identity: Option<&Leaf>,
) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    let mut roots = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(server_ca.as_bytes()) {
        roots.add(der.expect("CA PEM")).expect("root");
    }
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let config = match identity {
        Some(leaf) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
                    .map(|c| c.expect("cert"))
                    .collect(),
                PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("key"),
            )
            .expect("client auth"),
        None => builder.with_no_client_auth(),
    };
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(HOST).expect("name"), tcp)
        .await
        .expect("handshake");
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("http1");
    tokio::spawn(connection);
    sender
}

async fn send(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    path: &str,
) -> (u16, Value) {
    sender.ready().await.expect("connection still open");
    let request = hyper::Request::get(path)
        .header("host", HOST)
        .body(Empty::new())
        .expect("request");
    let response = tokio::time::timeout(CLIENT_TIMEOUT, sender.send_request(request))
        .await
        .expect("answered in time")
        .expect("response");
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

async fn apply(cp: &ControlPlane, name: &str, yaml: &str) -> std::process::Output {
    let file = write(cp.scratch_dir(), name, yaml);
    cp.ctl(&["apply", "-f", &file.to_string_lossy()])
}

async fn revision(cp: &ControlPlane) -> u64 {
    cp.admin()
        .await
        .export(tollgate_shared::proto::admin::ExportRequest::default())
        .await
        .expect("export")
        .into_inner()
        .version
        .map_or(0, |v| v.revision)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_authenticate_consumers_per_request() {
    let pki = pki();
    let files = Files::new(&pki);
    let upstream = Upstream::start("echo").await;
    let cp = ControlPlane::start().await;
    let out = apply(&cp, "gateway.yaml", &gateway_yaml(&upstream, &pki, None)).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tls_port = free_port();
    let dp = DataPlane::start(
        cp.port(),
        "dp-mtls",
        &["--tls-listen".to_string(), format!("127.0.0.1:{tls_port}")],
    );
    dp.wait_version(revision(&cp).await).await;

    // A mapped certificate reaches the upstream as its consumer (curl, HTTP/2).
    let (status, body) = one(&curl(&files, tls_port, Some("alice"), &["/partners"], &[]));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["headers"]["x-consumer-name"], "alice");
    assert_eq!(body["headers"]["x-consumer-groups"], "partners");
    // Mapped by a DNS SAN (compared lower-case): carol; by fingerprint: bob.
    let (status, body) = one(&curl(&files, tls_port, Some("carol"), &["/guests"], &[]));
    assert_eq!(
        (status, &body["headers"]["x-consumer-name"]),
        (200, &json!("carol"))
    );
    let (status, body) = one(&curl(&files, tls_port, Some("bob"), &["/guests"], &[]));
    assert_eq!(
        (status, &body["headers"]["x-consumer-name"]),
        (200, &json!("bob"))
    );

    // No certificate: 401; another CA's: 401 invalid_client_certificate;
    // valid but nobody's: 401 with its own code.
    for (who, code) in [
        (None, "unauthorized"),
        (Some("stranger"), "invalid_client_certificate"),
        (Some("mallory"), "unknown_client_certificate"),
    ] {
        let (status, body) = one(&curl(&files, tls_port, who, &["/partners"], &[]));
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some(code)),
            "{who:?}: {body}"
        );
    }
    // ACL on an mTLS consumer: bob is not a partner.
    let (status, body) = one(&curl(&files, tls_port, Some("bob"), &["/partners"], &[]));
    assert_eq!((status, body["error"].as_str()), (403, Some("forbidden")));

    // Per-consumer rate limit: alice gets 2, then 429; carol has her own 2.
    let alice = answers(&curl(
        &files,
        tls_port,
        Some("alice"),
        &["/limited", "/limited", "/limited"],
        &[],
    ));
    let codes: Vec<u16> = alice.iter().map(|a| a.0).collect();
    assert_eq!(codes, [200, 200, 429], "{alice:?}");
    let (status, _) = one(&curl(&files, tls_port, Some("carol"), &["/limited"], &[]));
    assert_eq!(status, 200);

    // The listener requests a certificate, never requires one: a route
    // without the plugin works without one; the anonymous consumer too.
    let (status, _) = one(&curl(&files, tls_port, None, &["/open"], &[]));
    assert_eq!(status, 200);
    let (status, body) = one(&curl(&files, tls_port, None, &["/guests"], &[]));
    assert_eq!(status, 200);
    assert_eq!(body["headers"]["x-consumer-name"], "guest");
    assert_eq!(body["headers"]["x-anonymous-consumer"], "true");

    // One connection, two routes: each request is checked (curl reuses the
    // connection: the second URL makes no new connect), HTTP/2 and HTTP/1.1.
    for version in ["--http2", "--http1.1"] {
        let got = answers(&curl(
            &files,
            tls_port,
            None,
            &["/open", "/partners"],
            &[version],
        ));
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0].0, 200, "{version}");
        assert_eq!(got[1].0, 401, "{version}: {got:?}");
        assert!(got[1].2.starts_with('0'), "{version}: reused: {got:?}");
        // A forged identity header changes nothing.
        let got = answers(&curl(
            &files,
            tls_port,
            Some("mallory"),
            &["/open", "/partners"],
            &[
                version,
                "-H",
                "X-Consumer-Name: alice",
                "-H",
                "X-Forwarded-Client-Cert: alice",
            ],
        ));
        assert_eq!(got[0].0, 200);
        assert!(
            got[0].1["headers"].get("x-consumer-name").is_none(),
            "{got:?}"
        );
        assert_eq!(got[1].1["error"], "unknown_client_certificate", "{got:?}");
    }

    // Python's ssl: the same answers, several requests on one connection.
    let spec = |who: Option<&str>, paths: &[&str]| {
        let mut spec = json!({"port": tls_port, "sni": HOST, "host": HOST,
                              "ca": files.path("server-ca.pem"), "paths": paths});
        if let Some(who) = who {
            spec["cert"] = json!(files.path(&format!("{who}.crt")));
            spec["key"] = json!(files.path(&format!("{who}.key")));
        }
        spec
    };
    let got = python_tls(
        &spec(Some("alice"), &["/partners", "/open", "/guests"]),
        CLIENT_TIMEOUT,
    );
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["statuses"], json!([200, 200, 200]), "{got:?}");
    let guests: Value =
        serde_json::from_str(got[0]["bodies"][2].as_str().unwrap_or("")).unwrap_or(Value::Null);
    assert_eq!(
        guests["headers"]["x-consumer-name"], "alice",
        "a certificate wins over anonymous"
    );
    let got = python_tls(
        &spec(None, &["/open", "/partners", "/open"]),
        CLIENT_TIMEOUT,
    );
    assert_eq!(got[0]["statuses"], json!([200, 401, 200]), "{got:?}");
    let got = python_tls(&spec(Some("stranger"), &["/partners"]), CLIENT_TIMEOUT);
    assert_eq!(got[0]["statuses"], json!([401]), "{got:?}");

    // Revocation: a CRL revoking alice (serial 101) goes out with the next
    // snapshot. A connection opened before it is judged again after it.
    let mut kept = keep_alive_client(tls_port, &pki.server_ca.pem, Some(&pki.alice)).await;
    let (status, body) = send(&mut kept, "/partners").await;
    assert_eq!(status, 200, "{body}");
    let crl = pki.partners.crl(&[101]);
    let out = apply(
        &cp,
        "revoked.yaml",
        &gateway_yaml(&upstream, &pki, Some(&crl)),
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dp.wait_version(revision(&cp).await).await;
    let (status, body) = send(&mut kept, "/partners").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client_certificate"))
    );
    assert_eq!(
        body["message"], "the client certificate has been revoked",
        "{body}"
    );
    let (status, body) = one(&curl(&files, tls_port, Some("alice"), &["/partners"], &[]));
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client_certificate"))
    );
    // Others of the same CA are unaffected.
    let (status, _) = one(&curl(&files, tls_port, Some("carol"), &["/partners"], &[]));
    assert_eq!(status, 200);
    // Configured to refuse untrusted certificates in the handshake: another
    // CA's certificate gets no connection at all; the others are unchanged.
    let strict_port = free_port();
    let strict = DataPlane::start(
        cp.port(),
        "dp-mtls-strict",
        &[
            "--tls-listen".to_string(),
            format!("127.0.0.1:{strict_port}"),
            "--tls-refuse-untrusted-client-certs".to_string(),
        ],
    );
    strict.wait_version(revision(&cp).await).await;
    let strict_spec = |who: Option<&str>, paths: &[&str]| {
        let mut spec = spec(who, paths);
        spec["port"] = json!(strict_port);
        spec
    };
    let got = python_tls(&strict_spec(Some("stranger"), &["/open"]), CLIENT_TIMEOUT);
    assert_eq!(got[0]["ok"], false, "handshake refused: {got:?}");
    let got = python_tls(&strict_spec(Some("carol"), &["/partners"]), CLIENT_TIMEOUT);
    assert_eq!(got[0]["statuses"], json!([200]), "{got:?}");
    let got = python_tls(&strict_spec(None, &["/open", "/partners"]), CLIENT_TIMEOUT);
    assert_eq!(got[0]["statuses"], json!([200, 401]), "{got:?}");
    let got = python_tls(&strict_spec(Some("alice"), &["/partners"]), CLIENT_TIMEOUT);
    assert_eq!(
        got[0]["statuses"],
        json!([401]),
        "revoked: still per route: {got:?}"
    );

    // Metrics count the refusals as invalid credentials.
    let metrics = reqwest::get(dp.status_url("/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("tollgate_auth_failures_total"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_refuses_bad_mtls_config_naming_the_field() {
    let pki = pki();
    let upstream = Upstream::start("echo").await;
    let cp = ControlPlane::start().await;
    let good = gateway_yaml(&upstream, &pki, None);
    let out = apply(&cp, "good.yaml", &good).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = revision(&cp).await;
    let other_crl = pki.other.crl(&[1]);
    for (name, yaml, expected) in [
        (
            "missing-ca",
            good.replace(
                "ca_certificates: [partners-ca] }",
                "ca_certificates: [nope] }",
            ),
            "config.ca_certificates[0]: certificate \"nope\" does not exist",
        ),
        (
            "two-fields",
            good.replace(
                "{ mtls: { subject_cn: alice } }",
                "{ mtls: { subject_cn: alice, san_dns: a.example } }",
            ),
            "credentials[0].mtls: exactly one of",
        ),
        (
            "bad-fingerprint",
            good.replace(&pki.bob.fingerprint.to_uppercase(), "abc"),
            "mtls.fingerprint_sha256: must be 64 hex digits",
        ),
        (
            "duplicate",
            good.replace(
                "{ mtls: { subject_cn: carol } }",
                "{ mtls: { subject_cn: alice } }",
            ),
            "is already an mtls credential of consumer",
        ),
        (
            "foreign-crl",
            gateway_yaml(&upstream, &pki, Some(&other_crl)),
            "crl_pem: CRL 0 is issued by",
        ),
        (
            "no-ca",
            good.replace("ca_certificates: [partners-ca] }", "ca_certificates: [] }"),
            "config.ca_certificates: name at least one CA certificate",
        ),
    ] {
        let out = apply(&cp, &format!("{name}.yaml"), &yaml).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: accepted");
        assert!(stderr.contains(expected), "{name}: {stderr}");
    }
    assert_eq!(revision(&cp).await, before, "nothing written");
}
