//! TLS to a Redis Cluster (`redis+cluster://…?tls=true` with the `ca`
//! option of `rediss://`): a TLS-only cluster (its bus too) whose
//! certificates are made at test time (the server certificate names every
//! address of the cluster's network). The client connects and locks with
//! the CA, and is refused without it (the web roots do not know the test
//! CA) and without TLS.

mod cluster_support;

use cluster_support::docker_support::{locks_with_the_ca_only, network_and_names};
use cluster_support::{Cluster, Options};

#[tokio::test]
async fn a_tls_cluster_is_reached_with_its_ca_and_refused_without() {
    let Some((network, names)) = network_and_names("cluster-tls") else {
        return;
    };
    let pki = cluster_support::Pki::new(&names.iter().map(String::as_str).collect::<Vec<_>>());
    let cluster = Cluster::start_on(
        network,
        Options {
            replicas: 0,
            tls: Some(&pki),
        },
    )
    .await
    .expect("a TLS cluster");
    let ca = pki.path("ca.pem");
    locks_with_the_ca_only(
        &cluster.url(&format!("tls=true&ca={}", ca.display())),
        &cluster.url("tls=true"),
        &cluster.url(""),
    )
    .await;
}
