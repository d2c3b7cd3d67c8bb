//! Listings and force releases against a real etcd: queues longer than a
//! page, waiters, holder labels, and what an eviction does to the queue.

mod common;

use std::time::Duration;

use common::{Store, key, options, queue_len};
use futures_util::TryStreamExt;
use leasehold_conformance::fixtures::eventually;
use leasehold_core::{Admin, HeldLock, ListQuery, LockBackend, LockError, WaitPolicy};

const TTL: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_page_past_long_queues_and_evictions_hand_the_lock_to_the_next_in_line() {
    let store = Store::start().await;
    let backend = store.backend(options().holder("worker-7")).await;
    let held = backend.try_acquire(&key("q/a"), TTL).await.unwrap();
    // Three waiters: the queue of q/a is longer than a page of two.
    let (granted, mut grants) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..3 {
        let (backend, granted) = (backend.clone(), granted.clone());
        tokio::spawn(async move {
            let wait = WaitPolicy::new(Duration::from_secs(60));
            let lease = backend.acquire(&key("q/a"), TTL, &wait).await;
            let _ = granted.send(lease);
        });
    }
    eventually(Duration::from_secs(10), "three waiters queued", || async {
        queue_len(&backend, "q/a").await == 4
    })
    .await;
    let others = [
        backend.try_acquire(&key("q/b"), TTL).await.unwrap(),
        backend.try_acquire(&key("q/c"), TTL).await.unwrap(),
        backend.try_acquire(&key("r"), TTL).await.unwrap(),
    ];

    let admin = Admin::new(std::sync::Arc::new(backend.clone()));
    let listed: Vec<HeldLock> = admin
        .list(ListQuery::new("q/").limit(2))
        .try_collect()
        .await
        .unwrap();
    let mut names: Vec<&str> = listed.iter().map(|l| l.key.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["q/a", "q/b", "q/c"], "{listed:#?}");
    let a = &listed.iter().find(|l| l.key == "q/a").unwrap().info;
    assert_eq!(a.fencing_token, Some(held.fencing_token()));
    assert_eq!(a.metadata.as_deref(), Some("worker-7"));
    assert_eq!(a.waiters, Some(3));
    assert!(a.remaining.is_some_and(|left| left <= TTL), "{a:?}");
    assert_eq!(
        listed.iter().find(|l| l.key == "q/b").unwrap().info.waiters,
        Some(0)
    );

    let evicted = admin.force_release(&key("q/a"), "test").await.unwrap();
    assert_eq!(
        evicted.holder.and_then(|h| h.fencing_token),
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
    assert!(backend.release(&held).await.is_err());
    let now = backend.inspect(&key("q/a")).await.unwrap().unwrap();
    assert_eq!(now.fencing_token, Some(next.fencing_token()));
    assert_eq!(now.waiters, Some(2));

    // A key nobody holds: nobody evicted, and the listing never shows it.
    backend.release(&others[0]).await.unwrap();
    let evicted = admin.force_release(&key("q/b"), "test").await.unwrap();
    assert_eq!(evicted.holder, None);
    let page = backend.list(&ListQuery::new("q/b")).await.unwrap();
    assert_eq!(page.locks, Vec::new());
    assert!(matches!(
        backend
            .list(&ListQuery::new("").after(Some("not hex".into())))
            .await,
        Err(LockError::Config(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_writers_and_permits_are_not_listed_inspected_or_force_released() {
    use leasehold_core::LockKind;
    let store = Store::start().await;
    let backend = store.backend(options()).await;
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
    let admin = Admin::new(std::sync::Arc::new(backend.clone()));
    let listed: Vec<HeldLock> = admin
        .list(ListQuery::new("").limit(1))
        .try_collect()
        .await
        .unwrap();
    assert!(listed.is_empty(), "listed: {listed:#?}");
    assert_eq!(backend.inspect(&key("shared")).await.unwrap(), None);
    let evicted = admin.force_release(&key("shared"), "test").await.unwrap();
    assert_eq!(evicted.holder, None);
    for lease in [writer, permit, reader] {
        backend.extend(&lease, TTL).await.unwrap();
        backend.release(&lease).await.unwrap();
    }
}
