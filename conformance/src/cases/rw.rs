//! Reader–writer locks (selected by `Capabilities::rw_locks`).
//!
//! - `readers_share_and_a_writer_excludes`: two readers hold at once; a
//!   writer is refused while they do and refuses everyone while it holds;
//!   tokens order as `LockKind` promises.
//! - `rw_history_has_no_writer_overlap`: many tasks on several clients read
//!   and write; no writer overlaps anyone (the history checker) and tokens
//!   keep their order.
//! - `waiting_writer_is_served_while_readers_keep_arriving`: a stream of
//!   overlapping readers does not starve a waiting writer, and new readers
//!   are refused while it waits.
//! - `abandoned_writer_wait_leaves_nothing_held`: a writer whose wait timed
//!   out or was dropped holds no reader back for longer than its TTL.
//! - `killed_rw_holders_free_the_lock`: a killed writer (reader) frees the
//!   lock for readers (a writer) within TTL + slack.
//! - `rw_lock_is_not_the_mutex_of_its_key`: the mutex, the reader–writer lock
//!   and the semaphore of one key are independent.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use leasehold_core::{
    Fencing, Key, Lease, LockBackend, LockError, LockGuard, LockKind, LockOptions, WaitPolicy,
};
use tokio::time::Instant;

use crate::case::{Case, Ctx, Failed, Outcome, case, ensure, select};
use crate::cases::faults::KILLED_HOLDER_SLACK;
use crate::expect_err;
use crate::history::{Holding, SharedHistory, Side};
use crate::support::eventually_ok;

/// This family's cases, in the order listed above.
pub(crate) fn cases() -> Vec<Case> {
    vec![
        case!(readers_share_and_a_writer_excludes, select::rw_locks),
        case!(rw_history_has_no_writer_overlap, select::rw_locks),
        case!(
            waiting_writer_is_served_while_readers_keep_arriving,
            select::rw_locks
        ),
        case!(abandoned_writer_wait_leaves_nothing_held, select::rw_locks),
        case!(killed_rw_holders_free_the_lock, select::rw_child),
        case!(rw_lock_is_not_the_mutex_of_its_key, select::rw_locks),
    ]
}

/// Checks that one attempt at `kind` on `key` is `Contended`; a grant by
/// mistake is released before failing.
pub(crate) async fn expect_refused(
    backend: &dyn LockBackend,
    key: &Key,
    kind: LockKind,
    ttl: Duration,
    why: &str,
) -> Result<(), Failed> {
    expect_err!(
        backend.try_acquire_kind(key, kind, ttl).await,
        LockError::Contended { .. },
        format!("{why}: try_acquire_kind({kind}) of {key:?}"),
        lease => backend.release(&lease).await
    );
    Ok(())
}

/// Tries `kind` on `key` until it is granted or `within` passes.
pub(crate) async fn granted_eventually(
    backend: &dyn LockBackend,
    key: &Key,
    kind: LockKind,
    ttl: Duration,
    within: Duration,
    what: &str,
) -> Result<Lease, Failed> {
    let deadline = Instant::now() + within;
    loop {
        match backend.try_acquire_kind(key, kind, ttl).await {
            Ok(lease) => return Ok(lease),
            Err(e) if e.is_retryable() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => {
                return Err(Failed(format!(
                    "{what}: {kind} of {key:?} not granted within {within:?}: last error {e}"
                )));
            }
        }
    }
}

fn strict(ctx: &Ctx) -> bool {
    ctx.caps.fencing == Fencing::Strict
}

