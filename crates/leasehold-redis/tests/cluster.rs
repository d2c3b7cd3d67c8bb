//! Redis Cluster specifics: batched calls over keys in many hash slots are
//! split per slot (a multi-key script across slots is refused by the
//! cluster with `CROSSSLOT`), a listing scans every master, release
//! notifications use the key's shard channel, and the replica rule waits
//! for the key's own master's replicas.

mod cluster_support;

use std::sync::Arc;
use std::time::Duration;

use cluster_support::docker_support::docker;
use leasehold_core::{Fencing, Key, ListQuery, LockBackend, LockError, WaitPolicy};
use leasehold_redis::{RedisBackend, Topology};

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

/// The subscribers of `channel` on the master serving it (`PUBSUB
/// SHARDNUMSUB`), as the first node that answers sees it (a killed node
/// answers nothing).
fn shard_subscribers(cluster: &cluster_support::Cluster, channel: &str) -> usize {
    let Some(master) =
        (0..cluster.nodes.len()).find_map(|i| cluster.master_of_seen_by(i, channel).ok())
    else {
        return 0;
    };
    let node = cluster.node_at(&master).expect("a master of the cluster");
    cluster
        .cli(node, &["PUBSUB", "SHARDNUMSUB", channel])
        .ok()
        .and_then(|out| out.lines().last().and_then(|n| n.trim().parse().ok()))
        .unwrap_or(0)
}

