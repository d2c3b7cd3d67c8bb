//! The circuit breaker against a store that pauses: each call to it runs
//! into the per-call timeout (1 s) and fails `Unavailable`, as a SIGSTOPped
//! server behind a backend with a timeout does. Paused test time, so the
//! bounds are exact.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use leasehold_core::testing::{Hooks, Spy};
use leasehold_core::{
    CircuitBreakerLayer, Key, Layer, Lease, LockBackend, LockError, Locker, MemoryBackend,
    TtlPolicy, WaitPolicy, async_trait,
};
use tokio::time::Instant;

const CALL_TIMEOUT: Duration = Duration::from_secs(1);

/// A store that can be paused; counts the calls that reached it.
#[derive(Debug, Default)]
struct Pausable {
    paused: AtomicBool,
    calls: AtomicUsize,
    renewals: AtomicUsize,
}

impl Pausable {
    async fn reach(&self) -> Result<(), LockError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.paused.load(Ordering::SeqCst) {
            tokio::time::sleep(CALL_TIMEOUT).await;
            return Err(LockError::unavailable("pausable", "no answer within 1s"));
        }
        Ok(())
    }
}

#[derive(Debug)]
struct Hook(Arc<Pausable>);

#[async_trait]
impl Hooks for Hook {
    async fn try_acquire(
        &self,
        inner: &dyn LockBackend,
        key: &Key,
        ttl: Duration,
    ) -> Result<Lease, LockError> {
        self.0.reach().await?;
        inner.try_acquire(key, ttl).await
    }
    async fn extend(
        &self,
        inner: &dyn LockBackend,
        lease: &Lease,
        ttl: Duration,
    ) -> Result<Lease, LockError> {
        self.0.renewals.fetch_add(1, Ordering::SeqCst);
        self.0.reach().await?;
        inner.extend(lease, ttl).await
    }
}

fn store() -> (Arc<Pausable>, Arc<dyn LockBackend>) {
    let pausable = Arc::new(Pausable::default());
    let spy = Spy::new(Arc::new(MemoryBackend::new()), Hook(pausable.clone()));
    let guarded = CircuitBreakerLayer::new()
        .failures(3)
        .window(Duration::from_secs(10))
        .cool_down(Duration::from_secs(5))
        .layer(Arc::new(spy));
    (pausable, guarded)
}

fn key(name: &str) -> Key {
    Key::new(name).unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_paused_store_opens_the_circuit_and_calls_fail_fast_until_it_returns() {
    let (store, backend) = store();
    let ttl = Duration::from_secs(30);
    store.paused.store(true, Ordering::SeqCst);
    for _ in 0..3 {
        let started = Instant::now();
        let failed = backend.try_acquire(&key("k"), ttl).await;
        assert!(matches!(failed, Err(LockError::Unavailable { .. })));
        assert_eq!(
            started.elapsed(),
            CALL_TIMEOUT,
            "closed: each call waits its timeout"
        );
    }
    let reached = store.calls.load(Ordering::SeqCst);
    let started = Instant::now();
    let fast = backend.try_acquire(&key("k"), ttl).await;
    assert!(
        matches!(fast, Err(LockError::Unavailable { .. })),
        "{fast:?}"
    );
    assert_eq!(started.elapsed(), Duration::ZERO, "open: fails at once");
    assert_eq!(
        store.calls.load(Ordering::SeqCst),
        reached,
        "open: the store is not called"
    );

    // After the cool-down one probe goes through; the store is back.
    store.paused.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let lease = backend
        .try_acquire(&key("k"), ttl)
        .await
        .expect("the probe");
    backend
        .try_acquire(&key("k2"), ttl)
        .await
        .expect("closed again");
    backend.release(&lease).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_failed_probe_opens_it_again_and_a_dropped_probe_does_not_wedge_it() {
    let (store, backend) = store();
    let ttl = Duration::from_secs(30);
    store.paused.store(true, Ordering::SeqCst);
    for _ in 0..3 {
        let _ = backend.try_acquire(&key("k"), ttl).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        backend.try_acquire(&key("k"), ttl).await.is_err(),
        "the probe fails"
    );
    let started = Instant::now();
    assert!(backend.try_acquire(&key("k"), ttl).await.is_err());
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "open again after a failed probe"
    );

    tokio::time::sleep(Duration::from_secs(5)).await;
    // The probe's caller gives up half-way: the next call may probe.
    let dropped = tokio::time::timeout(
        Duration::from_millis(100),
        backend.try_acquire(&key("k"), ttl),
    )
    .await;
    assert!(
        dropped.is_err(),
        "the probe was still waiting on the paused store"
    );
    store.paused.store(false, Ordering::SeqCst);
    let lease = backend
        .try_acquire(&key("k"), ttl)
        .await
        .expect("a new probe goes through after a dropped one");
    backend.release(&lease).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn renewals_of_held_locks_always_reach_the_store() {
    let (store, backend) = store();
    let locker = Locker::builder_from_arc(backend.clone())
        .ttl(TtlPolicy::Fixed(Duration::from_secs(30)))
        .wait(WaitPolicy::new(Duration::ZERO))
        .build();
    let guard = locker.try_lock("held").await.unwrap();
    // The store pauses for 4 s, shorter than the TTL: new calls trip the
    // circuit, but the guard's renewals keep going to the store.
    store.paused.store(true, Ordering::SeqCst);
    for _ in 0..3 {
        let _ = backend
            .try_acquire(&key("other"), Duration::from_secs(30))
            .await;
    }
    let renewals = store.renewals.load(Ordering::SeqCst);
    store.paused.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(25)).await;
    assert!(
        store.renewals.load(Ordering::SeqCst) > renewals,
        "the watchdog's renewals went through the open circuit"
    );
    assert!(!guard.is_lost(), "the breaker never costs a held lease");
    guard.release().await.unwrap();
}
