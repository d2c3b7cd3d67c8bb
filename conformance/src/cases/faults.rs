//! Faults: dead holders and a store that stops or restarts.
//!
//! - `killed_holder_process_frees_the_lock`: a SIGKILLed holder process's
//!   key is free within its TTL + slack.
//! - `paused_store_gives_unavailable_and_recovers`: a paused store gives
//!   `Unavailable` in bounded time, and the client recovers.
//! - `restarted_store_keeps_token_order`: clients reconnect after a restart;
//!   durable fencing keeps increasing across it.

use std::sync::Arc;
use std::time::Duration;

use leasehold_core::{Fencing, LockError};
use tokio::time::Instant;

use crate::case::{Case, Ctx, Failed, Outcome, case, ensure, select};
use crate::expect_err;
use crate::support::{acquire_eventually, expect_contended};

/// This family's cases, in the order listed above.
pub(crate) fn cases() -> Vec<Case> {
    vec![
        case!(killed_holder_process_frees_the_lock, select::child_holders),
        case!(
            paused_store_gives_unavailable_and_recovers,
            select::store_hooks,
            exclusive
        ),
        case!(
            restarted_store_keeps_token_order,
            select::store_hooks,
            exclusive
        ),
    ]
}

/// How long past its TTL a killed holder's key may stay held: the time for
/// the store to notice (a TTL check, a closed connection, a session timeout
/// that follows the TTL asked for) on a loaded 2-core machine.
pub(crate) const KILLED_HOLDER_SLACK: Duration = Duration::from_secs(5);

/// A holder process killed (SIGKILL) without releasing frees the key within
/// its TTL + 5 s of slack (`KILLED_HOLDER_SLACK`: the time for the store to
/// notice on a loaded 2-core machine) on every backend, session backends
/// included: a session must time out with the TTL its holder asked for. The
/// next holder's token is higher where fencing is strict. Prints the measured
/// time from the kill to the next acquisition.
pub async fn killed_holder_process_frees_the_lock(ctx: Arc<Ctx>) -> Outcome {
    let key = ctx.key("killed");
    let ttl = ctx.ttl(Duration::from_millis(800));
    let bound = ttl + KILLED_HOLDER_SLACK;
    let mut child = ctx.child()?;
    let token = child.acquire(&key, ttl).await?;
    expect_contended(&ctx.backend, &key, ttl, "while the child holds it").await?;
    let killed_at = Instant::now();
    child.kill().await?;
    let lease = acquire_eventually(&ctx.backend, &key, ttl, bound)
        .await
        .map_err(|Failed(m)| {
            Failed(format!(
                "a killed holder's key was not free within its TTL {ttl:?} + {:?}: {m}",
                KILLED_HOLDER_SLACK
            ))
        })?;
    let freed = killed_at.elapsed();
    eprintln!(
        "leasehold-conformance: a killed holder's key was free {freed:?} after the kill (TTL {ttl:?}, bound {bound:?})"
    );
    ensure!(
        freed <= bound,
        "a killed holder's key was free only {freed:?} after the kill, past its TTL {ttl:?} + {:?}",
        KILLED_HOLDER_SLACK
    );
    if ctx.caps.fencing == Fencing::Strict {
        ensure!(
            lease.fencing_token().get() > token,
            "token {} after the killed holder's {token}",
            lease.fencing_token()
        );
    }
    ctx.backend.release(&lease).await?;
    Ok(())
}

/// With the store paused, operations fail with `Unavailable` in bounded time
/// (no hang); after it resumes, the client recovers on its own.
pub async fn paused_store_gives_unavailable_and_recovers(ctx: Arc<Ctx>) -> Outcome {
    let key = ctx.key("paused");
    let ttl = ctx.ttl(Duration::from_secs(30));
    // Warm the connection first, so the pause hits an established client.
    let lease = ctx.backend.try_acquire(&key, ttl).await?;
    ctx.backend.release(&lease).await?;
    let store = ctx.store()?;
    store.pause().await?;
    let started = Instant::now();
    let during =
        tokio::time::timeout(Duration::from_secs(60), ctx.backend.try_acquire(&key, ttl)).await;
    let elapsed = started.elapsed();
    store.unpause().await?;
    let during =
        during.map_err(|_| Failed("try_acquire against a paused store hung for 60 s".into()))?;
    expect_err!(
        during,
        LockError::Unavailable { .. },
        format!("try_acquire against a paused store (answered after {elapsed:?})")
    );
    let lease = acquire_eventually(&ctx.backend, &key, ttl, Duration::from_secs(60)).await?;
    ctx.backend.release(&lease).await?;
    Ok(())
}

/// After the store restarts, clients reconnect by themselves; where the
/// backend says its fencing is durable, tokens keep increasing across it.
pub async fn restarted_store_keeps_token_order(ctx: Arc<Ctx>) -> Outcome {
    let key = ctx.key("restart");
    let ttl = ctx.ttl(Duration::from_secs(30));
    let before = ctx.backend.try_acquire(&key, ttl).await?;
    ctx.backend.release(&before).await?;
    ctx.store()?.restart().await?;
    let after = acquire_eventually(&ctx.backend, &key, ttl, Duration::from_secs(90)).await?;
    if ctx.caps.durable_fencing {
        ensure!(
            after.fencing_token() > before.fencing_token(),
            "durable fencing went from {} to {} across a restart",
            before.fencing_token(),
            after.fencing_token()
        );
    }
    ctx.backend.release(&after).await?;
    Ok(())
}