/// Waits until `channel` has a subscriber on the master serving its slot;
/// `false` after 30 s.
async fn subscribed_on_its_master(cluster: &cluster_support::Cluster, channel: &str) -> bool {
    for _ in 0..150 {
        if shard_subscribers(cluster, channel) >= 1 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// A waiter on a cluster listens on its key's shard channel (`SSUBSCRIBE`
/// on the key's master) and the release `SPUBLISH`es there. The waiter's
/// polls are an hour apart (and the holder's TTL an hour), so within the
/// test only a notification can wake it; the backend's count of shard
/// messages heard says it was one. The second hand-off moves the key's
/// slot to another master while the waiter waits: the old master drops
/// the subscription, the feed subscribes again on the new one, and the
/// waiter still gets the lock. A lock granted at its first attempt
/// subscribes nothing: the feed subscribes channels in the order their
/// listeners first wait, so once the handoff's channel is up, the free
/// key's would be too had its grant asked for it.
#[tokio::test]
async fn a_clustered_handoff_is_woken_by_the_keys_shard_channel_even_after_its_slot_moved() {
    if !leasehold_conformance::fixtures::docker_available() {
        eprintln!("SKIPPED: no Docker engine answers");
        return;
    }
    let cluster = cluster_support::Cluster::start().await.expect("a cluster");
    let url = cluster.url("namespace=sharded");
    let waiter = Arc::new(RedisBackend::connect(&url).await.expect("connects"));
    let holder = RedisBackend::connect(&format!("{url}&notifications=false"))
        .await
        .expect("connects");
    let key = Key::new("handoff").unwrap();
    let channel = waiter.node().release_channel(&key);
    let lock = waiter.node().layout().lock_key(&key);
    assert_eq!(channel, waiter.node().layout().shard_channel(&key));
    let hour = Duration::from_secs(3600);
    let patient = WaitPolicy::new(2 * hour).with_delays(hour, hour);
    let free = Key::new("free").unwrap();
    let granted = waiter
        .acquire(&free, hour, &patient)
        .await
        .expect("a free key's grant");
    waiter.release(&granted).await.expect("released");

    for moved in [false, true] {
        let lease = holder
            .try_acquire(&key, hour)
            .await
            .expect("the holder's grant");
        let heard = waiter.shard_notifications().expect("a sharded feed");
        let task = {
            let (waiter, key, patient) = (waiter.clone(), key.clone(), patient.clone());
            tokio::spawn(async move { waiter.acquire(&key, hour, &patient).await })
        };
        assert!(
            subscribed_on_its_master(&cluster, &channel).await,
            "the waiter's shard channel was never subscribed on the key's master"
        );
        assert_eq!(
            shard_subscribers(&cluster, &waiter.node().release_channel(&free)),
            0,
            "a lock granted at its first attempt subscribed its shard channel"
        );
        if moved {
            let from = cluster.master_of(&lock).unwrap();
            let to = cluster
                .addrs
                .iter()
                .take(3)
                .find(|addr| **addr != from)
                .unwrap()
                .clone();
            cluster
                .move_slot(&lock, &from, &to)
                .expect("the slot moved");
            assert_eq!(cluster.master_of(&lock).unwrap(), to);
            // The release must meet the subscription on the new master: one
            // sent before it is there is heard by no one, and the waiter is
            // then woken by the resubscription instead (correct, but not the
            // path this test proves).
            assert!(
                subscribed_on_its_master(&cluster, &channel).await,
                "the waiter's shard channel was never subscribed on the key's new master"
            );
        }
        holder.release(&lease).await.expect("released");
        // A guard against a hang, not a timing: the waiter's own next poll
        // is an hour away.
        let granted = tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("the waiter was not woken by the release")
            .expect("the waiter task")
            .expect("the waiter's grant");
        assert!(
            waiter.shard_notifications().unwrap() > heard,
            "no shard-channel message was heard (moved: {moved})"
        );
        waiter.release(&granted).await.expect("released");
    }
}

/// The replica rule on a cluster: each grant's `WAIT` goes to the master of
/// the key's slot, so with one replica of one master frozen, keys on that
/// master are refused (`Unavailable`, nothing left held) while keys on the
/// other masters are granted. With `min_replicas` equal to the replicas
/// of each master, fencing is `Strict`.
#[tokio::test]
async fn the_replica_rule_on_a_cluster_waits_for_the_keys_own_master() {
    if !leasehold_conformance::fixtures::docker_available() {
        eprintln!("SKIPPED: no Docker engine answers");
        return;
    }
    let cluster = cluster_support::Cluster::start_with(cluster_support::Options {
        replicas: 1,
        tls: None,
    })
    .await
    .expect("a cluster with replicas");
    let backend =
        RedisBackend::connect(&cluster.url("namespace=wait&min_replicas=1&replica_timeout=300ms"))
            .await
            .expect("connects");
    assert_eq!(backend.topology(), Topology::Cluster { replicas: 1 });
    assert_eq!(backend.capabilities().fencing, Fencing::Strict);
    let plain = RedisBackend::connect(&cluster.url("namespace=wait"))
        .await
        .unwrap();
    assert_eq!(plain.capabilities().fencing, Fencing::BestEffort);

    // One key on each master.
    let mut by_master: Vec<(String, Key)> = Vec::new();
    for i in 0.. {
        let key = Key::new(format!("w{i}")).unwrap();
        let master = cluster
            .master_of(&backend.node().layout().lock_key(&key))
            .unwrap();
        if !by_master.iter().any(|(m, _)| *m == master) {
            by_master.push((master, key));
        }
        if by_master.len() == 3 {
            break;
        }
    }
    let ttl = Duration::from_secs(30);
    for (_, key) in &by_master {
        let lease = backend.try_acquire(key, ttl).await.expect("confirmed");
        backend.release(&lease).await.unwrap();
    }

    // Freeze the replica of the first key's master.
    let (frozen_master, _) = &by_master[0];
    let master_id = cluster
        .id_of(cluster.node_at(frozen_master).unwrap())
        .unwrap();
    let replica = (0..cluster.nodes.len())
        .find(|&i| {
            cluster
                .cli(i, &["CLUSTER", "NODES"])
                .unwrap_or_default()
                .lines()
                .any(|line| line.contains("myself,slave") && line.contains(&master_id))
        })
        .expect("the master's replica");
    docker(&["pause", cluster.nodes[replica].id()]).unwrap();
    let _unpause = Unpause(cluster.nodes[replica].id());
    for (i, (_, key)) in by_master.iter().enumerate() {
        let result = backend.try_acquire(key, ttl).await;
        if i == 0 {
            assert!(
                matches!(result, Err(LockError::Unavailable { .. })),
                "a grant its master's frozen replica never confirmed: {result:?}"
            );
            assert!(
                plain.inspect(key).await.unwrap().is_none(),
                "an unconfirmed grant is undone"
            );
        } else {
            let lease = result.expect("a master with a live replica confirms");
            backend.release(&lease).await.unwrap();
        }
    }
}

/// Unpauses a container when dropped (a failed assertion included).
struct Unpause<'a>(&'a str);

impl Drop for Unpause<'_> {
    fn drop(&mut self) {
        let _ = docker(&["unpause", self.0]);
    }
}

/// A backend used from a second runtime after the first one went away (a
/// test harness, a CLI that builds a runtime per command): the shard-channel
/// task died with the first runtime, and the next listener starts it again
/// on the second, so waiters there are still notified.
#[test]
fn the_shard_channel_feed_starts_again_on_a_new_runtime() {
    if !leasehold_conformance::fixtures::docker_available() {
        eprintln!("SKIPPED: no Docker engine answers");
        return;
    }
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    };
    // The containers live on a runtime of their own, to the end.
    let outer = runtime();
    let cluster = outer
        .block_on(cluster_support::Cluster::start())
        .expect("a cluster");
    let first = runtime();
    let url = cluster.url("namespace=runtimes");
    let backend = first
        .block_on(RedisBackend::connect(&url))
        .expect("connects");
    let key = Key::new("again").unwrap();
    first.block_on(async {
        let _listener = backend.release_listener(&key).unwrap();
        backend.subscribe_releases().await.expect("subscribed");
    });
    drop(first);

    let second = runtime();
    second.block_on(async {
        let holder = RedisBackend::connect(&format!("{url}&notifications=false"))
            .await
            .unwrap();
        let lease = holder
            .try_acquire(&key, Duration::from_secs(30))
            .await
            .unwrap();
        let mut listener = backend.release_listener(&key).unwrap();
        backend
            .subscribe_releases()
            .await
            .expect("subscribed again on the second runtime");
        // The new subscription's own wake-up comes first.
        listener.wait(Duration::from_secs(10)).await;
        let heard = backend.shard_notifications().unwrap();
        holder.release(&lease).await.unwrap();
        assert_eq!(
            listener.wait(Duration::from_secs(30)).await,
            leasehold_core::Wake::Notified
        );
        assert!(backend.shard_notifications().unwrap() > heard);
    });
    drop(backend);
    outer.block_on(async move { drop(cluster) });
}

