//! Exclusion: one holder at a time.
//!
//! - `mutual_exclusion_has_no_lost_update`: concurrent read-modify-writes
//!   under the lock lose no update, and no two validity windows overlap.
//! - `history_checker_detects_unsafe_workload`: the history checker's
//!   negative control; the same workload without a lock is reported.
//! - `try_acquire_on_held_key_is_contended`: a held key is `Contended`, for
//!   other clients and the holder's own (locks are not reentrant).
//! - `distinct_keys_are_independent`: holding one key does not block another.
//! - `multi_lock_in_opposite_orders_does_not_deadlock`: {A, B} and {B, A}
//!   taken at once all finish.
//! - `failed_multi_lock_leaves_nothing_held`: a multi-lock that times out on
//!   one key leaves none of the others held.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use leasehold_core::{Fencing, LockError};
use tokio::time::Instant;

use crate::case::{Case, Ctx, Failed, Outcome, case, ensure, select};
use crate::expect_err;
use crate::history::{History, Holding};
use crate::support::expect_contended;

/// This family's cases, in the order listed above.
pub(crate) fn cases() -> Vec<Case> {
    vec![
        case!(mutual_exclusion_has_no_lost_update, select::always),
        case!(history_checker_detects_unsafe_workload, select::always),
        case!(try_acquire_on_held_key_is_contended, select::always),
        case!(distinct_keys_are_independent, select::always),
        case!(
            multi_lock_in_opposite_orders_does_not_deadlock,
            select::always
        ),
        case!(failed_multi_lock_leaves_nothing_held, select::always),
    ]
}

/// Many tasks on several clients do a non-atomic read-modify-write of one
/// counter under the lock: no update is lost and no two validity windows
/// overlap (the history checker), with tokens increasing where fencing is
/// ordered.
pub async fn mutual_exclusion_has_no_lost_update(ctx: Arc<Ctx>) -> Outcome {
    const CLIENTS: usize = 3;
    const TASKS_PER_CLIENT: usize = 3;
    const ROUNDS: usize = 5;
    let key = ctx.key("counter");
    let ttl = ctx.ttl(Duration::from_secs(10));
    let counter = Arc::new(AtomicU64::new(0));
    let history = Arc::new(History::new());
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let locker = ctx.locker(ctx.client().await?, ttl, Duration::from_secs(60));
        for task in 0..TASKS_PER_CLIENT {
            let (locker, key, counter, history) = (
                locker.clone(),
                key.clone(),
                counter.clone(),
                history.clone(),
            );
            let holder = (client * TASKS_PER_CLIENT + task) as u64;
            tasks.push(tokio::spawn(async move {
                for _ in 0..ROUNDS {
                    let guard = locker.lock(&key).await?;
                    let start = Instant::now();
                    let read = counter.load(Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    counter.store(read + 1, Ordering::SeqCst);
                    let end = Instant::now().min(guard.valid_until());
                    history.record(Holding {
                        holder,
                        token: guard.fencing_token().get(),
                        start,
                        end,
                    });
                    guard.release().await?;
                }
                Ok::<_, LockError>(())
            }));
        }
    }
    for task in tasks {
        task.await
            .map_err(|e| Failed(format!("a task panicked: {e}")))??;
    }
    let expected = (CLIENTS * TASKS_PER_CLIENT * ROUNDS) as u64;
    let got = counter.load(Ordering::SeqCst);
    ensure!(
        got == expected,
        "expected counter {expected} after locked increments, got {got} (lost updates)"
    );
    let violations = history.violations(ctx.caps.fencing == Fencing::Strict);
    ensure!(
        violations.is_empty(),
        "the history checker found violations: {violations:?}"
    );
    Ok(())
}

