//! End-to-end tests of TLS (issue 15) with the real `tollgate-cp`,
//! `tollgatectl` and `tollgate-dp` binaries and real TLS clients (Python's
//! `ssl`, curl with `--resolve`, `openssl s_client`), all on 127.0.0.1:
//! termination by SNI (exact, wildcard, default, refusal), TLS versions and
//! ALPN h2, `https_only`, hot rotation under load, write-time certificate
//! checks, upstream TLS with a private CA, and private keys kept out of every
//! output.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tollgate_integration_tests::cp::ControlPlane;
use tollgate_integration_tests::dp::{raw_get, DataPlane};
use tollgate_integration_tests::process::free_port;
use tollgate_integration_tests::tls::{python_tls, run_bounded, write, Ca, Leaf, TlsUpstream};
use tollgate_integration_tests::upstream::Upstream;

const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `tollgatectl apply -f` of `yaml`; the output and the revision now in force.
async fn apply(cp: &ControlPlane, name: &str, yaml: &str) -> (Output, u64) {
    let file = write(cp.scratch_dir(), name, yaml);
    let path = file.to_string_lossy().into_owned();
    let out = cp.ctl(&["apply", "-f", &path]);
    let revision = cp
        .admin()
        .await
        .export(tollgate_shared::proto::admin::ExportRequest::default())
        .await
        .expect("export")
        .into_inner()
        .version
        .map_or(0, |v| v.revision);
    (out, revision)
}

fn certificate_yaml(name: &str, leaf: &Leaf, snis: &[&str], default: bool) -> String {
    format!(
        "  - name: {name}\n    cert_pem: {:?}\n    key_pem: {:?}\n    snis: {}\n    default: {default}\n",
        leaf.cert_pem,
        leaf.key_pem,
        serde_json::to_string(snis).expect("json"),
    )
}

fn gateway_yaml(upstream: &Upstream, certificates: &str) -> String {
    format!(
        r#"services:
  - name: echo
    upstream: {{ targets: [{{ address: "{}" }}] }}
routes:
  - name: all
    service: echo
  - name: secure
    service: echo
    paths: ["/secure"]
    https_only: true
  - name: redirect
    service: echo
    paths: ["/redir"]
    https_only: true
    https_redirect: true
certificates:
{certificates}"#,
        upstream.address()
    )
}

fn start_dp(cp: &ControlPlane, node: &str) -> (DataPlane, u16) {
    let tls_port = free_port();
    let dp = DataPlane::start(
        cp.port(),
        node,
        &[
            "--tls-listen".to_string(),
            format!("127.0.0.1:{tls_port}"),
            "--header-read-timeout-ms".to_string(),
            "2000".to_string(),
        ],
    );
    (dp, tls_port)
}

/// One TLS request with Python; the JSON line it printed.
fn python_once(spec: Value) -> Value {
    python_tls(&spec, CLIENT_TIMEOUT)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("the python client printed nothing for {spec}"))
}

/// A self-signed RSA certificate made by the `openssl` command line, as an
/// operator would (the README's example).
fn openssl_rsa(dir: &Path, name: &str) -> Leaf {
    let (cert, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    let out = run_bounded(
        Command::new("openssl").args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "90",
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            &format!("subjectAltName=DNS:{name}"),
            "-keyout",
            &key.to_string_lossy(),
            "-out",
            &cert.to_string_lossy(),
        ]),
        Duration::from_secs(60),
    );
    let cert_pem = std::fs::read_to_string(&cert).unwrap_or_else(|_| panic!("openssl: {out}"));
    let key_pem = std::fs::read_to_string(&key).unwrap_or_else(|_| panic!("openssl: {out}"));
    let der = run_bounded(
        Command::new("openssl").args([
            "x509",
            "-in",
            &cert.to_string_lossy(),
            "-noout",
            "-fingerprint",
            "-sha256",
        ]),
        Duration::from_secs(10),
    );
    let fingerprint = der
        .trim()
        .rsplit('=')
        .next()
        .unwrap_or_default()
        .replace(':', "")
        .to_ascii_lowercase();
    Leaf {
        cert_pem,
        key_pem,
        fingerprint,
    }
}

