//! A TLS-only Postgres container for a test PKI (the Redis tests' [`Pki`]:
//! a private CA, a server certificate for `127.0.0.1`, a client certificate
//! and an unrelated CA, made with rcgen at test time; nothing committed).
//! The server's files reach the container through its environment (the
//! fixtures start containers without mounts); a shell writes them, and a
//! `pg_hba.conf` with only `hostssl` lines, to `/tls`, then starts the
//! stand-in's entrypoint with `ssl=on`.
#![allow(dead_code)]

#[path = "../../../leasehold-redis/tests/tls_support/mod.rs"]
mod pki;

use leasehold_conformance::fixtures::{self, Container, ContainerSpec};
pub use pki::Pki;

/// Who the server lets in (its `pg_hba.conf`; plaintext never).
#[derive(Clone, Copy, Debug)]
pub enum Clients {
    /// Any client over TLS, with the password.
    Password,
    /// Over TLS, with the password and a client certificate the CA signed
    /// (`clientcert=verify-ca`).
    PasswordAndCertificate,
}

/// The Postgres fixture's spec under the store name `POSTGRES_TLS` (its
/// `LEASEHOLD_TEST_POSTGRES_TLS_URL`), serving TLS only with `pki`'s server
/// certificate.
pub fn postgres_tls_spec(pki: &Pki, clients: Clients) -> ContainerSpec {
    let mut spec = fixtures::postgres_spec();
    spec.store = "POSTGRES_TLS";
    let method = match clients {
        Clients::Password => "scram-sha-256",
        Clients::PasswordAndCertificate => "scram-sha-256 clientcert=verify-ca",
    };
    let script = format!(
        "mkdir -p /tls && printf '%s' \"$TLS_CA\" > /tls/ca.pem \
         && printf '%s' \"$TLS_CERT\" > /tls/server.pem \
         && printf '%s' \"$TLS_KEY\" > /tls/server.key \
         && printf 'local all all trust\\nhostssl all all all {method}\\n' > /tls/pg_hba.conf \
         && chown -R postgres:postgres /tls && chmod 600 /tls/server.key \
         && exec docker-entrypoint.sh postgres -c ssl=on \
         -c ssl_cert_file=/tls/server.pem -c ssl_key_file=/tls/server.key \
         -c ssl_ca_file=/tls/ca.pem -c hba_file=/tls/pg_hba.conf"
    );
    spec.cmd(["sh", "-c", &script])
        .env("TLS_CA", &pki.ca_pem)
        .env("TLS_CERT", &pki.server_pem)
        .env("TLS_KEY", &pki.server_key)
}

/// `postgres://postgres:<password>@<host>:<port>/postgres?<query>`.
pub fn url(host: &str, port: u16, query: &str) -> String {
    format!(
        "postgres://postgres:{}@{host}:{port}/postgres?{query}",
        fixtures::POSTGRES_PASSWORD
    )
}

/// A TLS-only Postgres container (the crate's tests need Docker, as
/// `common::Server` does).
pub async fn tls_server(pki: &Pki, clients: Clients) -> Container {
    fixtures::start(&postgres_tls_spec(pki, clients))
        .await
        .expect("start a TLS-only postgres:15 container")
}
