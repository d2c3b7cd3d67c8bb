//! Operations: the listing and the force release tools rely on.
//!
//! - `listing_shows_held_keys_with_their_holder`: held keys under a prefix
//!   are listed (page by page) with their token and holder label; released
//!   keys and keys outside the prefix are not.
//! - `listing_hides_expired_entries`: a lease left to expire drops out of the
//!   listing.
//! - `force_release_evicts_the_holder_and_advances_the_token`: the key frees
//!   at once, the next token is higher than the evicted one, the evicted
//!   lease cannot be renewed, its guard's `lost()` fires, and a fenced
//!   resource rejects the evicted holder's late write.
//! - `force_release_of_a_free_key_evicts_nobody`: `None`, and the key stays
//!   usable.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::TryStreamExt;
use leasehold_core::config::default_holder;
use leasehold_core::{Admin, Fencing, HeldLock, ListQuery, LockError};

use crate::case::{Case, Ctx, Failed, Outcome, case, ensure, select};
use crate::expect_err;
use crate::support::{FencedRegister, acquire_eventually, eventually_ok};

/// This family's cases, in the order listed above.
pub(crate) fn cases() -> Vec<Case> {
    vec![
        case!(listing_shows_held_keys_with_their_holder, select::always),
        case!(listing_hides_expired_entries, select::ttl_expiry),
        case!(
            force_release_evicts_the_holder_and_advances_the_token,
            select::always
        ),
        case!(force_release_of_a_free_key_evicts_nobody, select::always),
    ]
}

/// Every held key under `prefix`, paging `limit` at a time; a key shown
/// twice (a store scan may repeat one) is kept once.
async fn listed(
    ctx: &Ctx,
    prefix: &str,
    limit: usize,
) -> Result<BTreeMap<String, HeldLock>, Failed> {
    let admin = Admin::new(ctx.backend.clone());
    let all: Vec<HeldLock> = admin
        .list(ListQuery::new(prefix).limit(limit))
        .try_collect()
        .await
        .map_err(|e| Failed(format!("listing {prefix:?}: {e}")))?;
    Ok(all
        .into_iter()
        .map(|held| (held.key.clone(), held))
        .collect())
}

/// Keys held under a prefix are listed with their token and this process's
/// holder label, a page of two at a time; a released key and a key outside
/// the prefix are not.
pub async fn listing_shows_held_keys_with_their_holder(ctx: Arc<Ctx>) -> Outcome {
    let ttl = ctx.ttl(Duration::from_secs(30));
    let prefix = ctx.key("list/").as_str().to_owned();
    let mut leases = Vec::new();
    for name in ["list/a", "list/b", "list/c", "list/d", "list/e"] {
        leases.push(ctx.backend.try_acquire(&ctx.key(name), ttl).await?);
    }
    let outside = ctx.backend.try_acquire(&ctx.key("lis"), ttl).await?;
    let released = leases.remove(1);
    ctx.backend.release(&released).await?;

    let shown = listed(&ctx, &prefix, 2).await?;
    let expected: Vec<&str> = leases.iter().map(|l| l.key().as_str()).collect();
    ensure!(
        shown
            .keys()
            .map(String::as_str)
            .eq(expected.iter().copied()),
        "listing {prefix:?} showed {:?}, expected exactly {expected:?} (released: {}, outside: {})",
        shown.keys().collect::<Vec<_>>(),
        released.key(),
        outside.key()
    );
    let label = default_holder();
    for lease in &leases {
        let info = &shown[lease.key().as_str()].info;
        if let Some(token) = info.fencing_token {
            ensure!(
                token == lease.fencing_token(),
                "{} is listed with token {token}, its lease has {}",
                lease.key(),
                lease.fencing_token()
            );
        }
        ensure!(
            info.metadata.as_deref().is_some_and(|m| m.contains(&label)),
            "{} is listed with holder {:?}, expected it to name {label:?}",
            lease.key(),
            info.metadata
        );
    }
    for lease in leases.iter().chain([&outside]) {
        ctx.backend.release(lease).await?;
    }
    Ok(())
}

