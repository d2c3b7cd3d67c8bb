//! A Redis Cluster of three masters in containers on a private network
//! (`redis-cli --cluster create`), reached at the containers' addresses (so
//! this host must reach the Docker network, as with a local engine).
#![allow(dead_code)]

use std::process::ExitCode;
use std::time::Duration;

use leasehold_conformance::fixtures::{self, Container, Network};

#[path = "../docker_support/mod.rs"]
pub mod docker_support;

#[path = "../tls_support/mod.rs"]
pub mod tls_support;

pub use tls_support::Pki;

use docker_support::{docker, ip_of, network_hosts};

/// Where a child holder process finds the cluster's URL.
pub const URL_ENV: &str = "LEASEHOLD_TEST_REDIS_CLUSTER_URL";

/// Where a child holder process finds the TLS cluster's URL.
pub const TLS_URL_ENV: &str = "LEASEHOLD_TEST_REDIS_CLUSTER_TLS_URL";

/// What a cluster is started with.
#[derive(Default)]
pub struct Options<'a> {
    /// Replicas per master (`redis-cli --cluster create --cluster-replicas`).
    pub replicas: usize,
    /// TLS only, with this PKI's server certificate (which must name every
    /// address of the cluster's network: [`network_hosts`]), between nodes
    /// too (`tls-cluster`, `tls-replication`).
    pub tls: Option<&'a Pki>,
}

/// A running cluster; dropping it removes its containers and network.
pub struct Cluster {
    /// The nodes: the masters first, then the replicas, as created (a
    /// failover or resharding may change roles and slots later).
    pub nodes: Vec<Container>,
    /// Their addresses on the network (`ip:6379`).
    pub addrs: Vec<String>,
    /// redis-cli's TLS options (empty without TLS).
    cli_tls: Vec<String>,
    /// The private network (dropped last).
    pub network: Network,
}

impl Cluster {
    /// Starts three cluster-enabled servers, joins them into a cluster that
    /// splits the slots among them, and waits until every node says
    /// `cluster_state:ok`.
    pub async fn start() -> Result<Cluster, String> {
        Self::start_with(Options::default()).await
    }

    /// [`Cluster::start`] with three masters and `options`.
    pub async fn start_with(options: Options<'_>) -> Result<Cluster, String> {
        let network = Network::create("cluster")?;
        Self::start_on(network, options).await
    }

