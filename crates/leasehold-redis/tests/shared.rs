//! Reader–writer locks and semaphores on a real Redis server (a
//! `redis:7.0` container, or `LEASEHOLD_TEST_REDIS_URL`): what the
//! conformance suite cannot see from outside the store.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use leasehold_core::{Key, LockBackend, LockError, LockKind, OwnerToken, WaitPolicy};
use leasehold_redis::RedisBackend;
use support::{config, evalsha_calls};
use tokio::time::Instant;

const TTL: Duration = Duration::from_secs(30);

async fn backend(url: &str, namespace: &str) -> RedisBackend {
    RedisBackend::connect_with(config(url).namespace(namespace))
        .await
        .expect("connect to the test server")
}

fn namespace(test: &str) -> String {
    format!("t-{test}-{}", OwnerToken::generate().short())
}

fn key(name: &str) -> Key {
    Key::new(name).expect("legal key")
}

/// Every Redis name of `namespace` now.
async fn names(backend: &RedisBackend, namespace: &str) -> BTreeSet<String> {
    let names: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{{{namespace}:*"))
        .query_async(&mut backend.node().connection())
        .await
        .expect("KEYS");
    names.into_iter().collect()
}

/// Releases, expiries and abandoned waits leave nothing but the two fencing
/// counters: the sorted sets of readers, waiting writers and permits expire
/// with their last member, so no state (and no memory) leaks.
#[tokio::test]
async fn grants_leave_only_their_fencing_counters_behind() {
    let Some(server) = support::server(&[], false).await else {
        return;
    };
    let ns = namespace("leftovers");
    let backend = backend(&server.url, &ns).await;
    let k = key("k");
    let permit = LockKind::Permit { permits: 2 };
    let readers = [
        backend
            .try_acquire_kind(&k, LockKind::Read, TTL)
            .await
            .unwrap(),
        backend
            .try_acquire_kind(&k, LockKind::Read, TTL)
            .await
            .unwrap(),
    ];
    let short = WaitPolicy::new(Duration::from_millis(200))
        .with_delays(Duration::from_millis(5), Duration::from_millis(20));
    let waited = backend.acquire_kind(&k, LockKind::Write, TTL, &short).await;
    assert!(
        matches!(waited, Err(LockError::WaitTimedOut { .. })),
        "a writer behind two readers: {waited:?}"
    );
    for reader in &readers {
        backend.release(reader).await.unwrap();
    }
    let writer = backend
        .try_acquire_kind(&k, LockKind::Write, TTL)
        .await
        .unwrap();
    backend.release(&writer).await.unwrap();
    let held = backend.try_acquire_kind(&k, permit, TTL).await.unwrap();
    backend.release(&held).await.unwrap();
    // Left to expire, not released.
    let brief = Duration::from_millis(200);
    backend
        .try_acquire_kind(&k, LockKind::Read, brief)
        .await
        .unwrap();
    backend.try_acquire_kind(&k, permit, brief).await.unwrap();
    let expected: BTreeSet<String> = ["rw:fence", "sem:fence"]
        .iter()
        .map(|part| backend.node().layout().shared_key(&k, part))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut left = names(&backend, &ns).await;
    while left != expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        left = names(&backend, &ns).await;
    }
    assert_eq!(left, expected, "state left behind after every grant ended");
}

/// A writer waiting with a TTL far shorter than its pauses between attempts
/// keeps new readers out for its whole wait: its registration is refreshed
/// while it waits, not only by its attempts. When its wait runs out, readers
/// get in at once.
#[tokio::test]
async fn a_waiting_writer_keeps_readers_out_longer_than_its_ttl() {
    let Some(server) = support::server(&[], false).await else {
        return;
    };
    let backend = backend(&server.url, &namespace("refresh")).await;
    let k = key("k");
    let reader = backend
        .try_acquire_kind(&k, LockKind::Read, TTL)
        .await
        .unwrap();
    let ttl = Duration::from_millis(300);
    // One attempt, then a pause longer than the whole wait.
    let wait = WaitPolicy::new(Duration::from_millis(2_000))
        .with_delays(Duration::from_secs(60), Duration::from_secs(60));
    let writer = {
        let (backend, k) = (backend.clone(), k.clone());
        tokio::spawn(async move { backend.acquire_kind(&k, LockKind::Write, ttl, &wait).await })
    };
    let start = Instant::now();
    let mut registered = false;
    while start.elapsed() < Duration::from_millis(1_500) {
        match backend.try_acquire_kind(&k, LockKind::Read, ttl).await {
            Err(LockError::Contended { .. }) => registered = true,
            Ok(lease) => {
                backend.release(&lease).await.unwrap();
                assert!(
                    !registered,
                    "a reader got in {:?} into the writer's wait (its ttl is {ttl:?})",
                    start.elapsed()
                );
            }
            Err(e) => panic!("a reader's attempt failed: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(registered, "the waiting writer never held readers back");
    let waited = writer.await.unwrap();
    assert!(
        matches!(waited, Err(LockError::WaitTimedOut { .. })),
        "the writer behind a reader: {waited:?}"
    );
    let deadline = Instant::now() + ttl;
    loop {
        match backend.try_acquire_kind(&k, LockKind::Read, ttl).await {
            Ok(lease) => break backend.release(&lease).await.unwrap(),
            Err(LockError::Contended { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("a reader after the writer gave up: {e}"),
        }
    }
    backend.release(&reader).await.unwrap();
}

/// A reader waiting for a writer is handed the lock by the release
/// notification (its pauses would be a minute long).
#[tokio::test]
async fn a_waiting_reader_is_woken_by_the_writers_release() {
    let Some(server) = support::server(&[], false).await else {
        return;
    };
    let backend = backend(&server.url, &namespace("wake")).await;
    backend.subscribe_releases().await.expect("subscription up");
    let k = key("k");
    let writer = backend
        .try_acquire_kind(&k, LockKind::Write, TTL)
        .await
        .unwrap();
    let wait = WaitPolicy::new(Duration::from_secs(30))
        .with_delays(Duration::from_secs(60), Duration::from_secs(60));
    let before = evalsha_calls(&backend).await;
    let reader = {
        let (backend, k) = (backend.clone(), k.clone());
        tokio::spawn(async move { backend.acquire_kind(&k, LockKind::Read, TTL, &wait).await })
    };
    // Once the server ran the reader's first (refused) attempt, it sleeps a
    // minute unless woken.
    let deadline = Instant::now() + Duration::from_secs(10);
    while evalsha_calls(&backend).await == before {
        assert!(
            Instant::now() < deadline,
            "the reader never made its first attempt"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    backend.release(&writer).await.unwrap();
    let lease = tokio::time::timeout(Duration::from_secs(20), reader)
        .await
        .expect("the reader was not woken by the writer's release")
        .unwrap()
        .expect("the reader should be granted");
    assert!(lease.fencing_token() > writer.fencing_token());
    backend.release(&lease).await.unwrap();
}

/// `inspect`, `list` and `force_release` see the mutex only: a writer and
/// a permit of the same key are neither shown nor evicted.
#[tokio::test]
async fn mutex_tools_leave_rw_locks_and_semaphores_alone() {
    let Some(server) = support::server(&[], false).await else {
        return;
    };
    let backend = backend(&server.url, &namespace("tools")).await;
    let k = key("k");
    let one = LockKind::Permit { permits: 1 };
    let writer = backend
        .try_acquire_kind(&k, LockKind::Write, TTL)
        .await
        .unwrap();
    let permit = backend.try_acquire_kind(&k, one, TTL).await.unwrap();
    assert_eq!(backend.inspect(&k).await.unwrap(), None);
    let page = backend
        .list(&leasehold_core::ListQuery::new(""))
        .await
        .unwrap();
    assert!(page.locks.is_empty(), "listed: {:?}", page.locks);
    assert_eq!(backend.force_release(&k, "test").await.unwrap(), None);
    for kind in [LockKind::Read, one] {
        let refused = backend.try_acquire_kind(&k, kind, TTL).await;
        assert!(
            matches!(refused, Err(LockError::Contended { .. })),
            "{kind} after a mutex force release: {refused:?}"
        );
    }
    backend.release(&writer).await.unwrap();
    backend.release(&permit).await.unwrap();
}
