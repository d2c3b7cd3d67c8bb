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

use std::sync::Arc;
use std::time::Duration;

use leasehold_benches::{steps, stores};
use leasehold_conformance::fixtures;
use leasehold_core::LockBackend;

async fn run(samples: usize, tasks: usize) -> Result<(), String> {
    let store = fixtures::start(&fixtures::redis_spec(false)).await?;
    let url = format!("redis://127.0.0.1:{}", store.port);
    let backend = stores::retry_connect("redis", Duration::from_secs(60), || async {
        leasehold_redis::RedisBackend::connect(&url)
            .await
            .map_err(stores::err)
    })
    .await?;
    let raw = stores::redis_raw(vec![stores::redis_conn(&url).await?]);
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