/// A lease that is neither renewed nor released drops out of the listing
/// once it expired.
pub async fn listing_hides_expired_entries(ctx: Arc<Ctx>) -> Outcome {
    let ttl = ctx.ttl(Duration::from_millis(500));
    let prefix = ctx.key("expiring/").as_str().to_owned();
    let lease = ctx.backend.try_acquire(&ctx.key("expiring/k"), ttl).await?;
    ensure!(
        listed(&ctx, &prefix, 100)
            .await?
            .contains_key(lease.key().as_str()),
        "a held key is not listed"
    );
    let bound = ctx.expiry_bound(ttl);
    eventually_ok(bound, "the expired key drops out of the listing", || {
        let (ctx, prefix) = (ctx.clone(), prefix.clone());
        async move { Ok(listed(&ctx, &prefix, 100).await?.is_empty()) }
    })
    .await
}

/// A force release frees the key at once and advances its token; the
/// evicted holder cannot renew, learns of the loss, and its late write to a
/// fenced resource is rejected.
pub async fn force_release_evicts_the_holder_and_advances_the_token(ctx: Arc<Ctx>) -> Outcome {
    let key = ctx.key("forced");
    let ttl = ctx.ttl(Duration::from_secs(3));
    let locker = ctx.locker(ctx.backend.clone(), ttl, Duration::from_secs(5));
    let guard = locker.try_lock(&key).await?;
    let register = FencedRegister::new();
    let evicted_token = guard.fencing_token().get();
    register
        .write(evicted_token, "before")
        .map_err(|newer| Failed(format!("first write refused (newer token {newer})")))?;

    let admin = Admin::new(ctx.client().await?);
    let evicted = admin
        .force_release(&key, "conformance: force release")
        .await?;
    let holder = evicted
        .holder
        .ok_or_else(|| Failed("force release of a held key evicted nobody".into()))?;
    if let Some(token) = holder.fencing_token {
        ensure!(
            token.get() == evicted_token,
            "force release reported evicting token {token}, the holder had {evicted_token}"
        );
    }

    let other = ctx.client().await?;
    let taken = acquire_eventually(&*other, &key, ttl, Duration::from_secs(5)).await?;
    if ctx.caps.fencing != Fencing::None {
        ensure!(
            taken.fencing_token().get() > evicted_token,
            "the token after a force release ({}) is not above the evicted one ({evicted_token})",
            taken.fencing_token()
        );
        register
            .write(taken.fencing_token().get(), "after")
            .map_err(|newer| Failed(format!("the new holder's write was refused ({newer})")))?;
        ensure!(
            register.write(evicted_token, "late").is_err(),
            "the fenced register took the evicted holder's late write"
        );
    }
    expect_err!(
        ctx.backend.extend(&guard.lease(), ttl).await,
        LockError::Lost { .. } | LockError::NotHeld { .. },
        "extend of the evicted lease"
    );
    let bound = ttl + Duration::from_secs(5);
    tokio::time::timeout(bound, guard.lost())
        .await
        .map_err(|_| {
            Failed(format!(
                "the evicted guard's lost() did not fire within {bound:?}"
            ))
        })?;
    other.release(&taken).await?;
    Ok(())
}

/// A force release of a key nobody holds evicts nobody and leaves the key
/// usable.
pub async fn force_release_of_a_free_key_evicts_nobody(ctx: Arc<Ctx>) -> Outcome {
    let key = ctx.key("free");
    let ttl = ctx.ttl(Duration::from_secs(3));
    let admin = Admin::new(ctx.backend.clone());
    let evicted = admin
        .force_release(&key, "conformance: nothing to evict")
        .await?;
    ensure!(
        evicted.holder.is_none(),
        "a force release of a free key evicted {:?}",
        evicted.holder
    );
    let lease = ctx.backend.try_acquire(&key, ttl).await?;
    ctx.backend.release(&lease).await?;
    Ok(())
}
