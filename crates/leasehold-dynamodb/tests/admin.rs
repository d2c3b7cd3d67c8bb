//! Listing and force release against the stand-in container: a paged scan
//! of one namespace, expiry by observation, and a forced release that skips
//! a token.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_sdk_dynamodb::types::AttributeValue;
use common::{start, table};
use leasehold_core::{HeldLock, Key, ListQuery, LockBackend, LockError, OwnerToken, TestClock};
use leasehold_dynamodb::DynamoDbBackend;

const TTL: Duration = Duration::from_secs(30);

fn key(name: &str) -> Key {
    Key::new(name).expect("legal key")
}

/// Every page of `prefix`, `limit` items read at a time, sorted by key (a
/// scan has no order).
async fn all_pages(backend: &DynamoDbBackend, prefix: &str, limit: usize) -> Vec<HeldLock> {
    let mut query = ListQuery::new(prefix).limit(limit);
    let mut all = Vec::new();
    loop {
        let page = backend.list(&query).await.expect("a listing page");
        assert!(page.locks.len() <= limit, "a page over its limit");
        all.extend(page.locks);
        match page.next {
            Some(cursor) => query = query.after(Some(cursor)),
            None => break,
        }
    }
    all.sort_by(|a, b| a.key.cmp(&b.key));
    all
}

fn names(held: &[HeldLock]) -> Vec<&str> {
    held.iter().map(|h| h.key.as_str()).collect()
}

#[tokio::test]
async fn a_listing_pages_through_one_namespace_and_shows_each_holder() {
    let store = start().await;
    let name = table("list");
    let ours = DynamoDbBackend::connect_with(
        store
            .config(&name)
            .create_table(true)
            .namespace("ours")
            .holder("worker 7"),
    )
    .await
    .expect("connect");
    let theirs =
        DynamoDbBackend::connect_with(store.config(&name).namespace("ours-too").holder("other"))
            .await
            .expect("connect");
    let before = SystemTime::now() - Duration::from_secs(1);
    let mut leases = Vec::new();
    for k in ["x/1", "x/2", "x/3", "y", "x/gone"] {
        leases.push(ours.try_acquire(&key(k), TTL).await.expect("acquire"));
    }
    ours.release(&leases.pop().unwrap()).await.expect("release");
    let other = theirs.try_acquire(&key("x/9"), TTL).await.expect("acquire");
    // An unreadable item of the namespace is skipped, not a failed listing.
    ours.client()
        .put_item()
        .table_name(&name)
        .item("pk", AttributeValue::S("ours#x/broken".into()))
        .item("owner", AttributeValue::S(OwnerToken::generate().to_hex()))
        .item("rvn", AttributeValue::N("1".into()))
        .send()
        .await
        .expect("write a broken item");

    let shown = all_pages(&ours, "x/", 1).await;
    assert_eq!(names(&shown), ["x/1", "x/2", "x/3"]);
    for (held, lease) in shown.iter().zip(&leases) {
        let info = &held.info;
        assert_eq!(info.fencing_token, Some(lease.fencing_token()));
        assert_eq!(info.metadata.as_deref(), Some("worker 7"));
        assert_eq!(info.owner_hint, Some(lease.owner().short()));
        assert!(info.remaining.is_some_and(|left| left <= TTL));
        assert!(info.acquired_at.is_some_and(|at| at >= before), "{info:?}");
        let mut inspected = ours.inspect(lease.key()).await.unwrap().unwrap();
        inspected.remaining = info.remaining;
        assert_eq!(&inspected, info, "inspect and list disagree");
    }
    assert_eq!(
        names(&all_pages(&ours, "", 100).await),
        ["x/1", "x/2", "x/3", "y"]
    );

    let empty = ListQuery::new("").after(Some(String::new()));
    assert!(matches!(ours.list(&empty).await, Err(LockError::Config(_))));
    for lease in &leases {
        ours.release(lease).await.expect("release");
    }
    theirs.release(&other).await.expect("release");
}

/// A holder that stops renewing drops out of a listing once the lister has
/// seen its record version unchanged for a whole lease, by the lister's own
/// clock; a renewing one never does.
#[tokio::test]
async fn a_dead_holder_drops_out_after_one_observed_lease() {
    let store = start().await;
    let name = table("list-expiry");
    let ttl = Duration::from_secs(10);
    let clock = Arc::new(TestClock::new());
    let lister = store.backend(&name, Some(clock.clone())).await;
    let holder = store.backend(&name, None).await;
    let dead = holder
        .try_acquire(&key("dead"), ttl)
        .await
        .expect("acquire");
    let live = holder
        .try_acquire(&key("live"), ttl)
        .await
        .expect("acquire");

    assert_eq!(names(&all_pages(&lister, "", 10).await), ["dead", "live"]);
    clock.jump(ttl - Duration::from_secs(1));
    let live = holder.extend(&live, ttl).await.expect("renew");
    assert_eq!(names(&all_pages(&lister, "", 10).await), ["dead", "live"]);
    clock.jump(Duration::from_secs(2));
    assert_eq!(names(&all_pages(&lister, "", 10).await), ["live"]);
    holder.release(&live).await.expect("release");
    drop(dead);
}

#[tokio::test]
async fn a_forced_release_evicts_the_holder_and_skips_a_token() {
    let store = start().await;
    let name = table("force");
    let backend = store.backend(&name, None).await;
    let k = key("stuck");
    let lease = backend.try_acquire(&k, TTL).await.expect("acquire");
    let evicted = backend
        .force_release(&k, "test")
        .await
        .expect("force release")
        .expect("the holder is evicted");
    assert_eq!(evicted.fencing_token, Some(lease.fencing_token()));
    assert_eq!(evicted.owner_hint, Some(lease.owner().short()));
    assert_eq!(backend.inspect(&k).await.expect("inspect"), None);
    assert!(matches!(
        backend.extend(&lease, TTL).await,
        Err(LockError::Lost { .. })
    ));
    assert!(matches!(
        backend.release(&lease).await,
        Err(LockError::NotHeld { .. })
    ));
    assert_eq!(backend.force_release(&k, "test").await.expect("free"), None);
    assert_eq!(
        backend
            .force_release(&key("never"), "test")
            .await
            .expect("no item"),
        None
    );
    let next = backend.try_acquire(&k, TTL).await.expect("acquire");
    assert_eq!(next.fencing_token().get(), lease.fencing_token().get() + 2);
    backend.release(&next).await.expect("release");
}
