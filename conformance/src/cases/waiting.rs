//! Waiting: `acquire` and `Locker::lock` wait as long as they were told,
//! no longer, and leave nothing behind when the caller stops waiting.
//!
//! - `acquire_wakes_promptly_after_release`: a waiter gets a released key
//!   soon, on the release signal where waiting is `Notified`.
//! - `acquire_times_out_with_timeout`: a wait on a key that stays held ends
//!   with `WaitTimedOut`, not before its wait and not long after.
//! - `zero_wait_acquisition_of_a_free_key_succeeds`: a zero wait still makes
//!   its one attempt; on a held key it answers promptly.
//! - `dropped_acquisition_leaves_the_key_free`: a dropped acquisition never
//!   strands a grant; the key is free within the per-call timeout.

use std::sync::Arc;
use std::time::Duration;

use leasehold_core::{Lease, LockError, WaitPolicy, Waiting};
use tokio::time::Instant;

use crate::case::{Case, Ctx, Failed, Outcome, case, ensure, select};
use crate::expect_err;
use crate::hooks::BoxFuture;
use crate::support::acquire_eventually;

/// This family's cases, in the order listed above.
pub(crate) fn cases() -> Vec<Case> {
    vec![
        case!(acquire_wakes_promptly_after_release, select::always),
        case!(acquire_times_out_with_timeout, select::always),
        case!(zero_wait_acquisition_of_a_free_key_succeeds, select::always),
        case!(dropped_acquisition_leaves_the_key_free, select::always),
    ]
}

/// How soon a key must be free again after an acquisition of it was dropped:
/// the longest default per-call timeout of leasehold's backends (5 s: a call
/// already on the wire is bounded by it) plus 5 s of slack. The TTL is a
/// minute, so a grant stranded until its TTL is plainly visible.
const DROPPED_ACQUISITION_BOUND: Duration = Duration::from_secs(10);

/// A waiter in `acquire` gets the key soon after the holder releases it;
/// where waiting is `Notified` it wakes on the release signal, well before
/// its next poll (its backoff is set to 5 s).
pub async fn acquire_wakes_promptly_after_release(ctx: Arc<Ctx>) -> Outcome {
    let key = ctx.key("handoff");
    let ttl = ctx.ttl(Duration::from_secs(30));
    let lease = ctx.backend.try_acquire(&key, ttl).await?;
    let waiter = ctx.client().await?;
    let poll = if ctx.caps.waiting == Waiting::Notified {
        Duration::from_secs(5)
    } else {
        Duration::from_millis(100)
    };
    let wait = WaitPolicy::new(Duration::from_secs(30)).with_delays(poll, poll);
    let waiting = {
        let key = key.clone();
        tokio::spawn(async move {
            let lease = waiter.acquire(&key, ttl, &wait).await;
            (lease, Instant::now(), waiter)
        })
    };
    // Let the waiter make its first attempt and start waiting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let released_at = Instant::now();
    ctx.backend.release(&lease).await?;
    let (acquired, acquired_at, waiter) = waiting
        .await
        .map_err(|e| Failed(format!("waiter panicked: {e}")))?;
    let acquired = acquired?;
    let handoff = acquired_at.saturating_duration_since(released_at);
    if ctx.caps.waiting == Waiting::Notified {
        ensure!(
            handoff < Duration::from_secs(4),
            "a notified waiter took {handoff:?} after the release (its next poll was 5 s away)"
        );
    }
    waiter.release(&acquired).await?;
    Ok(())
}

/// `acquire` on a key that stays held gives `WaitTimedOut` after its wait (and
/// within 20 s of it: an acquire that ignores its deadline fails here, not
/// by hanging the run).
pub async fn acquire_times_out_with_timeout(ctx: Arc<Ctx>) -> Outcome {
    let key = ctx.key("busy");
    let ttl = ctx.ttl(Duration::from_secs(30));
    let lease = ctx.backend.try_acquire(&key, ttl).await?;
    let other = ctx.client().await?;
    let wait = Duration::from_millis(600);
    let started = Instant::now();
    let answer = tokio::time::timeout(
        wait + Duration::from_secs(20),
        other.acquire(&key, ttl, &WaitPolicy::new(wait)),
    )
    .await
    .map_err(|_| {
        Failed(format!(
            "acquire ignored its wait of {wait:?}: still waiting after {:?}",
            started.elapsed()
        ))
    })?;
    expect_err!(
        answer,
        LockError::WaitTimedOut { .. },
        "acquire of a key that stays held",
        lease => other.release(&lease).await
    );
    ensure!(
        started.elapsed() >= wait,
        "WaitTimedOut came before the wait of {wait:?} ({:?})",
        started.elapsed()
    );
    ctx.backend.release(&lease).await?;
    Ok(())
}

