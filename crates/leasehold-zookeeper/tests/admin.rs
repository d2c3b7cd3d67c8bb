//! Listings and force releases against a real ZooKeeper 3.8 server: pages,
//! waiters, holder labels, and what an eviction does to the queue.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::{children, key};
use leasehold_conformance::fixtures::eventually;
use leasehold_core::{ListQuery, LockBackend, LockError, WaitPolicy};
use leasehold_zookeeper::ZkBackend;

const TTL: Duration = Duration::from_secs(4);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_page_in_key_order_and_evictions_hand_the_lock_to_the_next_in_line() {
    let zk = common::start().await;
    let backend = Arc::new(
        ZkBackend::connect_with(zk.options().holder("worker-7"))
            .await
            .unwrap(),
    );
    let before = SystemTime::now() - Duration::from_secs(60);
    let held = backend.try_acquire(&key("q/a"), TTL).await.unwrap();
    let (granted, mut grants) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..2 {
        let (backend, granted) = (backend.clone(), granted.clone());
        tokio::spawn(async move {
            let wait = WaitPolicy::new(Duration::from_secs(60));
            let _ = granted.send(backend.acquire(&key("q/a"), TTL, &wait).await);
        });
    }
    let path = backend.key_path(&key("q/a"));
    eventually(Duration::from_secs(10), "two waiters queued", || async {
        children(&backend, &path).await == 3
    })
    .await;
    // "q/%" sorts before "q/a" by key, after it by encoded name (%25).
    let mut others = Vec::new();
    for name in ["q/b", "q/%", "r"] {
        others.push(backend.try_acquire(&key(name), TTL).await.unwrap());
    }

    let mut listed = Vec::new();
    let mut query = ListQuery::new("q/").limit(1);
    loop {
        let page = backend.list(&query).await.unwrap();
        assert!(page.locks.len() <= 1);
        listed.extend(page.locks);
        match page.next {
            Some(cursor) => query = query.after(Some(cursor)),
            None => break,
        }
    }
    let names: Vec<&str> = listed.iter().map(|l| l.key.as_str()).collect();
    assert_eq!(names, ["q/%", "q/a", "q/b"]);
    let a = &listed[1].info;
    assert_eq!(a.fencing_token, Some(held.fencing_token()));
    assert_eq!(a.metadata.as_deref(), Some("worker-7"));
    assert_eq!(a.waiters, Some(2));
    assert!(a.acquired_at.is_some_and(|at| at > before), "{a:?}");
    assert_eq!(listed[2].info.waiters, Some(0));

    let evicted = backend.force_release(&key("q/a"), "test").await.unwrap();
    assert_eq!(
        evicted.and_then(|h| h.fencing_token),
        Some(held.fencing_token())
    );
    let next = tokio::time::timeout(Duration::from_secs(10), grants.recv())
        .await
        .expect("the first waiter holds the lock after the eviction")
        .unwrap()
        .unwrap();
    assert!(next.fencing_token() > held.fencing_token());
    assert!(matches!(
        backend.extend(&held, TTL).await,
        Err(LockError::Lost { .. })
    ));
    assert!(matches!(
        backend.release(&held).await,
        Err(LockError::NotHeld { .. })
    ));
    let now = backend.inspect(&key("q/a")).await.unwrap().unwrap();
    assert_eq!(now.fencing_token, Some(next.fencing_token()));
    assert_eq!(now.waiters, Some(1));

    // A key nobody holds: nobody evicted, and the listing never shows it.
    backend.release(&others[0]).await.unwrap();
    assert_eq!(
        backend.force_release(&key("q/b"), "test").await.unwrap(),
        None
    );
    let page = backend.list(&ListQuery::new("q/b")).await.unwrap();
    assert_eq!(page.locks, Vec::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_writers_and_permits_are_not_listed_inspected_or_force_released() {
    use leasehold_core::LockKind;
    let zk = common::start().await;
    let backend = ZkBackend::connect_with(zk.options()).await.unwrap();
    let writer = backend
        .try_acquire_kind(&key("shared"), LockKind::Write, TTL)
        .await
        .unwrap();
    let permit = backend
        .try_acquire_kind(&key("shared"), LockKind::Permit { permits: 1 }, TTL)
        .await
        .unwrap();
    let reader = backend
        .try_acquire_kind(&key("shared2"), LockKind::Read, TTL)
        .await
        .unwrap();
    let page = backend.list(&ListQuery::new("")).await.unwrap();
    assert!(page.locks.is_empty(), "listed: {:#?}", page.locks);
    assert_eq!(backend.inspect(&key("shared")).await.unwrap(), None);
    assert_eq!(
        backend.force_release(&key("shared"), "test").await.unwrap(),
        None
    );
    for lease in [writer, permit, reader] {
        backend.extend(&lease, TTL).await.unwrap();
        backend.release(&lease).await.unwrap();
    }
}
