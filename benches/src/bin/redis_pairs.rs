//! Runs `N` lock+unlock pairs of one step on one task against Redis, for an
//! instruction count: under callgrind the count is the same run after run,
//! where this machine's times swing by half.
//!
//! ```text
//! cargo build --release -p leasehold-benches --bin redis_pairs
//! valgrind --tool=callgrind target/release/redis_pairs backend 2000
//! valgrind --tool=callgrind target/release/redis_pairs none 2000
//! ```
//!
//! The difference of the two totals over `N` is the client's instructions
//! per pair (the server runs in its container, outside the count). Steps:
//! `raw` (leasehold's two scripts from bare redis-rs, as
//! `redis_lock_cost`), `backend` (`try_acquire` + `release`), `locker`
//! (through a default `Locker`), `none` (setup and warm-up only: the
//! baseline to subtract). `callgrind_annotate` on two steps' outputs shows
//! where the difference goes.

// The measured task's future nests the backend's and the Locker's; laying
// it out needs more than the default query depth (as the benchmark's).
#![recursion_limit = "256"]

use std::sync::Arc;

use leasehold_benches::harness::Op;
use leasehold_benches::{steps, stores};
use leasehold_core::LockBackend;

/// Pairs of every step before the counted ones: scripts loaded,
/// connections and the watchdog up, in every mode alike.
const WARM_UP: usize = 50;

async fn run(step: &str, pairs: usize) -> Result<(), String> {
    let (store, backend, raw) = stores::redis_stand_in().await?;
    let [(_, backend), (_, locker)] =
        steps::library_steps(Arc::new(backend) as Arc<dyn LockBackend>);
    let counted: Option<Op> = match step {
        "raw" => Some(raw.clone()),
        "backend" => Some(backend.clone()),
        "locker" => Some(locker.clone()),
        "none" => None,
        other => {
            return Err(format!(
                "unknown step {other:?}: raw, backend, locker or none"
            ));
        }
    };
    // On a spawned task, where application code runs.
    let measured = tokio::spawn(async move {
        for i in 0..WARM_UP {
            for op in [&raw, &backend, &locker] {
                op(format!("pairs/warm/{i}")).await?;
            }
        }
        if let Some(op) = counted {
            for i in 0..pairs {
                op(format!("pairs/{}", i % 64)).await?;
            }
        }
        Ok::<(), String>(())
    });
    measured.await.map_err(stores::err)??;
    drop(store);
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let step = args.first().map_or("backend", String::as_str).to_owned();
    let pairs = match args.get(1).map(|n| n.parse::<usize>()) {
        None => 2000,
        Some(Ok(n)) => n,
        Some(Err(e)) => {
            eprintln!("redis_pairs: the pair count: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    leasehold_benches::finish("redis_pairs", run(&step, pairs).await)
}
