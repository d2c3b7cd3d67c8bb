//! Redis Cluster specifics: batched calls over keys in many hash slots are
//! split per slot (a multi-key script across slots is refused by the
//! cluster with `CROSSSLOT`), and a listing scans every master.

mod cluster_support;

use std::time::Duration;

use leasehold_core::{Key, ListQuery, LockBackend};
use leasehold_redis::RedisBackend;

#[tokio::test]
async fn batches_split_per_slot_and_listings_cover_every_master() {
    if !leasehold_conformance::fixtures::docker_available() {
        eprintln!("SKIPPED: no Docker engine answers");
        return;
    }
    let cluster = cluster_support::Cluster::start().await.expect("a cluster");
    let backend = RedisBackend::connect(&cluster.url("namespace=slots"))
        .await
        .expect("connects");
    assert!(backend.node().is_cluster());
    let masters = backend.node().masters().await.unwrap();
    assert_eq!(masters.len(), 3, "{masters:?}");

    let ttl = Duration::from_secs(10);
    let mut leases = Vec::new();
    for i in 0..40 {
        let key = Key::new(format!("k{i}")).unwrap();
        leases.push(backend.try_acquire(&key, ttl).await.expect("a grant"));
    }
    let renewals: Vec<_> = leases.iter().map(|lease| (lease.clone(), ttl)).collect();
    let renewed = backend
        .extend_many(&renewals)
        .await
        .expect("one batch over many slots");
    assert!(renewed.iter().all(Result::is_ok), "{renewed:?}");

    let mut listed = 0;
    let mut query = ListQuery::new("").limit(7);
    loop {
        let page = backend.list(&query).await.expect("a page");
        listed += page.locks.len();
        match page.next {
            Some(next) => query = query.after(Some(next)),
            None => break,
        }
    }
    assert!(
        listed >= 40,
        "listed {listed} of 40 held keys (SCAN may repeat, never miss)"
    );
    for lease in &leases {
        backend.release(lease).await.expect("released");
    }
}
