//! A job that runs at most once per scheduled run across several instances
//! (ShedLock's use case), with `Locker::run_at_most_once`: every instance
//! fires the same schedule, its clock a little off; one instance runs each
//! run. The lock is held at least `AT_LEAST` (longer than the clocks'
//! skew, so a late instance does not run the same run again) and at most
//! `AT_MOST` (a hung job's lock ends). Nothing is kept around between runs:
//! the same program works on TTL stores and session stores alike.
//!
//! Run: `cargo run --example scheduler` (or set `LEASEHOLD_URL`).

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use leasehold::Ran;

/// A run fired more than `PERIOD - AT_LEAST - SKEW` late still holds the
/// lock when the next run fires, and that one is (rightly) skipped: with
/// 600 ms a loaded 2-core CI machine that fired a run 450 ms late skipped
/// the next. 1,000 ms leaves 580 ms.
const PERIOD: Duration = Duration::from_millis(1000);
const RUNS: u32 = 5;
const INSTANCES: u32 = 4;
/// How late the slowest instance's clock fires.
const SKEW: Duration = Duration::from_millis(120);
const AT_LEAST: Duration = Duration::from_millis(300);
const AT_MOST: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> ExitCode {
    let url = std::env::var("LEASEHOLD_URL").unwrap_or_else(|_| "memory://scheduler".to_owned());
    let executed: Arc<Vec<AtomicU32>> = Arc::new((0..RUNS).map(|_| AtomicU32::new(0)).collect());
    let mut lockers = Vec::new();
    for instance in 0..INSTANCES {
        let locker = match leasehold::connect(&url).await {
            Ok(locker) => locker,
            Err(e) => {
                eprintln!("connect {url}: {e}");
                return ExitCode::FAILURE;
            }
        };
        // Some stores open a session on the first lock (Postgres advisory
        // mode pins one per lease): take and free a lock of this instance's
        // own, so the first run does not wait for a connection.
        let warmed = match locker
            .try_lock(format!("scheduler-warm-up-{instance}"))
            .await
        {
            Ok(guard) => guard.release().await,
            Err(e) => Err(e),
        };
        if let Err(e) = warmed {
            eprintln!("instance {instance} could not take a lock of its own: {e}");
            return ExitCode::FAILURE;
        }
        lockers.push(locker);
    }
    // The schedule starts once every instance is up: a slow connection is
    // not clock skew.
    let started = tokio::time::Instant::now();
    let mut instances = Vec::new();
    for (instance, locker) in (0..INSTANCES).zip(lockers) {
        let executed = executed.clone();
        let skew = SKEW * instance / (INSTANCES - 1);
        instances.push(tokio::spawn(async move {
            for run in 0..RUNS {
                tokio::time::sleep_until(started + PERIOD * run + skew).await;
                let executed = &executed;
                let job = |token| async move {
                    executed[run as usize].fetch_add(1, Ordering::SeqCst);
                    println!(
                        "{:>5} ms: instance {instance} runs run {run} (token {token})",
                        started.elapsed().as_millis()
                    );
                };
                match locker
                    .run_at_most_once("job:nightly-report", AT_MOST, AT_LEAST, job)
                    .await
                {
                    Ok(Ran::Ran(..)) | Ok(Ran::Skipped) => {}
                    Err(e) => eprintln!("instance {instance}, run {run}: {e}"),
                }
            }
        }));
    }
    for instance in instances {
        instance.await.expect("instance task");
    }
    let counts: Vec<u32> = executed.iter().map(|c| c.load(Ordering::SeqCst)).collect();
    println!("{INSTANCES} instances, {RUNS} runs: executions per run {counts:?}");
    if counts.iter().all(|&c| c == 1) {
        println!("OK: every run executed exactly once");
        ExitCode::SUCCESS
    } else {
        println!("FAILED");
        ExitCode::FAILURE
    }
}
