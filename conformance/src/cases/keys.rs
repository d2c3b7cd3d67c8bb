//! Keys: every valid key works and is its own lock; invalid keys and TTLs
//! get their errors.
//!
//! - `awkward_keys_work_and_stay_distinct`: separators, escapes, injection,
//!   metacharacters, emoji and the longest key all lock, each on its own.
//! - `long_keys_differing_in_the_last_byte_stay_distinct`: long keys are
//!   not truncated to a common prefix or suffix.
//! - `keys_differing_in_case_whitespace_or_escaping_stay_distinct`: keys are
//!   not case-folded, trimmed or unescaped.
//! - `invalid_keys_and_ttls_get_their_errors`: `InvalidKey` and
//!   `InvalidTtl` from every operation, never a panic.

use std::sync::Arc;
use std::time::Duration;

use leasehold_core::{Key, LockError, Locker, TtlPolicy, WaitPolicy};

use crate::case::{Case, Ctx, Failed, Outcome, case, ensure, select};
use crate::expect_err;
use crate::support::{
    AWKWARD_KEY_NAMES, NEAR_IDENTICAL_KEY_PAIRS, expect_contended, long_key_pairs, longest_key,
    pairs_stay_distinct,
};

/// This family's cases, in the order listed above.
pub(crate) fn cases() -> Vec<Case> {
    vec![
        case!(awkward_keys_work_and_stay_distinct, select::always),
        case!(
            long_keys_differing_in_the_last_byte_stay_distinct,
            select::always
        ),
        case!(
            keys_differing_in_case_whitespace_or_escaping_stay_distinct,
            select::always
        ),
        case!(invalid_keys_and_ttls_get_their_errors, select::always),
    ]
}

/// Keys with slashes, quotes, `%`, braces, metacharacters, emoji and the
/// maximum length all lock, and near-identical keys stay distinct.
pub async fn awkward_keys_work_and_stay_distinct(ctx: Arc<Ctx>) -> Outcome {
    let ttl = ctx.ttl(Duration::from_secs(30));
    let mut keys: Vec<Key> = AWKWARD_KEY_NAMES.iter().map(|n| ctx.key(n)).collect();
    keys.push(longest_key(ctx.key("").as_str())?);
    let mut leases = Vec::new();
    for key in &keys {
        let lease = ctx.backend.try_acquire(key, ttl).await.map_err(|e| {
            Failed(format!(
                "{key:?} could not be locked while the other keys were held: {e}"
            ))
        })?;
        leases.push(lease);
    }
    let other = ctx.client().await?;
    for key in &keys {
        expect_contended(&other, key, ttl, "each awkward key is held").await?;
    }
    for lease in &leases {
        ctx.backend.release(lease).await?;
    }
    Ok(())
}

/// Two keys of 1,000 bytes or more (up to the 1,024-byte limit, case prefix
/// included) that differ only in their last byte, or only in their first byte
/// after a long common tail, can both be held at once: a key encoding that
/// keeps only a prefix (or a suffix) of long keys is caught here.
pub async fn long_keys_differing_in_the_last_byte_stay_distinct(ctx: Arc<Ctx>) -> Outcome {
    let pairs = long_key_pairs(ctx.key("").as_str())?;
    for (a, b) in &pairs {
        ensure!(
            a.as_str().len() >= 1000 && b.as_str().len() <= leasehold_core::MAX_KEY_BYTES,
            "the case built a key of {} bytes",
            a.as_str().len()
        );
    }
    distinct(&ctx, &pairs, "long keys differing in one byte").await
}

/// Keys that differ only in letter case, in trailing whitespace, or in `/`
/// against its URL escape `%2F` are different locks: a key encoding that
/// folds case, trims, or unescapes is caught here.
pub async fn keys_differing_in_case_whitespace_or_escaping_stay_distinct(ctx: Arc<Ctx>) -> Outcome {
    let pairs: Vec<(Key, Key)> = NEAR_IDENTICAL_KEY_PAIRS
        .iter()
        .map(|(a, b)| (ctx.key(a), ctx.key(b)))
        .collect();
    distinct(&ctx, &pairs, "near-identical keys").await
}

/// An invalid key is `InvalidKey` before any store call; a zero TTL is
/// `InvalidTtl`; a TTL above one year (`Duration::MAX` included) is
/// `InvalidTtl` from `try_acquire`, `acquire`, `extend` and a `Locker`,
/// never a panic.
pub async fn invalid_keys_and_ttls_get_their_errors(ctx: Arc<Ctx>) -> Outcome {
    let locker = Locker::from_arc(ctx.backend.clone());
    for bad in ["", "nul\0byte", "line\nbreak"] {
        expect_err!(
            locker.try_lock(bad).await,
            LockError::InvalidKey(_),
            format!("Locker::try_lock of the key {bad:?}")
        );
    }
    let key = ctx.key("ttl");
    expect_err!(
        ctx.backend.try_acquire(&key, Duration::ZERO).await,
        LockError::InvalidTtl { .. },
        "try_acquire with a zero TTL"
    );
    // Above the library-wide maximum of one year: `InvalidTtl` from every
    // operation that takes a TTL, never a panic or an overflow.
    let held = ctx
        .backend
        .try_acquire(&key, ctx.ttl(Duration::from_secs(30)))
        .await?;
    for huge in [
        Duration::MAX,
        Duration::from_secs(100 * 365 * 24 * 3600),
        leasehold_core::config::MAX_DURATION + Duration::from_secs(1),
    ] {
        let other = ctx.key("ttl-huge");
        expect_err!(
            ctx.backend.try_acquire(&other, huge).await,
            LockError::InvalidTtl { .. },
            format!("try_acquire with a TTL of {huge:?} (above one year)"),
            lease => ctx.backend.release(&lease).await
        );
        expect_err!(
            ctx.backend
                .acquire(&other, huge, &WaitPolicy::no_wait())
                .await,
            LockError::InvalidTtl { .. },
            format!("acquire with a TTL of {huge:?} (above one year)"),
            lease => ctx.backend.release(&lease).await
        );
        expect_err!(
            ctx.backend.extend(&held, huge).await,
            LockError::InvalidTtl { .. },
            format!("extend with a TTL of {huge:?} (above one year)")
        );
        let locker = Locker::builder_from_arc(ctx.backend.clone())
            .ttl(TtlPolicy::Fixed(huge))
            .build();
        expect_err!(
            locker.try_lock(&other).await,
            LockError::InvalidTtl { .. },
            format!("a Locker with a fixed TTL of {huge:?} (above one year)"),
            guard => guard.release().await
        );
    }
    ctx.backend.release(&held).await?;
    Ok(())
}

/// [`pairs_stay_distinct`] with the case's client and another one.
async fn distinct(ctx: &Ctx, pairs: &[(Key, Key)], why: &str) -> Outcome {
    let other = ctx.client().await?;
    let ttl = ctx.ttl(Duration::from_secs(30));
    pairs_stay_distinct(&*ctx.backend, &*other, pairs, ttl, why).await
}
