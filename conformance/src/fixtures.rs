//! Stores for the suite: a container started with testcontainers from the
//! store's image (the official name by default, which the stand-in images of
//! `conformance/images/build.sh` provide when no registry is reachable), or an
//! existing store named by `LEASEHOLD_TEST_<STORE>_URL`.
//!
//! Every container (and every [`Network`]) carries the label
//! `leasehold.test=<run id>` so the test script can remove leftovers,
//! publishes its port on a fixed host port of 127.0.0.1 (so a restart keeps
//! the address), and is removed when dropped.
//!
//! A backend's own integration tests use the same pieces: [`start`] a spec
//! (with extra [`ContainerSpec::args`], a fixed [`ContainerSpec::host_port`] or
//! a place on a [`Network`] for a multi-node cluster), then fault it with
//! [`Store`]'s pause/unpause/restart or [`Container::stop`] and
//! [`Container::start`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use testcontainers::core::{ContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};
use tokio::time::Instant;

use crate::{BoxFuture, Skipped, Store};

/// The label every test container carries; its value is the run id.
pub const LABEL: &str = "leasehold.test";

/// This process's run id (the label value of its containers):
/// `<pid>-<random>`. `scripts/cleanup-containers.sh` removes a labelled
/// container only when the process `<pid>` is gone, so concurrent runs
/// (tests next to a benchmark) keep their stores.
pub fn run_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| format!("{}-{}", std::process::id(), rand::random::<u32>()))
}

/// What a store's container looks like.
#[derive(Clone, Debug)]
pub struct ContainerSpec {
    /// The store's name in env variables: `LEASEHOLD_TEST_<STORE>_URL`,
    /// `LEASEHOLD_<STORE>_IMAGE` (e.g. `REDIS`).
    pub store: &'static str,
    /// Default image name.
    pub image: &'static str,
    /// Default tag.
    pub tag: &'static str,
    /// The port the store listens on inside the container.
    pub port: u16,
    /// The command (empty: the image's default).
    pub cmd: Vec<String>,
    /// Environment.
    pub env: Vec<(String, String)>,
    /// What means ready: a log line on the right stream. (A published port
    /// is no readiness signal: Docker's proxy accepts connections on it
    /// before the store listens.)
    pub ready: Option<WaitFor>,
    /// The host port on 127.0.0.1 (`None`: a free one, chosen at start).
    pub host_port: Option<u16>,
    /// The Docker network to join and the container's name on it (its host
    /// name for the other members).
    pub network: Option<(String, String)>,
}

impl ContainerSpec {
    /// A spec with no command, env or ready line.
    pub fn new(store: &'static str, image: &'static str, tag: &'static str, port: u16) -> Self {
        ContainerSpec {
            store,
            image,
            tag,
            port,
            cmd: Vec::new(),
            env: Vec::new(),
            ready: None,
            host_port: None,
            network: None,
        }
    }

    /// The image to run when `LEASEHOLD_<STORE>_IMAGE` is not set: the
    /// stand-in `leasehold-standin/<name>` that `conformance/images/build.sh`
    /// makes, when this machine has it, else the official name.
    pub fn default_image(&self) -> String {
        let name = self.image.rsplit('/').next().unwrap_or(self.image);
        let standin = format!("leasehold-standin/{name}");
        let present = std::process::Command::new("docker")
            .args(["image", "inspect", "--format", "{{.Id}}"])
            .arg(format!("{standin}:{}", self.tag))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if present {
            standin
        } else {
            self.image.to_owned()
        }
    }

    /// Sets the command.
    pub fn cmd(mut self, cmd: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.cmd = cmd.into_iter().map(Into::into).collect();
        self
    }

    /// Appends arguments to the command (e.g. `redis-server` flags).
    pub fn args(mut self, args: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.cmd.extend(args.into_iter().map(Into::into));
        self
    }

    /// Publishes the store's port on 127.0.0.1:`port` (for a store that must
    /// know its own address before it starts, e.g. to advertise it).
    pub fn host_port(mut self, port: u16) -> Self {
        self.host_port = Some(port);
        self
    }

    /// Starts the container on `network` under the name `name`, which the
    /// other containers on that network reach it by.
    pub fn on_network(mut self, network: &Network, name: impl Into<String>) -> Self {
        self.network = Some((network.name().to_owned(), name.into()));
        self
    }

