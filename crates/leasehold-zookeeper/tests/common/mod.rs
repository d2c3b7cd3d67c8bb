//! Fixtures: `zookeeper:3.8` containers (the stand-in image from
//! conformance/images/build.sh), client ports published on 127.0.0.1 only,
//! labelled `leasehold.test=<run id>`, removed when dropped.
#![allow(dead_code)]

use std::sync::OnceLock;
use std::time::Duration;

use leasehold_zookeeper::{ZkBackend, ZkOptions};
use testcontainers::bollard::models::PortBinding;
use testcontainers::core::ContainerPort;
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

pub const SESSION: Duration = Duration::from_secs(4);

pub fn run_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| format!("zk-{}", leasehold_core::OwnerToken::generate().short()))
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One ZooKeeper server in a container.
pub struct Zk {
    pub container: ContainerAsync<GenericImage>,
    pub port: u16,
}

impl Zk {
    pub fn hosts(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn options(&self) -> ZkOptions {
        test_options(&self.hosts())
    }

    pub async fn backend(&self) -> ZkBackend {
        ZkBackend::connect(self.options())
            .await
            .expect("connect to zookeeper")
    }
}

pub fn test_options(hosts: &str) -> ZkOptions {
    ZkOptions::new(hosts)
        .with_namespace(&format!("/leasehold-test/{}", run_id()))
        .unwrap()
        .with_session_timeout(SESSION)
        .with_operation_timeout(Duration::from_secs(2))
}

/// A container request for one server; `port` is published on 127.0.0.1.
pub fn request(
    port: u16,
    env: &[(&str, String)],
) -> testcontainers::ContainerRequest<GenericImage> {
    let image =
        std::env::var("LEASEHOLD_ZOOKEEPER_IMAGE").unwrap_or_else(|_| "zookeeper:3.8".into());
    let (name, tag) = image.rsplit_once(':').unwrap_or((&image, "latest"));
    let mut request = GenericImage::new(name, tag)
        .with_label("leasehold.test", run_id())
        .with_mapped_port(port, ContainerPort::Tcp(2181))
        .with_host_config_modifier(move |config| {
            // Publish on loopback only.
            if let Some(bindings) = config.port_bindings.as_mut() {
                for binding in bindings.values_mut().flatten().flatten() {
                    *binding = PortBinding {
                        host_ip: Some("127.0.0.1".into()),
                        host_port: binding.host_port.clone(),
                    };
                }
            }
        })
        .with_env_var("ZOO_TICK_TIME", "500")
        .with_env_var("ZOO_ADMINSERVER_ENABLED", "false")
        .with_startup_timeout(Duration::from_secs(120));
    for (key, value) in env {
        request = request.with_env_var(*key, value.clone());
    }
    request
}

/// Starts one standalone server and waits until it serves.
pub async fn start() -> Zk {
    let port = free_port();
    let container = request(port, &[]).start().await.expect(
        "start the zookeeper:3.8 container (build it with conformance/images/build.sh zookeeper)",
    );
    wait_serving(port, Duration::from_secs(90)).await;
    Zk { container, port }
}

/// Sends a four-letter word to 127.0.0.1:`port`; the answer or "".
pub async fn four_letter(port: u16, word: &str) -> String {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        stream.write_all(word.as_bytes()).await.ok()?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.ok()?;
        Some(answer)
    };
    tokio::time::timeout(Duration::from_secs(3), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// Waits until the server on `port` says it serves (`srvr` names a mode).
pub async fn wait_serving(port: u16, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let answer = four_letter(port, "srvr").await;
        if let Some(mode) = answer.lines().find_map(|l| l.strip_prefix("Mode: ")) {
            return mode.trim().to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "zookeeper on 127.0.0.1:{port} did not serve within {within:?}; last answer {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls `check` (a store read, not a sleep) until it is true, at most `within`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The number of children of `path` (0 when it does not exist).
pub async fn children(backend: &ZkBackend, path: &str) -> usize {
    let client = backend.client().await.unwrap();
    client
        .list_children(path)
        .await
        .map(|c| c.len())
        .unwrap_or(0)
}

/// The server's count of registered watches (`mntr`'s `zk_watch_count`).
pub async fn watch_count(port: u16) -> u64 {
    four_letter(port, "mntr")
        .await
        .lines()
        .find_map(|l| l.strip_prefix("zk_watch_count"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}
