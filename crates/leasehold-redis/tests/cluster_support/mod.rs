//! A Redis Cluster of three masters in containers on a private network
//! (`redis-cli --cluster create`), reached at the containers' addresses (so
//! this host must reach the Docker network, as with a local engine).
#![allow(dead_code)]

use std::process::ExitCode;
use std::time::Duration;

use leasehold_conformance::fixtures::{self, Container, Network};

#[path = "../docker_support/mod.rs"]
mod docker_support;

use docker_support::{docker, ip_of};

/// Where a child holder process finds the cluster's URL.
pub const URL_ENV: &str = "LEASEHOLD_TEST_REDIS_CLUSTER_URL";

/// A running cluster; dropping it removes its containers and network.
pub struct Cluster {
    /// The masters.
    pub nodes: Vec<Container>,
    /// Their addresses on the network (`ip:6379`).
    pub addrs: Vec<String>,
    /// The private network (dropped last).
    pub network: Network,
}

impl Cluster {
    /// Starts three cluster-enabled servers, joins them into a cluster that
    /// splits the slots among them, and waits until every node says
    /// `cluster_state:ok`.
    pub async fn start() -> Result<Cluster, String> {
        let network = Network::create("cluster")?;
        let specs: Vec<_> = (1..=3)
            .map(|i| {
                fixtures::redis_spec(false)
                    .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
                    .on_network(&network, format!("{}-n{i}", network.name()))
            })
            .collect();
        let nodes = futures_util::future::join_all(specs.iter().map(fixtures::start))
            .await
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;
        let addrs = nodes
            .iter()
            .map(|node| ip_of(node).map(|ip| format!("{ip}:6379")))
            .collect::<Result<Vec<_>, _>>()?;
        let mut create = vec!["exec", nodes[0].id(), "redis-cli", "--cluster", "create"];
        create.extend(addrs.iter().map(String::as_str));
        create.push("--cluster-yes");
        docker(&create)?;
        let cluster = Cluster {
            nodes,
            addrs,
            network,
        };
        cluster.wait_until_ok(Duration::from_secs(60)).await?;
        Ok(cluster)
    }

    /// `redis+cluster://` over the three masters, with `query`.
    pub fn url(&self, query: &str) -> String {
        let mut url = format!("redis+cluster://{}", self.addrs.join(","));
        if !query.is_empty() {
            url.push('?');
            url.push_str(query);
        }
        url
    }

    async fn wait_until_ok(&self, within: Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let mut ok = true;
            for node in &self.nodes {
                let info = docker(&["exec", node.id(), "redis-cli", "CLUSTER", "INFO"])
                    .unwrap_or_default();
                ok &= info.contains("cluster_state:ok");
            }
            if ok {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!("the cluster was not ok within {within:?}"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The conformance main over a fresh cluster (or [`URL_ENV`]).
pub fn conformance_main(name: &'static str) -> ExitCode {
    docker_support::conformance_main(name, URL_ENV, || async {
        let cluster = Cluster::start().await?;
        Ok((
            cluster.url(""),
            Box::new(cluster) as Box<dyn std::any::Any + Send>,
        ))
    })
}