/// The key's master fails (killed) while a waiter waits: the cluster
/// promotes its replica, the feed subscribes the key's shard channel again
/// on it, and the waiter (whose own polls are an hour apart) still gets the
/// lock once the holder releases it there (or at once, had the replica
/// missed the holder's grant). A client connecting afterwards, with the
/// dead node still among its seeds, connects and sees the grant.
#[tokio::test]
async fn a_clustered_waiter_gets_the_lock_after_its_keys_master_failed_over() {
    if !leasehold_conformance::fixtures::docker_available() {
        eprintln!("SKIPPED: no Docker engine answers");
        return;
    }
    let cluster = cluster_support::Cluster::start_with(cluster_support::Options {
        replicas: 1,
        tls: None,
    })
    .await
    .expect("a cluster with replicas");
    let url = cluster.url("namespace=failover");
    let waiter = Arc::new(RedisBackend::connect(&url).await.expect("connects"));
    let holder = RedisBackend::connect(&format!("{url}&notifications=false"))
        .await
        .expect("connects");
    let key = Key::new("failover").unwrap();
    let (channel, lock) = (
        waiter.node().release_channel(&key),
        waiter.node().layout().lock_key(&key),
    );
    let hour = Duration::from_secs(3600);
    let patient = WaitPolicy::new(2 * hour).with_delays(hour, hour);
    let lease = holder.try_acquire(&key, hour).await.expect("a grant");
    let task = {
        let (waiter, key) = (waiter.clone(), key.clone());
        tokio::spawn(async move { waiter.acquire(&key, hour, &patient).await })
    };
    assert!(subscribed_on_its_master(&cluster, &channel).await);

    let old = cluster.master_of(&lock).unwrap();
    let dead = cluster.node_at(&old).unwrap();
    docker(&["kill", cluster.nodes[dead].id()]).unwrap();
    let witness = (0..cluster.nodes.len()).find(|&i| i != dead).unwrap();
    let mut promoted = None;
    for _ in 0..150 {
        match cluster.master_of_seen_by(witness, &lock) {
            Ok(master) if master != old => {
                promoted = Some(master);
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let promoted = promoted.expect("the cluster promoted the replica within 30 s");
    // As in the slot move above, the release must meet the subscription on
    // the promoted master: one sent before the feed is subscribed there is
    // heard by no one (CI saw this test time out so, once in seven runs).
    assert!(
        subscribed_on_its_master(&cluster, &channel).await,
        "the waiter's shard channel was never subscribed on the promoted master"
    );
    // The holder gives the lock back on the promoted master (its calls fail
    // while the cluster settles; a lost grant answers NotHeld).
    for attempt in 0.. {
        match holder.release(&lease).await {
            Ok(()) | Err(LockError::NotHeld { .. }) => break,
            Err(error) if attempt < 60 => {
                eprintln!("release during the failover: {error}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(error) => panic!("the holder could not release after the failover: {error}"),
        }
    }
    // A guard against a hang, not a timing: the waiter's own next poll is
    // an hour away.
    let granted = tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("the waiter was not woken after the failover")
        .expect("the waiter task")
        .expect("the waiter's grant");
    assert_eq!(
        waiter.node().release_channel(&key),
        channel,
        "the channel is the key's"
    );
    eprintln!("failed over from {old} to {promoted}");
    // A client that starts now still names the dead node among its seeds:
    // its dial of that address takes the whole per-call timeout, and the
    // connect must still succeed (with the bound at one timeout it never
    // did, and the feed above, which reconnects after a failover, failed
    // the same way: CI saw this test time out so).
    let late = RedisBackend::connect(&url)
        .await
        .expect("a client connects while a seed node is dead");
    match late.try_acquire(&key, hour).await {
        Err(LockError::Contended { .. }) => {}
        other => panic!("the late client must see the waiter's grant, got {other:?}"),
    }
    waiter.release(&granted).await.expect("released");
}
