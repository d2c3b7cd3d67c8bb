//! Expiry and validity: a lease lasts while it is renewed, ends after its
//! TTL when it is not, and never claims more validity than it has.
//!
//! - `extend_keeps_the_lock`: extending keeps the key well past the first TTL.
//! - `holder_that_stops_renewing_loses_lock_after_ttl`: an abandoned key is
//!   taken by another client after its TTL (liveness), not before.
//! - `extend_after_loss_is_lost`: extending an expired, retaken lease is
//!   `Lost` and leaves the new holder's lock.
//! - `extend_after_take_and_release_is_lost`: so is extending after another
//!   holder took the key and released it again.
//! - `answer_after_validity_gives_lost_not_a_lock`: an acquisition answered
//!   after its validity ended gives `Lost`, never a guard.
//! - `valid_until_is_never_later_than_call_start_plus_ttl`: validity counts
//!   from when the request was sent, on every call that grants or renews.

use std::sync::Arc;
use std::time::Duration;

use leasehold_core::{Expiry, Lease, LockBackend, LockError, WaitPolicy, instant_after};
use tokio::time::Instant;

use crate::case::{Case, Ctx, Failed, Outcome, case, ensure, select};
use crate::expect_err;
use crate::support::{LateAnswer, acquire_eventually, expect_contended};

/// This family's cases, in the order listed above.
pub(crate) fn cases() -> Vec<Case> {
    vec![
        case!(extend_keeps_the_lock, select::always),
        case!(
            holder_that_stops_renewing_loses_lock_after_ttl,
            select::ttl_expiry
        ),
        case!(extend_after_loss_is_lost, select::ttl_expiry),
        case!(extend_after_take_and_release_is_lost, select::ttl_expiry),
        case!(answer_after_validity_gives_lost_not_a_lock, select::always),
        case!(
            valid_until_is_never_later_than_call_start_plus_ttl,
            select::always
        ),
    ]
}

/// How much later than the case's own clock read before a call a backend's
/// validity may start: a correct backend reads the clock inside the call, a
/// few microseconds after the case did, and a backend without a drift
/// allowance (the memory backend) ends up that much past `start + TTL`. 5 ms
/// is far below any delayed reply the check is there to catch, and far above
/// the gap between two clock reads around a call, even on a loaded machine;
/// the check also keeps the best of [`VALIDITY_TRIES`] tries so that one
/// descheduled thread cannot fail it.
const VALIDITY_ANCHOR_SLACK: Duration = Duration::from_millis(5);

/// How many times a validity check is tried before it fails; see
/// [`VALIDITY_ANCHOR_SLACK`].
const VALIDITY_TRIES: usize = 5;

/// The TTL a validity check compares against: what the case asked for on a
/// TTL backend; on a session backend, the TTL the lease says it was granted
/// (the session's, which the asked TTL maps onto).
fn granted_ttl(ctx: &Ctx, asked: Duration, lease: &Lease) -> Duration {
    if ctx.caps.expiry == Expiry::Ttl {
        asked
    } else {
        lease.ttl()
    }
}

/// How far `valid_until` lies past `start + ttl` (zero when it does not).
fn overshoot(start: Instant, valid_until: Instant, ttl: Duration) -> Duration {
    valid_until.saturating_duration_since(instant_after(start, ttl))
}

/// Runs `$attempt` (an expression that awaits one call and yields its
/// overshoot) up to [`VALIDITY_TRIES`] times until one overshoot is within
/// [`VALIDITY_ANCHOR_SLACK`]; fails naming `$what` otherwise.
macro_rules! anchored {
    ($what:expr, $attempt:expr) => {{
        let mut least = Duration::MAX;
        for _ in 0..VALIDITY_TRIES {
            let overshoot: Duration = $attempt;
            least = least.min(overshoot);
            if least <= VALIDITY_ANCHOR_SLACK {
                break;
            }
        }
        ensure!(
            least <= VALIDITY_ANCHOR_SLACK,
            "{}: valid_until was at least {least:?} later than the call's start + TTL in \
             each of {VALIDITY_TRIES} tries (allowed: {VALIDITY_ANCHOR_SLACK:?}); validity must \
             count from when the request was sent, not from when the answer arrived",
            $what
        );
    }};
}

