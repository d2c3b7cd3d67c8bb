//! The user's API (issue 16): per-call options, a locker that is not
//! re-entrant and says so at once, manual renewal, and `with_lock` that
//! never loses finished work's result to a failed release. On the in-memory
//! backend with paused time, so waits are exact and instant.

use std::sync::Arc;
use std::time::Duration;

use leasehold_core::testing::{Hooks, Spy};
use leasehold_core::{
    Key, Lease, LockBackend, LockError, LockOptions, Locker, MemoryBackend, TtlPolicy, WaitPolicy,
    async_trait,
};

fn locker(backend: &Arc<dyn LockBackend>) -> Locker {
    Locker::builder_from_arc(backend.clone())
        .ttl(TtlPolicy::Fixed(Duration::from_secs(30)))
        .wait(WaitPolicy::new(Duration::from_secs(30)))
        .build()
}

/// Before: a second `lock` of a key the same locker held waited out its
/// whole 30 s deadline behind itself and ended in `WaitTimedOut`.
#[tokio::test(start_paused = true)]
async fn a_key_this_locker_holds_is_already_held_at_once() {
    let backend: Arc<dyn LockBackend> = Arc::new(MemoryBackend::new());
    let (mine, theirs) = (locker(&backend), locker(&backend));
    let guard = mine.lock("orders:7").await.unwrap();
    let started = tokio::time::Instant::now();
    let again = mine.lock("orders:7").await;
    assert!(
        matches!(again, Err(LockError::AlreadyHeld { .. })),
        "got {again:?}"
    );
    assert_eq!(started.elapsed(), Duration::ZERO, "it must not wait");
    assert!(matches!(
        mine.lock_all(["orders:6", "orders:7"]).await,
        Err(LockError::AlreadyHeld { .. })
    ));
    assert!(
        backend
            .inspect(&Key::new("orders:6").unwrap())
            .await
            .unwrap()
            .is_none(),
        "lock_all gave back what it took before the refusal"
    );
    // Another locker is another holder: plain contention.
    assert!(matches!(
        theirs.try_lock("orders:7").await,
        Err(LockError::Contended { .. })
    ));
    guard.release().await.unwrap();
    mine.try_lock("orders:7")
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
}

/// A guard whose lease is lost no longer blocks its own locker, even while
/// its holder still has it in hand.
#[tokio::test(start_paused = true)]
async fn a_lost_guard_does_not_count_as_held() {
    let backend: Arc<dyn LockBackend> = Arc::new(MemoryBackend::new());
    let mine = locker(&backend);
    let manual = LockOptions::new()
        .ttl(Duration::from_secs(2))
        .auto_extend(false);
    let lost = mine.try_lock_with("jobs:1", &manual).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), lost.lost())
        .await
        .expect("a lease that is not renewed is lost when it expires");
    let again = mine.try_lock("jobs:1").await.unwrap();
    drop(lost); // must not unregister the new guard's key
    assert!(matches!(
        mine.try_lock("jobs:1").await,
        Err(LockError::AlreadyHeld { .. })
    ));
    again.release().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn per_call_options_set_ttl_wait_and_auto_extend() {
    let backend: Arc<dyn LockBackend> = Arc::new(MemoryBackend::new());
    let (mine, theirs) = (locker(&backend), locker(&backend));
    let long = mine
        .lock_with(
            "reports:monthly",
            &LockOptions::new().ttl(Duration::from_secs(120)),
        )
        .await
        .unwrap();
    assert_eq!(long.lease().ttl(), Duration::from_secs(120));

    let waited = theirs
        .lock_with(
            "reports:monthly",
            &LockOptions::new().wait(Duration::from_secs(2)),
        )
        .await;
    match waited {
        Err(LockError::WaitTimedOut { waited, .. }) => {
            assert!(waited >= Duration::from_secs(2) && waited < Duration::from_secs(3))
        }
        other => panic!("expected WaitTimedOut after 2 s, got {other:?}"),
    }
    long.release().await.unwrap();

    let manual = mine
        .try_lock_with(
            "reports:daily",
            &LockOptions::new()
                .ttl(Duration::from_secs(3))
                .auto_extend(false),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    manual.extend(Duration::from_secs(3)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !manual.is_lost(),
        "the manual renewal kept it past its first TTL"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(manual.is_lost(), "without another renewal it ends");
    assert!(matches!(
        manual.extend(Duration::from_secs(3)).await,
        Err(LockError::Lost { .. })
    ));
}

/// Refuses every release, as a store that went away after the work did.
#[derive(Debug)]
struct ReleaseFails;

#[async_trait]
impl Hooks for ReleaseFails {
    async fn release(&self, _inner: &dyn LockBackend, _lease: &Lease) -> Result<(), LockError> {
        Err(LockError::unavailable("spy", "the store went away"))
    }
}

/// Before: the finished work's result was dropped and the release error
/// returned, inviting a retry that ran the work twice.
#[tokio::test(start_paused = true)]
async fn with_lock_returns_finished_work_even_when_the_release_fails() {
    let backend: Arc<dyn LockBackend> =
        Arc::new(Spy::new(Arc::new(MemoryBackend::new()), ReleaseFails));
    let result = locker(&backend)
        .with_lock("payments:9", |token| async move { token.get() * 10 })
        .await;
    assert!(matches!(result, Ok(n) if n > 0), "got {result:?}");
}
