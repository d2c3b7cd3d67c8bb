//! What the Redis backend and a `Locker` over it cost over leasehold's two
//! scripts sent from bare redis-rs, in one run, interleaved: p50 of each as a
//! ratio to the bare pair (from the main thread, then from a spawned task
//! with the client's CPU per pair), then operations per second with
//! `--tasks` tasks (default 64, each on its own key) as a ratio to the bare
//! pair's (see `leasehold_benches::steps`):
//!
//! `cargo run --release -p leasehold-benches --bin redis_lock_cost [-- --samples N --tasks N]`
//!
//! - raw: the acquire script and the release script by `EVALSHA` on one
//!   multiplexed connection (the benchmark's raw baseline);
//! - backend: `try_acquire` + `release`;
//! - locker: `Locker::try_lock` + `release`: the gap to the backend's row is
//!   what the guard costs (its watch, the task's held-lock record, metrics).
//!
//! Redis starts in a second, so this is the quickest way to see what a
//! change to `Locker` or its watchdog does to every store's figures.

// The run's future nests the stand-in's setup and every step's; laying it
// out needs more than the default query depth (as the benchmark's).
#![recursion_limit = "256"]

use std::sync::Arc;

use leasehold_benches::{steps, stores};
use leasehold_core::LockBackend;

async fn run(samples: usize, tasks: usize) -> Result<(), String> {
    let (store, backend, raw) = stores::redis_stand_in().await?;
    let backend: Arc<dyn LockBackend> = Arc::new(backend);
    steps::compare(
        "redis-lock-cost",
        "Redis 7 stand-in",
        vec![("raw: EVALSHA acquire, EVALSHA release", raw)],
        backend,
        samples,
        tasks,
    )
    .await?;
    drop(store);
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let (samples, tasks) = steps::options();
    leasehold_benches::finish("redis_lock_cost", run(samples, tasks).await)
}