    /// [`Cluster::start_with`] on `network` (made beforehand, e.g. so a PKI
    /// can name its addresses).
    pub async fn start_on(network: Network, options: Options<'_>) -> Result<Cluster, String> {
        let count = 3 * (1 + options.replicas);
        let specs: Vec<_> = (1..=count)
            .map(|i| {
                let spec = fixtures::redis_spec(false)
                    .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
                    .on_network(&network, format!("{}-n{i}", network.name()));
                match options.tls {
                    Some(pki) => pki.tls_spec(
                        spec.args(["--tls-cluster", "yes", "--tls-replication", "yes"]),
                        false,
                    ),
                    None => spec,
                }
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
        let cli_tls: Vec<String> = match options.tls {
            Some(_) => ["--tls", "--cacert", "/tls/ca.pem"]
                .map(String::from)
                .to_vec(),
            None => Vec::new(),
        };
        let replicas = options.replicas.to_string();
        let mut create = vec!["exec", nodes[0].id(), "redis-cli"];
        create.extend(cli_tls.iter().map(String::as_str));
        create.extend(["--cluster", "create"]);
        create.extend(addrs.iter().map(String::as_str));
        create.extend(["--cluster-replicas", &replicas, "--cluster-yes"]);
        docker(&create)?;
        let cluster = Cluster {
            nodes,
            addrs,
            cli_tls,
            network,
        };
        cluster.wait_until_ok(Duration::from_secs(60)).await?;
        if options.replicas > 0 {
            cluster
                .wait_until_replicas_synced(Duration::from_secs(60))
                .await?;
        }
        Ok(cluster)
    }

    /// `redis-cli` on node `i` with `args` (over TLS when the cluster has
    /// it); its stdout.
    pub fn cli(&self, i: usize, args: &[&str]) -> Result<String, String> {
        let mut command = vec!["exec", self.nodes[i].id(), "redis-cli"];
        command.extend(self.cli_tls.iter().map(String::as_str));
        command.extend(args);
        docker(&command)
    }

    /// Index of the node at `addr` (`ip:6379`).
    pub fn node_at(&self, addr: &str) -> Option<usize> {
        self.addrs.iter().position(|a| a == addr)
    }

    /// The master serving `name`'s slot (`ip:6379`), as node 0 sees it.
    pub fn master_of(&self, name: &str) -> Result<String, String> {
        self.master_of_seen_by(0, name)
    }

    /// The master serving `name`'s slot (`ip:6379`), as node `i` sees it.
    pub fn master_of_seen_by(&self, i: usize, name: &str) -> Result<String, String> {
        let slot = self.cli(i, &["CLUSTER", "KEYSLOT", name])?;
        let slot: u16 = slot.trim().parse().map_err(|e| format!("{slot}: {e}"))?;
        let nodes = self.cli(i, &["CLUSTER", "NODES"])?;
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let serves = fields[8..].iter().any(|range| {
                let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                matches!((lo.parse::<u16>(), hi.parse::<u16>()), (Ok(lo), Ok(hi)) if lo <= slot && slot <= hi)
            });
            if serves {
                return Ok(fields[1].split('@').next().unwrap_or_default().to_owned());
            }
        }
        Err(format!("no master serves slot {slot}"))
    }

    /// The node id (`CLUSTER MYID`) of node `i`.
    pub fn id_of(&self, i: usize) -> Result<String, String> {
        Ok(self.cli(i, &["CLUSTER", "MYID"])?.trim().to_owned())
    }

    /// Moves `name`'s slot, with its keys, from the master at `from` to the
    /// master at `to` (both `ip:6379`): `SETSLOT IMPORTING`/`MIGRATING`,
    /// `MIGRATE` of every key in the slot, then `SETSLOT NODE` on every
    /// master, as `redis-cli --cluster reshard` does.
    pub fn move_slot(&self, name: &str, from: &str, to: &str) -> Result<(), String> {
        let (f, t) = (
            self.node_at(from).ok_or("no source node")?,
            self.node_at(to).ok_or("no target node")?,
        );
        let slot = self
            .cli(f, &["CLUSTER", "KEYSLOT", name])?
            .trim()
            .to_owned();
        let (from_id, to_id) = (self.id_of(f)?, self.id_of(t)?);
        self.cli(t, &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id])?;
        self.cli(f, &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id])?;
        let (host, port) = to.split_once(':').ok_or("bad address")?;
        loop {
            let keys = self.cli(f, &["CLUSTER", "GETKEYSINSLOT", &slot, "100"])?;
            let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let mut migrate = vec!["MIGRATE", host, port, "", "0", "5000", "KEYS"];
            migrate.extend(keys);
            self.cli(f, &migrate)?;
        }
        for i in 0..self.nodes.len() {
            let role = self.cli(i, &["ROLE"]).unwrap_or_default();
            if role.starts_with("master") {
                self.cli(i, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id])?;
            }
        }
        Ok(())
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
            for i in 0..self.nodes.len() {
                let info = self.cli(i, &["CLUSTER", "INFO"]).unwrap_or_default();
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

    /// Waits until every replica reports its link to its master up and
    /// every master sees its replicas online (the state `WAIT` counts).
    async fn wait_until_replicas_synced(&self, within: Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let mut synced = true;
            for i in 0..self.nodes.len() {
                let info = self.cli(i, &["INFO", "replication"]).unwrap_or_default();
                if info.contains("role:slave") {
                    synced &= info.contains("master_link_status:up");
                } else {
                    synced &= !info.contains("connected_slaves:0");
                }
            }
            if synced {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!("the replicas did not sync within {within:?}"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The conformance main over a fresh cluster of three masters with
/// `replicas` replicas each (or [`URL_ENV`]), clients connecting with the
/// options `query`.
pub fn conformance_main(name: &'static str, replicas: usize, query: &'static str) -> ExitCode {
    docker_support::conformance_main(name, URL_ENV, move || async move {
        let cluster = Cluster::start_with(Options {
            replicas,
            tls: None,
        })
        .await?;
        Ok((
            cluster.url(query),
            Box::new(cluster) as Box<dyn std::any::Any + Send>,
        ))
    })
}

/// The conformance main over a fresh TLS-only cluster of three masters,
/// reached with `redis+cluster://…?tls=true&ca=…` (certificates made at
/// test time), or over [`TLS_URL_ENV`].
pub fn conformance_tls_main(name: &'static str) -> ExitCode {
    docker_support::conformance_main(name, TLS_URL_ENV, || async {
        let network = Network::create("cluster-tls")?;
        let hosts = network_hosts(&network)?;
        let names: Vec<&str> = hosts.iter().map(String::as_str).collect();
        let pki = Pki::new(&names);
        let cluster = Cluster::start_on(
            network,
            Options {
                replicas: 0,
                tls: Some(&pki),
            },
        )
        .await?;
        let url = cluster.url(&format!("tls=true&ca={}", pki.path("ca.pem").display()));
        Ok((
            url,
            Box::new((cluster, pki)) as Box<dyn std::any::Any + Send>,
        ))
    })
}
