//! The replica rule on a server without replicas: `min_replicas=1` makes
//! every grant wait for a replica that never confirms, so the grant is
//! undone (the key stays free) and the caller gets `Unavailable`.

mod support;

use std::time::Duration;

use leasehold_core::config::BackendConfig;
use leasehold_core::{Key, LockBackend, LockError};
use leasehold_redis::{RedisBackend, RedisConfig, ReplicaRule};

#[tokio::test]
async fn a_grant_no_replica_confirms_is_undone_and_unavailable() {
    let Some(server) = support::server(&[], false).await else {
        return;
    };
    let url = format!("{}?min_replicas=1&replica_timeout=100ms", server.url);
    let config = RedisConfig::from_url(&url).unwrap();
    let backend = RedisBackend::connect_with(config).await.expect("connects");
    assert_eq!(
        backend.node().replica_rule(),
        Some(ReplicaRule {
            min_replicas: 1,
            timeout: Duration::from_millis(100)
        })
    );
    let key = Key::new("replicas:none").unwrap();
    match backend.try_acquire(&key, Duration::from_secs(5)).await {
        Err(LockError::Unavailable { source, .. }) => {
            let why = source.to_string();
            assert!(why.contains("0 of the required 1 replicas"), "{why}");
        }
        other => panic!("expected Unavailable for an unconfirmed grant, got {other:?}"),
    }
    assert_eq!(
        backend.inspect(&key).await.unwrap(),
        None,
        "the unconfirmed grant was undone"
    );

    // Without the rule the same server grants at once.
    let plain = RedisBackend::connect(&server.url).await.unwrap();
    let lease = plain
        .try_acquire(&key, Duration::from_secs(5))
        .await
        .unwrap();
    // A renewal through the rule is not counted either.
    match backend.extend(&lease, Duration::from_secs(5)).await {
        Err(LockError::Unavailable { .. }) => {}
        other => panic!("expected Unavailable for an unconfirmed renewal, got {other:?}"),
    }
    plain.release(&lease).await.unwrap();
}

#[test]
fn replica_options_are_checked() {
    for (query, hint) in [
        ("min_replicas=0", "min_replicas"),
        ("min_replicas=two", "min_replicas"),
        ("replica_timeout=1s", "min_replicas"),
        ("min_replicas=1&replica_timeout=5", "replica_timeout"),
    ] {
        let url = format!("redis://127.0.0.1:1?{query}");
        match RedisConfig::from_url(&url) {
            Err(LockError::Config(message)) => assert!(message.contains(hint), "{url}: {message}"),
            other => panic!("{url}: expected a Config error, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_replica_timeout_not_below_the_call_timeout_is_refused() {
    let config =
        RedisConfig::from_url("redis://127.0.0.1:1?min_replicas=1&replica_timeout=2s&timeout=1s")
            .unwrap();
    match RedisBackend::connect_with(config).await {
        Err(LockError::Config(message)) => {
            assert!(message.contains("replica_timeout"), "{message}")
        }
        other => panic!("expected a Config error, got {other:?}"),
    }
}