/// Extending at a third of the TTL keeps the key held well past the first
/// TTL, and the new validity is later than the old.
pub async fn extend_keeps_the_lock(ctx: Arc<Ctx>) -> Outcome {
    let key = ctx.key("kept");
    let ttl = ctx.ttl(Duration::from_millis(1500));
    let mut lease = ctx.backend.try_acquire(&key, ttl).await?;
    let other = ctx.client().await?;
    let until = Instant::now() + ttl * 2;
    while Instant::now() < until {
        tokio::time::sleep(ttl / 4).await;
        let renewed = ctx.backend.extend(&lease, ttl).await?;
        ensure!(
            renewed.valid_until() > lease.valid_until(),
            "extend did not move validity forward"
        );
        ensure!(
            renewed.fencing_token() == lease.fencing_token(),
            "extend changed the fencing token"
        );
        lease = renewed;
        expect_contended(&other, &key, ttl, "while extended").await?;
    }
    ctx.backend.release(&lease).await?;
    Ok(())
}

/// A holder that stops renewing loses the key after its TTL, and another
/// client acquires it (liveness).
pub async fn holder_that_stops_renewing_loses_lock_after_ttl(ctx: Arc<Ctx>) -> Outcome {
    let key = ctx.key("abandoned");
    let ttl = ctx.ttl(Duration::from_millis(500));
    let lease = ctx.backend.try_acquire(&key, ttl).await?;
    let other = ctx.client().await?;
    let taken = acquire_eventually(&other, &key, ttl, ctx.expiry_bound(ttl)).await?;
    ensure!(
        Instant::now() >= lease.valid_until(),
        "another client acquired the key while the first lease was still valid"
    );
    other.release(&taken).await?;
    Ok(())
}

/// Extending a lease after it expired (and someone else took the key) is
/// `Lost`, and does not take the key back.
pub async fn extend_after_loss_is_lost(ctx: Arc<Ctx>) -> Outcome {
    let key = ctx.key("expired");
    let ttl = ctx.ttl(Duration::from_millis(500));
    let lease = ctx.backend.try_acquire(&key, ttl).await?;
    let other = ctx.client().await?;
    let theirs = acquire_eventually(&other, &key, ttl * 20, ctx.expiry_bound(ttl)).await?;
    expect_err!(
        ctx.backend.extend(&lease, ttl).await,
        LockError::Lost { .. },
        "extend after loss"
    );
    expect_contended(
        &ctx.backend,
        &key,
        ttl,
        "the failed extend must leave the new holder's lock",
    )
    .await?;
    expect_err!(
        ctx.backend.release(&lease).await,
        LockError::NotHeld { .. } | LockError::Lost { .. },
        "release after loss"
    );
    other.release(&theirs).await?;
    Ok(())
}

/// A holder that let its lease expire, after another holder took the key
/// *and released it*, gets `Lost` (or `NotHeld`) from `extend`, never a
/// renewal: a renewal would let it believe it held the key throughout while
/// someone else held it in between. The refused extend leaves the key free.
pub async fn extend_after_take_and_release_is_lost(ctx: Arc<Ctx>) -> Outcome {
    let key = ctx.key("revived");
    let ttl = ctx.ttl(Duration::from_millis(300));
    let lease = ctx.backend.try_acquire(&key, ttl).await?;
    let other = ctx.client().await?;
    let theirs = acquire_eventually(&other, &key, ttl, ctx.expiry_bound(ttl)).await?;
    let their_token = theirs.fencing_token();
    other.release(&theirs).await?;
    expect_err!(
        ctx.backend.extend(&lease, ttl).await,
        LockError::Lost { .. } | LockError::NotHeld { .. },
        format!(
            "extend after the lease expired and another holder (token {their_token}) took and \
             released the key (a renewal would let the old holder, token {}, believe it held \
             the key throughout)",
            lease.fencing_token()
        ),
        renewed => ctx.backend.release(&renewed).await
    );
    let again = other.try_acquire(&key, ttl).await.map_err(|e| {
        Failed(format!(
            "after the refused extend the key should be free, but try_acquire gave {e}"
        ))
    })?;
    other.release(&again).await?;
    Ok(())
}

