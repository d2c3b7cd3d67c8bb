//! Store faults: a paused server, a restarted server.

mod common;

use std::time::Duration;

use leasehold_conformance::Store;
use leasehold_core::{Key, LockBackend, LockError};
use tokio::time::Instant;

const TTL: Duration = Duration::from_secs(4);

/// Retries `try_acquire` until it succeeds, at most `within`.
async fn acquire_eventually(
    backend: &leasehold_zookeeper::ZkBackend,
    key: &Key,
    within: Duration,
) -> leasehold_core::Lease {
    let deadline = Instant::now() + within;
    loop {
        match backend.try_acquire(key, TTL).await {
            Ok(lease) => return lease,
            Err(error) => {
                assert!(error.is_retryable(), "unexpected final error: {error}");
                assert!(
                    Instant::now() < deadline,
                    "no lock within {within:?}: {error}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_store_gives_unavailable_in_bounded_time_and_the_client_recovers() {
    let zk = common::start().await;
    let options = zk.options().timeout(Duration::from_secs(1));
    let backend = leasehold_zookeeper::ZkBackend::connect_with(options)
        .await
        .unwrap();
    let key = Key::new("paused").unwrap();
    let held = backend.try_acquire(&key, TTL).await.unwrap();

    zk.container.pause().await.unwrap();
    for (what, call) in [
        (
            "try_acquire",
            Box::pin(async {
                backend
                    .try_acquire(&Key::new("other").unwrap(), TTL)
                    .await
                    .map(drop)
            })
                as std::pin::Pin<
                    Box<dyn std::future::Future<Output = Result<(), LockError>> + Send>,
                >,
        ),
        (
            "extend",
            Box::pin(async { backend.extend(&held, TTL).await.map(drop) }),
        ),
        (
            "inspect",
            Box::pin(async { backend.inspect(&key).await.map(drop) }),
        ),
    ] {
        let started = Instant::now();
        let result = tokio::time::timeout(Duration::from_secs(15), call)
            .await
            .unwrap_or_else(|_| panic!("{what} hung on a paused store"));
        match result {
            Err(LockError::Unavailable { .. }) => {}
            other => panic!("{what} on a paused store: expected Unavailable, got {other:?}"),
        }
        println!(
            "{what} on a paused store answered Unavailable after {:?}",
            started.elapsed()
        );
    }
    zk.container.unpause().await.unwrap();

    // Whether the session survived the pause or not, the backend works again.
    let lease = acquire_eventually(
        &backend,
        &Key::new("after-pause").unwrap(),
        Duration::from_secs(30),
    )
    .await;
    backend.release(&lease).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_tokens_keep_increasing_across_a_store_restart() {
    let zk = common::start().await;
    let backend = zk.backend().await;
    let key = Key::new("restart").unwrap();
    let mut before = Vec::new();
    for _ in 0..3 {
        let lease = backend.try_acquire(&key, TTL).await.unwrap();
        before.push(lease.fencing_token());
        backend.release(&lease).await.unwrap();
    }

    zk.container.stop(Some(5)).await.unwrap();
    zk.container.start().await.unwrap();
    common::wait_serving(zk.port, Duration::from_secs(90)).await;

    let lease = acquire_eventually(&backend, &key, Duration::from_secs(60)).await;
    let last = *before.last().unwrap();
    assert!(
        lease.fencing_token() > last,
        "token after restart {} must exceed {last}",
        lease.fencing_token()
    );
    backend.release(&lease).await.unwrap();
}