/// A zero wait on a free key still makes its one attempt and succeeds:
/// backend `acquire` with [`WaitPolicy::no_wait`] and
/// `Locker::lock_within(key, Duration::ZERO)`; on a held key it gives
/// `WaitTimedOut` (or `Contended`) promptly.
pub async fn zero_wait_acquisition_of_a_free_key_succeeds(ctx: Arc<Ctx>) -> Outcome {
    let key = ctx.key("free");
    let ttl = ctx.ttl(Duration::from_secs(30));
    let lease = ctx
        .backend
        .acquire(&key, ttl, &WaitPolicy::no_wait())
        .await
        .map_err(|e| {
            Failed(format!(
                "acquire with WaitPolicy::no_wait() on a free key should make its one attempt \
                 and succeed, got {e}"
            ))
        })?;
    ctx.backend.release(&lease).await?;
    let locker = ctx.locker(ctx.backend.clone(), ttl, Duration::from_secs(30));
    let guard = locker
        .lock_within(&key, Duration::ZERO)
        .await
        .map_err(|e| {
            Failed(format!(
                "Locker::lock_within(key, Duration::ZERO) on a free key should succeed, got {e}"
            ))
        })?;
    let other = ctx.client().await?;
    let started = Instant::now();
    let held = tokio::time::timeout(
        Duration::from_secs(20),
        other.acquire(&key, ttl, &WaitPolicy::no_wait()),
    )
    .await
    .map_err(|_| Failed("a zero-wait acquire of a held key still waited after 20 s".into()))?;
    expect_err!(
        held,
        LockError::WaitTimedOut { .. } | LockError::Contended { .. },
        "a zero-wait acquire of a key the guard holds",
        lease => other.release(&lease).await
    );
    eprintln!(
        "leasehold-conformance: a zero-wait acquire of a held key answered in {:?}",
        started.elapsed()
    );
    guard.release().await?;
    Ok(())
}

/// A caller that stops waiting in `acquire` or `Locker::lock` (drops the
/// future: a `select!`, a timeout) never strands a grant: while the key is
/// held, and at several moments right after the holder releases it (so that
/// some drops land while a store call is in flight), the acquisition is
/// dropped, and the key is free again within the per-call timeout + slack
/// (10 s in all, see [`DROPPED_ACQUISITION_BOUND`]), not after the TTL of a
/// minute.
pub async fn dropped_acquisition_leaves_the_key_free(ctx: Arc<Ctx>) -> Outcome {
    let ttl = ctx.ttl(Duration::from_secs(60));
    let waiter = ctx.client().await?;
    let checker = ctx.client().await?;
    let wait = WaitPolicy::new(Duration::from_secs(30))
        .with_delays(Duration::from_millis(1), Duration::from_millis(5));
    let locker = ctx.locker(waiter.clone(), ttl, Duration::from_secs(30));
    // Microseconds after the release at which the acquisition is dropped
    // (a round trip to a local store takes a fraction of a millisecond);
    // `None`: dropped while the key is still held.
    let drops: [Option<u64>; 12] = [
        None,
        Some(0),
        Some(100),
        Some(200),
        Some(300),
        Some(500),
        Some(750),
        Some(1_000),
        Some(2_000),
        Some(5_000),
        Some(13_000),
        Some(34_000),
    ];
    let (mut dropped, mut slowest) = (0, Duration::ZERO);
    for (round, drop_after) in drops.iter().chain(drops.iter()).enumerate() {
        let with_locker = round >= drops.len();
        let key = ctx.key(&format!("dropped-{round}"));
        let held = ctx.backend.try_acquire(&key, ttl).await?;
        let mut attempt: BoxFuture<Result<Won, LockError>> = if with_locker {
            let (locker, key) = (locker.clone(), key.clone());
            Box::pin(async move { Ok(Won::Guard(locker.lock(&key).await?)) })
        } else {
            let (waiter, key, wait) = (waiter.clone(), key.clone(), wait.clone());
            Box::pin(async move { Ok(Won::Lease(waiter.acquire(&key, ttl, &wait).await?)) })
        };
        // Let it make its first attempt and start waiting.
        tokio::select! {
            answer = &mut attempt => {
                return Err(Failed(format!(
                    "an acquisition of a held key answered while the key was held: {}",
                    match answer {
                        Ok(_) => "it got the key".to_owned(),
                        Err(e) => e.to_string(),
                    }
                )));
            }
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        let completed = match drop_after {
            None => {
                drop(attempt);
                ctx.backend.release(&held).await?;
                None
            }
            Some(micros) => {
                ctx.backend.release(&held).await?;
                let answer = tokio::select! {
                    answer = &mut attempt => Some(answer),
                    () = fine_sleep(Duration::from_micros(*micros)) => None,
                };
                // Dropped here, not at the end of the round: an abandoned
                // future that is never polled again is not yet a dropped one.
                drop(attempt);
                answer
            }
        };
        match completed {
            // Not dropped: the caller got the lease, and gives it back.
            Some(Ok(Won::Lease(lease))) => waiter.release(&lease).await?,
            Some(Ok(Won::Guard(guard))) => guard.release().await?,
            Some(Err(e)) => {
                return Err(Failed(format!(
                    "an acquisition of a released key failed: {e}"
                )));
            }
            None => dropped += 1,
        }
        let started = Instant::now();
        let lease = acquire_eventually(&checker, &key, ttl, DROPPED_ACQUISITION_BOUND)
            .await
            .map_err(|Failed(m)| {
                Failed(format!(
                    "after an acquisition was dropped {}, the key was not free within \
                     {DROPPED_ACQUISITION_BOUND:?} (TTL {ttl:?}: a stranded grant?): {m}",
                    match drop_after {
                        None => "while the key was held".to_owned(),
                        Some(micros) => format!("{micros} µs after the release"),
                    }
                ))
            })?;
        slowest = slowest.max(started.elapsed());
        checker.release(&lease).await?;
    }
    eprintln!(
        "leasehold-conformance: {dropped} of {} acquisitions dropped before they answered; the key was free again within {slowest:?} each time",
        drops.len() * 2
    );
    Ok(())
}

/// Sleeps `by` with microsecond precision (Tokio's timer counts whole
/// milliseconds), on a thread of its own.
async fn fine_sleep(by: Duration) {
    if by.is_zero() {
        return;
    }
    let (done, wait) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        std::thread::sleep(by);
        let _ = done.send(());
    });
    let _ = wait.await;
}

/// What a dropped-acquisition round's attempt won when it was not dropped.
enum Won {
    Lease(Lease),
    Guard(leasehold_core::LockGuard),
}
