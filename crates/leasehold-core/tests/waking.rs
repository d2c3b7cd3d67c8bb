//! Whom a release wakes among one process's waiters of a key: one mutex
//! waiter (a hot key costs the store one attempt per release, not one per
//! waiter), but every reader behind a writer (they may all be granted
//! together).
//!
//! The clock is paused: waiters poll every 10 s of virtual time, and the
//! runtime moves the clock only once every task is idle, so "nothing else
//! happened" is observed without a real-time sleep.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use leasehold_core::testing::{Hooks, Spy};
use leasehold_core::{
    Key, Lease, LockBackend, LockError, LockKind, MemoryBackend, WaitPolicy, async_trait,
    wait_for_grant, wait_for_lock,
};

const TTL: Duration = Duration::from_secs(600);
const POLL: Duration = Duration::from_secs(10);

/// Counts the attempts that reach the store.
#[derive(Debug, Default)]
struct Attempts(AtomicUsize);

#[async_trait]
impl Hooks for Attempts {
    async fn try_acquire(
        &self,
        inner: &dyn LockBackend,
        key: &Key,
        ttl: Duration,
    ) -> Result<Lease, LockError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        inner.try_acquire(key, ttl).await
    }

    async fn try_acquire_kind(
        &self,
        inner: &dyn LockBackend,
        key: &Key,
        kind: LockKind,
        ttl: Duration,
    ) -> Result<Lease, LockError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        inner.try_acquire_kind(key, kind, ttl).await
    }
}

fn polling() -> WaitPolicy {
    WaitPolicy::new(Duration::from_secs(3600)).with_delays(POLL, POLL)
}

/// Lets every task run until all are idle (the paused clock then moves by
/// 1 ms, far less than a poll).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

#[tokio::test(start_paused = true)]
async fn a_mutex_release_wakes_one_waiter() {
    let spy = Arc::new(Spy::new(
        Arc::new(MemoryBackend::new()),
        Attempts::default(),
    ));
    let attempts = || spy.hooks().0.load(Ordering::SeqCst);
    let key = Key::new("hot").unwrap();
    let holder = spy.try_acquire(&key, TTL).await.unwrap();

    let (granted, mut grants) = tokio::sync::mpsc::unbounded_channel();
    let waiters = 32;
    for _ in 0..waiters {
        let (spy, key, granted) = (spy.clone(), key.clone(), granted.clone());
        tokio::spawn(async move {
            let lease = wait_for_lock(&*spy, &key, TTL, &polling()).await;
            let _ = granted.send(lease);
        });
    }
    settle().await;
    assert_eq!(attempts(), 1 + waiters, "each waiter tried once");

    spy.release(&holder).await.unwrap();
    let winner = grants.recv().await.unwrap().expect("a waiter got the key");
    settle().await;
    // The woken waiter's grant, and nobody else's attempt.
    assert_eq!(
        attempts() - (1 + waiters),
        1,
        "a release woke more than one waiter"
    );

    // The next release hands over again, to one of those still waiting.
    spy.release(&winner).await.unwrap();
    let next = grants
        .recv()
        .await
        .unwrap()
        .expect("the next waiter got the key");
    spy.release(&next).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_writers_release_wakes_every_waiting_reader() {
    let spy = Arc::new(Spy::new(
        Arc::new(MemoryBackend::new()),
        Attempts::default(),
    ));
    let key = Key::new("shared").unwrap();
    let writer = spy
        .try_acquire_kind(&key, LockKind::Write, TTL)
        .await
        .unwrap();

    let (granted, mut grants) = tokio::sync::mpsc::unbounded_channel();
    let readers = 8;
    for _ in 0..readers {
        let (spy, key, granted) = (spy.clone(), key.clone(), granted.clone());
        tokio::spawn(async move {
            let lease = wait_for_grant(&*spy, &key, &polling(), || {
                spy.try_acquire_kind(&key, LockKind::Read, TTL)
            })
            .await;
            let _ = granted.send(lease);
        });
    }
    settle().await;
    let released_at = tokio::time::Instant::now();
    spy.release(&writer).await.unwrap();
    // All in together: none is released before the last one is in (a
    // release would wake the next).
    let mut held = Vec::new();
    for _ in 0..readers {
        held.push(grants.recv().await.unwrap().expect("a reader got in"));
    }
    for reader in held {
        spy.release(&reader).await.unwrap();
    }
    assert!(
        // Their polls come 10 s after their first attempts, 1 ms before the
        // release: woken, all are in at once.
        released_at.elapsed() < POLL / 2,
        "some readers waited for their poll instead of being woken ({:?})",
        released_at.elapsed()
    );
}
