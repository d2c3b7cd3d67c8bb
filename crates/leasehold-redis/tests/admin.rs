//! Listing and force release on a real server (a `redis:7.0` container, or
//! `LEASEHOLD_TEST_REDIS_URL`): page sizes, glob characters in prefixes,
//! waking waiters, and locks written by an older version.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use futures_util::TryStreamExt;
use leasehold_core::{Admin, Key, ListQuery, LockBackend, OwnerToken, Wake};
use leasehold_redis::{Ownership, RedisBackend};
use support::config;

const TTL: Duration = Duration::from_secs(30);

async fn backend(url: &str, test: &str) -> RedisBackend {
    let namespace = format!("t-{test}-{}", OwnerToken::generate().short());
    RedisBackend::connect_with(config(url).namespace(namespace).holder("admin-test"))
        .await
        .expect("connect to the test server")
}

fn key(name: &str) -> Key {
    Key::new(name).expect("legal key")
}

#[tokio::test]
async fn pages_hold_at_most_their_limit_and_glob_characters_match_only_themselves() {
    let Some(server) = support::server(&[], false).await else {
        return;
    };
    let backend = backend(&server.url, "pages").await;
    let inside = ["a*[b]?\\/1", "a*[b]?\\/2", "a*[b]?\\/3 {x}"];
    let outside = ["a*[c]?\\/1", "aX[b]?\\/1", "a*[b]?"];
    let mut leases = Vec::new();
    for name in inside.iter().chain(&outside) {
        leases.push(backend.try_acquire(&key(name), TTL).await.unwrap());
    }
    let mut query = ListQuery::new("a*[b]?\\/").limit(1);
    let mut shown = BTreeSet::new();
    loop {
        let page = backend.list(&query).await.unwrap();
        assert!(page.locks.len() <= 1, "a page of limit 1 held {page:?}");
        for held in page.locks {
            assert_eq!(held.info.metadata.as_deref(), Some("admin-test"));
            assert!(held.info.acquired_at.is_some(), "{held:?}");
            shown.insert(held.key);
        }
        match page.next {
            Some(next) => query = query.after(Some(next)),
            None => break,
        }
    }
    assert_eq!(shown, inside.iter().map(|k| k.to_string()).collect());
    assert!(matches!(
        backend
            .list(&ListQuery::new("").after(Some("not a cursor".into())))
            .await,
        Err(leasehold_core::LockError::Config(_))
    ));
    for lease in &leases {
        backend.release(lease).await.unwrap();
    }
}

#[tokio::test]
async fn a_force_release_wakes_waiters_and_advances_the_counter() {
    let Some(server) = support::server(&[], false).await else {
        return;
    };
    let backend = backend(&server.url, "wake").await;
    backend.subscribe_releases().await.unwrap();
    let k = key("stuck");
    let lease = backend.try_acquire(&k, TTL).await.unwrap();
    let mut listener = backend.release_listener(&k).expect("notifications are on");
    let admin = Admin::new(std::sync::Arc::new(backend.clone()));
    let evicted = admin.force_release(&k, "test: stuck").await.unwrap();
    let holder = evicted.holder.expect("the holder was evicted");
    assert_eq!(holder.fencing_token, Some(lease.fencing_token()));
    assert_eq!(holder.metadata.as_deref(), Some("admin-test"));
    assert_eq!(
        listener.wait(Duration::from_secs(5)).await,
        Wake::Notified,
        "the force release published no release"
    );
    let fence: u64 = redis::cmd("GET")
        .arg(backend.node().layout().fence_key(&k))
        .query_async(&mut backend.node().connection())
        .await
        .unwrap();
    assert_eq!(fence, lease.fencing_token().get() + 1);
    assert!(backend.extend(&lease, TTL).await.is_err());
    let next = backend.try_acquire(&k, TTL).await.unwrap();
    assert!(next.fencing_token() > lease.fencing_token());
    backend.release(&next).await.unwrap();
    assert!(
        admin
            .force_release(&k, "test: free")
            .await
            .unwrap()
            .holder
            .is_none()
    );
}

#[tokio::test]
async fn a_lock_written_by_an_older_version_still_belongs_to_its_owner() {
    let Some(server) = support::server(&[], false).await else {
        return;
    };
    let backend = backend(&server.url, "legacy").await;
    let node = backend.node();
    let (k, owner) = (key("old"), OwnerToken::generate());
    // The old value: the bare owner token.
    let _: () = redis::cmd("SET")
        .arg(node.layout().lock_key(&k))
        .arg(owner.to_hex())
        .arg("PX")
        .arg(30_000)
        .query_async(&mut node.connection())
        .await
        .unwrap();
    let info = backend.inspect(&k).await.unwrap().expect("held");
    assert_eq!(info.owner_hint, Some(owner.short()));
    assert_eq!((info.metadata, info.acquired_at), (None, None));
    let listed: Vec<_> = Admin::new(std::sync::Arc::new(backend.clone()))
        .list(ListQuery::new(""))
        .try_collect()
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        node.extend_raw(&k, &owner, TTL).await.unwrap(),
        Ownership::Ours
    );
    let other = OwnerToken::generate();
    assert_eq!(
        node.release_raw(&k, &other).await.unwrap(),
        Ownership::Other
    );
    assert_eq!(node.release_raw(&k, &owner).await.unwrap(), Ownership::Ours);
}
