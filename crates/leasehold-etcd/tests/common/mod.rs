//! Test fixtures: an etcd container from the conformance fixtures (the
//! stand-in `quay.io/coreos/etcd:v3.4` or `LEASEHOLD_ETCD_IMAGE=name:tag`)
//! with its client port published on 127.0.0.1, or an existing store from
//! `LEASEHOLD_TEST_ETCD_URL`.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use leasehold_conformance::fixtures::{self, Container};
use leasehold_core::config::BackendConfig;
use leasehold_core::{Key, LockBackend, OwnerToken};
use leasehold_etcd::{EtcdBackend, EtcdConfig};

/// One store for a test.
pub struct Store {
    pub url: String,
    pub container: Option<Arc<Container>>,
}

impl Store {
    pub async fn start() -> Store {
        let spec = fixtures::etcd_spec();
        if let Ok(url) = std::env::var(spec.url_env()) {
            return Store {
                url,
                container: None,
            };
        }
        let container = fixtures::start(&spec)
            .await
            .expect("start the etcd container (is the stand-in image built?)");
        Store {
            url: format!("etcd://127.0.0.1:{}", container.port),
            container: Some(Arc::new(container)),
        }
    }

    /// A backend in its own namespace (so tests never see each other).
    pub async fn backend(&self, options: EtcdConfig) -> EtcdBackend {
        EtcdBackend::connect_with(at(&self.url, options))
            .await
            .expect("connect to etcd")
    }

    pub fn container(&self) -> &Container {
        self.container
            .as_deref()
            .expect("this test needs its own container (unset LEASEHOLD_TEST_ETCD_URL)")
    }
}

/// `options` (namespace, timeout, poll, drift) at the store `url` names.
pub fn at(url: &str, options: EtcdConfig) -> EtcdConfig {
    let mut config = EtcdConfig::from_url(url).expect("the store's URL parses");
    *config.shared_mut() = options.shared().clone();
    config
}

/// Options with a namespace unique to this test.
pub fn options() -> EtcdConfig {
    EtcdConfig::default()
        .namespace(format!(
            "lh-test/{}/{}/",
            fixtures::run_id(),
            OwnerToken::generate().short()
        ))
        .timeout(Duration::from_secs(2))
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
