//! Reader–writer locks and semaphores on DynamoDB against the stand-in
//! container (moto): grants never lose races to unrelated writes, expiry of
//! each entry is judged by observation (never by a wall clock), and the
//! watchdog keeps readers, writers and permits alive.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{start, table};
use leasehold_core::{Key, LockBackend, LockError, LockKind, Locker, TestClock, TtlPolicy};
use tokio::time::Instant;

fn key(name: &str) -> Key {
    Key::new(name).expect("legal key")
}

/// Regression: a grant used to be a read of the whole item and a write
/// conditioned on the item's version, so any write in between (another
/// grant, a renewal, a release, however much room was left) made it lose;
/// after 8 lost races the attempt answered `Contended` with permits free.
/// Now the condition is the admission rule alone: a grant with room for
/// everyone is never refused, whatever else writes the item meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_with_room_for_everyone_are_never_refused_while_others_write_the_item() {
    const TASKS: usize = 12;
    const ROUNDS: usize = 5;
    let store = start().await;
    let name = table("room");
    let ttl = Duration::from_secs(30);
    let mut clients = Vec::new();
    for _ in 0..TASKS {
        clients.push(Arc::new(store.backend(&name, None).await));
    }
    for kind in [
        LockKind::Permit {
            permits: TASKS as u32,
        },
        LockKind::Read,
    ] {
        let k = key(&format!("room-{}", kind.as_str()));
        let mut tasks = Vec::new();
        for (task, client) in clients.iter().enumerate() {
            let (client, k) = (client.clone(), k.clone());
            tasks.push(tokio::spawn(async move {
                for round in 0..ROUNDS {
                    let at = format!("task {task} round {round}: {kind}");
                    let lease = client
                        .try_acquire_kind(&k, kind, ttl)
                        .await
                        .map_err(|e| format!("{at} refused with room for everyone: {e}"))?;
                    let lease = client
                        .extend(&lease, ttl)
                        .await
                        .map_err(|e| format!("{at} renewal: {e}"))?;
                    client
                        .release(&lease)
                        .await
                        .map_err(|e| format!("{at} release: {e}"))?;
                }
                Ok::<_, String>(())
            }));
        }
        for task in tasks {
            if let Err(failure) = task.await.expect("task") {
                panic!("{failure}");
            }
        }
    }
}

/// For each kind and the kind it blocks: a holder that keeps renewing is
/// never removed however far an observer's clock jumps, and one that stops
/// is removed only once the observer has seen its entry unchanged for a
/// whole lease; the next grant's token is higher.
#[tokio::test]
async fn a_renewing_holder_is_kept_and_a_dead_one_removed_after_one_observed_lease() {
    let store = start().await;
    let name = table("observed");
    let ttl = Duration::from_secs(10);
    let a = store.backend(&name, None).await;
    let clock = Arc::new(TestClock::new());
    clock.set_wall_skew(-3_600 * 1_000_000_000); // an hour behind: never used
    let b = store.backend(&name, Some(clock.clone())).await;
    let one = LockKind::Permit { permits: 1 };
    for (held, asked) in [
        (one, one),
        (LockKind::Write, LockKind::Read),
        (LockKind::Read, LockKind::Write),
    ] {
        let k = key(&format!("observed-{}", held.as_str()));
        let refused = |result: Result<leasehold_core::Lease, LockError>, why: &str| match result {
            Err(LockError::Contended { .. }) => {}
            other => panic!("{held} held, {asked} asked: {why}: {other:?}"),
        };
        let mut lease = a.try_acquire_kind(&k, held, ttl).await.expect("a holds");
        for _ in 0..2 {
            refused(b.try_acquire_kind(&k, asked, ttl).await, "while a holds");
            clock.jump(ttl + Duration::from_secs(1));
            lease = a.extend(&lease, ttl).await.expect("a renews");
            refused(
                b.try_acquire_kind(&k, asked, ttl).await,
                "a renewed, yet b removed it",
            );
        }
        // a dies: b has just seen its last renewal.
        clock.jump(ttl - Duration::from_secs(1));
        refused(
            b.try_acquire_kind(&k, asked, ttl).await,
            "removed before one whole observed lease",
        );
        clock.jump(Duration::from_secs(2));
        let next = b
            .try_acquire_kind(&k, asked, ttl)
            .await
            .expect("a dead holder is removed after one observed lease");
        assert!(next.fencing_token() > lease.fencing_token());
        assert!(
            matches!(a.extend(&lease, ttl).await, Err(LockError::Lost { .. })),
            "a removed holder's renewal is Lost"
        );
        assert!(matches!(
            a.release(&lease).await,
            Err(LockError::NotHeld { .. })
        ));
        b.release(&next).await.expect("b releases");
    }
}

/// Guards from a `Locker` outlive their TTL many times over while the
/// watchdog renews them (`extend_many` of readers, writers and permits),
/// blocking others throughout, and free the lock when released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchdog_keeps_readers_writers_and_permits_alive() {
    let store = start().await;
    let name = table("watchdog");
    let ttl = Duration::from_millis(900);
    let locker = Locker::builder(store.backend(&name, None).await)
        .ttl(TtlPolicy::Fixed(ttl))
        .build();
    let other = store.backend(&name, None).await;
    let (k, pool) = (key("renewed"), key("renewed-pool"));
    let reader = locker.rw_lock(&k).expect("rw").read().await.expect("read");
    let permit = locker
        .semaphore(&pool, 1)
        .expect("semaphore")
        .acquire()
        .await
        .expect("permit");
    let one = LockKind::Permit { permits: 1 };
    let until = Instant::now() + ttl * 4;
    while Instant::now() < until {
        for (k, kind) in [(&k, LockKind::Write), (&pool, one)] {
            match other.try_acquire_kind(k, kind, ttl).await {
                Err(LockError::Contended { .. }) => {}
                result => panic!("{kind} while renewed guards hold: {result:?}"),
            }
        }
        tokio::time::sleep(ttl / 4).await;
    }
    assert!(!reader.is_lost() && !permit.is_lost(), "a guard was lost");
    reader.release().await.expect("release reader");
    permit.release().await.expect("release permit");
    let writer = locker
        .rw_lock(&k)
        .expect("rw")
        .write()
        .await
        .expect("write");
    let until = Instant::now() + ttl * 3;
    while Instant::now() < until {
        match other.try_acquire_kind(&k, LockKind::Read, ttl).await {
            Err(LockError::Contended { .. }) => {}
            result => panic!("a reader while a renewed writer holds: {result:?}"),
        }
        tokio::time::sleep(ttl / 4).await;
    }
    assert!(!writer.is_lost(), "the writer was lost");
    writer.release().await.expect("release writer");
    let lease = other
        .try_acquire_kind(&k, LockKind::Write, ttl)
        .await
        .expect("free again");
    other.release(&lease).await.expect("release");
}