async fn metrics(dp: &DataPlane) -> String {
    dp.client()
        .get(dp.status_url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body")
}

fn metric_value(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find(|line| line.starts_with(series))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_by_sni_versions_alpn_default_and_refusals() {
    let cp = ControlPlane::start().await;
    let upstream = Upstream::start("tls-echo").await;
    let ca = Ca::new("Tollgate Test CA");
    let api = ca.issue(&["api.example.com"]);
    let wild = ca.issue_with(&["*.example.net"], &rcgen::PKCS_ECDSA_P384_SHA384, -1, 365);
    let fallback = ca.issue_with(&["fallback.example.org"], &rcgen::PKCS_ED25519, -1, 365);
    let rsa = openssl_rsa(cp.scratch_dir(), "rsa.example.com");
    let certificates = [
        certificate_yaml("api", &api, &["api.example.com"], false),
        certificate_yaml("wild", &wild, &["*.example.net"], false),
        certificate_yaml("fallback", &fallback, &["fallback.example.org"], true),
        certificate_yaml("rsa", &rsa, &["rsa.example.com"], false),
    ]
    .concat();
    let (out, revision) = apply(&cp, "tls.yaml", &gateway_yaml(&upstream, &certificates)).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (dp, port) = start_dp(&cp, "tls-dp");
    dp.wait_version(revision).await;
    let ca_file = write(
        cp.scratch_dir(),
        "ca.pem",
        &format!("{}{}", ca.pem, rsa.cert_pem),
    );
    let ca_path = ca_file.to_string_lossy().into_owned();
    // The default certificate does not name what the client asked for, so
    // its hostname check is off there (the chain is still verified).
    let spec = |sni: Option<&str>, version: &str| {
        json!({"port": port, "sni": sni, "host": sni.unwrap_or("any.test"), "path": "/hello",
               "ca": ca_path, "version": version,
               "check_hostname": sni != Some("unknown.example.com")})
    };

    // The right certificate for each SNI, over TLS 1.3 and 1.2.
    for (sni, leaf) in [
        (Some("api.example.com"), &api),
        (Some("x.example.net"), &wild),
        (Some("rsa.example.com"), &rsa),
        (Some("unknown.example.com"), &fallback),
        (None, &fallback),
    ] {
        for version in ["TLSv1_3", "TLSv1_2"] {
            let got = python_once(spec(sni, version));
            assert_eq!(got["ok"], true, "{sni:?} {version}: {got}");
            assert_eq!(got["status"], 200, "{sni:?} {version}: {got}");
            assert_eq!(
                got["version"],
                version.replace('_', "."),
                "{sni:?} {version}"
            );
            assert_eq!(
                got["fingerprint"], leaf.fingerprint,
                "{sni:?} {version}: wrong certificate"
            );
            let echo: Value =
                serde_json::from_str(got["body"].as_str().unwrap_or("")).expect("echo");
            assert_eq!(echo["headers"]["x-forwarded-proto"], "https", "{echo}");
        }
    }
    // TLS 1.0 and 1.1 are refused by the gateway (the client offered them).
    for version in ["TLSv1", "TLSv1_1"] {
        let got = python_once(spec(Some("api.example.com"), version));
        assert_eq!(got["ok"], false, "{version} must be refused: {got}");
        let error = got["error"].as_str().unwrap_or("");
        // Refused by the server's alert (handshake_failure or
        // protocol_version), not by the client's own settings.
        assert!(error.contains("ALERT"), "{version}: {error}");
    }

    // Session resumption (tickets), TLS 1.3 and 1.2.
    for version in ["TLSv1_3", "TLSv1_2"] {
        let mut resume = spec(Some("api.example.com"), version);
        resume["resume"] = json!(true);
        let got = python_once(resume);
        assert_eq!(got["ok"], true, "{version}: {got}");
        assert_eq!(got["reused"], true, "{version}: session not resumed: {got}");
    }

    // A client that connects and sends nothing is closed after the
    // header-read timeout (2 s here), like a slowloris request head.
    let mut idle = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read(&mut idle, &mut buf),
    )
    .await
    .expect("closed within the timeout");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");

    // curl --resolve over TLS 1.3 (ALPN h2 by default) and TLS 1.2 with HTTP/1.1.
    let resolve = format!("api.example.com:{port}:127.0.0.1");
    let url = format!("https://api.example.com:{port}/hello");
    for (args, expected) in [
        (vec!["--tlsv1.3", "--tls-max", "1.3", "--http2"], "200 2"),
        (
            vec!["--tlsv1.2", "--tls-max", "1.2", "--http1.1"],
            "200 1.1",
        ),
    ] {
        let mut command = Command::new("curl");
        command
            .args([
                "-sS",
                "--max-time",
                "10",
                "--resolve",
                &resolve,
                "--cacert",
                &ca_path,
            ])
            .args(["-o", "/dev/null", "-w", "%{http_code} %{http_version}"])
            .args(&args)
            .arg(&url);
        let out = run_bounded(&mut command, CLIENT_TIMEOUT);
        assert_eq!(out.trim(), expected, "curl {args:?}");
    }

    // openssl s_client -alpn h2 negotiates h2 with a verified chain.
    let out = run_bounded(
        Command::new("openssl").args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-servername",
            "api.example.com",
            "-alpn",
            "h2",
            "-CAfile",
            &ca_path,
            "-verify_return_error",
        ]),
        CLIENT_TIMEOUT,
    );
    assert!(out.contains("ALPN protocol: h2"), "{out}");
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");

    // https_only: 426 in plaintext, 200 over TLS; with https_redirect a 308.
    let (status, body) = dp.get_json("api.example.com", "/secure").await;
    assert_eq!(status, 426, "{body}");
    assert_eq!(body["error"], "https_required");
    let got = python_once(
        json!({"port": port, "sni": "api.example.com", "host": "api.example.com",
                                 "path": "/secure", "ca": ca_path}),
    );
    assert_eq!(got["status"], 200, "{got}");
    let redirected = raw_get(dp.addr(), "api.example.com", "/redir?x=1")
        .await
        .expect("redirect answered");
    assert_eq!(redirected.status, 308);
    assert_eq!(
        redirected.header("location"),
        Some(format!("https://api.example.com:{port}/redir?x=1").as_str())
    );

    // Handshakes are counted by result; certificate expiry is a gauge.
    let exposition = metrics(&dp).await;
    assert!(
        metric_value(&exposition, "tollgate_tls_handshakes_total{result=\"ok\"}") >= 10.0,
        "{exposition}"
    );
    assert!(
        metric_value(
            &exposition,
            "tollgate_tls_handshakes_total{result=\"protocol\"}"
        ) >= 2.0,
        "{exposition}"
    );
    assert!(
        metric_value(
            &exposition,
            "tollgate_tls_handshakes_total{result=\"timeout\"}"
        ) >= 1.0,
        "{exposition}"
    );
    let expiry = metric_value(
        &exposition,
        "tollgate_certificate_expiry_seconds{certificate=\"api\"}",
    );
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    assert!(expiry > now + 300.0 * 86_400.0, "{expiry}");

    // The access log carries the TLS version and ALPN.
    let logs = dp.logs();
    assert!(
        logs.contains("\"tls_version\":\"TLSv1.3\",\"alpn\":\"h2\""),
        "no h2 access-log line in {logs}"
    );
    assert!(logs.contains("\"tls_version\":\"TLSv1.2\""), "{logs}");
    // No private key reaches the data plane's output.
    for leaf in [&api, &wild, &fallback, &rsa] {
        let body_line = leaf.key_pem.lines().nth(1).unwrap_or("-----");
        assert!(
            !logs.contains(body_line),
            "a private key in the data plane's logs"
        );
    }

    // Without a default certificate, no SNI (or an unknown one) is refused.
    let no_default = [
        certificate_yaml("api", &api, &["api.example.com"], false),
        certificate_yaml("fallback", &fallback, &["fallback.example.org"], false),
    ]
    .concat();
    let (out, revision) = apply(&cp, "nodefault.yaml", &gateway_yaml(&upstream, &no_default)).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    dp.wait_version(revision).await;
    let before = metric_value(
        &metrics(&dp).await,
        "tollgate_tls_handshakes_total{result=\"no_certificate\"}",
    );
    for sni in [None, Some("unknown.example.com")] {
        let got = python_once(spec(sni, "TLSv1_3"));
        assert_eq!(got["ok"], false, "{sni:?} must be refused: {got}");
    }
    let after = metric_value(
        &metrics(&dp).await,
        "tollgate_tls_handshakes_total{result=\"no_certificate\"}",
    );
    assert!(after >= before + 2.0, "{before} -> {after}");
    assert!(
        !metrics(&dp).await.contains("certificate=\"wild\""),
        "gauge follows the config"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_load_drops_nothing_and_new_handshakes_get_the_new_certificate() {
    let cp = ControlPlane::start().await;
    let upstream = Upstream::start("tls-rotate").await;
    let ca = Ca::new("Rotation CA");
    let old = ca.issue(&["rot.example.com"]);
    let new = ca.issue(&["rot.example.com"]);
    assert_ne!(old.fingerprint, new.fingerprint);
    let yaml = |leaf: &Leaf| {
        gateway_yaml(
            &upstream,
            &certificate_yaml("rot", leaf, &["rot.example.com"], false),
        )
    };
    let (out, revision) = apply(&cp, "v1.yaml", &yaml(&old)).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (dp, port) = start_dp(&cp, "rotate-dp");
    dp.wait_version(revision).await;
    let ca_path = write(cp.scratch_dir(), "ca.pem", &ca.pem)
        .to_string_lossy()
        .into_owned();

    // A client loop (a new handshake per request, plus one keep-alive
    // connection reused throughout) runs for 8 s on its own thread.
    let spec = json!({"port": port, "sni": "rot.example.com", "host": "rot.example.com",
                      "path": "/hello", "ca": ca_path, "seconds": 8, "max": 5000,
                      "keepalive": true});
    let client = std::thread::spawn(move || python_tls(&spec, Duration::from_secs(30)));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let applied_at = now();
    let (out, revision) = apply(&cp, "v2.yaml", &yaml(&new)).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let started = Instant::now();
    dp.wait_version(revision).await;
    let acked_at = now();
    let ack_ms = started.elapsed().as_secs_f64() * 1000.0;
    let lines = client.join().expect("client thread");
    println!(
        "rotation: {} results, ACK seen {:.0} ms after apply",
        lines.len(),
        ack_ms
    );

    let failed: Vec<&Value> = lines
        .iter()
        .filter(|l| l["ok"] != true || l["status"] != 200)
        .collect();
    assert!(
        failed.is_empty(),
        "failed requests during rotation: {failed:?}"
    );
    let new_handshakes: Vec<&Value> = lines.iter().filter(|l| l["kind"] == "new").collect();
    let t = |l: &Value| l["t"].as_f64().unwrap_or(0.0);
    let before: Vec<_> = new_handshakes
        .iter()
        .filter(|l| t(l) < applied_at)
        .collect();
    let after: Vec<_> = new_handshakes.iter().filter(|l| t(l) > acked_at).collect();
    assert!(
        before.len() >= 5 && after.len() >= 5,
        "{} before, {} after",
        before.len(),
        after.len()
    );
    assert!(before
        .iter()
        .all(|l| l["fingerprint"] == old.fingerprint.as_str()));
    assert!(
        after
            .iter()
            .all(|l| l["fingerprint"] == new.fingerprint.as_str()),
        "a handshake after the ACK presented the old certificate"
    );
    // The connection opened before the rotation kept working on its own.
    let kept: Vec<_> = lines.iter().filter(|l| l["kind"] == "kept").collect();
    assert!(kept.len() >= 10, "{}", kept.len());
    assert!(kept
        .iter()
        .all(|l| l["fingerprint"] == old.fingerprint.as_str()));
    println!(
        "rotation: {} new-connection requests ({} before apply, {} after ACK), {} keep-alive requests, 0 failed",
        new_handshakes.len(),
        before.len(),
        after.len(),
        kept.len()
    );
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_certificates_are_refused_naming_the_field_and_nothing_is_stored() {
    let cp = ControlPlane::start().await;
    let ca = Ca::new("Validation CA");
    let good = ca.issue(&["good.example.com", "*.good.example.com"]);
    let base = certificate_yaml("good", &good, &["good.example.com"], false);
    let (out, _) = apply(&cp, "base.yaml", &format!("certificates:\n{base}")).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stored = || text(&cp.ctl(&["get", "certificates", "-o", "json"]).stdout);
    let before = stored();

    let other = ca.issue(&["bad.example.com"]);
    let mismatched = Leaf {
        key_pem: good.key_pem.clone(),
        ..other.clone()
    };
    let garbage = Leaf {
        cert_pem: "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n"
            .into(),
        ..other.clone()
    };
    let expired = ca.issue_with(
        &["bad.example.com"],
        &rcgen::PKCS_ECDSA_P256_SHA256,
        -40,
        -2,
    );
    let future = ca.issue_with(&["bad.example.com"], &rcgen::PKCS_ECDSA_P256_SHA256, 5, 90);
    let cases: [(&str, &Leaf, &[&str], &str); 6] = [
        (
            "unparsable PEM",
            &garbage,
            &["bad.example.com"],
            "cert_pem:",
        ),
        (
            "key of another certificate",
            &mismatched,
            &["bad.example.com"],
            "key_pem: does not match",
        ),
        (
            "expired",
            &expired,
            &["bad.example.com"],
            "cert_pem: expired",
        ),
        (
            "not yet valid",
            &future,
            &["bad.example.com"],
            "cert_pem: not valid before",
        ),
        (
            "SNI outside the SANs",
            &other,
            &["elsewhere.example.com"],
            "snis[0]:",
        ),
        (
            "SNI already served",
            &good,
            &["good.example.com"],
            "snis[0]: \"good.example.com\" is already served",
        ),
    ];
    let mut seen = String::new();
    for (what, leaf, snis, field) in cases {
        let yaml = format!(
            "certificates:\n{base}{}",
            certificate_yaml("bad", leaf, snis, false)
        );
        let (out, _) = apply(&cp, "bad.yaml", &yaml).await;
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{what}: accepted");
        assert!(
            stderr.contains(&format!("certificate \"bad\": {field}")),
            "{what}: {stderr}"
        );
        assert_eq!(stored(), before, "{what}: something was stored");
        seen.push_str(&stderr);
        seen.push_str(&text(&out.stdout));
    }

    // Expiring within 30 days: accepted, with a warning.
    let soon = ca.issue_with(
        &["soon.example.com"],
        &rcgen::PKCS_ECDSA_P256_SHA256,
        -1,
        10,
    );
    let yaml = format!(
        "certificates:\n{base}{}",
        certificate_yaml("soon", &soon, &["soon.example.com"], false)
    );
    let (out, _) = apply(&cp, "soon.yaml", &yaml).await;
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: certificate \"soon\": cert_pem: expires in"),
        "{stderr}"
    );
    seen.push_str(&stderr);

    // Reads show the facts, never the key; the table shows days left.
    let read = text(&cp.ctl(&["get", "certificate", "good", "-o", "yaml"]).stdout);
    for fact in [
        "subject:",
        "issuer:",
        "sans:",
        "not_after:",
        "fingerprint: sha256:",
        "key_fingerprint:",
    ] {
        assert!(read.contains(fact), "{fact} missing from {read}");
    }
    assert!(read.contains("Validation CA"), "{read}");
    let table = text(&cp.ctl(&["get", "certificates"]).stdout);
    assert!(table.contains("EXPIRES IN"), "{table}");
    assert!(table.contains("365d") || table.contains("364d"), "{table}");
    assert!(table.contains("9d") || table.contains("10d"), "{table}");
    seen.push_str(&read);
    seen.push_str(&table);
    seen.push_str(&text(&cp.ctl(&["export"]).stdout));
    seen.push_str(&cp.logs());
    // The export re-applies as is (info is read-only, the key kept by fingerprint).
    let exported = text(&cp.ctl(&["export"]).stdout);
    let (out, _) = apply(&cp, "export.yaml", &exported).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("no changes"),
        "{}",
        text(&out.stdout)
    );

    // No private key anywhere an operator looks.
    for leaf in [&good, &other, &expired, &future, &soon] {
        for line in leaf.key_pem.lines().filter(|l| !l.starts_with("-----")) {
            assert!(!seen.contains(line), "a private key line leaked");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_verifies_with_a_private_ca_and_reuses_connections() {
    let cp = ControlPlane::start().await;
    let private_ca = Ca::new("Upstream CA");
    let wrong_ca = Ca::new("Some Other CA");
    let upstream = TlsUpstream::start(&private_ca.issue(&["upstream.internal"])).await;
    let yaml = format!(
        r#"services:
  - name: good
    upstream: {{ targets: [{{ address: "{addr}" }}] }}
    protocol: https
    tls: {{ ca_pem: {ca:?}, sni: upstream.internal }}
  - name: wrong
    upstream: {{ targets: [{{ address: "{addr}" }}] }}
    protocol: https
    tls: {{ ca_pem: {wrong:?}, sni: upstream.internal }}
  - name: insecure
    upstream: {{ targets: [{{ address: "{addr}" }}] }}
    protocol: https
    tls: {{ verify: false }}
  - name: byname
    upstream: {{ targets: [{{ address: "{addr}" }}] }}
    protocol: https
    host_header: upstream.internal
    tls: {{ ca_certificate: upstream-ca }}
routes:
  - {{ name: byname, service: byname, paths: ["/byname"] }}
  - {{ name: good, service: good, paths: ["/good"] }}
  - {{ name: wrong, service: wrong, paths: ["/wrong"] }}
  - {{ name: insecure, service: insecure, paths: ["/insecure"] }}
certificates:
  - name: upstream-ca
    cert_pem: {ca:?}
"#,
        addr = upstream.address(),
        ca = private_ca.pem,
        wrong = wrong_ca.pem,
    );
    let (out, revision) = apply(&cp, "upstream.yaml", &yaml).await;
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: service \"insecure\": tls.verify: false"),
        "{stderr}"
    );
    let dp = DataPlane::start(cp.port(), "upstream-tls-dp", &[]);
    dp.wait_version(revision).await;

    // Verified with the private CA; 1,000 requests, connections reused.
    let handshakes_before = upstream.handshakes();
    for i in 0..1000 {
        let (status, body) = dp.get_json("any.test", "/good").await;
        assert_eq!(status, 200, "request {i}: {body}");
        assert_eq!(body["name"], "tls-upstream");
    }
    let handshakes = upstream.handshakes() - handshakes_before;
    println!("upstream TLS: {handshakes} handshakes for 1000 requests");
    assert!(
        handshakes <= 4,
        "{handshakes} upstream handshakes for 1000 requests"
    );
    assert!(upstream.requests() >= 1000);

    // The wrong CA: 502 upstream_tls_error, the reason only in the log.
    let (status, body) = dp.get_json("any.test", "/wrong").await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"], "upstream_tls_error");
    let body_text = body.to_string();
    assert!(
        !body_text.contains("UnknownIssuer") && !body_text.contains("certificate"),
        "{body_text}"
    );
    let logs = dp.logs();
    assert!(logs.contains("upstream TLS handshake failed"), "{logs}");
    assert!(
        logs.contains("UnknownIssuer") || logs.contains("invalid peer certificate"),
        "{logs}"
    );

    // A CA stored as a certificate (no key: trusted, never served), with
    // the name to verify taken from host_header.
    let (status, body) = dp.get_json("any.test", "/byname").await;
    assert_eq!(status, 200, "{body}");

    // verify: false connects anyway (and was warned about at apply).
    let (status, _) = dp.get_json("any.test", "/insecure").await;
    assert_eq!(status, 200);
}
