//! What a backend's recipe costs over the store's bare lock, step by step:
//! each step a lock+unlock built from more of the recipe, measured in one
//! run, interleaved, as a ratio to the first (the bare pair). The
//! `*_queue_cost` binaries use it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use leasehold_core::{Key, LockBackend, Locker};

use crate::extend::ThreadTimes;
use crate::harness::{self, Op};
use crate::stores::{err, op};

/// Throughput rounds ([`harness::throughput_rounds`]), the first a warm-up.
const ROUNDS: usize = 6;
/// Each step's throughput window.
const WINDOW: Duration = Duration::from_millis(2500);

/// Rounds of [`from_a_task`]: each runs every step's block once, in turn.
const TASK_ROUNDS: usize = 3;

/// One step's figures from a spawned task (see [`from_a_task`]).
struct FromATask {
    /// p50, µs.
    p50: f64,
    /// This process's CPU per pair, µs.
    cpu: f64,
    /// Threads put on a CPU per pair ([`ThreadTimes::runs`]): thread
    /// hand-offs, far steadier than the CPU figure on a noisy machine.
    runs: f64,
}

/// Each step's figures measured on one spawned task: blocks of `samples`
/// pairs, each step's in turn, [`TASK_ROUNDS`] rounds, the median of each.
/// A block is timed as a whole for the CPU, so the steps are interleaved by
/// block, not by sample.
async fn from_a_task(label: &str, ops: &[Op], samples: usize) -> Result<Vec<FromATask>, String> {
    let (label, ops) = (label.to_owned(), ops.to_vec());
    let measured = tokio::spawn(async move {
        let mut p50s = vec![Vec::with_capacity(TASK_ROUNDS); ops.len()];
        let mut cpus = vec![Vec::with_capacity(TASK_ROUNDS); ops.len()];
        let mut runs = vec![Vec::with_capacity(TASK_ROUNDS); ops.len()];
        for _ in 0..TASK_ROUNDS {
            for (j, op) in ops.iter().enumerate() {
                let mut times = Vec::with_capacity(samples);
                let before = ThreadTimes::now();
                for i in 0..samples {
                    let key = format!("bench/{label}/task/{j}/{}", i % 64);
                    let start = Instant::now();
                    harness::bounded(op(key)).await?;
                    times.push(start.elapsed());
                }
                let used = ThreadTimes::now().since(before);
                let per_pair = samples.max(1) as f64;
                p50s[j].push(harness::Percentiles::of(&mut times).p50);
                cpus[j].push(used.cpu.as_secs_f64() * 1e6 / per_pair);
                runs[j].push(used.runs as f64 / per_pair);
            }
        }
        let (p50s, cpus, runs) = (
            harness::medians(&mut p50s),
            harness::medians(&mut cpus),
            harness::medians(&mut runs),
        );
        Ok::<_, String>(
            (0..ops.len())
                .map(|j| FromATask {
                    p50: p50s[j],
                    cpu: cpus[j],
                    runs: runs[j],
                })
                .collect(),
        )
    });
    measured.await.map_err(err)?
}

/// The library's last two steps over `backend`: its own `try_acquire` +
/// `release`, then the same through a default [`Locker`].
pub fn library_steps(backend: Arc<dyn LockBackend>) -> [(&'static str, Op); 2] {
    let locker = Locker::builder_from_arc(backend.clone()).build();
    [
        ("backend try_acquire + release", backend_pair(backend)),
        ("Locker try_lock + release", locker_pair(locker)),
    ]
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
/// `backend`'s own pair and a [`Locker`]'s over it, and prints three
/// tables: latency p50/p99 over `samples` interleaved samples, the p50 and
/// client CPU per pair from a spawned task (by blocks of pairs), then ops/s with
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
    let from_task = from_a_task(label, &ops, samples).await?;
    println!();
    println!(
        "From one spawned task, where application code runs (the table above runs on the \
         runtime's main thread, outside its workers, so each wake-up from a worker crosses \
         threads): {samples} pairs of each step in turn, median of {TASK_ROUNDS} rounds; \
         client CPU and thread runs (times a thread of this process was put on a CPU: \
         thread hand-offs) are this process's, per pair"
    );
    println!("| steps | p50 | p50 / raw p50 | client CPU per pair | thread runs per pair |");
    println!("|---|---|---|---|---|");
    for ((name, _), step) in steps.iter().zip(&from_task) {
        println!(
            "| {name} | {:.0} µs | {:.2} | {:.0} µs | {:.2} |",
            step.p50,
            step.p50 / from_task[0].p50,
            step.cpu,
            step.runs
        );
    }
    let medians = harness::throughput_rounds(label, &ops, tasks, WINDOW, ROUNDS).await?;
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
