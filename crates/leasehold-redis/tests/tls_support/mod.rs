//! Test PKI and a TLS-only Redis container: a private CA, a server
//! certificate for `127.0.0.1`, a client certificate (mTLS) and a second,
//! unrelated CA, generated with rcgen into a temporary directory at test
//! time (nothing is committed). The server's files reach the container
//! through its environment (the fixtures start containers without mounts);
//! a shell writes them to `/tls` and starts `redis-server` with TLS only.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use leasehold_conformance::fixtures::{self, Container, ContainerSpec};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// The certificates of one test run, as PEM files in a temporary directory
/// (removed on drop).
pub struct Pki {
    dir: tempfile::TempDir,
    /// The server certificate and key, and the CA, as PEM text (for the
    /// container's environment).
    pub server_pem: String,
    pub server_key: String,
    pub ca_pem: String,
}

impl Pki {
    /// A CA, a server certificate for `names` (IP addresses or host names),
    /// a client certificate, and an unrelated CA.
    pub fn new(names: &[&str]) -> Pki {
        let dir = tempfile::tempdir().expect("a temp dir");
        let (ca_pem, issuer) = new_ca("leasehold test CA");
        let (other_ca, _) = new_ca("some other CA");
        // The servers' certificate serves as their client certificate too
        // (cluster bus, replication, a sentinel reaching its master).
        let (server_pem, server_key) = leaf(
            &issuer,
            names,
            &[
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        );
        let (client_pem, client_key) = leaf(
            &issuer,
            &["leasehold-client"],
            &[ExtendedKeyUsagePurpose::ClientAuth],
        );
        for (name, text) in [
            ("ca.pem", &ca_pem),
            ("other-ca.pem", &other_ca),
            ("client.pem", &client_pem),
            ("client.key", &client_key),
            ("server.pem", &server_pem),
        ] {
            std::fs::write(dir.path().join(name), text).expect("write a PEM file");
        }
        Pki {
            dir,
            server_pem,
            server_key,
            ca_pem,
        }
    }

    /// A file of this PKI (`ca.pem`, `other-ca.pem`, `client.pem`,
    /// `client.key`).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The query of a mutual-TLS URL trusting this CA.
    pub fn mtls_query(&self) -> String {
        format!(
            "ca={}&cert={}&key={}",
            self.path("ca.pem").display(),
            self.path("client.pem").display(),
            self.path("client.key").display()
        )
    }

    /// `spec` with this PKI's server files written into the container and
    /// `redis-server` (the spec's command, whose first word must be
    /// `redis-server`) listening with TLS only on its port; client
    /// certificates are required when `require_client_cert`.
    pub fn tls_spec(&self, spec: ContainerSpec, require_client_cert: bool) -> ContainerSpec {
        let port = spec.port.to_string();
        let mut server = spec.cmd.clone();
        if server.is_empty() {
            server.push("redis-server".into());
        }
        server.extend(
            [
                "--port",
                "0",
                "--tls-port",
                &port,
                "--tls-cert-file",
                "/tls/server.pem",
                "--tls-key-file",
                "/tls/server.key",
                "--tls-ca-cert-file",
                "/tls/ca.pem",
                "--tls-auth-clients",
                if require_client_cert {
                    "yes"
                } else {
                    "optional"
                },
            ]
            .map(String::from),
        );
        let quoted: Vec<String> = server.iter().map(|a| format!("'{a}'")).collect();
        let script = format!(
            "mkdir -p /tls && printf '%s' \"$TLS_CA\" > /tls/ca.pem \
             && printf '%s' \"$TLS_CERT\" > /tls/server.pem \
             && printf '%s' \"$TLS_KEY\" > /tls/server.key \
             && chmod 644 /tls/* && exec docker-entrypoint.sh {}",
            quoted.join(" ")
        );
        spec.cmd(["sh", "-c", &script])
            .env("TLS_CA", &self.ca_pem)
            .env("TLS_CERT", &self.server_pem)
            .env("TLS_KEY", &self.server_key)
    }
}

/// The Redis fixture's spec under another store name (its
/// `LEASEHOLD_TEST_<STORE>_URL` and image variables), for TLS runs.
pub fn redis_tls_spec() -> ContainerSpec {
    let mut spec = fixtures::redis_spec(false);
    spec.store = "REDIS_TLS";
    spec
}

/// A TLS-only Redis container for `pki` (client certificates required when
/// `mtls`), or `None` (printed) when Docker is missing outside CI.
pub async fn tls_server(pki: &Pki, mtls: bool) -> Option<Container> {
    let spec = pki.tls_spec(redis_tls_spec(), mtls);
    match fixtures::start(&spec).await {
        Ok(container) => Some(container),
        Err(error) => {
            let message = format!("SKIPPED: {error}");
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{message} (CI=true: a skipped store is a failure)");
            }
            eprintln!("{message}");
            None
        }
    }
}

fn new_ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
    ];
    let key = KeyPair::generate().expect("a CA key");
    let cert = params.self_signed(&key).expect("a self-signed CA");
    (cert.pem(), Issuer::new(params, key))
}

fn leaf(
    issuer: &Issuer<'static, KeyPair>,
    names: &[&str],
    usages: &[ExtendedKeyUsagePurpose],
) -> (String, String) {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names.clone()).expect("leaf params");
    params
        .distinguished_name
        .push(DnType::CommonName, &names[0]);
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = usages.to_vec();
    let key = KeyPair::generate().expect("a leaf key");
    let cert = params.signed_by(&key, issuer).expect("a signed leaf");
    (cert.pem(), key.serialize_pem())
}
