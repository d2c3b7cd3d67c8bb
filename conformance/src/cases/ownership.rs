//! Ownership: only the holder can give a lock back or renew it.
//!
//! - `release_by_non_owner_is_refused`: a release with another owner token
//!   is refused, and the holder keeps the key.
//! - `extend_by_non_owner_is_refused`: so is an extend.
//! - `double_release_is_not_held`: a second (or stale) release is `NotHeld`
//!   and never frees a new holder's lock.
//! - `inspect_reports_the_holder_without_holding`: `inspect` sees the holder
//!   (and its token, where the backend can tell) without taking the key.

use std::sync::Arc;
use std::time::Duration;

use leasehold_core::LockError;

use crate::case::{Case, Ctx, Outcome, case, ensure, select};
use crate::expect_err;
use crate::support::{expect_contended, forged};

/// This family's cases, in the order listed above.
pub(crate) fn cases() -> Vec<Case> {
    vec![
        case!(release_by_non_owner_is_refused, select::always),
        case!(extend_by_non_owner_is_refused, select::always),
        case!(double_release_is_not_held, select::always),
        case!(inspect_reports_the_holder_without_holding, select::always),
    ]
}

/// Releasing with a lease whose owner token is not the holder's is refused,
/// and the holder keeps the lock.
pub async fn release_by_non_owner_is_refused(ctx: Arc<Ctx>) -> Outcome {
    let key = ctx.key("owned");
    let ttl = ctx.ttl(Duration::from_secs(30));
    let lease = ctx.backend.try_acquire(&key, ttl).await?;
    let other = ctx.client().await?;
    expect_err!(
        other.release(&forged(&lease)).await,
        LockError::NotHeld { .. } | LockError::Lost { .. },
        "a non-owner's release"
    );
    expect_contended(&other, &key, ttl, "after a refused release").await?;
    ctx.backend.release(&lease).await?;
    Ok(())
}

/// Extending with a lease whose owner token is not the holder's is refused.
pub async fn extend_by_non_owner_is_refused(ctx: Arc<Ctx>) -> Outcome {
    let key = ctx.key("owned");
    let ttl = ctx.ttl(Duration::from_secs(30));
    let lease = ctx.backend.try_acquire(&key, ttl).await?;
    let other = ctx.client().await?;
    expect_err!(
        other.extend(&forged(&lease), ttl).await,
        LockError::Lost { .. } | LockError::NotHeld { .. },
        "a non-owner's extend"
    );
    expect_contended(&other, &key, ttl, "after a refused extend").await?;
    ctx.backend.release(&lease).await?;
    Ok(())
}

/// A second release of the same lease is `NotHeld`, even after someone else
/// took the key, whose lock stays.
pub async fn double_release_is_not_held(ctx: Arc<Ctx>) -> Outcome {
    let key = ctx.key("twice");
    let ttl = ctx.ttl(Duration::from_secs(30));
    let lease = ctx.backend.try_acquire(&key, ttl).await?;
    ctx.backend.release(&lease).await?;
    expect_err!(
        ctx.backend.release(&lease).await,
        LockError::NotHeld { .. },
        "a second release"
    );
    let other = ctx.client().await?;
    let theirs = other.try_acquire(&key, ttl).await?;
    expect_err!(
        ctx.backend.release(&lease).await,
        LockError::NotHeld { .. },
        "a stale release after another client took the key"
    );
    expect_contended(
        &ctx.backend,
        &key,
        ttl,
        "a stale release must not free the new holder's lock",
    )
    .await?;
    other.release(&theirs).await?;
    Ok(())
}

/// `inspect` reports a holder's fencing token (where the backend can tell)
/// without holding the key, and `None` for a free key.
pub async fn inspect_reports_the_holder_without_holding(ctx: Arc<Ctx>) -> Outcome {
    let key = ctx.key("inspected");
    let ttl = ctx.ttl(Duration::from_secs(30));
    let other = ctx.client().await?;
    ensure!(
        other.inspect(&key).await?.is_none(),
        "a free key was reported held"
    );
    let lease = ctx.backend.try_acquire(&key, ttl).await?;
    let info = other.inspect(&key).await?;
    ensure!(info.is_some(), "inspect did not see the holder");
    if ctx.caps.holder_info {
        let token = info.and_then(|i| i.fencing_token);
        ensure!(
            token == Some(lease.fencing_token()),
            "inspect reported token {token:?}, the holder has {}",
            lease.fencing_token()
        );
    }
    ctx.backend.release(&lease).await?;
    ensure!(
        other.inspect(&key).await?.is_none(),
        "a released key was reported held"
    );
    Ok(())
}
