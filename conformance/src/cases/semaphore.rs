//! Counting semaphores (selected by `Capabilities::semaphores`).
//!
//! - `semaphore_admits_at_most_its_permits`: N permits are granted, the next
//!   is refused until one is released; tokens strictly increase.
//! - `semaphore_history_never_exceeds_its_permits`: 16 tasks on 4 clients
//!   compete for 3 permits; never more than 3 valid holders at once (the
//!   history checker), tokens in order.
//! - `killed_permit_holder_frees_its_permit`: a permit held by a killed
//!   process frees within TTL + slack.
//! - `permits_never_leak`: after 1,000 random acquisitions, releases,
//!   cancellations and crashed clients, every permit can be taken again.

use std::sync::Arc;
use std::time::Duration;

use leasehold_core::{Fencing, LockBackend, LockError, LockKind, WaitPolicy};
use tokio::time::Instant;

use crate::case::{Case, Ctx, Failed, Outcome, case, ensure, select};
use crate::cases::faults::KILLED_HOLDER_SLACK;
use crate::cases::rw::{expect_refused, granted_eventually};
use crate::history::{Holding, SharedHistory, Side};

/// This family's cases, in the order listed above.
pub(crate) fn cases() -> Vec<Case> {
    vec![
        case!(semaphore_admits_at_most_its_permits, select::semaphores),
        case!(
            semaphore_history_never_exceeds_its_permits,
            select::semaphores
        ),
        case!(
            killed_permit_holder_frees_its_permit,
            select::semaphore_child
        ),
        case!(permits_never_leak, select::semaphores),
    ]
}

fn strict(ctx: &Ctx) -> bool {
    ctx.caps.fencing == Fencing::Strict
}

/// Three permits go to three clients, the fourth is refused; after one
/// release the fourth is granted. Each grant's token exceeds the one before.
pub async fn semaphore_admits_at_most_its_permits(ctx: Arc<Ctx>) -> Outcome {
    let key = ctx.key("sem");
    let ttl = ctx.ttl(Duration::from_secs(30));
    let kind = LockKind::Permit { permits: 3 };
    let mut clients = Vec::new();
    let mut leases = Vec::new();
    for _ in 0..3 {
        let client = ctx.client().await?;
        leases.push(client.try_acquire_kind(&key, kind, ttl).await?);
        clients.push(client);
    }
    expect_refused(
        &*ctx.backend,
        &key,
        kind,
        ttl,
        "three permits of three held",
    )
    .await?;
    let renewed = clients[1].extend(&leases[1], ttl).await?;
    clients[1].release(&renewed).await?;
    let fourth = ctx.backend.try_acquire_kind(&key, kind, ttl).await?;
    ensure!(
        fourth.kind() == kind,
        "a permit grant says it is {}",
        fourth.kind()
    );
    if strict(&ctx) {
        let tokens: Vec<u64> = leases
            .iter()
            .chain([&fourth])
            .map(|l| l.fencing_token().get())
            .collect();
        ensure!(
            tokens.windows(2).all(|w| w[0] < w[1]),
            "permit tokens in grant order did not strictly increase: {tokens:?}"
        );
    }
    ctx.backend.release(&fourth).await?;
    clients[0].release(&leases[0]).await?;
    clients[2].release(&leases[2]).await?;
    expect_err_not_held(&*clients[0], &leases[0]).await
}

async fn expect_err_not_held(
    backend: &dyn LockBackend,
    lease: &leasehold_core::Lease,
) -> Result<(), Failed> {
    crate::expect_err!(
        backend.release(lease).await,
        LockError::NotHeld { .. } | LockError::Lost { .. },
        "releasing a permit twice"
    );
    Ok(())
}

