//! A Redis Sentinel topology in containers on a private network: one
//! master, two replicas, three sentinels (`redis-server --sentinel`, the
//! same binary) monitoring it as `leasehold` with quorum 2, a master seen
//! down after 1 s. The client reaches the sentinels on their published
//! ports and the master at the container address the sentinels name (so
//! this host must reach the Docker network, as with a local engine).
#![allow(dead_code)]

use std::process::ExitCode;
use std::time::Duration;

use leasehold_conformance::fixtures::{self, Container, ContainerSpec, Network};

#[path = "../docker_support/mod.rs"]
pub mod docker_support;

use docker_support::{ip_of, output};
use testcontainers::core::WaitFor;

#[path = "../tls_support/mod.rs"]
pub mod tls_support;

pub use tls_support::Pki;

/// The name the sentinels monitor the master under.
pub const MASTER_NAME: &str = "leasehold";

/// Where a child holder process finds the topology's URL.
pub const URL_ENV: &str = "LEASEHOLD_TEST_REDIS_SENTINEL_URL";

/// A running topology; dropping it removes its containers and network.
pub struct SentinelTopology {
    /// The first master, then the two replicas.
    pub servers: Vec<Container>,
    /// The three sentinels.
    pub sentinels: Vec<Container>,
    /// The CA file the sentinels' TLS is checked with (`None`: plaintext).
    ca: Option<std::path::PathBuf>,
    /// The private network (dropped last: it removes what is left on it).
    pub network: Network,
}

impl SentinelTopology {
    /// Starts master, replicas (each once synced) and sentinels, and waits
    /// until every sentinel knows both replicas and the other sentinels.
    pub async fn start() -> Result<SentinelTopology, String> {
        Self::start_on(Network::create("sentinel")?, None).await
    }

    /// [`SentinelTopology::start`] on `network` (made beforehand, so a PKI
    /// can name its addresses: [`network_hosts`]); with `tls`, every server
    /// and sentinel listens with TLS only, with `tls`'s server certificate,
    /// and replicas and sentinels reach their masters with TLS.
    pub async fn start_on(network: Network, tls: Option<&Pki>) -> Result<SentinelTopology, String> {
        let server = |name: &str, extra: Vec<String>| {
            let spec = fixtures::redis_spec(false)
                .args(extra)
                .on_network(&network, format!("{}-{name}", network.name()));
            match tls {
                Some(pki) => pki.tls_spec(spec.args(["--tls-replication", "yes"]), false),
                None => spec,
            }
        };
        let master = fixtures::start(&server("m", Vec::new())).await?;
        let master_ip = ip_of(&master)?;
        let mut servers = vec![master];
        let replicas = futures_util::future::join_all((1..=2).map(|i| {
            let spec = server(
                &format!("r{i}"),
                vec!["--replicaof".into(), master_ip.clone(), "6379".into()],
            )
            .ready(WaitFor::message_on_stdout(
                "MASTER <-> REPLICA sync: Finished with success",
            ));
            async move { fixtures::start(&spec).await }
        }))
        .await;
        for replica in replicas {
            servers.push(replica?);
        }
        let sentinels = futures_util::future::join_all((1..=3).map(|i| {
            let spec = sentinel_spec(&master_ip, tls)
                .on_network(&network, format!("{}-s{i}", network.name()));
            async move { fixtures::start(&spec).await }
        }))
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
        let topology = SentinelTopology {
            servers,
            sentinels,
            ca: tls.map(|pki| pki.path("ca.pem")),
            network,
        };
        topology
            .wait_until_sentinels_agree(2, Duration::from_secs(60))
            .await?;
        Ok(topology)
    }