/// Negative control for the checker: the same workload without the lock must
/// make the history checker report an overlap, so a green run means
/// something.
pub async fn history_checker_detects_unsafe_workload(_ctx: Arc<Ctx>) -> Outcome {
    let history = Arc::new(History::new());
    let barrier = Arc::new(tokio::sync::Barrier::new(4));
    let mut tasks = Vec::new();
    for holder in 0..4u64 {
        let (history, barrier) = (history.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let start = Instant::now();
            tokio::time::sleep(Duration::from_millis(20)).await;
            history.record(Holding {
                holder,
                token: 4 - holder,
                start,
                end: Instant::now(),
            });
        }));
    }
    for task in tasks {
        task.await
            .map_err(|e| Failed(format!("a task panicked: {e}")))?;
    }
    let violations = history.violations(true);
    ensure!(
        !violations.is_empty(),
        "the checker passed a workload that ran without any lock"
    );
    Ok(())
}

/// `try_acquire` on a key someone holds fails with `Contended` at once.
pub async fn try_acquire_on_held_key_is_contended(ctx: Arc<Ctx>) -> Outcome {
    let key = ctx.key("held");
    let ttl = ctx.ttl(Duration::from_secs(30));
    let lease = ctx.backend.try_acquire(&key, ttl).await?;
    let other = ctx.client().await?;
    expect_contended(&other, &key, ttl, "another client").await?;
    expect_contended(
        &ctx.backend,
        &key,
        ttl,
        "the same client (locks are not reentrant)",
    )
    .await?;
    ctx.backend.release(&lease).await?;
    let again = other.try_acquire(&key, ttl).await?;
    other.release(&again).await?;
    Ok(())
}

/// Holding one key does not block another.
pub async fn distinct_keys_are_independent(ctx: Arc<Ctx>) -> Outcome {
    let ttl = ctx.ttl(Duration::from_secs(30));
    let a = ctx.backend.try_acquire(&ctx.key("a"), ttl).await?;
    let b = ctx.backend.try_acquire(&ctx.key("b"), ttl).await?;
    ensure!(a.key() != b.key(), "two keys gave one lease");
    ctx.backend.release(&a).await?;
    expect_contended(
        &ctx.backend,
        &ctx.key("b"),
        ttl,
        "releasing a must leave b held",
    )
    .await?;
    ctx.backend.release(&b).await?;
    Ok(())
}

/// Tasks taking {A, B} and {B, A} at once all finish (ordered acquisition
/// prevents deadlock).
pub async fn multi_lock_in_opposite_orders_does_not_deadlock(ctx: Arc<Ctx>) -> Outcome {
    let (a, b) = (ctx.key("A"), ctx.key("B"));
    let ttl = ctx.ttl(Duration::from_secs(10));
    let mut tasks = Vec::new();
    for task in 0..6 {
        let locker = ctx.locker(ctx.client().await?, ttl, Duration::from_secs(60));
        let keys = if task % 2 == 0 {
            vec![a.clone(), b.clone()]
        } else {
            vec![b.clone(), a.clone()]
        };
        tasks.push(tokio::spawn(async move {
            for _ in 0..3 {
                let guards = locker.lock_all(keys.iter()).await?;
                tokio::time::sleep(Duration::from_millis(2)).await;
                guards.release().await?;
            }
            Ok::<_, LockError>(())
        }));
    }
    for task in tasks {
        task.await
            .map_err(|e| Failed(format!("a task panicked: {e}")))??;
    }
    Ok(())
}

/// A multi-lock that cannot take one of its keys times out and leaves none
/// of the others held.
pub async fn failed_multi_lock_leaves_nothing_held(ctx: Arc<Ctx>) -> Outcome {
    let (a, b, c) = (ctx.key("1-first"), ctx.key("2-taken"), ctx.key("3-last"));
    let ttl = ctx.ttl(Duration::from_secs(30));
    let blocker = ctx.backend.try_acquire(&b, ttl).await?;
    let other = ctx.client().await?;
    let locker = ctx.locker(other.clone(), ttl, Duration::from_millis(500));
    expect_err!(
        locker.lock_all([c.clone(), b.clone(), a.clone()]).await,
        LockError::WaitTimedOut { .. },
        "lock_all of keys of which another client holds one"
    );
    for key in [&a, &c] {
        let lease = ctx.backend.try_acquire(key, ttl).await.map_err(|e| {
            Failed(format!(
                "{key:?} was left held after the failed multi-lock: {e}"
            ))
        })?;
        ctx.backend.release(&lease).await?;
    }
    ctx.backend.release(&blocker).await?;
    Ok(())
}
