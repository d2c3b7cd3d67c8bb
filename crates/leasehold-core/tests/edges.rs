//! Regression tests for the guard's promises at the edges: a store session
//! that ends, a locker moved between runtimes, slow, short or panicking
//! renewals, and `lost_token()` calls that must not leave tasks behind.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use leasehold_core::testing::{Hooks, Spy};
use leasehold_core::{
    CancellationToken, Capabilities, Key, Lease, LockBackend, LockError, Locker, LostReason,
    MemoryBackend, TtlPolicy, WaitPolicy, async_trait,
};
use tokio::time::Instant;

/// How an [`Faulty`] backend answers renewals.
#[derive(Clone, Copy, Debug, PartialEq)]
enum ExtendMany {
    /// The inner store's answer, lease by lease.
    Normal,
    /// No results at all (a buggy batch implementation).
    Short,
    /// Panics inside the batch call.
    Panic,
}

/// The memory store with faults: a session signal per lease, slow answers
/// to renewals of keys starting with `slow`, and batch renewals that are
/// short or panic.
#[derive(Debug)]
struct Faulty {
    session: CancellationToken,
    slow_extend: Duration,
    extend_many: ExtendMany,
    batch: bool,
}

impl Faulty {
    fn new() -> Self {
        Faulty {
            session: CancellationToken::new(),
            slow_extend: Duration::ZERO,
            extend_many: ExtendMany::Normal,
            batch: false,
        }
    }

    fn backend(self) -> Arc<Spy<Faulty>> {
        Arc::new(Spy::new(Arc::new(MemoryBackend::new()), self))
    }
}

#[async_trait]
impl Hooks for Faulty {
    fn capabilities(&self, inner: &dyn LockBackend) -> Capabilities {
        inner.capabilities().batch_extend(self.batch)
    }
    async fn try_acquire(
        &self,
        inner: &dyn LockBackend,
        key: &Key,
        ttl: Duration,
    ) -> Result<Lease, LockError> {
        let lease = inner.try_acquire(key, ttl).await?;
        Ok(lease.with_loss_signal(self.session.clone()))
    }
    async fn acquire(
        &self,
        inner: &dyn LockBackend,
        key: &Key,
        ttl: Duration,
        wait: &WaitPolicy,
    ) -> Result<Lease, LockError> {
        let lease = inner.acquire(key, ttl, wait).await?;
        Ok(lease.with_loss_signal(self.session.clone()))
    }
    async fn extend(
        &self,
        inner: &dyn LockBackend,
        lease: &Lease,
        ttl: Duration,
    ) -> Result<Lease, LockError> {
        // The store applies the renewal at once; its answer is slow.
        let renewed = inner.extend(lease, ttl).await;
        if lease.key().as_str().starts_with("slow") {
            tokio::time::sleep(self.slow_extend).await;
        }
        renewed
    }
    async fn extend_many(
        &self,
        inner: &dyn LockBackend,
        renewals: &[(Lease, Duration)],
    ) -> Result<Vec<Result<Lease, LockError>>, LockError> {
        match self.extend_many {
            ExtendMany::Normal => {
                let mut results = Vec::new();
                for (lease, ttl) in renewals {
                    results.push(self.extend(inner, lease, *ttl).await);
                }
                Ok(results)
            }
            ExtendMany::Short => Ok(Vec::new()),
            ExtendMany::Panic => panic!("deliberate panic in extend_many"),
        }
    }
}

fn locker(backend: Arc<dyn LockBackend>, ttl: Duration) -> Locker {
    Locker::builder_from_arc(backend)
        .ttl(TtlPolicy::Fixed(ttl))
        .wait(WaitPolicy::new(Duration::ZERO))
        .build()
}

async fn is_free(backend: &Arc<dyn LockBackend>, key: &str) -> bool {
    backend
        .inspect(&Key::new(key).unwrap())
        .await
        .unwrap()
        .is_none()
}

#[tokio::test(start_paused = true)]
async fn a_store_session_end_marks_the_guard_lost_at_once() {
    let faulty = Faulty::new().backend();
    let session = faulty.hooks().session.clone();
    let locker = locker(faulty, Duration::from_secs(30));
    let guard = locker.lock("k").await.unwrap();
    let token = guard.lost_token();
    session.cancel();
    tokio::time::timeout(Duration::from_millis(100), token.cancelled())
        .await
        .expect("lost_token() was not cancelled when the store ended the session");
    assert_eq!(guard.lost_reason(), Some(LostReason::SessionEnded));
    assert_eq!(
        locker.watched_leases().await,
        0,
        "the watchdog still schedules renewals of a lease whose session ended"
    );
}

#[tokio::test(start_paused = true)]
async fn lost_token_calls_leave_no_task_behind() {
    let locker = locker(Faulty::new().backend(), Duration::from_secs(30));
    let guard = locker.lock("k").await.unwrap();
    let metrics = tokio::runtime::Handle::current().metrics();
    let before = metrics.num_alive_tasks();
    let tokens: Vec<_> = (0..100).map(|_| guard.lost_token()).collect();
    guard.release().await.unwrap();
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let after = metrics.num_alive_tasks();
    assert!(
        after <= before + 1,
        "100 lost_token() calls left {} tasks alive after release (was {before})",
        after
    );
    drop(tokens);
}

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
}