    /// `redis+sentinel://` over the three sentinels, with `query` (may be
    /// empty).
    pub fn url(&self, query: &str) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        let mut url = format!("redis+sentinel://{}/{MASTER_NAME}", hosts.join(","));
        if !query.is_empty() {
            url.push('?');
            url.push_str(query);
        }
        url
    }

    /// What one sentinel says about the master (`SENTINEL MASTER`).
    pub async fn sentinel_view(
        &self,
        i: usize,
    ) -> Result<std::collections::HashMap<String, String>, String> {
        let client = match &self.ca {
            None => redis::Client::open(format!("redis://127.0.0.1:{}", self.sentinels[i].port)),
            Some(ca) => {
                // This helper asks redis-rs for TLS itself, before any
                // leasehold URL has installed rustls's process default
                // (with ZooKeeper's aws-lc-rs beside ring, the workspace
                // build has two providers and redis-rs would panic).
                leasehold_core::tls::install_default_crypto_provider();
                redis::Client::build_with_tls(
                    format!("rediss://127.0.0.1:{}", self.sentinels[i].port),
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(std::fs::read(ca).map_err(|e| e.to_string())?),
                    },
                )
            }
        }
        .map_err(|e| e.to_string())?;
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| e.to_string())?;
        redis::cmd("SENTINEL")
            .arg("MASTER")
            .arg(MASTER_NAME)
            .query_async(&mut conn)
            .await
            .map_err(|e| e.to_string())
    }

    /// The master's `ip:port` as the first sentinel that answers names it.
    pub async fn master_addr(&self) -> Result<String, String> {
        for i in 0..self.sentinels.len() {
            if let Ok(view) = self.sentinel_view(i).await {
                return Ok(format!("{}:{}", view["ip"], view["port"]));
            }
        }
        Err("no sentinel answered".into())
    }

    /// Waits until every sentinel sees `replicas` replicas and the two other
    /// sentinels (the state a failover needs).
    pub async fn wait_until_sentinels_agree(
        &self,
        replicas: usize,
        within: Duration,
    ) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let mut agreed = true;
            for i in 0..self.sentinels.len() {
                let view = self.sentinel_view(i).await.unwrap_or_default();
                let count = |field: &str| view.get(field).and_then(|n| n.parse::<usize>().ok());
                agreed &= count("num-slaves") == Some(replicas)
                    && count("num-other-sentinels") == Some(self.sentinels.len() - 1);
            }
            if agreed {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "the sentinels did not agree on the topology within {within:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Index into `servers` of the server at `addr` (`ip:port`).
    pub fn server_at(&self, addr: &str) -> Option<usize> {
        self.servers
            .iter()
            .position(|s| ip_of(s).is_ok_and(|ip| addr == format!("{ip}:6379")))
    }
}

/// A sentinel monitoring the master at `master_ip` (config written at start,
/// owned by the redis user, which sentinel rewrites); with `tls`, listening
/// with TLS only and reaching the servers with TLS.
fn sentinel_spec(master_ip: &str, tls: Option<&Pki>) -> ContainerSpec {
    let listen = match tls {
        None => "port 26379\\n".to_owned(),
        Some(_) => "port 0\\ntls-port 26379\\ntls-cert-file /tls/server.pem\\n\
                    tls-key-file /tls/server.key\\ntls-ca-cert-file /tls/ca.pem\\n\
                    tls-auth-clients optional\\ntls-replication yes\\n"
            .to_owned(),
    };
    let config = format!(
        "{listen}sentinel monitor {MASTER_NAME} {master_ip} 6379 2\\n\
         sentinel down-after-milliseconds {MASTER_NAME} 1000\\n\
         sentinel failover-timeout {MASTER_NAME} 5000\\n\
         sentinel parallel-syncs {MASTER_NAME} 2\\n"
    );
    let files = match tls {
        None => String::new(),
        Some(_) => "mkdir -p /tls && printf '%s' \"$TLS_CA\" > /tls/ca.pem \
                    && printf '%s' \"$TLS_CERT\" > /tls/server.pem \
                    && printf '%s' \"$TLS_KEY\" > /tls/server.key && chmod 644 /tls/* && "
            .to_owned(),
    };
    let script = format!(
        "{files}printf '{config}' > /data/sentinel.conf && chown redis /data/sentinel.conf \
         && exec docker-entrypoint.sh redis-server /data/sentinel.conf --sentinel"
    );
    let spec = ContainerSpec::new("REDIS", "redis", "7.0", 26379)
        .cmd(["sh", "-c", &script])
        .ready(WaitFor::message_on_stdout("+monitor master"));
    match tls {
        None => spec,
        Some(pki) => spec
            .env("TLS_CA", &pki.ca_pem)
            .env("TLS_CERT", &pki.server_pem)
            .env("TLS_KEY", &pki.server_key),
    }
}

/// The conformance main over a fresh topology (or [`URL_ENV`]), clients
/// connecting with the options `query`.
pub fn conformance_main(name: &'static str, query: &'static str) -> ExitCode {
    docker_support::conformance_main(name, URL_ENV, || async move {
        let topology = SentinelTopology::start().await?;
        Ok((
            topology.url(query),
            Box::new(topology) as Box<dyn std::any::Any + Send>,
        ))
    })
}

/// Drops everything the master sends its replicas (an `iptables` rule in
/// its network namespace, gone with the container), then waits `lag`.
pub async fn cut_replication(
    topology: &SentinelTopology,
    master: usize,
    lag: Duration,
) -> Result<(), String> {
    let pid = output(
        "docker",
        &[
            "inspect",
            "-f",
            "{{.State.Pid}}",
            topology.servers[master].id(),
        ],
    )?;
    for (i, server) in topology.servers.iter().enumerate() {
        if i != master {
            let ip = ip_of(server)?;
            output(
                "nsenter",
                &[
                    "-t",
                    pid.trim(),
                    "-n",
                    "iptables",
                    "-A",
                    "OUTPUT",
                    "-d",
                    &ip,
                    "-j",
                    "DROP",
                ],
            )?;
        }
    }
    tokio::time::sleep(lag).await;
    Ok(())
}

/// Whether this host can cut replication (`nsenter` and `iptables`, as root).
pub fn can_cut_replication() -> bool {
    output("nsenter", &["--version"]).is_ok() && output("iptables", &["--version"]).is_ok()
}
