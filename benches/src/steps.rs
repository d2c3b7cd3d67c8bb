//! What a backend's recipe costs over the store's bare lock, step by step:
//! each step a lock+unlock built from more of the recipe, measured in one
//! run, interleaved, as a ratio to the first (the bare pair). The
//! `*_queue_cost` binaries use it.

use std::sync::Arc;
use std::time::Duration;

use leasehold_core::{Key, LockBackend, Locker};

use crate::harness::{self, Op};
use crate::stores::{err, op};

/// Throughput rounds: each runs every step once, in turn. The first is a
/// warm-up, not counted: the server's JIT and caches made the first
/// round's figures swing by a factor of two (ZooKeeper).
const ROUNDS: usize = 6;
/// Each step's throughput window.
const WINDOW: Duration = Duration::from_millis(2500);

/// The library's last two steps over `backend`: its own `try_acquire` +
/// `release`, then the same through a default [`Locker`].
fn library_steps(backend: Arc<dyn LockBackend>) -> [(&'static str, Op); 2] {
    let locker = Locker::builder_from_arc(backend.clone()).build();
    [
        ("backend try_acquire + release", backend_pair(backend)),
        ("Locker try_lock + release", locker_pair(locker)),
    ]
}

/// Each step's median of its rounds' rates (each step has at least one).
pub fn medians(rates: &mut [Vec<f64>]) -> Vec<f64> {
    rates
        .iter_mut()
        .map(|rates| {
            rates.sort_by(f64::total_cmp);
            rates[rates.len() / 2]
        })
        .collect()
}

/// The `--samples` (default 1000) and `--tasks` (default 64) options.
pub fn options() -> (usize, usize) {
    (
        crate::flag("--samples").unwrap_or(1000),
        crate::flag("--tasks").unwrap_or(64),
    )
}

/// `backend.try_acquire` + `release`, keys under `backend/`.
fn backend_pair(backend: Arc<dyn LockBackend>) -> Op {
    op(move |key: String| {
        let backend = backend.clone();
        async move {
            let key = Key::new(format!("backend/{key}")).map_err(err)?;
            let lease = backend
                .try_acquire(&key, Duration::from_secs(10))
                .await
                .map_err(err)?;
            backend.release(&lease).await.map_err(err)
        }
    })
}

/// `locker.try_lock` + `release`, keys under `locker/`.
fn locker_pair(locker: Locker) -> Op {
    op(move |key: String| {
        let locker = locker.clone();
        async move {
            let guard = locker
                .try_lock(format!("locker/{key}"))
                .await
                .map_err(err)?;
            guard.release().await.map_err(err)
        }
    })
}

/// Measures `store_steps` (name, lock+unlock sent straight from the
/// store's client; the first is the bare pair every ratio divides by), then
/// `backend`'s own pair and a [`Locker`]'s over it, and prints two tables:
/// latency p50/p99 over `samples` interleaved samples, then ops/s with
/// `tasks` tasks, each on its own key, the median of interleaved rounds
/// after an uncounted warm-up round. `label` prefixes the keys; `store`
/// names the store in the heading.
pub async fn compare(
    label: &str,
    store: &str,
    store_steps: Vec<(&'static str, Op)>,
    backend: Arc<dyn LockBackend>,
    samples: usize,
    tasks: usize,
) -> Result<(), String> {
    let steps: Vec<_> = store_steps
        .into_iter()
        .chain(library_steps(backend))
        .collect();
    let ops: Vec<Op> = steps.iter().map(|(_, op)| op.clone()).collect();
    let p = harness::latency(label, &ops, samples, samples / 10).await?;
    println!("{store} (container, loopback), {samples} samples, interleaved");
    println!("| steps | p50 | p99 | p50 / raw p50 |");
    println!("|---|---|---|---|");
    for ((name, _), p50) in steps.iter().zip(&p) {
        println!(
            "| {name} | {:.0} µs | {:.0} µs | {:.2} |",
            p50.p50,
            p50.p99,
            p50.p50 / p[0].p50
        );
    }
    let mut rates = vec![Vec::with_capacity(ROUNDS); ops.len()];
    for round in 0..ROUNDS {
        for (i, op) in ops.iter().enumerate() {
            // Keys of a step's own: a step may leave nodes or rows behind
            // that another step's keys must not meet.
            let rate = harness::throughput(&format!("{label}-{i}"), op, tasks, WINDOW).await?;
            if round > 0 {
                rates[i].push(rate);
            }
        }
    }
    let medians = medians(&mut rates);
    println!();
    println!(
        "{tasks} tasks, each on its own key: median of {} interleaved {WINDOW:?} rounds \
         after a warm-up round",
        ROUNDS - 1
    );
    println!("| steps | ops/s | ops/s / raw ops/s |");
    println!("|---|---|---|");
    for ((name, _), ops) in steps.iter().zip(&medians) {
        println!("| {name} | {ops:.0} | {:.2} |", ops / medians[0]);
    }
    Ok(())
}
