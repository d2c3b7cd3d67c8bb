//! Redlock over TLS: three TLS-only Redis servers requiring client
//! certificates, reached with one `redlock://...?tls=true&ca=..&cert=..&key=..`
//! URL (certificates made at test time).

#[path = "../../leasehold-redis/tests/tls_support/mod.rs"]
mod tls_support;

use std::time::Duration;

use futures_util::future::join_all;
use leasehold_core::{Key, LockBackend};
use leasehold_redlock::RedlockBackend;
use tls_support::{Pki, tls_server};

#[tokio::test]
async fn every_server_is_reached_with_the_one_ca_and_client_certificate() {
    let pki = Pki::new(&["127.0.0.1"]);
    let servers: Vec<_> = join_all((0..3).map(|_| tls_server(&pki, true))).await;
    let Some(servers) = servers.into_iter().collect::<Option<Vec<_>>>() else {
        return;
    };
    let hosts: Vec<String> = servers
        .iter()
        .map(|s| format!("127.0.0.1:{}", s.port))
        .collect();
    let url = format!(
        "redlock://{}?tls=true&{}",
        hosts.join(","),
        pki.mtls_query()
    );
    let backend = RedlockBackend::connect(&url)
        .await
        .expect("connects over TLS");
    let key = Key::new("tls:redlock").unwrap();
    let lease = backend
        .try_acquire(&key, Duration::from_secs(5))
        .await
        .expect("a quorum over TLS");
    backend
        .release(&lease)
        .await
        .expect("released on all servers");

    // Without the client certificate no server lets it in: no quorum.
    let ca_only = format!(
        "redlock://{}?tls=true&ca={}&timeout=1s",
        hosts.join(","),
        pki.path("ca.pem").display()
    );
    let refused = match RedlockBackend::connect(&ca_only).await {
        Ok(backend) => backend
            .try_acquire(&key, Duration::from_secs(5))
            .await
            .map(drop),
        Err(error) => Err(error),
    };
    assert!(
        refused.is_err(),
        "a lock without client certificates: {refused:?}"
    );
}
