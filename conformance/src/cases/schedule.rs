//! At-most-once scheduling (`Locker::run_at_most_once`) on the store.
//!
//! - `scheduled_runs_execute_once_across_nodes`: six nodes, each with its
//!   own client, fire the same schedule with skewed clocks; every run
//!   executes exactly once.
//! - `a_hung_job_is_cancelled_and_frees_its_lock_after_at_most_for`: the job
//!   is cancelled with `Lost` once `at_most_for` passes, and the next node
//!   runs the job.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use leasehold_core::{LockError, Locker, Ran};
use tokio::time::Instant;

use crate::case::{Case, Ctx, Failed, Outcome, case, ensure, select};

/// This family's cases, in the order listed above.
pub(crate) fn cases() -> Vec<Case> {
    vec![
        case!(scheduled_runs_execute_once_across_nodes, select::always),
        case!(
            a_hung_job_is_cancelled_and_frees_its_lock_after_at_most_for,
            select::always
        ),
    ]
}

const NODES: usize = 6;
const RUNS: usize = 6;
/// The schedule's period, and how late a node's clock may fire a run. A run
/// holds the lock for `at_least_for` (500 ms) from when it fired, so a run
/// that fired more than `PERIOD - 500 ms - MAX_SKEW` late still holds it
/// when the next run fires, and that one is (rightly) skipped: with a
/// 1,000 ms period a machine that stalled 350 ms skipped two runs of eight
/// (seen on 2 cores with a build beside the tests). 1,500 ms leaves 850 ms.
const PERIOD: Duration = Duration::from_millis(1500);
const MAX_SKEW: Duration = Duration::from_millis(150);

/// Six nodes fire six runs of one schedule, each node up to 150 ms late
/// (a skewed clock); `at_least_for` (500 ms) covers the skew, so every run
/// executes exactly once.
pub async fn scheduled_runs_execute_once_across_nodes(ctx: Arc<Ctx>) -> Outcome {
    let name = ctx.key("job");
    let at_most_for = ctx.ttl(Duration::from_secs(5));
    let at_least_for = Duration::from_millis(500);
    let executions: Arc<Vec<AtomicU32>> = Arc::new((0..RUNS).map(|_| AtomicU32::new(0)).collect());
    // Every node connects, and takes and frees a lock of its own, before the
    // schedule starts: a slow connection (TLS, a loaded machine, a store that
    // opens a session on the first lock) is not clock skew, and a node still
    // connecting when run 0 has come and gone would fire it late.
    let mut lockers = Vec::new();
    for node in 0..NODES {
        let locker = Locker::from_arc(ctx.client().await?);
        let warm = ctx.key(&format!("warm-up-{node}"));
        locker
            .try_lock(&warm)
            .await
            .map_err(|e| Failed(format!("node {node} could not take a lock of its own: {e}")))?
            .release()
            .await
            .map_err(|e| Failed(format!("node {node} could not free its own lock: {e}")))?;
        lockers.push(locker);
    }
    let start = Instant::now() + Duration::from_millis(200);
    let mut nodes = Vec::new();
    for (node, locker) in lockers.into_iter().enumerate() {
        let (name, executions) = (name.clone(), executions.clone());
        let skew = MAX_SKEW * node as u32 / (NODES as u32 - 1);
        nodes.push(tokio::spawn(async move {
            for run in 0..RUNS {
                tokio::time::sleep_until(start + PERIOD * run as u32 + skew).await;
                let executions = &executions;
                let outcome = locker
                    .run_at_most_once(&name, at_most_for, at_least_for, |_| async move {
                        executions[run].fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    })
                    .await;
                if let Err(error) = outcome {
                    return Err(format!("node {node}, run {run}: {error}"));
                }
            }
            Ok(())
        }));
    }
    for node in nodes {
        node.await
            .map_err(|e| Failed(format!("a node's task failed: {e}")))?
            .map_err(Failed)?;
    }
    let counts: Vec<u32> = executions
        .iter()
        .map(|c| c.load(Ordering::SeqCst))
        .collect();
    ensure!(
        counts.iter().all(|&c| c == 1),
        "each run should execute exactly once across {NODES} nodes; executions per run: {counts:?}"
    );
    Ok(())
}

/// A job that hangs is cancelled with `Lost` once `at_most_for` passes, and
/// its lock is free for the next node's run soon after.
pub async fn a_hung_job_is_cancelled_and_frees_its_lock_after_at_most_for(
    ctx: Arc<Ctx>,
) -> Outcome {
    let name = ctx.key("hung");
    let at_most_for = ctx.ttl(Duration::from_millis(800));
    let hung = Locker::from_arc(ctx.backend.clone());
    let started = Instant::now();
    let outcome = tokio::time::timeout(
        at_most_for + Duration::from_secs(10),
        hung.run_at_most_once(&name, at_most_for, Duration::ZERO, |_| {
            std::future::pending::<()>()
        }),
    )
    .await
    .map_err(|_| Failed("the hung job was never cancelled".into()))?;
    ensure!(
        matches!(outcome, Err(LockError::Lost { .. })),
        "a hung job should end with Lost, got {outcome:?}"
    );
    // Validity ends a drift allowance (about 1 %) before the TTL counted
    // from the call, so the cancellation may come that much earlier.
    ensure!(
        started.elapsed() >= at_most_for.mul_f64(0.95),
        "the job was cancelled after {:?}, well before at_most_for ({at_most_for:?})",
        started.elapsed()
    );
    let next = Locker::from_arc(ctx.client().await?);
    let bound = ctx.expiry_bound(at_most_for);
    let deadline = Instant::now() + bound;
    loop {
        match next
            .run_at_most_once(&name, at_most_for, Duration::ZERO, |_| async {})
            .await?
        {
            Ran::Ran(..) => return Ok(()),
            Ran::Skipped if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ran::Skipped => {
                return Err(Failed(format!(
                    "the next node could not run the job within {bound:?} after the hung one was cancelled"
                )));
            }
        }
    }
}
