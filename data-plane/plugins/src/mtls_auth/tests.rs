use super::*;
use crate::consumers::ConsumerIndex;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams,
    SerialNumber,
};
use tollgate_plugin_api::identity::{X_ANONYMOUS_CONSUMER, X_CONSUMER_NAME};
use tollgate_plugin_api::{AuthSet, Plugin};

struct Ca {
    key: KeyPair,
    cert: rcgen::Certificate,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).expect("ca");
    Ca { key, cert }
}

/// A client certificate (DER) for `cn` with serial `serial`.
fn client(ca: &Ca, cn: &str, serial: u64, client_auth: bool, expired: bool) -> Vec<u8> {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(vec![format!("{cn}.clients.example")]).expect("p");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.serial_number = Some(SerialNumber::from(serial));
    if client_auth {
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    } else {
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    }
    if expired {
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(2001, 1, 1);
    }
    params
        .signed_by(&key, &ca.cert, &ca.key)
        .expect("client")
        .der()
        .to_vec()
}

fn crl(ca: &Ca, revoked: &[u64]) -> String {
    CertificateRevocationListParams {
        this_update: rcgen::date_time_ymd(2020, 1, 1),
        next_update: rcgen::date_time_ymd(2099, 1, 1),
        crl_number: SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: revoked
            .iter()
            .map(|serial| RevokedCertParams {
                serial_number: SerialNumber::from(*serial),
                revocation_time: rcgen::date_time_ymd(2020, 1, 1),
                reason_code: None,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(&ca.cert, &ca.key)
    .expect("crl")
    .pem()
    .expect("pem")
}

fn config(ca: &Ca, crl_pem: Option<String>) -> GatewayConfig {
    let yaml = format!(
        "certificates:\n  - name: partners-ca\n    cert_pem: {:?}\n{}consumers:\n  - name: alice\n    groups: [partners]\n    credentials: [{{ mtls: {{ subject_cn: alice }} }}]\n  - name: guest\n",
        ca.cert.pem(),
        crl_pem
            .map(|c| format!("    crl_pem: {c:?}\n"))
            .unwrap_or_default()
    );
    let config = GatewayConfig::from_yaml(&yaml).expect("yaml");
    tollgate_shared::validate::validate(&config).expect("valid");
    config
}

fn plugin(config: &GatewayConfig, anonymous: Option<&str>) -> MtlsAuth {
    let index = Arc::new(ConsumerIndex::compile(&config.consumers).expect("index"));
    let plugin_config = MtlsAuthConfig {
        ca_certificates: vec!["partners-ca".into()],
        anonymous: anonymous.map(str::to_string),
    };
    MtlsAuth::new(&plugin_config, config, &index).expect("builds")
}

fn request(chain: Option<Vec<u8>>) -> request::Parts {
    let mut parts = http::Request::builder()
        .uri("/")
        .header("x-forwarded-client-cert", "forged")
        .body(())
        .expect("request")
        .into_parts()
        .0;
    if let Some(der) = chain {
        let certificate = ClientCertificate::new(vec![der]).expect("chain");
        parts.extensions.insert(Arc::new(certificate));
    }
    parts
}

fn kind(attempt: api::AuthAttempt) -> Result<String, (RefusalKind, &'static str)> {
    match attempt {
        api::AuthAttempt::Authenticated(identity) => Ok(identity.consumer.to_string()),
        api::AuthAttempt::NoCredential => Err((RefusalKind::MissingCredential, "")),
        api::AuthAttempt::Rejected(refusal) => Err((refusal.kind, refusal.message())),
    }
}

#[test]
fn a_verified_certificate_maps_to_its_consumer() {
    let partners = ca("Partners CA");
    let config = config(&partners, None);
    let auth = plugin(&config, None);
    assert!(
        !auth.ca_certificates().is_empty(),
        "the listener will ask for a certificate"
    );
    let mut parts = request(Some(client(&partners, "alice", 1, true, false)));
    let attempt = auth.attempt(&mut parts);
    assert_eq!(kind(attempt), Ok("alice".to_string()));
    assert_eq!(parts.headers[X_CONSUMER_NAME], "alice");

    // Verified, but nobody's: its own error code.
    let mut parts = request(Some(client(&partners, "mallory", 2, true, false)));
    assert_eq!(
        kind(auth.attempt(&mut parts)).map_err(|e| e.0),
        Err(RefusalKind::UnknownClientCertificate)
    );
    assert_eq!(
        RefusalKind::UnknownClientCertificate.code(),
        "unknown_client_certificate"
    );
}

#[test]
fn untrusted_expired_wrong_purpose_and_revoked_are_refused() {
    let partners = ca("Partners CA");
    let other = ca("Other CA");
    let auth = plugin(&config(&partners, Some(crl(&partners, &[66]))), None);
    let cases = [
        (
            client(&other, "alice", 1, true, false),
            CertReject::Untrusted,
        ),
        (
            client(&partners, "alice", 2, true, true),
            CertReject::Expired,
        ),
        (
            client(&partners, "alice", 3, false, false),
            CertReject::NotForClientAuth,
        ),
        (
            client(&partners, "alice", 66, true, false),
            CertReject::Revoked,
        ),
    ];
    for (der, reject) in cases {
        let mut parts = request(Some(der));
        assert_eq!(
            kind(auth.attempt(&mut parts)),
            Err((RefusalKind::InvalidClientCertificate, reject.message())),
            "{reject:?}"
        );
        assert!(parts.headers.get(X_CONSUMER_NAME).is_none());
    }
    // Garbage DER is refused, never a panic.
    let mut parts = request(Some(vec![0x30, 0x03, 0x01, 0x01, 0xff]));
    assert_eq!(
        kind(auth.attempt(&mut parts)).map_err(|e| e.0),
        Err(RefusalKind::InvalidClientCertificate)
    );
}

#[test]
fn no_certificate_is_anonymous_or_401_and_forged_headers_go() {
    let partners = ca("Partners CA");
    let config = config(&partners, None);
    let set = AuthSet::new(vec![Arc::new(plugin(&config, Some("guest")))]);
    let mut parts = request(None);
    let identity = set.authenticate(&mut parts).expect("anonymous");
    assert_eq!(&*identity.consumer, "guest");
    assert_eq!(parts.headers[X_ANONYMOUS_CONSUMER], "true");
    assert!(parts.headers.get("x-forwarded-client-cert").is_none());

    let set = AuthSet::new(vec![Arc::new(plugin(&config, None))]);
    let refusal = set.authenticate(&mut request(None)).expect_err("401");
    assert_eq!(refusal.kind, RefusalKind::MissingCredential);
    assert!(
        refusal.headers.is_empty(),
        "no WWW-Authenticate scheme for TLS"
    );
    assert!(!set.client_ca_certificates().is_empty());
}

#[test]
fn verdicts_are_made_once_per_connection_and_instance() {
    let partners = ca("Partners CA");
    let config = config(&partners, None);
    let auth = plugin(&config, None);
    let certificate = Arc::new(
        ClientCertificate::new(vec![client(&partners, "alice", 1, true, false)]).expect("c"),
    );
    for _ in 0..3 {
        let mut parts = request(None);
        parts.extensions.insert(certificate.clone());
        assert_eq!(kind(auth.attempt(&mut parts)), Ok("alice".to_string()));
    }
    // A new snapshot's instance with a CRL that revokes it judges again.
    let revoked = plugin(&self::config(&partners, Some(crl(&partners, &[1]))), None);
    let mut parts = request(None);
    parts.extensions.insert(certificate);
    assert_eq!(
        kind(revoked.attempt(&mut parts)),
        Err((
            RefusalKind::InvalidClientCertificate,
            CertReject::Revoked.message()
        ))
    );
}