/// Two readers hold together; a writer is refused while they do; once they
/// release, the writer holds and refuses readers and writers; tokens: the
/// writer's above both readers', the next reader's above the writer's.
pub async fn readers_share_and_a_writer_excludes(ctx: Arc<Ctx>) -> Outcome {
    let key = ctx.key("rw");
    let ttl = ctx.ttl(Duration::from_secs(30));
    let (a, b) = (ctx.client().await?, ctx.client().await?);
    let first = a.try_acquire_kind(&key, LockKind::Read, ttl).await?;
    ensure!(
        first.kind() == LockKind::Read,
        "a read grant says it is {}",
        first.kind()
    );
    let second = b.try_acquire_kind(&key, LockKind::Read, ttl).await?;
    expect_refused(
        &*ctx.backend,
        &key,
        LockKind::Write,
        ttl,
        "two readers hold",
    )
    .await?;
    a.release(&first).await?;
    expect_refused(
        &*ctx.backend,
        &key,
        LockKind::Write,
        ttl,
        "one reader holds",
    )
    .await?;
    b.release(&second).await?;
    let writer = ctx
        .backend
        .try_acquire_kind(&key, LockKind::Write, ttl)
        .await?;
    expect_refused(&*a, &key, LockKind::Read, ttl, "a writer holds").await?;
    expect_refused(&*b, &key, LockKind::Write, ttl, "a writer holds").await?;
    let renewed = ctx.backend.extend(&writer, ttl).await?;
    ctx.backend.release(&renewed).await?;
    let reader = a.try_acquire_kind(&key, LockKind::Read, ttl).await?;
    if strict(&ctx) {
        let (r1, r2, w, r3) = (
            first.fencing_token(),
            second.fencing_token(),
            writer.fencing_token(),
            reader.fencing_token(),
        );
        ensure!(
            w > r1 && w > r2 && r3 > w,
            "tokens out of order: readers {r1} and {r2}, then writer {w}, then reader {r3}"
        );
    }
    a.release(&reader).await?;
    expect_err!(
        a.release(&reader).await,
        LockError::NotHeld { .. } | LockError::Lost { .. },
        "releasing a read grant twice"
    );
    Ok(())
}

