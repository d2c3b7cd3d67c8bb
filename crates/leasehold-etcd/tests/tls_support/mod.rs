//! A TLS-only etcd container: the test PKI of the Redis TLS tests (a CA, a
//! server certificate, a client certificate and an unrelated CA, made with
//! rcgen at test time; nothing is committed), its server files written into
//! the container from its environment, and etcd serving clients over
//! `https://` only, with `--client-cert-auth` for mutual TLS.
#![allow(dead_code)]

#[path = "../../../leasehold-redis/tests/tls_support/mod.rs"]
mod pki;

use leasehold_conformance::fixtures::{self, Container, ContainerSpec};
pub use pki::Pki;

/// The etcd fixture's spec under the store name `ETCD_TLS` (its own
/// `LEASEHOLD_TEST_ETCD_TLS_URL`), serving clients with `pki`'s server
/// certificate; client certificates signed by `pki`'s CA are required when
/// `mtls`.
pub fn etcd_tls_spec(pki: &Pki, mtls: bool) -> ContainerSpec {
    let mut spec = fixtures::etcd_spec();
    spec.store = "ETCD_TLS";
    let mut etcd: Vec<String> = spec
        .cmd
        .iter()
        .map(|arg| arg.replace("http://", "https://"))
        .collect();
    etcd.extend(
        [
            "--cert-file",
            "/tls/server.pem",
            "--key-file",
            "/tls/server.key",
        ]
        .map(String::from),
    );
    // With a trusted CA file etcd 3.4 asks every client for a certificate
    // (and ends a handshake without one), `--client-cert-auth` or not: the
    // server-auth-only container has none.
    if mtls {
        etcd.extend(["--trusted-ca-file", "/tls/ca.pem", "--client-cert-auth"].map(String::from));
    }
    let quoted: Vec<String> = etcd.iter().map(|a| format!("'{a}'")).collect();
    let script = format!(
        "mkdir -p /tls && printf '%s' \"$TLS_CA\" > /tls/ca.pem \
         && printf '%s' \"$TLS_CERT\" > /tls/server.pem \
         && printf '%s' \"$TLS_KEY\" > /tls/server.key \
         && chmod 600 /tls/server.key && exec {}",
        quoted.join(" ")
    );
    spec.cmd(["sh", "-c", &script])
        .env("TLS_CA", &pki.ca_pem)
        .env("TLS_CERT", &pki.server_pem)
        .env("TLS_KEY", &pki.server_key)
}

/// A TLS-only etcd container for `pki` (client certificates required when
/// `mtls`).
pub async fn tls_server(pki: &Pki, mtls: bool) -> Container {
    fixtures::start(&etcd_tls_spec(pki, mtls))
        .await
        .expect("start the TLS etcd container (is the stand-in image built?)")
}
