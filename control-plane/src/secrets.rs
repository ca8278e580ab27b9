//! Secrets on the write path.
//!
//! - An `api_key` is replaced by its `api_key_hash` before anything is stored
//!   ([`hash_api_keys`]); the plaintext exists only for the duration of the
//!   request.
//! - A JWT HMAC `secret` or a certificate `key_pem` is stored as given (data
//!   planes need it) with its fingerprint beside it.
//! - A credential carrying only `secret_fingerprint`, or a certificate carrying
//!   only `key_fingerprint`, means "keep the stored secret with this
//!   fingerprint" ([`restore_kept_secrets`]): that is what reads and exports
//!   show, so an export re-applies as is. An unknown fingerprint is an error
//!   naming the field, never a silently dropped secret.

use std::collections::HashMap;

use tollgate_shared::model::GatewayConfig;
use tollgate_shared::secrets::{fingerprint, hash_api_key};
use tollgate_shared::ConfigError;

/// Fills in secrets referenced by fingerprint from `current`, and recomputes
/// the fingerprint of every secret given in clear.
pub fn restore_kept_secrets(
    next: &mut GatewayConfig,
    current: &GatewayConfig,
) -> Result<(), ConfigError> {
    let mut jwt_secrets: HashMap<String, &str> = HashMap::new();
    for consumer in &current.consumers {
        for credential in &consumer.credentials {
            if let Some(secret) = credential.jwt.as_ref().and_then(|j| j.secret.as_deref()) {
                jwt_secrets.insert(fingerprint(secret), secret);
            }
        }
    }
    let private_keys: HashMap<String, &str> = current
        .certificates
        .iter()
        .filter_map(|c| c.key_pem.as_deref())
        .map(|key| (fingerprint(key), key))
        .collect();

    for consumer in &mut next.consumers {
        for (i, credential) in consumer.credentials.iter_mut().enumerate() {
            let Some(jwt) = credential.jwt.as_mut() else {
                continue;
            };
            match (&jwt.secret, &jwt.secret_fingerprint) {
                (Some(secret), _) => jwt.secret_fingerprint = Some(fingerprint(secret)),
                (None, Some(wanted)) => match jwt_secrets.get(wanted) {
                    Some(secret) => jwt.secret = Some((*secret).to_string()),
                    None => {
                        return Err(ConfigError::new(
                            "consumer",
                            &consumer.name,
                            format!(
                                "credentials[{i}].jwt.secret_fingerprint: no stored secret has \
                                 this fingerprint; give the secret itself"
                            ),
                        ))
                    }
                },
                (None, None) => {}
            }
        }
    }
    for certificate in &mut next.certificates {
        match (&certificate.key_pem, &certificate.key_fingerprint) {
            (Some(key), _) => certificate.key_fingerprint = Some(fingerprint(key)),
            (None, Some(wanted)) => {
                match private_keys.get(wanted) {
                    Some(key) => certificate.key_pem = Some((*key).to_string()),
                    None => return Err(ConfigError::new(
                        "certificate",
                        &certificate.name,
                        "key_fingerprint: no stored private key has this fingerprint; give key_pem",
                    )),
                }
            }
            (None, None) => {}
        }
    }
    Ok(())
}

/// Replaces every plaintext `api_key` by its hash, and writes every given
/// hash in lower-case hex (one key, one spelling). Run after validation, so
/// the key's own rules (length, charset) were checked on the plaintext.
pub fn hash_api_keys(config: &mut GatewayConfig) {
    for consumer in &mut config.consumers {
        for credential in &mut consumer.credentials {
            if let Some(key) = credential.api_key.take() {
                credential.api_key_hash = Some(hash_api_key(&key));
            } else if let Some(hash) = credential.api_key_hash.as_mut() {
                hash.make_ascii_lowercase();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "an-hmac-secret-of-32-bytes-long!";
    const KEY_PEM: &str =
        "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n";

    fn stored() -> GatewayConfig {
        let mut config = GatewayConfig::from_yaml(&format!(
            r#"
consumers:
  - name: svc
    credentials:
      - api_key: "bob-key-123456"
      - jwt: {{ key: issuer-a, algorithm: HS256, secret: "{SECRET}" }}
certificates:
  - name: main
    cert_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    key_pem: {KEY_PEM:?}
    snis: [api.example.com]
"#
        ))
        .expect("parses");
        let current = GatewayConfig::default();
        restore_kept_secrets(&mut config, &current).expect("resolves");
        hash_api_keys(&mut config);
        config
    }

    #[test]
    fn api_keys_are_hashed_and_fingerprints_set() {
        let config = stored();
        let credentials = &config.consumers[0].credentials;
        assert_eq!(credentials[0].api_key, None);
        assert_eq!(
            credentials[0].api_key_hash.as_deref(),
            Some(hash_api_key("bob-key-123456").as_str())
        );
        let jwt = credentials[1].jwt.as_ref().expect("jwt");
        assert_eq!(jwt.secret.as_deref(), Some(SECRET));
        assert_eq!(jwt.secret_fingerprint, Some(fingerprint(SECRET)));
        assert_eq!(
            config.certificates[0].key_fingerprint,
            Some(fingerprint(KEY_PEM))
        );
    }

    #[test]
    fn api_key_hashes_are_stored_in_lower_case() {
        let hash = hash_api_key("bob-key-123456");
        let mut config = GatewayConfig::from_yaml(&format!(
            "consumers: [{{name: c, credentials: [{{api_key_hash: \"{}\"}}]}}]",
            hash.to_ascii_uppercase().replacen("SHA256", "sha256", 1)
        ))
        .expect("parses");
        hash_api_keys(&mut config);
        assert_eq!(config.consumers[0].credentials[0].api_key_hash, Some(hash));
    }

    #[test]
    fn redacted_form_restores_the_stored_secrets() {
        let current = stored();
        let mut next = current.redacted();
        assert!(!next.to_yaml().contains(SECRET));
        restore_kept_secrets(&mut next, &current).expect("fingerprints resolve");
        hash_api_keys(&mut next);
        assert_eq!(next, current);
    }

    #[test]
    fn unknown_fingerprints_name_the_field() {
        let current = stored();
        let mut next = current.redacted();
        next.consumers[0].credentials[1]
            .jwt
            .as_mut()
            .expect("jwt")
            .secret_fingerprint = Some(fingerprint("some other secret value"));
        let err = restore_kept_secrets(&mut next, &current).expect_err("must fail");
        assert_eq!(
            err.to_string(),
            "consumer \"svc\": credentials[1].jwt.secret_fingerprint: no stored secret has this \
             fingerprint; give the secret itself"
        );

        let mut next = current.redacted();
        next.certificates[0].key_fingerprint = Some(fingerprint("other"));
        let err = restore_kept_secrets(&mut next, &current).expect_err("must fail");
        assert!(
            err.to_string()
                .starts_with("certificate \"main\": key_fingerprint:"),
            "{err}"
        );
    }
}
