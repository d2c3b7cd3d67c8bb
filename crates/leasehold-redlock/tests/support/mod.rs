//! Redis servers for the Redlock tests: N `redis:7.0` containers from the
//! conformance fixtures (labelled, published on 127.0.0.1, removed on drop),
//! or the servers named by `LEASEHOLD_TEST_REDLOCK_URL`.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use leasehold_conformance::fixtures::{self, Container};
use leasehold_conformance::{BoxFuture, Skipped, Store};
use leasehold_core::{Key, LockBackend};
use leasehold_redlock::RedlockBackend;
use tokio::time::Instant;

/// The env variable that points the suite at existing servers (and that
/// child holder processes read to reach the same servers).
pub const URL_ENV: &str = "LEASEHOLD_TEST_REDLOCK_URL";

/// N servers of one test.
pub struct Cluster {
    /// Their containers (empty when the servers are external).
    pub containers: Vec<Arc<Container>>,
    /// `redlock://127.0.0.1:p1,...`.
    pub url: String,
}

impl Cluster {
    /// `redis://127.0.0.1:port` of server `i`.
    pub fn node_url(&self, i: usize) -> String {
        format!("redis://127.0.0.1:{}", self.containers[i].port)
    }

    /// `redlock://` over the servers `which`.
    pub fn url_of(&self, which: &[usize]) -> String {
        let hosts: Vec<String> = which
            .iter()
            .map(|&i| format!("127.0.0.1:{}", self.containers[i].port))
            .collect();
        format!("redlock://{}", hosts.join(","))
    }

    /// `docker stop` server `i` (it stays stopped until [`Cluster::start`]).
    pub async fn stop(&self, i: usize) {
        self.containers[i].stop(Some(1)).await.expect("docker stop");
    }

    /// `docker start` server `i` again and waits for its port.
    pub async fn start(&self, i: usize) {
        self.containers[i]
            .start()
            .await
            .expect("restarted server listens");
    }

    /// `docker pause` server `i`.
    pub async fn pause(&self, i: usize) {
        self.containers[i].pause().await.expect("docker pause");
    }

    /// `docker unpause` server `i`.
    pub async fn unpause(&self, i: usize) {
        self.containers[i].unpause().await.expect("docker unpause");
    }
}

/// Starts `n` containers in parallel (Redis without persistence).
pub async fn start(n: usize) -> Result<Cluster, Skipped> {
    if !fixtures::docker_available() {
        return Err(Skipped("no Docker engine answers".into()));
    }
    let spec = fixtures::redis_spec(false);
    let started = join_all((0..n).map(|_| fixtures::start(&spec))).await;
    let mut containers = Vec::new();
    for container in started {
        containers.push(Arc::new(container.map_err(Skipped)?));
    }
    let hosts: Vec<String> = containers
        .iter()
        .map(|c| format!("127.0.0.1:{}", c.port))
        .collect();
    Ok(Cluster {
        url: format!("redlock://{}", hosts.join(",")),
        containers,
    })
}

/// For the fault tests: a fresh cluster of `n` containers, or `None` (the
/// test says it skipped; under `CI=true` that panics).
pub async fn cluster(n: usize) -> Option<Cluster> {
    match start(n).await {
        Ok(cluster) => Some(cluster),
        Err(Skipped(why)) => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("cannot start {n} redis containers: {why} (CI=true: skipping is a failure)");
            }
            eprintln!("SKIPPED: cannot start {n} redis containers: {why}");
            None
        }
    }
}

/// Waits (bounded) until the backend's own connection to server `i` answers
/// again after a restart, so the next attempt is not spent on a reconnect.
pub async fn answers(backend: &RedlockBackend, i: usize, k: &Key) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(node) = &backend.nodes()[i]
            && node.inspect_raw(k).await.is_ok()
        {
            return;
        }
        assert!(Instant::now() < deadline, "server {i} did not come back");
        // A server that was down when the backend connected is connected in
        // the background when an operation needs it: give it one.
        let _ = backend.inspect(k).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Fault hooks that act on every server at once: pausing or restarting all of
/// them is what makes a Redlock store unavailable as a whole.
pub struct AllServers(pub Vec<Arc<Container>>);

impl AllServers {
    fn each(
        &self,
        action: fn(&Container) -> BoxFuture<Result<(), String>>,
    ) -> BoxFuture<Result<(), String>> {
        let futures: Vec<_> = self.0.iter().map(|c| action(c)).collect();
        Box::pin(async move {
            for result in join_all(futures).await {
                result?;
            }
            Ok(())
        })
    }
}

impl Store for AllServers {
    fn pause(&self) -> BoxFuture<Result<(), String>> {
        self.each(|c| c.pause())
    }
    fn unpause(&self) -> BoxFuture<Result<(), String>> {
        self.each(|c| c.unpause())
    }
    fn restart(&self) -> BoxFuture<Result<(), String>> {
        self.each(|c| c.restart())
    }
}

/// The `main` of a conformance target over `n` servers.
pub fn conformance_main(name: &'static str, n: usize) -> std::process::ExitCode {
    use leasehold_conformance::Suite;
    use leasehold_core::LockBackend;
    use leasehold_redlock::RedlockBackend;
    leasehold_conformance::run_main(move || async move {
        let (url, containers) = match std::env::var(URL_ENV) {
            Ok(url) => (url, Vec::new()),
            Err(_) => {
                let cluster = start(n).await?;
                (cluster.url, cluster.containers)
            }
        };
        let connect_to = url.clone();
        let suite = Suite::new(name, move || {
            let url = connect_to.clone();
            async move { Ok(Arc::new(RedlockBackend::connect(&url).await?) as Arc<dyn LockBackend>) }
        })
        .with_child_env(vec![(URL_ENV.to_owned(), url)]);
        Ok(if containers.is_empty() {
            suite
        } else {
            suite
                .with_store(Arc::new(AllServers(containers.clone())))
                .keep(containers)
        })
    })
}
