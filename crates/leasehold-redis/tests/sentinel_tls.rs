//! TLS to Redis Sentinel (`redis+sentinel://…?tls=true` with the `ca`
//! option of `rediss://`): TLS-only sentinels, master and replicas
//! (replication and the sentinels' own links too) whose certificates are
//! made at test time (the server certificate names every address of the
//! topology's network, and 127.0.0.1 where the sentinels are published).
//! The client connects to the sentinels and the master they name with the
//! CA, and is refused without it and without TLS.

mod sentinel_support;

use sentinel_support::SentinelTopology;
use sentinel_support::docker_support::{locks_with_the_ca_only, network_and_names};

#[tokio::test]
async fn tls_sentinels_and_masters_are_reached_with_the_ca_and_refused_without() {
    let Some((network, names)) = network_and_names("sentinel-tls") else {
        return;
    };
    let pki = sentinel_support::Pki::new(&names.iter().map(String::as_str).collect::<Vec<_>>());
    let topology = SentinelTopology::start_on(network, Some(&pki))
        .await
        .expect("a TLS sentinel topology");
    let ca = pki.path("ca.pem");
    locks_with_the_ca_only(
        &topology.url(&format!("tls=true&ca={}", ca.display())),
        &topology.url("tls=true"),
        &topology.url(""),
    )
    .await;
}