    /// Adds an environment variable.
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    /// Sets the readiness condition.
    pub fn ready(mut self, ready: WaitFor) -> Self {
        self.ready = Some(ready);
        self
    }

    /// The external store's URL env name.
    pub fn url_env(&self) -> String {
        format!("LEASEHOLD_TEST_{}_URL", self.store)
    }
}

/// Where the store under test is.
pub enum Provisioned {
    /// An existing store from `LEASEHOLD_TEST_<STORE>_URL`.
    External(String),
    /// A container we started; `port` is its port on 127.0.0.1.
    Container(Arc<Container>),
}

impl Provisioned {
    /// The store's URL: the external one as given, or `make(port)` for a
    /// container published on 127.0.0.1:`port`.
    pub fn url(&self, make: impl FnOnce(u16) -> String) -> String {
        match self {
            Provisioned::External(url) => url.clone(),
            Provisioned::Container(container) => make(container.port),
        }
    }
}

/// A running store container.
pub struct Container {
    inner: Arc<ContainerAsync<GenericImage>>,
    /// The host port on 127.0.0.1.
    pub port: u16,
}

impl Container {
    /// The container id.
    pub fn id(&self) -> &str {
        self.inner.id()
    }

    /// `docker stop`: SIGTERM, then SIGKILL after `grace_seconds` (`None`:
    /// Docker's default of 10 s; `Some(0)`: killed at once). The container
    /// stays stopped, at the same address, until [`Container::start`].
    pub async fn stop(&self, grace_seconds: Option<i32>) -> Result<(), String> {
        self.inner
            .stop_with_timeout(grace_seconds)
            .await
            .map_err(|e| format!("docker stop failed: {e}"))
    }

    /// `docker start` of a stopped container; returns once its port accepts
    /// connections again (the store may need a moment more: callers retry).
    pub async fn start(&self) -> Result<(), String> {
        self.inner
            .start()
            .await
            .map_err(|e| format!("docker start failed: {e}"))?;
        wait_for_port(self.port, Duration::from_secs(60)).await
    }
}

/// Waits until 127.0.0.1:`port` accepts TCP connections. Only a sign that
/// the container runs: Docker's proxy accepts before the store listens, so
/// callers still retry their first store call.
pub async fn wait_for_port(port: u16, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "nothing listened on 127.0.0.1:{port} within {within:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls `check` (a store read, not a sleep) every 20 ms until it is true;
/// panics naming `what` if it is still false after `within`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "{what}: not true within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Store for Container {
    fn pause(&self) -> BoxFuture<Result<(), String>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            inner
                .pause()
                .await
                .map_err(|e| format!("docker pause failed: {e}"))
        })
    }
    fn unpause(&self) -> BoxFuture<Result<(), String>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            inner
                .unpause()
                .await
                .map_err(|e| format!("docker unpause failed: {e}"))
        })
    }
    fn restart(&self) -> BoxFuture<Result<(), String>> {
        let container = Container {
            inner: self.inner.clone(),
            port: self.port,
        };
        Box::pin(async move {
            container.stop(Some(5)).await?;
            container.start().await
        })
    }
}

/// A Docker network for a multi-node store (a cluster, an ensemble), labelled
/// `leasehold.test=<run id>`. Dropping it removes the run's containers still
/// on it, then the network.
pub struct Network {
    name: String,
}

impl Network {
    /// Creates a network named `leasehold-<purpose>-<run id>-<n>`.
    pub fn create(purpose: &str) -> Result<Network, String> {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let n = COUNT.fetch_add(1, Ordering::Relaxed);
        let name = format!("leasehold-{purpose}-{}-{n}", run_id());
        let label = format!("{LABEL}={}", run_id());
        docker(&["network", "create", "--label", &label, &name])?;
        Ok(Network { name })
    }

    /// The network's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        // A network with containers on it cannot be removed, and a dropped
        // container is removed in the background: remove members first.
        let members = format!("network={}", self.name);
        remove_run_objects(LIST_CONTAINERS, Some(&members), REMOVE_CONTAINERS);
        let _ = docker(&["network", "rm", &self.name]);
    }
}

