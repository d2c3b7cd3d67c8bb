//! Fixtures: `zookeeper:3.8` containers from the conformance fixtures (the
//! stand-in image from conformance/images/build.sh, or
//! `LEASEHOLD_ZOOKEEPER_IMAGE`), client ports published on 127.0.0.1 only,
//! labelled `leasehold.test=<run id>`, removed when dropped.
#![allow(dead_code)]

use std::time::Duration;

use leasehold_conformance::fixtures::{self, Container, ContainerSpec};
use leasehold_core::Key;
use leasehold_zookeeper::{ZkBackend, ZkConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

pub const SESSION: Duration = Duration::from_secs(4);

/// A test key (the names used are valid).
pub fn key(name: &str) -> Key {
    Key::new(name).unwrap()
}

/// One ZooKeeper server in a container.
pub struct Zk {
    pub container: Container,
    pub port: u16,
}

impl Zk {
    pub fn hosts(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn options(&self) -> ZkConfig {
        test_options(&self.hosts())
    }

    pub async fn backend(&self) -> ZkBackend {
        ZkBackend::connect_with(self.options())
            .await
            .expect("connect to zookeeper")
    }
}

pub fn test_options(hosts: &str) -> ZkConfig {
    ZkConfig::new(hosts)
        .namespace(format!("/leasehold-test/{}", fixtures::run_id()))
        .session_timeout(SESSION)
        .timeout(Duration::from_secs(2))
}

/// One server: ticks of 500 ms, no admin server; more env (e.g. for an
/// ensemble) may follow.
pub fn spec() -> ContainerSpec {
    fixtures::zookeeper_spec()
        .env("ZOO_TICK_TIME", "500")
        .env("ZOO_ADMINSERVER_ENABLED", "false")
}

/// Starts one standalone server and waits until it serves.
pub async fn start() -> Zk {
    let container = fixtures::start(&spec()).await.expect(
        "start the zookeeper:3.8 container (build it with conformance/images/build.sh zookeeper)",
    );
    let port = container.port;
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
