//! Test fixtures: an etcd container (the stand-in `quay.io/coreos/etcd:v3.4`
//! or `LEASEHOLD_TEST_ETCD_IMAGE=name:tag`) with its client port published on
//! 127.0.0.1, or an existing store from `LEASEHOLD_TEST_ETCD_URL`.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use leasehold_core::{Key, LockBackend};
use leasehold_etcd::{EtcdBackend, EtcdOptions};
use testcontainers::bollard::models::PortBinding;
use testcontainers::core::WaitFor;
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, ContainerRequest, GenericImage, ImageExt};

pub fn run_id() -> String {
    format!("{}-{:08x}", std::process::id(), rand_u32())
}

fn rand_u32() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    nanos ^ (std::process::id() << 16)
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn image() -> (String, String) {
    let spec = std::env::var("LEASEHOLD_TEST_ETCD_IMAGE")
        .unwrap_or_else(|_| "quay.io/coreos/etcd:v3.4".to_owned());
    let (name, tag) = spec.rsplit_once(':').unwrap_or((&spec, "latest"));
    (name.to_owned(), tag.to_owned())
}

/// An etcd node whose client port 2379 is published on 127.0.0.1:`host_port`;
/// `args` follow `etcd --listen-client-urls .. --advertise-client-urls ..`.
pub fn etcd_node(host_port: u16, args: &[String]) -> ContainerRequest<GenericImage> {
    let (name, tag) = image();
    let mut cmd = vec![
        "etcd".to_owned(),
        "--listen-client-urls".to_owned(),
        "http://0.0.0.0:2379".to_owned(),
        "--advertise-client-urls".to_owned(),
        format!("http://127.0.0.1:{host_port}"),
    ];
    cmd.extend(args.iter().cloned());
    GenericImage::new(name, tag)
        .with_wait_for(WaitFor::message_on_stderr("ready to serve client requests"))
        .with_cmd(cmd)
        .with_label("leasehold.test", "etcd")
        .with_startup_timeout(Duration::from_secs(60))
        .with_host_config_modifier(move |config| {
            let binding = PortBinding {
                host_ip: Some("127.0.0.1".to_owned()),
                host_port: Some(host_port.to_string()),
            };
            config.port_bindings = Some([("2379/tcp".to_owned(), Some(vec![binding]))].into());
        })
}

/// One store for a test.
pub struct Store {
    pub url: String,
    pub container: Option<ContainerAsync<GenericImage>>,
}

impl Store {
    pub async fn start() -> Store {
        if let Ok(url) = std::env::var("LEASEHOLD_TEST_ETCD_URL") {
            return Store {
                url,
                container: None,
            };
        }
        let port = free_port();
        let container = etcd_node(port, &[])
            .start()
            .await
            .expect("start the etcd container (is the stand-in image built?)");
        Store {
            url: format!("etcd://127.0.0.1:{port}"),
            container: Some(container),
        }
    }

    /// A backend in its own namespace (so tests never see each other).
    pub async fn backend(&self, options: EtcdOptions) -> EtcdBackend {
        EtcdBackend::connect_with(&self.url, options)
            .await
            .expect("connect to etcd")
    }

    pub fn container(&self) -> &ContainerAsync<GenericImage> {
        self.container
            .as_ref()
            .expect("this test needs its own container (unset LEASEHOLD_TEST_ETCD_URL)")
    }
}

/// Options with a namespace unique to this test.
pub fn options() -> EtcdOptions {
    EtcdOptions::new()
        .namespace(format!("lh-test/{}/", run_id()))
        .operation_timeout(Duration::from_secs(2))
}

pub fn key(name: &str) -> Key {
    Key::new(name).unwrap()
}

/// How many queue entries the lock `key` has (raw etcd read).
pub async fn queue_len(backend: &EtcdBackend, key: &str) -> i64 {
    let prefix = backend.lock_prefix(&Key::new(key).unwrap());
    let mut kv = backend.client().kv_client();
    kv.get(
        prefix,
        Some(
            etcd_client::GetOptions::new()
                .with_prefix()
                .with_count_only(),
        ),
    )
    .await
    .expect("count the queue")
    .count()
}

/// Polls `check` every 10 ms until it holds, at most `within`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = Instant::now() + within;
    while !check().await {
        assert!(
            Instant::now() < until,
            "gave up after {within:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Median time of a raw range get (one round trip).
pub async fn raw_round_trip(backend: &EtcdBackend, samples: usize) -> Duration {
    let mut kv = backend.client().kv_client();
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples {
        let started = Instant::now();
        kv.get("lh-test/rtt-probe", None).await.expect("range get");
        times.push(started.elapsed());
    }
    times.sort();
    times[times.len() / 2]
}

pub fn assert_backend_is_dyn(_: &dyn LockBackend) {}
