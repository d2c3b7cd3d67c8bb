//! What the multi-container topologies (Sentinel, Cluster) share: the
//! Docker CLI, container addresses, and the conformance main over a
//! topology started for the run.
#![allow(dead_code)]

use std::any::Any;
use std::future::Future;
use std::process::ExitCode;
use std::sync::Arc;

use leasehold_conformance::fixtures::{self, Container};
use leasehold_conformance::{Skipped, Suite};
use leasehold_core::{LockBackend, LockError};
use leasehold_redis::RedisBackend;

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