/// Runs `docker args..`; its stdout, or why it failed.
fn docker(args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new("docker")
        .args(args)
        .output()
        .map_err(|e| format!("docker {args:?} did not run: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "docker {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Lists this run's objects with `list` (e.g. `docker ps -aq`), narrowed by
/// `filter`, and removes them with `remove` (e.g. `docker rm -f -v`).
fn remove_run_objects(list: &[&str], filter: Option<&str>, remove: &[&str]) {
    let label = format!("label={LABEL}={}", run_id());
    let mut args = list.to_vec();
    args.extend(["--filter", &label]);
    if let Some(filter) = filter {
        args.extend(["--filter", filter]);
    }
    let Ok(out) = docker(&args) else {
        return;
    };
    let ids: Vec<&str> = out.split_whitespace().collect();
    if !ids.is_empty() {
        let _ = docker(&[remove, &ids[..]].concat());
    }
}

const LIST_CONTAINERS: &[&str] = &["ps", "-aq"];
const REMOVE_CONTAINERS: &[&str] = &["rm", "-f", "-v"];

/// Rewrites every published port to bind 127.0.0.1 only (testcontainers
/// binds all interfaces by default): test stores are reachable from this
/// machine alone.
pub fn publish_on_loopback_only(config: &mut testcontainers::bollard::models::HostConfig) {
    if let Some(bindings) = config.port_bindings.as_mut() {
        for binding in bindings.values_mut().flatten().flatten() {
            binding.host_ip = Some("127.0.0.1".to_owned());
        }
    }
}

/// Removes every container and network this process started (by its run
/// label). Run at the end of a suite: dropping a container only queues its
/// removal, which a shutting-down runtime may never finish.
pub fn remove_run_containers() {
    remove_run_objects(LIST_CONTAINERS, None, REMOVE_CONTAINERS);
    remove_run_objects(&["network", "ls", "-q"], None, &["network", "rm"]);
}

/// A free port on 127.0.0.1 (probed by binding it; the container takes it
/// right after). Picked at random below the kernel's ephemeral range
/// (32768 and up), where outgoing connections take their local ports, so
/// nothing else is likely to grab it between the probe and Docker's bind;
/// [`start`] still retries with another port if something did.
pub fn free_port() -> std::io::Result<u16> {
    use rand::Rng;
    let mut rng = rand::rng();
    for _ in 0..64 {
        let port = rng.random_range(20_000..32_000);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?
        .local_addr()?
        .port())
}

/// Whether a Docker engine answers.
pub fn docker_available() -> bool {
    std::process::Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The external URL if `LEASEHOLD_TEST_<STORE>_URL` is set, else a container
/// from `spec` (image overridable by `LEASEHOLD_<STORE>_IMAGE=name:tag`); with
/// neither Docker nor a URL, `Skipped`.
pub async fn provision(spec: &ContainerSpec) -> Result<Provisioned, Skipped> {
    if let Ok(url) = std::env::var(spec.url_env()) {
        return Ok(Provisioned::External(url));
    }
    if !docker_available() {
        return Err(Skipped(format!(
            "no Docker engine answers and {} is not set: the {} suite did not run",
            spec.url_env(),
            spec.store
        )));
    }
    start(spec)
        .await
        .map(|c| Provisioned::Container(Arc::new(c)))
        .map_err(Skipped)
}

/// Starts `spec`'s container and waits until its port accepts connections.
pub async fn start(spec: &ContainerSpec) -> Result<Container, String> {
    let (image, tag) = match std::env::var(format!("LEASEHOLD_{}_IMAGE", spec.store)) {
        Ok(reference) => match reference.rsplit_once(':') {
            Some((image, tag)) if !tag.contains('/') => (image.to_owned(), tag.to_owned()),
            _ => (reference, "latest".to_owned()),
        },
        Err(_) => (spec.default_image(), spec.tag.to_owned()),
    };
    let mut image = GenericImage::new(image, tag);
    if let Some(ready) = spec.ready.clone() {
        image = image.with_wait_for(ready);
    }
    let mut attempts = 0;
    loop {
        attempts += 1;
        let port = match spec.host_port {
            Some(port) => port,
            None => free_port().map_err(|e| format!("no free port: {e}"))?,
        };
        let mut request = image
            .clone()
            .with_label(LABEL, run_id())
            .with_mapped_port(port, ContainerPort::Tcp(spec.port))
            .with_host_config_modifier(publish_on_loopback_only)
            .with_startup_timeout(Duration::from_secs(120));
        if let Some((network, name)) = &spec.network {
            request = request
                .with_network(network.clone())
                .with_container_name(name.clone());
        }
        for (name, value) in &spec.env {
            request = request.with_env_var(name, value);
        }
        if !spec.cmd.is_empty() {
            request = request.with_cmd(spec.cmd.clone());
        }
        match request.start().await {
            Ok(inner) => {
                return Ok(Container {
                    inner: Arc::new(inner),
                    port,
                });
            }
            // Another process took the probed port before Docker bound it
            // (a port the spec fixed cannot move: no retry then).
            Err(e) if attempts < 5 && spec.host_port.is_none() && port_taken(&e.to_string()) => {
                if let Some((_, name)) = &spec.network {
                    // The created container keeps its name: free it.
                    let _ = docker(&["rm", "-f", "-v", name]);
                }
                continue;
            }
            Err(e) => {
                return Err(format!(
                    "could not start the {} container (build the stand-in images with \
                     conformance/images/build.sh): {e}",
                    spec.store
                ));
            }
        }
    }
}

/// Whether Docker refused a container because its host port was taken
/// (by another container's mapping, or by a process listening on it).
fn port_taken(error: &str) -> bool {
    error.contains("port is already allocated") || error.contains("address already in use")
}

/// Redis 7 (stand-in `redis:7.0`); with `persistent`, AOF with an fsync per
/// write, so fencing counters survive a restart.
pub fn redis_spec(persistent: bool) -> ContainerSpec {
    let spec = ContainerSpec::new("REDIS", "redis", "7.0", 6379)
        .ready(WaitFor::message_on_stdout("Ready to accept connections"));
    if persistent {
        spec.cmd([
            "redis-server",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
        ])
    } else {
        spec.cmd(["redis-server", "--save", "", "--appendonly", "no"])
    }
}

/// The password of the Postgres fixture's `postgres` user.
pub const POSTGRES_PASSWORD: &str = "leasehold";

/// PostgreSQL 15 (stand-in `postgres:15`), user `postgres` with
/// [`POSTGRES_PASSWORD`]. Ready when the final server (not the init one, which
/// logs the same line on stdout) logs on stderr.
pub fn postgres_spec() -> ContainerSpec {
    ContainerSpec::new("POSTGRES", "postgres", "15", 5432)
        .env("POSTGRES_PASSWORD", POSTGRES_PASSWORD)
        .ready(WaitFor::message_on_stderr(
            "database system is ready to accept connections",
        ))
}

/// etcd 3.4 (stand-in `quay.io/coreos/etcd:v3.4`), one node.
pub fn etcd_spec() -> ContainerSpec {
    ContainerSpec::new("ETCD", "quay.io/coreos/etcd", "v3.4", 2379)
        .cmd([
            "etcd",
            "--name",
            "n1",
            "--data-dir",
            "/etcd-data",
            "--listen-client-urls",
            "http://0.0.0.0:2379",
            "--advertise-client-urls",
            "http://127.0.0.1:2379",
        ])
        .ready(WaitFor::message_on_stderr("ready to serve client requests"))
}

/// ZooKeeper 3.8 (stand-in `zookeeper:3.8`), standalone, sessions from 1 s.
pub fn zookeeper_spec() -> ContainerSpec {
    ContainerSpec::new("ZOOKEEPER", "zookeeper", "3.8", 2181)
        .env("ZOO_MIN_SESSION_TIMEOUT", "1000")
        .ready(WaitFor::message_on_either_std("binding to port"))
}

/// DynamoDB (stand-in `amazon/dynamodb-local:latest`: the moto server).
pub fn dynamodb_spec() -> ContainerSpec {
    ContainerSpec::new("DYNAMODB", "amazon/dynamodb-local", "latest", 8000).ready(
        WaitFor::message_on_either_std("Initializing DynamoDB Local"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_host_port_is_recognised_in_dockers_answer() {
        // What Docker answered in a CI run when another run's container had
        // taken the probed port.
        let answer = "failed to start a container: Docker responded with status code 500: \
            driver failed programming external connectivity on endpoint angry_leakey (e5f2): \
            Bind for 127.0.0.1:42187 failed: port is already allocated";
        assert!(port_taken(answer));
        assert!(port_taken(
            "Error starting userland proxy: listen tcp4 127.0.0.1:25000: bind: address already in use"
        ));
        assert!(!port_taken("No such image: redis:7.0"));
    }

    #[test]
    fn free_ports_sit_below_the_ephemeral_range() {
        for _ in 0..20 {
            let port = free_port().unwrap();
            assert!((20_000..32_000).contains(&port), "{port}");
        }
    }
}