/// Sixteen tasks on four clients take one of three permits, hold it a few
/// milliseconds and give it back: never more than three at once, and
/// tokens in order.
pub async fn semaphore_history_never_exceeds_its_permits(ctx: Arc<Ctx>) -> Outcome {
    const CLIENTS: usize = 4;
    const TASKS_PER_CLIENT: usize = 4;
    const ROUNDS: usize = 4;
    const PERMITS: u32 = 3;
    let key = ctx.key("sem-history");
    let ttl = ctx.ttl(Duration::from_secs(10));
    let history = Arc::new(SharedHistory::new());
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let locker = ctx.locker(ctx.client().await?, ttl, Duration::from_secs(60));
        for task in 0..TASKS_PER_CLIENT {
            let (locker, key, history) = (locker.clone(), key.clone(), history.clone());
            let holder = (client * TASKS_PER_CLIENT + task) as u64;
            tasks.push(tokio::spawn(async move {
                let semaphore = locker.semaphore(&key, PERMITS)?;
                for _ in 0..ROUNDS {
                    let asked = Instant::now();
                    let guard = semaphore.acquire().await?;
                    let start = Instant::now();
                    tokio::time::sleep(Duration::from_millis(3)).await;
                    let end = Instant::now().min(guard.valid_until());
                    history.record_asked(
                        Holding {
                            holder,
                            token: guard.fencing_token().get(),
                            start,
                            end,
                        },
                        Side::Shared,
                        asked,
                    );
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
    let violations = history.semaphore_violations(PERMITS as usize, strict(&ctx));
    ensure!(
        violations.is_empty(),
        "the history checker found violations: {violations:?}"
    );
    Ok(())
}

/// The only permit, held by a child process that is then killed, frees
/// within its TTL + slack; the next permit's token is higher.
pub async fn killed_permit_holder_frees_its_permit(ctx: Arc<Ctx>) -> Outcome {
    let key = ctx.key("sem-killed");
    let ttl = ctx.ttl(Duration::from_millis(800));
    let kind = LockKind::Permit { permits: 1 };
    let mut child = ctx.child()?;
    let token = child.acquire_kind(&key, kind, ttl).await?;
    expect_refused(&*ctx.backend, &key, kind, ttl, "while the child holds it").await?;
    child.kill().await?;
    let lease = granted_eventually(
        &*ctx.backend,
        &key,
        kind,
        ttl,
        ttl + KILLED_HOLDER_SLACK,
        "after the permit's holder was killed",
    )
    .await?;
    if strict(&ctx) {
        ensure!(
            lease.fencing_token().get() > token,
            "token {} after the killed holder's {token}",
            lease.fencing_token()
        );
    }
    ctx.backend.release(&lease).await?;
    Ok(())
}

/// 1,000 operations on a semaphore of 4 from 8 tasks: acquisitions released
/// at once, acquisitions cancelled at a random point (the call is dropped),
/// and, every so often, a client that takes a permit and is dropped without
/// releasing (a crash). Afterwards every permit is free again within the
/// crashed clients' TTL: none leaked.
pub async fn permits_never_leak(ctx: Arc<Ctx>) -> Outcome {
    const OPERATIONS: u64 = 1_000;
    const TASKS: u64 = 8;
    const CRASH_EVERY: u64 = 100;
    const PERMITS: u32 = 4;
    let key = ctx.key("sem-leak");
    let ttl = ctx.ttl(Duration::from_secs(2));
    let kind = LockKind::Permit { permits: PERMITS };
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let backend = ctx.client().await?;
        let (key, ctx) = (key.clone(), ctx.clone());
        tasks.push(tokio::spawn(async move {
            let wait = WaitPolicy::new(Duration::from_secs(30))
                .with_delays(Duration::from_millis(2), Duration::from_millis(50));
            // A small deterministic generator: the same run every time.
            let mut state = task.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let mut next = move || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state
            };
            for op in (task..OPERATIONS).step_by(TASKS as usize) {
                let roll = next();
                if op.is_multiple_of(CRASH_EVERY) {
                    let crashed = ctx.client().await?;
                    if let Ok(lease) = crashed.acquire_kind(&key, kind, ttl, &wait).await {
                        drop(lease);
                    }
                    drop(crashed);
                } else if roll.is_multiple_of(3) {
                    let cut = Duration::from_micros(roll % 3_000);
                    let call = backend.acquire_kind(&key, kind, ttl, &wait);
                    if let Ok(Ok(lease)) = tokio::time::timeout(cut, call).await {
                        backend.release(&lease).await?;
                    }
                } else {
                    let lease = backend.acquire_kind(&key, kind, ttl, &wait).await?;
                    backend.release(&lease).await?;
                }
            }
            Ok::<_, Failed>(())
        }));
    }
    for task in tasks {
        task.await
            .map_err(|e| Failed(format!("a task panicked: {e}")))??;
    }
    // Every permit can be taken again once the crashed clients' leases ran
    // out, and one more is refused.
    let bound = ctx.expiry_bound(ttl);
    let checker = ctx.client().await?;
    // Long enough that the checker's own permits outlive the wait.
    let held_for = ctx.ttl(Duration::from_secs(120));
    let deadline = Instant::now() + bound;
    let mut held = Vec::new();
    while held.len() < PERMITS as usize {
        match checker.try_acquire_kind(&key, kind, held_for).await {
            Ok(lease) => held.push(lease),
            Err(LockError::Contended { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => {
                return Err(Failed(format!(
                    "only {} of {PERMITS} permits free {bound:?} after the last operation \
                     (leaked): {e}",
                    held.len()
                )));
            }
        }
    }
    expect_refused(
        &*checker,
        &key,
        kind,
        ttl,
        "every permit taken by the checker",
    )
    .await?;
    for lease in held {
        checker.release(&lease).await?;
    }
    Ok(())
}
