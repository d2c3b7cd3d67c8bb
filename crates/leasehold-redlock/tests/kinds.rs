//! Reader–writer locks over real `redis:7.0` containers, and semaphores
//! refused: a reader's majority keeps a writer out with a server down, a
//! writer that stops waiting leaves no registration on any server.

mod support;

use std::time::Duration;

use leasehold_core::config::BackendConfig;
use leasehold_core::{Key, LockBackend, LockError, LockKind, OwnerToken, WaitPolicy};
use leasehold_redis::KeyLayout;
use leasehold_redlock::{RedlockBackend, RedlockConfig};

const TTL: Duration = Duration::from_secs(30);

async fn connect(url: &str, namespace: &str) -> RedlockBackend {
    let config = RedlockConfig::from_url(url)
        .unwrap_or_else(|e| panic!("{url}: {e}"))
        .namespace(namespace)
        .timeout(Duration::from_secs(1));
    RedlockBackend::connect_with(config)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

fn namespace() -> String {
    format!("kinds-{}", OwnerToken::generate().short())
}

/// A reader holding a majority keeps a writer out even with one of its
/// servers stopped (the remaining majority still counts it), and once it
/// leaves the writer gets the lock on the servers that are up, with a
/// higher token.
#[tokio::test]
async fn a_readers_majority_keeps_a_writer_out_with_a_server_down() {
    let Some(cluster) = support::cluster(3).await else {
        return;
    };
    let backend = connect(&cluster.url, &namespace()).await;
    let key = Key::new("rw").unwrap();
    let reader = backend
        .try_acquire_kind(&key, LockKind::Read, TTL)
        .await
        .unwrap();
    cluster.stop(0).await;
    let refused = backend.try_acquire_kind(&key, LockKind::Write, TTL).await;
    assert!(
        matches!(refused, Err(LockError::Contended { .. })),
        "a writer while a reader holds on the servers still up: {refused:?}"
    );
    backend.release(&reader).await.unwrap();
    let writer = backend
        .try_acquire_kind(&key, LockKind::Write, TTL)
        .await
        .unwrap();
    assert!(writer.fencing_token() > reader.fencing_token());
    backend.release(&writer).await.unwrap();
}

/// A writer whose wait runs out withdraws its registration from every
/// server at once (readers need not wait out its TTL), and a semaphore is
/// refused as unsupported, never granted.
#[tokio::test]
async fn an_abandoned_writer_leaves_no_registration_and_semaphores_are_refused() {
    let Some(cluster) = support::cluster(3).await else {
        return;
    };
    let ns = namespace();
    let backend = connect(&cluster.url, &ns).await;
    let key = Key::new("rw").unwrap();
    let reader = backend
        .try_acquire_kind(&key, LockKind::Read, TTL)
        .await
        .unwrap();
    let wait = WaitPolicy::new(Duration::from_millis(300))
        .with_delays(Duration::from_millis(5), Duration::from_millis(20));
    let waited = backend
        .acquire_kind(&key, LockKind::Write, TTL, &wait)
        .await;
    assert!(
        matches!(waited, Err(LockError::WaitTimedOut { .. })),
        "a writer behind a reader: {waited:?}"
    );
    let waiting = KeyLayout::new(&ns).unwrap().shared_key(&key, "rw:waiting");
    for i in 0..3 {
        let client = redis::Client::open(cluster.node_url(i)).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let left: i64 = redis::cmd("EXISTS")
                .arg(&waiting)
                .query_async(&mut conn)
                .await
                .unwrap();
            if left == 0 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "server {i} still has the abandoned writer's registration"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    backend.release(&reader).await.unwrap();
    let kind = LockKind::Permit { permits: 2 };
    let refused = backend.try_acquire_kind(&key, kind, TTL).await;
    assert!(
        matches!(refused, Err(LockError::Unsupported { .. })),
        "{kind}: {refused:?}"
    );
    let refused = backend.acquire_kind(&key, kind, TTL, &wait).await;
    assert!(
        matches!(refused, Err(LockError::Unsupported { .. })),
        "{kind} (waiting): {refused:?}"
    );
}
