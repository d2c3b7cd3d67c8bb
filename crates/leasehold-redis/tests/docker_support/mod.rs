//! What the multi-container topologies (Sentinel, Cluster) share: the
//! Docker CLI, container addresses, and the conformance main over a
//! topology started for the run.
#![allow(dead_code)]

use std::any::Any;
use std::future::Future;
use std::process::ExitCode;
use std::sync::Arc;

use leasehold_conformance::fixtures::{self, Container, Network};
use leasehold_conformance::{Skipped, Suite};
use std::time::Duration;

use leasehold_core::config::BackendConfig;
use leasehold_core::{Key, LockBackend, LockError};
use leasehold_redis::{RedisBackend, RedisConfig};

/// Runs `program args` and returns its stdout.
pub fn output(program: &str, args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `docker args`; its stdout.
pub fn docker(args: &[&str]) -> Result<String, String> {
    output("docker", args)
}

/// The container's address on its network.
pub fn ip_of(container: &Container) -> Result<String, String> {
    let ip = docker(&[
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        container.id(),
    ])?;
    let ip = ip.trim().to_owned();
    if ip.is_empty() {
        return Err(format!("no address for container {}", container.id()));
    }
    Ok(ip)
}

/// Every address of `network`'s subnet up to `.62` (containers on a fresh
/// network get the first ones), and `127.0.0.1`: the names a test PKI's
/// server certificate needs for a topology whose nodes are reached at
/// their container addresses, which are not known before they start.
pub fn network_hosts(network: &Network) -> Result<Vec<String>, String> {
    let subnet = docker(&[
        "network",
        "inspect",
        "-f",
        "{{range .IPAM.Config}}{{.Subnet}} {{end}}",
        network.name(),
    ])?;
    let subnet = subnet
        .split_whitespace()
        .find(|s| s.contains('.'))
        .ok_or_else(|| format!("no IPv4 subnet: {subnet:?}"))?;
    let base: std::net::Ipv4Addr = subnet
        .split('/')
        .next()
        .unwrap_or_default()
        .parse()
        .map_err(|e| format!("{subnet}: {e}"))?;
    let base = u32::from(base);
    let mut hosts: Vec<String> = (1..63)
        .map(|i| std::net::Ipv4Addr::from(base + i).to_string())
        .collect();
    hosts.push("127.0.0.1".into());
    Ok(hosts)
}

/// Connects to `url` with a 3 s call timeout.
async fn connect_briefly(url: &str) -> Result<RedisBackend, LockError> {
    let config = RedisConfig::from_url(url)?.timeout(Duration::from_secs(3));
    RedisBackend::connect_with(config).await
}

/// A network and the names a server certificate for it needs, or `None`
/// (printed) without Docker outside CI.
pub fn network_and_names(purpose: &str) -> Option<(Network, Vec<String>)> {
    if !fixtures::docker_available() {
        let message = "SKIPPED: no Docker engine answers";
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{message} (CI=true: a skipped store is a failure)");
        }
        eprintln!("{message}");
        return None;
    }
    let network = Network::create(purpose).expect("a network");
    let hosts = network_hosts(&network).expect("the network's addresses");
    Some((network, hosts))
}

/// Locks once through `url` and checks that the same URL without the CA,
/// and without TLS, is refused.
pub async fn locks_with_the_ca_only(with_ca: &str, without_ca: &str, plain: &str) {
    let backend = connect_briefly(with_ca)
        .await
        .expect("connects with the CA");
    let key = Key::new("tls:topology").unwrap();
    let lease = backend
        .try_acquire(&key, Duration::from_secs(5))
        .await
        .expect("a lock over TLS");
    backend.release(&lease).await.expect("released over TLS");
    drop(backend);
    for (url, why) in [(without_ca, Some("certificate")), (plain, None)] {
        match connect_briefly(url).await {
            Ok(backend) => panic!("{url} connected: {backend:?}"),
            Err(error) => {
                assert!(
                    matches!(
                        error,
                        LockError::Unavailable { .. } | LockError::Backend { .. }
                    ),
                    "{url}: {error:?}"
                );
                if let Some(why) = why {
                    let shown = format!("{error} {error:?}").to_lowercase();
                    assert!(shown.contains(why), "{url}: {shown}");
                }
            }
        }
    }
}

async fn connect(url: String) -> Result<Arc<dyn LockBackend>, LockError> {
    Ok(Arc::new(RedisBackend::connect(&url).await?) as Arc<dyn LockBackend>)
}

/// The conformance main over the URL in `url_env` (a child holder, or an
/// existing topology), else over a topology `start` brings up for the run
/// (its URL and what keeps it alive). No store faults: pausing a master
/// starts a failover, which `tests/failover.rs` measures.
pub fn conformance_main<F, Fut>(name: &'static str, url_env: &'static str, start: F) -> ExitCode
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<(String, Box<dyn Any + Send>), String>>,
{
    leasehold_conformance::run_main(|| async move {
        let (url, topology) = match std::env::var(url_env) {
            Ok(url) => (url, None),
            Err(_) if !fixtures::docker_available() => {
                return Err(Skipped(format!(
                    "no Docker engine answers and {url_env} is not set: the {name} suite did not run"
                )));
            }
            Err(_) => {
                let (url, topology) = start().await.map_err(Skipped)?;
                (url, Some(topology))
            }
        };
        let connect_to = url.clone();
        let suite = Suite::new(name, move || connect(connect_to.clone()))
            .with_child_env(vec![(url_env.to_owned(), url)]);
        Ok(match topology {
            Some(topology) => suite.keep(topology),
            None => suite,
        })
    })
}
