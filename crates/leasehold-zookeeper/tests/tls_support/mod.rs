//! A ZooKeeper container serving clients over TLS: the test PKI of the Redis
//! TLS tests (a CA, a server certificate, a client certificate and an
//! unrelated CA, made with rcgen at test time; nothing is committed), the
//! server's files written into the container from its environment (the
//! fixtures start containers without mounts), and ZooKeeper 3.8's Netty
//! `secureClientPort` with PEM key and trust stores. Only the TLS port is
//! published; the plaintext port stays inside the container.
#![allow(dead_code)]

#[path = "../../../leasehold-redis/tests/tls_support/mod.rs"]
mod pki;

use std::time::Duration;

use leasehold_conformance::fixtures::{self, Container, ContainerSpec};
use leasehold_core::LockError;
use leasehold_zookeeper::{ZkBackend, ZkConfig};
pub use pki::Pki;
use testcontainers::core::WaitFor;

/// The TLS client port inside the container.
pub const TLS_PORT: u16 = 2281;

/// The ZooKeeper fixture's spec under the store name `ZOOKEEPER_TLS` (its
/// own `LEASEHOLD_TEST_ZOOKEEPER_TLS_URL` and `LEASEHOLD_ZOOKEEPER_TLS_IMAGE`),
/// serving clients on [`TLS_PORT`] with `pki`'s server certificate; client
/// certificates signed by `pki`'s CA are required when `mtls`
/// (`ssl.clientAuth=need`), not asked for otherwise.
pub fn zookeeper_tls_spec(pki: &Pki, mtls: bool) -> ContainerSpec {
    let mut spec = fixtures::zookeeper_spec();
    spec.store = "ZOOKEEPER_TLS";
    spec.port = TLS_PORT;
    // Settings of zoo.cfg that ZooKeeper does not know itself become
    // `zookeeper.`-prefixed system properties: the ssl.* below. The server
    // does not check client certificates against the client's address
    // (`ssl.hostnameVerification=false`): the test client's certificate
    // names no address.
    let extra = [
        format!("secureClientPort={TLS_PORT}"),
        "serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory".into(),
        "ssl.keyStore.location=/tls/server.pem".into(),
        "ssl.keyStore.type=PEM".into(),
        "ssl.trustStore.location=/tls/ca.pem".into(),
        "ssl.trustStore.type=PEM".into(),
        format!("ssl.clientAuth={}", if mtls { "need" } else { "none" }),
        "ssl.hostnameVerification=false".into(),
    ];
    // A PEM key store is the certificate chain and the key in one file.
    let script = "mkdir -p /tls && printf '%s\\n%s\\n' \"$TLS_CERT\" \"$TLS_KEY\" > /tls/server.pem \
         && printf '%s\\n' \"$TLS_CA\" > /tls/ca.pem \
         && chmod 644 /tls/* && exec docker-entrypoint.sh zkServer.sh start-foreground";
    spec.cmd(["sh", "-c", script])
        .env("ZOO_CFG_EXTRA", extra.join(" "))
        .env("TLS_CA", &pki.ca_pem)
        .env("TLS_CERT", &pki.server_pem)
        .env("TLS_KEY", &pki.server_key)
        // The plaintext port binds first; ready once the TLS one does.
        .ready(WaitFor::message_on_either_std(format!(
            "binding to port 0.0.0.0/0.0.0.0:{TLS_PORT}"
        )))
}

/// A TLS ZooKeeper container for `pki` (client certificates required when
/// `mtls`), serving: see [`wait_tls_serving`].
pub async fn tls_server(pki: &Pki, mtls: bool) -> Container {
    let container = fixtures::start(&zookeeper_tls_spec(pki, mtls))
        .await
        .expect("start the TLS zookeeper container (is the stand-in image built?)");
    wait_tls_serving(format!(
        "zks://127.0.0.1:{}?{}",
        container.port,
        pki.mtls_query()
    ))
    .await;
    container
}

/// Waits until `url` (TLS, with the client certificate) gives a session. A
/// fresh server's first TLS handshakes take seconds (its JVM is cold; on a
/// loaded machine more than a test's timeout), so tests and suites start
/// once one has been made, and their own timeouts measure a warm server.
pub async fn wait_tls_serving(url: String) {
    let config = <ZkConfig as leasehold_core::config::BackendConfig>::from_url(&url)
        .expect("a zks:// URL")
        .timeout(Duration::from_secs(10));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        match ZkBackend::connect_with(config.clone()).await {
            Ok(_) => return,
            Err(error) => assert!(
                tokio::time::Instant::now() < deadline,
                "{url}: no TLS session within 90 s: {error}"
            ),
        }
    }
}

/// Connects `url` with short timeouts, in a namespace of this run.
pub async fn connect(url: &str) -> Result<ZkBackend, LockError> {
    let config = <ZkConfig as leasehold_core::config::BackendConfig>::from_url(url)?
        .namespace(format!("/leasehold-tls-test/{}", fixtures::run_id()))
        .timeout(Duration::from_secs(3));
    ZkBackend::connect_with(config).await
}
