//! Listing and force release over real `redis:7.0` containers with servers
//! down: each held key is listed once, a server down costs nothing while a
//! majority answers, and a force release lifts the counters of the servers
//! that lag behind the evicted token.

mod support;

use std::sync::Arc;
use std::time::Duration;

use futures_util::TryStreamExt;
use leasehold_core::config::BackendConfig;
use leasehold_core::{Admin, Key, ListQuery, LockBackend, LockError, OwnerToken};
use leasehold_redis::KeyLayout;
use leasehold_redlock::{RedlockBackend, RedlockConfig};

const TTL: Duration = Duration::from_secs(30);

async fn connect(url: &str, namespace: &str) -> RedlockBackend {
    let config = RedlockConfig::from_url(url)
        .unwrap_or_else(|e| panic!("{url}: {e}"))
        .namespace(namespace)
        .holder("redlock-admin")
        .timeout(Duration::from_secs(1));
    RedlockBackend::connect_with(config)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

fn namespace() -> String {
    format!("admin-{}", OwnerToken::generate().short())
}

fn key(name: &str) -> Key {
    Key::new(name).unwrap()
}

/// Every held key under `prefix`, a page of one at a time, in listing order.
async fn listed(backend: &RedlockBackend, prefix: &str) -> Result<Vec<String>, LockError> {
    let admin = Admin::new(Arc::new(backend.clone()));
    let held: Vec<_> = admin
        .list(ListQuery::new(prefix).limit(1))
        .try_collect()
        .await?;
    for lock in &held {
        assert_eq!(lock.info.metadata.as_deref(), Some("redlock-admin"));
    }
    let mut keys: Vec<String> = held.into_iter().map(|lock| lock.key).collect();
    keys.sort();
    Ok(keys)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_held_key_is_listed_once_while_a_majority_of_servers_answers() {
    let Some(cluster) = support::cluster(3).await else {
        return;
    };
    let backend = connect(&cluster.url, &namespace()).await;
    let names = ["p/a", "p/b", "p/c"];
    for name in names {
        backend.try_acquire(&key(name), TTL).await.unwrap();
    }
    backend.try_acquire(&key("q/a"), TTL).await.unwrap();
    assert_eq!(
        listed(&backend, "p/").await.unwrap(),
        names,
        "all servers up"
    );
    cluster.stop(0).await;
    assert_eq!(
        listed(&backend, "p/").await.unwrap(),
        names,
        "one server of three down"
    );
    cluster.stop(1).await;
    let error = listed(&backend, "p/").await.unwrap_err();
    assert!(
        matches!(error, LockError::Unavailable { .. }),
        "two servers of three down: {error:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_force_release_lifts_lagging_counters_and_needs_a_majority() {
    let Some(cluster) = support::cluster(3).await else {
        return;
    };
    let ns = namespace();
    let k = key("forced");
    // Server 0 is down while the lease is granted: its counter lags.
    cluster.stop(0).await;
    let backend = connect(&cluster.url, &ns).await;
    let lease = backend.try_acquire(&k, TTL).await.unwrap();
    cluster.start(0).await;
    support::answers(&backend, 0, &k).await;
    let evicted = backend
        .force_release(&k, "test: stuck")
        .await
        .unwrap()
        .expect("the holder was evicted");
    assert_eq!(evicted.fencing_token, Some(lease.fencing_token()));
    let client = redis::Client::open(cluster.node_url(0)).unwrap();
    let counter: Option<u64> = redis::cmd("GET")
        .arg(KeyLayout::new(&ns).unwrap().fence_key(&k))
        .query_async(&mut client.get_multiplexed_async_connection().await.unwrap())
        .await
        .unwrap();
    assert!(
        counter >= Some(lease.fencing_token().get()),
        "the lagging server's counter stayed at {counter:?}, below {}",
        lease.fencing_token()
    );
    assert!(backend.extend(&lease, TTL).await.is_err());
    assert!(backend.inspect(&k).await.unwrap().is_none());

    let again = backend.try_acquire(&k, TTL).await.unwrap();
    assert!(again.fencing_token() > lease.fencing_token());
    cluster.stop(1).await;
    cluster.stop(2).await;
    let error = backend
        .force_release(&k, "test: too few")
        .await
        .unwrap_err();
    assert!(
        matches!(error, LockError::Unavailable { .. }),
        "one server of three answered: {error:?}"
    );
}
