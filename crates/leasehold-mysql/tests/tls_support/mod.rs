//! A TLS-only MariaDB container for a test PKI (the Redis tests' [`Pki`]: a
//! private CA, a server certificate for `127.0.0.1`, a client certificate
//! and an unrelated CA, made with rcgen at test time; nothing committed).
//! The server's files reach the container through its environment (the
//! fixtures start containers without mounts); a shell writes them to `/tls`
//! and starts the stand-in's entrypoint with `--ssl-*` set and
//! `--require-secure-transport=ON`, so plaintext TCP is refused (the
//! entrypoint's own setup uses the Unix socket, which MariaDB counts as
//! secure). With `--ssl-ca` the server verifies a client certificate
//! against the CA; a user created `REQUIRE X509` must present one.
#![allow(dead_code)]

#[path = "../../../leasehold-redis/tests/tls_support/mod.rs"]
mod pki;

use leasehold_conformance::fixtures::{self, Container, ContainerSpec};
pub use pki::Pki;

/// The MariaDB fixture's spec under the store name `MARIADB_TLS` (its
/// `LEASEHOLD_TEST_MARIADB_TLS_URL`), serving TLS only with `pki`'s server
/// certificate.
pub fn mariadb_tls_spec(pki: &Pki) -> ContainerSpec {
    let mut spec = fixtures::mariadb_spec();
    spec.store = "MARIADB_TLS";
    let script = "mkdir -p /tls && printf '%s' \"$TLS_CA\" > /tls/ca.pem \
         && printf '%s' \"$TLS_CERT\" > /tls/server.pem \
         && printf '%s' \"$TLS_KEY\" > /tls/server.key \
         && chown -R mysql:mysql /tls && chmod 600 /tls/server.key \
         && exec docker-entrypoint.sh mariadbd --ssl-ca=/tls/ca.pem \
         --ssl-cert=/tls/server.pem --ssl-key=/tls/server.key \
         --require-secure-transport=ON";
    spec.cmd(["sh", "-c", script])
        .env("TLS_CA", &pki.ca_pem)
        .env("TLS_CERT", &pki.server_pem)
        .env("TLS_KEY", &pki.server_key)
}

/// `mysql://root:<password>@<host>:<port>/leasehold?<query>`.
pub fn url(host: &str, port: u16, query: &str) -> String {
    format!(
        "mysql://root:{}@{host}:{port}/leasehold?{query}",
        fixtures::MARIADB_PASSWORD
    )
}

/// A TLS-only MariaDB container (the crate's tests need Docker).
pub async fn tls_server(pki: &Pki) -> Container {
    fixtures::start(&mariadb_tls_spec(pki))
        .await
        .expect("start a TLS-only mariadb:10.11 container")
}
