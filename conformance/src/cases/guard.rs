//! The guard: the watchdog that renews it, and `lost()`, which tells its
//! holder when the lock is gone.
//!
//! - `lost_fires_when_the_lease_expires_and_is_taken`: a guard that cannot
//!   renew fires `lost()` when its validity ends.
//! - `guard_auto_extends_past_several_ttls`: the watchdog keeps the key held
//!   across several TTLs.
//! - `ending_the_holders_session_fires_lost`: an ended store session fires
//!   `lost()` promptly, before any renewal would notice.
//! - `asking_again_for_a_held_key_is_already_held`: not re-entrant, and says
//!   so at once, while another holder still waits its turn.
//! - `a_waiter_gets_the_key_when_the_holders_session_ends`: where waiting is
//!   notified, an ended session hands the key to a waiter without a release
//!   and before the waiter's next poll.

use std::sync::Arc;
use std::time::Duration;

use leasehold_core::{Locker, TtlPolicy, WaitPolicy};
use tokio::time::Instant;

use crate::case::{Case, Ctx, Failed, Outcome, case, ensure, select};
use crate::support::{acquire_eventually, expect_contended};

/// This family's cases, in the order listed above.
pub(crate) fn cases() -> Vec<Case> {
    vec![
        case!(
            lost_fires_when_the_lease_expires_and_is_taken,
            select::ttl_expiry
        ),
        case!(guard_auto_extends_past_several_ttls, select::always),
        case!(asking_again_for_a_held_key_is_already_held, select::always),
        // Exclusive: an ender may cut links or take sessions over, which
        // other cases running beside it must not see.
        case!(
            ending_the_holders_session_fires_lost,
            select::session_ender,
            exclusive
        ),
        case!(
            a_waiter_gets_the_key_when_the_holders_session_ends,
            select::notified_session_ender,
            exclusive
        ),
    ]
}

/// How soon a guard must report loss after its store session was ended, and
/// how soon another client must then be able to take the key. The guard's TTL
/// is a minute, so its first renewal (at a third of it) comes after this
/// bound: the loss must be noticed from the session's end, not from a failed
/// renewal.
const SESSION_END_BOUND: Duration = Duration::from_secs(10);

/// A guard that cannot renew (auto-extend off) fires `lost()` when its
/// validity ends, and another client then takes the key.
pub async fn lost_fires_when_the_lease_expires_and_is_taken(ctx: Arc<Ctx>) -> Outcome {
    let key = ctx.key("lost");
    let ttl = ctx.ttl(Duration::from_millis(600));
    let locker = Locker::builder_from_arc(ctx.backend.clone())
        .ttl(TtlPolicy::Fixed(ttl))
        .auto_extend(false)
        .build();
    let guard = locker.try_lock(&key).await?;
    tokio::time::timeout(ctx.expiry_bound(ttl), guard.lost())
        .await
        .map_err(|_| Failed("lost() never fired for a lease that could not renew".into()))?;
    ensure!(guard.is_lost(), "lost() fired but is_lost() is false");
    ensure!(
        Instant::now() >= guard.valid_until(),
        "lost() fired before validity ended"
    );
    let other = ctx.client().await?;
    let theirs = acquire_eventually(&other, &key, ttl, ctx.expiry_bound(ttl)).await?;
    ensure!(
        guard.release().await.is_err(),
        "releasing a lost guard succeeded"
    );
    other.release(&theirs).await?;
    Ok(())
}

/// A task that asks its locker again for a key it holds gets `AlreadyHeld`
/// at once (not a wait out to its deadline), on every store; another client
/// asking is refused as contended, and the key is free after the release.
pub async fn asking_again_for_a_held_key_is_already_held(ctx: Arc<Ctx>) -> Outcome {
    let key = ctx.key("reentry");
    let ttl = ctx.ttl(Duration::from_secs(5));
    let locker = ctx.locker(ctx.backend.clone(), ttl, Duration::from_secs(30));
    let guard = locker.lock(&key).await?;
    let started = Instant::now();
    crate::expect_err!(
        locker.lock(&key).await,
        leasehold_core::LockError::AlreadyHeld { .. },
        "a second lock of a key this task holds",
    );
    ensure!(
        started.elapsed() < Duration::from_secs(5),
        "AlreadyHeld came only after {:?}: it must not wait",
        started.elapsed()
    );
    let other = ctx.client().await?;
    expect_contended(&*other, &key, ttl, "while this task holds it").await?;
    guard.release().await?;
    let again = locker.try_lock(&key).await?;
    again.release().await?;
    Ok(())
}

