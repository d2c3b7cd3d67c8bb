//! Fencing: tokens that order holders, and a resource that uses them.
//!
//! - `fencing_tokens_strictly_increase`: a key's tokens increase across
//!   clients, releases and expiries (never go backwards where best-effort).
//! - `fenced_register_rejects_paused_holders_late_write`: a paused holder
//!   is overtaken, its late write is rejected, and it learns of the loss.

use std::sync::Arc;
use std::time::Duration;

use leasehold_core::{Expiry, Fencing, LockError};
use tokio::time::Instant;

use crate::case::{Case, Ctx, Failed, Outcome, case, ensure, select};
use crate::expect_err;
use crate::support::{FencedRegister, acquire_eventually};

/// This family's cases, in the order listed above.
pub(crate) fn cases() -> Vec<Case> {
    vec![
        case!(fencing_tokens_strictly_increase, select::ordered_tokens),
        case!(
            fenced_register_rejects_paused_holders_late_write,
            select::paused_holder
        ),
    ]
}

/// Fencing tokens of one key strictly increase across acquisitions by
/// different clients, releases and expiries.
pub async fn fencing_tokens_strictly_increase(ctx: Arc<Ctx>) -> Outcome {
    let key = ctx.key("tokens");
    let ttl = ctx.ttl(Duration::from_millis(500));
    let clients = [ctx.backend.clone(), ctx.client().await?];
    let mut tokens = Vec::new();
    for round in 0..6 {
        let client = &clients[round % 2];
        let lease = acquire_eventually(client, &key, ttl, ctx.expiry_bound(ttl)).await?;
        tokens.push(lease.fencing_token().get());
        if round % 3 != 2 || ctx.caps.expiry != Expiry::Ttl {
            client.release(&lease).await?;
        } // else: left to expire
    }
    if ctx.caps.fencing == Fencing::Strict {
        ensure!(
            tokens.windows(2).all(|w| w[0] < w[1]),
            "tokens did not strictly increase: {tokens:?}"
        );
    } else {
        ensure!(
            tokens.windows(2).all(|w| w[0] <= w[1]),
            "best-effort tokens went backwards: {tokens:?}"
        );
    }
    Ok(())
}

/// A holder paused past its lease (a frozen process, or one that stopped
/// renewing) is overtaken; its late write with the old token is rejected by
/// a fenced register, and its own view reports the loss.
pub async fn fenced_register_rejects_paused_holders_late_write(ctx: Arc<Ctx>) -> Outcome {
    let key = ctx.key("fenced");
    let ttl = ctx.ttl(Duration::from_millis(800));
    let register = FencedRegister::new();
    let other = ctx.client().await?;
    let old_token = if ctx.child_env.is_some() {
        let mut child = ctx.child()?;
        let token = child.acquire(&key, ttl).await?;
        register
            .write(token, "old holder, before the pause")
            .map_err(|t| Failed(format!("fresh token refused below {t}")))?;
        child.pause()?;
        let theirs = acquire_eventually(&other, &key, ttl, ctx.expiry_bound(ttl)).await;
        child.resume()?;
        let theirs = theirs?;
        register
            .write(theirs.fencing_token().get(), "new holder")
            .map_err(|t| Failed(format!("the new holder's token was refused below {t}")))?;
        // The old holder must find out it lost the lock.
        let deadline = Instant::now() + ctx.expiry_bound(ttl);
        loop {
            let status = child.status().await?;
            if status == "lost" {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "the resumed child still believes it holds the lock ({status})"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let answer = child.release().await?;
        ensure!(
            answer.starts_with("error"),
            "the overtaken child's release succeeded: {answer}"
        );
        other.release(&theirs).await?;
        token
    } else {
        let lease = ctx.backend.try_acquire(&key, ttl).await?;
        register
            .write(lease.fencing_token().get(), "old")
            .map_err(|t| Failed(format!("refused below {t}")))?;
        // The holder "pauses": it stops renewing; time passes without it.
        let theirs = acquire_eventually(&other, &key, ttl, ctx.expiry_bound(ttl)).await?;
        register
            .write(theirs.fencing_token().get(), "new holder")
            .map_err(|t| Failed(format!("the new holder's token was refused below {t}")))?;
        expect_err!(
            ctx.backend.extend(&lease, ttl).await,
            LockError::Lost { .. },
            "the paused holder's extend"
        );
        expect_err!(
            ctx.backend.release(&lease).await,
            LockError::NotHeld { .. } | LockError::Lost { .. },
            "the paused holder's release"
        );
        other.release(&theirs).await?;
        lease.fencing_token().get()
    };
    ensure!(
        register.write(old_token, "late write").is_err(),
        "the register accepted the paused holder's late write"
    );
    ensure!(
        register.value().as_deref() == Some("new holder"),
        "the register lost the new holder's value"
    );
    Ok(())
}