/// Tasks on several clients take the lock to read (most rounds) or write,
/// each holding a few milliseconds: no writer overlaps anyone, and tokens
/// keep the promised order.
pub async fn rw_history_has_no_writer_overlap(ctx: Arc<Ctx>) -> Outcome {
    const CLIENTS: usize = 3;
    const TASKS_PER_CLIENT: usize = 3;
    const ROUNDS: usize = 6;
    let key = ctx.key("rw-history");
    let ttl = ctx.ttl(Duration::from_secs(10));
    let history = Arc::new(SharedHistory::new());
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let locker = ctx.locker(ctx.client().await?, ttl, Duration::from_secs(60));
        for task in 0..TASKS_PER_CLIENT {
            let (locker, key, history) = (locker.clone(), key.clone(), history.clone());
            let holder = (client * TASKS_PER_CLIENT + task) as u64;
            tasks.push(tokio::spawn(async move {
                let lock = locker.rw_lock(&key)?;
                for round in 0..ROUNDS {
                    let writes = (holder as usize + round).is_multiple_of(3);
                    let asked = Instant::now();
                    let guard = if writes {
                        lock.write().await?
                    } else {
                        lock.read().await?
                    };
                    let start = Instant::now();
                    tokio::time::sleep(Duration::from_millis(3)).await;
                    let end = Instant::now().min(guard.valid_until());
                    let side = if writes {
                        Side::Exclusive
                    } else {
                        Side::Shared
                    };
                    history.record_asked(
                        Holding {
                            holder,
                            token: guard.fencing_token().get(),
                            start,
                            end,
                        },
                        side,
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
    ensure!(
        history.len() == CLIENTS * TASKS_PER_CLIENT * ROUNDS,
        "{} holdings recorded",
        history.len()
    );
    let violations = history.rw_violations(strict(&ctx));
    ensure!(
        violations.is_empty(),
        "the history checker found violations: {violations:?}"
    );
    Ok(())
}

/// A chain of readers where each lets go only once the next one holds (or
/// after a short wait for it), so without writer preference some reader
/// always holds and a waiting writer starves, however the machine schedules
/// the tasks. The writer must still get the lock (new readers are refused
/// while it waits, the holding one gives up waiting for its successor), and
/// while it holds a fresh reader is refused.
pub async fn waiting_writer_is_served_while_readers_keep_arriving(ctx: Arc<Ctx>) -> Outcome {
    let key = ctx.key("starve");
    let ttl = ctx.ttl(Duration::from_secs(10));
    let readers = ctx.locker(ctx.client().await?, ttl, Duration::from_secs(30));
    let writer_client = ctx.client().await?;
    let written = Arc::new(AtomicBool::new(false));
    let stream = {
        let (readers, key, written) = (readers.clone(), key.clone(), written.clone());
        tokio::spawn(async move {
            let lock = readers.rw_lock(&key)?;
            let successor_wait = LockOptions::new().wait(Duration::from_millis(150));
            let mut holding: Option<LockGuard> = None;
            while !written.load(Ordering::SeqCst) {
                // Each reader runs on its own task (a task may not hold the
                // lock twice); the chain hands the guard along.
                let next = {
                    let (lock, options) = (lock.clone(), successor_wait.clone());
                    tokio::spawn(async move { lock.read_with(&options).await })
                        .await
                        .map_err(|e| LockError::backend("test", e.to_string()))?
                };
                match next {
                    Ok(guard) => {
                        if let Some(previous) = holding.replace(guard) {
                            previous.release().await?;
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err(LockError::WaitTimedOut { .. }) => {
                        // Refused: a writer waits. Let it in.
                        if let Some(previous) = holding.take() {
                            previous.release().await?;
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
            if let Some(previous) = holding.take() {
                previous.release().await?;
            }
            Ok::<_, LockError>(())
        })
    };
    // Let the stream get going: some reader holds.
    let probe = ctx.client().await?;
    eventually_ok(
        Duration::from_secs(10),
        "a reader of the stream holds",
        || {
            let (probe, key) = (probe.clone(), key.clone());
            async move {
                match probe.try_acquire_kind(&key, LockKind::Write, ttl).await {
                    Ok(lease) => {
                        probe.release(&lease).await?;
                        Ok(false)
                    }
                    Err(LockError::Contended { .. }) => Ok(true),
                    Err(e) => Err(e.into()),
                }
            }
        },
    )
    .await?;
    let writer = {
        let (client, key) = (writer_client.clone(), key.clone());
        tokio::spawn(async move {
            let wait = WaitPolicy::new(Duration::from_secs(20))
                .with_delays(Duration::from_millis(5), Duration::from_millis(100));
            client.acquire_kind(&key, LockKind::Write, ttl, &wait).await
        })
    };
    let granted = writer
        .await
        .map_err(|e| Failed(format!("the writer task panicked: {e}")))?;
    written.store(true, Ordering::SeqCst);
    let lease = match granted {
        Ok(lease) => lease,
        Err(e) => {
            let _ = stream.await;
            return Err(Failed(format!(
                "a writer waiting behind a stream of readers was not served: {e}"
            )));
        }
    };
    expect_refused(
        &*probe,
        &key,
        LockKind::Read,
        ttl,
        "the writer that waited holds",
    )
    .await?;
    writer_client.release(&lease).await?;
    stream
        .await
        .map_err(|e| Failed(format!("the reader stream panicked: {e}")))??;
    Ok(())
}

/// A writer waiting behind a reader holds new readers back only while it
/// waits: after its wait times out, or its call is dropped, readers get the
/// lock again within the writer's TTL (the latest a stale registration may
/// last), and the lock is free for everyone once the reader leaves.
pub async fn abandoned_writer_wait_leaves_nothing_held(ctx: Arc<Ctx>) -> Outcome {
    let key = ctx.key("abandoned");
    let ttl = ctx.ttl(Duration::from_secs(2));
    let bound = ctx.expiry_bound(ttl);
    let holder = ctx.client().await?;
    let reader = holder
        .try_acquire_kind(&key, LockKind::Read, ctx.ttl(Duration::from_secs(120)))
        .await?;
    let writer = ctx.client().await?;
    // A wait that runs out.
    let short = WaitPolicy::new(Duration::from_millis(300))
        .with_delays(Duration::from_millis(5), Duration::from_millis(50));
    expect_err!(
        writer.acquire_kind(&key, LockKind::Write, ttl, &short).await,
        LockError::WaitTimedOut { .. },
        "a writer waiting behind a reader past its deadline",
        lease => writer.release(&lease).await
    );
    let other = ctx.client().await?;
    let again = granted_eventually(
        &*other,
        &key,
        LockKind::Read,
        ttl,
        bound,
        "a reader after a writer's wait timed out",
    )
    .await?;
    other.release(&again).await?;
    // A wait that is dropped once it holds readers back.
    let long = WaitPolicy::new(Duration::from_secs(60))
        .with_delays(Duration::from_millis(5), Duration::from_millis(50));
    let waiting = {
        let (writer, key) = (writer.clone(), key.clone());
        tokio::spawn(async move { writer.acquire_kind(&key, LockKind::Write, ttl, &long).await })
    };
    let registered = eventually_ok(bound, "the waiting writer holds readers back", || {
        let (other, key) = (other.clone(), key.clone());
        async move {
            match other.try_acquire_kind(&key, LockKind::Read, ttl).await {
                Ok(lease) => {
                    other.release(&lease).await?;
                    Ok(false)
                }
                Err(LockError::Contended { .. }) => Ok(true),
                Err(e) => Err(e.into()),
            }
        }
    })
    .await;
    waiting.abort();
    let _ = waiting.await;
    registered?;
    let again = granted_eventually(
        &*other,
        &key,
        LockKind::Read,
        ttl,
        bound,
        "a reader after a waiting writer's call was dropped",
    )
    .await?;
    other.release(&again).await?;
    holder.release(&reader).await?;
    let write = granted_eventually(
        &*other,
        &key,
        LockKind::Write,
        ttl,
        bound,
        "a writer once everyone left",
    )
    .await?;
    other.release(&write).await?;
    Ok(())
}

/// A writer in a child process killed without releasing frees the lock for
/// readers within its TTL + slack; a killed reader frees it for a writer.
pub async fn killed_rw_holders_free_the_lock(ctx: Arc<Ctx>) -> Outcome {
    let ttl = ctx.ttl(Duration::from_millis(800));
    let bound = ttl + KILLED_HOLDER_SLACK;
    for (held, next) in [
        (LockKind::Write, LockKind::Read),
        (LockKind::Read, LockKind::Write),
    ] {
        let key = ctx.key(&format!("killed-{held}"));
        let mut child = ctx.child()?;
        let token = child.acquire_kind(&key, held, ttl).await?;
        expect_refused(&*ctx.backend, &key, next, ttl, "while the child holds").await?;
        child.kill().await?;
        let lease = granted_eventually(
            &*ctx.backend,
            &key,
            next,
            ttl,
            bound,
            &format!("after a {held} holder was killed"),
        )
        .await?;
        if strict(&ctx) {
            ensure!(
                lease.fencing_token().get() > token,
                "{next} token {} after the killed {held}'s {token}",
                lease.fencing_token()
            );
        }
        ctx.backend.release(&lease).await?;
    }
    Ok(())
}

/// The mutex, the reader–writer lock and (where the backend has them) the
/// semaphore of one key are three locks: holding one blocks none of the
/// others.
pub async fn rw_lock_is_not_the_mutex_of_its_key(ctx: Arc<Ctx>) -> Outcome {
    let key = ctx.key("families");
    let ttl = ctx.ttl(Duration::from_secs(30));
    let mutex = ctx.backend.try_acquire(&key, ttl).await?;
    let writer = ctx
        .backend
        .try_acquire_kind(&key, LockKind::Write, ttl)
        .await?;
    let permit = if ctx.caps.semaphores {
        Some(
            ctx.backend
                .try_acquire_kind(&key, LockKind::Permit { permits: 1 }, ttl)
                .await?,
        )
    } else {
        None
    };
    ctx.backend.release(&writer).await?;
    ensure!(
        ctx.backend.inspect(&key).await?.is_some(),
        "releasing the writer freed the mutex of the same key"
    );
    ctx.backend.release(&mutex).await?;
    if let Some(permit) = permit {
        ctx.backend.release(&permit).await?;
    }
    Ok(())
}