/// A guard's watchdog keeps the key held across several TTLs.
pub async fn guard_auto_extends_past_several_ttls(ctx: Arc<Ctx>) -> Outcome {
    let key = ctx.key("watchdog");
    let ttl = ctx.ttl(Duration::from_millis(900));
    let locker = ctx.locker(ctx.backend.clone(), ttl, Duration::from_secs(5));
    let guard = locker.try_lock(&key).await?;
    let other = ctx.client().await?;
    let until = Instant::now() + ttl * 3;
    while Instant::now() < until {
        tokio::time::sleep(ttl / 3).await;
        ensure!(
            !guard.is_lost(),
            "the guard reported loss while its watchdog should extend it"
        );
        expect_contended(&other, &key, ttl, "while the guard extends itself").await?;
    }
    ensure!(
        guard.valid_until() > Instant::now(),
        "the guard's validity was not extended"
    );
    guard.release().await?;
    Ok(())
}

/// Ending a holder's store session (the suite's session ender: a terminated
/// connection, a revoked etcd lease, an expired ZooKeeper session) fires the
/// guard's `lost()` within 10 s ([`SESSION_END_BOUND`]), well before its
/// first renewal (TTL one minute) would notice; `is_lost()` is true then, and
/// another client takes the key within the same bound.
pub async fn ending_the_holders_session_fires_lost(ctx: Arc<Ctx>) -> Outcome {
    let end = ctx
        .session_ender
        .clone()
        .ok_or_else(|| Failed("no session ender".into()))?;
    let key = ctx.key("session-ended");
    let ttl = ctx.ttl(Duration::from_secs(60));
    let holder = ctx.client().await?;
    let locker = ctx.locker(holder, ttl, Duration::from_secs(10));
    let guard = locker.try_lock(&key).await?;
    let ended_at = Instant::now();
    end(guard.lease())
        .await
        .map_err(|e| Failed(format!("the session ender failed: {e}")))?;
    tokio::time::timeout(SESSION_END_BOUND, guard.lost())
        .await
        .map_err(|_| {
            Failed(format!(
                "lost() did not fire within {SESSION_END_BOUND:?} after the holder's session was ended"
            ))
        })?;
    let noticed = ended_at.elapsed();
    ensure!(guard.is_lost(), "lost() fired but is_lost() is false");
    let other = ctx.client().await?;
    let taken = acquire_eventually(&other, &key, ttl, SESSION_END_BOUND)
        .await
        .map_err(|Failed(m)| {
            Failed(format!(
                "after the holder's session ended, another client could not take the key: {m}"
            ))
        })?;
    let freed = ended_at.elapsed();
    eprintln!(
        "leasehold-conformance: session ended; lost() fired after {noticed:?}, key taken by another client after {freed:?}"
    );
    ensure!(
        guard.release().await.is_err(),
        "releasing the guard of an ended session succeeded while another client held the key"
    );
    other.release(&taken).await?;
    Ok(())
}

/// Where waiting is `Notified`, a waiter already waiting when the holder's
/// store session is ended (the suite's session ender) gets the key within
/// [`SESSION_END_BOUND`], though its own next attempt is an hour away. An
/// ended session frees the key without a release, so no release signal is
/// sent: the store itself must hand the key over (a watch on the holder's
/// node or key, the server's lock queue). A waiter that only hears release
/// signals waits for its poll; a user sees that as a crashed holder's key
/// staying stuck for as long as the waiter's backoff.
pub async fn a_waiter_gets_the_key_when_the_holders_session_ends(ctx: Arc<Ctx>) -> Outcome {
    let end = ctx
        .session_ender
        .clone()
        .ok_or_else(|| Failed("no session ender".into()))?;
    let key = ctx.key("session-ended-waiter");
    let ttl = ctx.ttl(Duration::from_secs(60));
    let lease = ctx.backend.try_acquire(&key, ttl).await?;
    let waiter = ctx.client().await?;
    let hour = Duration::from_secs(3600);
    let wait = WaitPolicy::new(SESSION_END_BOUND * 3).with_delays(hour, hour);
    let waiting = {
        let (key, waiter) = (key.clone(), waiter.clone());
        tokio::spawn(async move { waiter.acquire(&key, ttl, &wait).await })
    };
    // Let the waiter make its first attempt and start waiting (ended sooner,
    // the first attempt simply succeeds).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ended_at = Instant::now();
    end(lease)
        .await
        .map_err(|e| Failed(format!("the session ender failed: {e}")))?;
    let taken = tokio::time::timeout(SESSION_END_BOUND, waiting)
        .await
        .map_err(|_| {
            Failed(format!(
                "the waiter did not get the key within {SESSION_END_BOUND:?} after the holder's \
                 session ended (its next poll was an hour away)"
            ))
        })?
        .map_err(|e| Failed(format!("waiter panicked: {e}")))??;
    eprintln!(
        "leasehold-conformance: session ended; a waiting client had the key after {:?}",
        ended_at.elapsed()
    );
    waiter.release(&taken).await?;
    Ok(())
}