/// A client whose acquisition answer arrives after the lease's validity
/// ended (paused during acquisition) gets `Lost` from the `Locker`, never a
/// guard, and the key does not stay locked for it: on a session backend the
/// store still holds it for the stalled client, which must give it back.
pub async fn answer_after_validity_gives_lost_not_a_lock(ctx: Arc<Ctx>) -> Outcome {
    let key = ctx.key("late-answer");
    let ttl = ctx.ttl(Duration::from_millis(500));
    let late: Arc<dyn LockBackend> = Arc::new(LateAnswer::new(ctx.client().await?));
    expect_err!(
        ctx.locker(late.clone(), ttl, Duration::ZERO)
            .try_lock(&key)
            .await,
        LockError::Lost { .. },
        "a Locker whose acquisition answer came after the lease's validity ended (a guard \
         must not be handed out)",
        guard => guard.release().await
    );
    // `late` (and its session) stays alive until the key is free again.
    let other = ctx.client().await?;
    let lease = acquire_eventually(&other, &key, ttl, ctx.expiry_bound(ttl)).await?;
    other.release(&lease).await?;
    drop(late);
    Ok(())
}

/// `valid_until` is never later than the call's start + TTL: validity counts
/// from when the request was sent, so a slow answer shortens it instead of
/// moving it past the store's expiry. Checked on `try_acquire`, `acquire`,
/// `extend`, `Locker` guards when taken and after their watchdog renewed them
/// (a session backend's leases are held to the TTL they say they got). A
/// backend without a drift allowance reads its clock a little after the case
/// does: 5 ms of slack, best of 5 tries.
pub async fn valid_until_is_never_later_than_call_start_plus_ttl(ctx: Arc<Ctx>) -> Outcome {
    let key = ctx.key("validity");
    let ttl = ctx.ttl(Duration::from_secs(10));
    anchored!("try_acquire", {
        let start = Instant::now();
        let lease = ctx.backend.try_acquire(&key, ttl).await?;
        ctx.backend.release(&lease).await?;
        overshoot(start, lease.valid_until(), granted_ttl(&ctx, ttl, &lease))
    });
    let wait = WaitPolicy::new(Duration::from_secs(5));
    anchored!("acquire", {
        let start = Instant::now();
        let lease = ctx.backend.acquire(&key, ttl, &wait).await?;
        ctx.backend.release(&lease).await?;
        overshoot(start, lease.valid_until(), granted_ttl(&ctx, ttl, &lease))
    });
    let mut lease = ctx.backend.try_acquire(&key, ttl).await?;
    anchored!("extend", {
        let start = Instant::now();
        lease = ctx.backend.extend(&lease, ttl).await?;
        overshoot(start, lease.valid_until(), granted_ttl(&ctx, ttl, &lease))
    });
    ctx.backend.release(&lease).await?;
    let locker = ctx.locker(ctx.backend.clone(), ttl, Duration::from_secs(5));
    anchored!("Locker::try_lock", {
        let start = Instant::now();
        let guard = locker.try_lock(&key).await?;
        let valid_until = guard.valid_until();
        let granted = granted_ttl(&ctx, ttl, &guard.lease());
        guard.release().await?;
        overshoot(start, valid_until, granted)
    });
    anchored!("Locker::lock", {
        let start = Instant::now();
        let guard = locker.lock(&key).await?;
        let valid_until = guard.valid_until();
        let granted = granted_ttl(&ctx, ttl, &guard.lease());
        guard.release().await?;
        overshoot(start, valid_until, granted)
    });
    // A guard renewed by its watchdog: every renewal started before now, so
    // its validity never lies more than one TTL ahead of now.
    let short = ctx.ttl(Duration::from_millis(600));
    let renewing = ctx.locker(ctx.backend.clone(), short, Duration::from_secs(5));
    let guard = renewing.try_lock(&key).await?;
    let first = guard.valid_until();
    let until = Instant::now() + short * 2;
    while Instant::now() < until {
        tokio::time::sleep(short / 5).await;
        // Validity first: a renewal that ends after this read started before it.
        let (valid_until, granted) = (guard.valid_until(), guard.lease().ttl());
        let granted = if ctx.caps.expiry == Expiry::Ttl {
            short
        } else {
            granted
        };
        let over = overshoot(Instant::now(), valid_until, granted);
        ensure!(
            over.is_zero(),
            "a guard's validity after a watchdog renewal lies {over:?} past now + TTL"
        );
    }
    ensure!(
        guard.valid_until() > first,
        "the guard's watchdog never renewed it in two TTLs"
    );
    guard.release().await?;
    Ok(())
}