#[test]
fn a_locker_used_from_a_second_runtime_still_renews_its_guards() {
    let backend: Arc<dyn LockBackend> = Arc::new(MemoryBackend::new());
    let locker = locker(backend.clone(), Duration::from_secs(3));
    // First use in a setup runtime that then goes away (a `static` locker
    // across `#[tokio::test]`s, a setup `block_on`).
    let setup = paused_runtime();
    setup.block_on(async { locker.lock("setup").await.unwrap().release().await.unwrap() });
    drop(setup);
    paused_runtime().block_on(async {
        let guard = locker.lock("k").await.unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(
            !is_free(&backend, "k").await,
            "the key expired while its guard lived: nobody renewed it"
        );
        assert!(!guard.is_lost(), "{:?}", guard.lost_reason());
        guard.release().await.unwrap();
    });
}

#[test]
fn guards_whose_runtime_shut_down_are_lost_not_silently_expired() {
    let backend: Arc<dyn LockBackend> = Arc::new(MemoryBackend::new());
    let locker = locker(backend, Duration::from_secs(3));
    let first = paused_runtime();
    let guard = first.block_on(async { locker.lock("k").await.unwrap() });
    drop(first);
    assert!(
        guard.is_lost(),
        "the runtime that renewed the guard is gone, yet the guard says it holds the lock"
    );
    assert_eq!(guard.lost_reason(), Some(LostReason::RenewalFailed));
}

#[tokio::test(start_paused = true)]
async fn renewals_fall_due_before_validity_even_on_a_slow_store() {
    // Each renewal takes 40% of the TTL. Scheduling the next one a third of
    // the TTL after the previous *finished* makes it land after validity.
    let mut faulty = Faulty::new();
    faulty.slow_extend = Duration::from_millis(1200);
    let backend: Arc<dyn LockBackend> = faulty.backend();
    let locker = locker(backend, Duration::from_secs(3));
    let guard = locker.lock("slow-k").await.unwrap();
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(
        !guard.is_lost(),
        "renewals that take 40% of the TTL lost the lease: {:?}",
        guard.lost_reason()
    );
    guard.release().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn one_slow_renewal_does_not_delay_the_others() {
    // The renewal of `slow` hangs far past every TTL; `fast` is due at the
    // same instant and must not wait for it.
    let mut faulty = Faulty::new();
    faulty.slow_extend = Duration::from_secs(3600);
    let backend: Arc<dyn LockBackend> = faulty.backend();
    let locker = locker(backend, Duration::from_secs(3));
    let slow = locker.lock("slow").await.unwrap();
    let fast = locker.lock("fast").await.unwrap();
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(
        !fast.is_lost(),
        "the fast lease was lost behind a slow renewal: {:?}",
        fast.lost_reason()
    );
    assert_eq!(slow.lost_reason(), Some(LostReason::RenewalFailed));
    fast.release().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_short_extend_many_answer_ends_in_loss_not_an_orphan() {
    let mut faulty = Faulty::new();
    faulty.batch = true;
    faulty.extend_many = ExtendMany::Short;
    let backend: Arc<dyn LockBackend> = faulty.backend();
    let locker = locker(backend, Duration::from_secs(3));
    let guard = locker.lock("k").await.unwrap();
    let token = guard.lost_token();
    tokio::time::timeout(Duration::from_secs(5), token.cancelled())
        .await
        .expect("a lease the batch never answered for was neither renewed nor reported lost");
    assert_eq!(guard.lost_reason(), Some(LostReason::RenewalFailed));
}

#[tokio::test(start_paused = true)]
async fn a_panicking_extend_many_marks_the_batch_lost() {
    let mut faulty = Faulty::new();
    faulty.batch = true;
    faulty.extend_many = ExtendMany::Panic;
    let backend: Arc<dyn LockBackend> = faulty.backend();
    let locker = locker(backend, Duration::from_secs(3));
    let guard = locker.lock("k").await.unwrap();
    let token = guard.lost_token();
    tokio::time::timeout(Duration::from_secs(5), token.cancelled())
        .await
        .expect("a lease whose renewal panicked was neither renewed nor reported lost");
    assert_eq!(guard.lost_reason(), Some(LostReason::RenewalFailed));
}

#[tokio::test(start_paused = true)]
async fn validity_end_is_reported_even_without_a_watchdog_turn() {
    // auto-extend off: the guard must say it is lost as soon as validity
    // passes, whatever the watchdog is doing.
    let backend: Arc<dyn LockBackend> = Arc::new(MemoryBackend::new());
    let locker = Locker::builder_from_arc(backend)
        .ttl(TtlPolicy::Fixed(Duration::from_secs(3)))
        .auto_extend(false)
        .build();
    let guard = locker.lock("k").await.unwrap();
    let until = guard.valid_until();
    assert!(!guard.is_lost());
    tokio::time::sleep_until(until).await;
    assert!(guard.is_lost(), "validity passed but the guard still holds");
    assert_eq!(guard.lost_reason(), Some(LostReason::Expired));
    let fired = Arc::new(AtomicBool::new(false));
    let lost = guard.lost();
    let flag = fired.clone();
    tokio::spawn(async move {
        lost.await;
        flag.store(true, Ordering::SeqCst);
    })
    .await
    .unwrap();
    assert!(fired.load(Ordering::SeqCst));
    let _ = Instant::now();
}
