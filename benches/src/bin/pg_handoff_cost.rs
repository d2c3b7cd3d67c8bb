//! Where Postgres advisory mode's lone-waiter handoff goes, step by step,
//! in one run, interleaved: each step is the handoff to one waiter parked
//! behind a holder (the full benchmark's table 3b), as a ratio to the bare
//! blocking `pg_advisory_lock` (the floor):
//!
//! `cargo run --release -p leasehold-benches --bin pg_handoff_cost [-- --samples N]`
//!
//! - raw: `pg_advisory_lock` blocks on a connection, the holder's
//!   release is `pg_advisory_unlock` (the benchmark's floor);
//! - raw, released as the library releases: the holder's unlock also sends
//!   its `NOTIFY` and resets the session's settings, in one statement that
//!   commits without a flush;
//! - library holder, raw waiter: the holder is the backend (`try_acquire`,
//!   `release`), the waiter the bare blocking `pg_advisory_lock` on the
//!   same advisory lock (the backend's namespace is the raw steps' own);
//! - raw holder released as the library releases, library waiter: the
//!   waiter is the backend's `acquire` (a refused attempt, then its queued
//!   wait in the server);
//! - backend: both sides the backend's, with no `Locker`;
//! - locker: both sides a default `Locker` (the benchmark's library figure);
//! - the same with the Locker's waiters registry off (`record_waits(false)`).
//!
//! Each step's figure is the median, over `--rounds` (default 10) rounds,
//! of that round's p50 (`--samples` handoffs per step per round, default
//! 30); the steps run in turn within each round.
//!
//! `--tasks N` (N > 1) measures the full benchmark's table 3 instead: N
//! tasks all contending for one key, each handoff timed from the release
//! sent to the next holder having it, for the steps whose holder and
//! waiter are the same.

use std::sync::Arc;
use std::time::Duration;

use leasehold_benches::bare::Bare;
use leasehold_benches::harness::{self, Acquire, Release};
use leasehold_benches::stores::{self, TTL, err};
use leasehold_conformance::fixtures;
use leasehold_core::{Key, LockBackend, Locker, WaitPolicy};
use leasehold_postgres::sqlx::Postgres;

/// How long the holder keeps the key, so the waiter is parked in its wait
/// (the full benchmark's `waiter_hold`).
const HOLD: Duration = Duration::from_millis(20);

/// `pg_advisory_lock` blocking on a connection; released by
/// `pg_advisory_unlock` with a `NOTIFY` and the session resets in the same
/// statement, its commit not flushed, as the library's release sends.
fn raw_released_as_library(conns: Bare<Postgres>) -> Acquire {
    stores::held_on_a_connection(
        conns,
        "SELECT pg_advisory_lock($1::text::int8)",
        "SELECT pg_advisory_unlock($1::text::int8), \
         pg_notify('leasehold_bench_raw', $1)::text, \
         set_config('idle_session_timeout', '0', false), \
         set_config('application_name', '', false), \
         set_config('synchronous_commit', 'off', true)",
        |k| leasehold_postgres::advisory_lock_id("bench-raw", k).to_string(),
    )
}

/// `backend.acquire` (waiting) and `backend.release`.
fn backend_wait(backend: Arc<dyn LockBackend>) -> Acquire {
    Arc::new(move |k: String| {
        let backend = backend.clone();
        Box::pin(async move {
            let key = Key::new(k).map_err(err)?;
            let wait = WaitPolicy::new(Duration::from_secs(60));
            let lease = backend.acquire(&key, TTL, &wait).await.map_err(err)?;
            let release: Release = Box::new(move || {
                Box::pin(async move { backend.release(&lease).await.map_err(err) })
            });
            Ok(release)
        })
    })
}

/// A waiting `Locker` over `backend`, default but for whether it records
/// its waits ([`leasehold_core::waits`]).
fn locker_wait(backend: &Arc<dyn LockBackend>, record_waits: bool) -> Acquire {
    let locker = Locker::builder_from_arc(backend.clone())
        .wait(WaitPolicy::new(Duration::from_secs(60)))
        .record_waits(record_waits)
        .build();
    stores::locker_acquire(locker, true)
}

async fn run(samples: usize, rounds: usize, tasks: usize) -> Result<(), String> {
    let (store, backend) =
        stores::pg_advisory_backend(fixtures::postgres_spec(), "namespace=bench-raw").await?;
    let pool = backend.pool().clone();
    let backend: Arc<dyn LockBackend> = Arc::new(backend);
    let conns = Bare::of(&pool);
    let raw = stores::pg_advisory_raw_wait(conns.clone());
    let raw_library_release = raw_released_as_library(conns.clone());
    let backend_side = backend_wait(backend.clone());
    let locker = locker_wait(&backend, true);
    let locker_unrecorded = locker_wait(&backend, false);
    // (name, holder, waiter)
    let steps: Vec<(&str, &Acquire, &Acquire)> = vec![
        (
            "raw: blocking pg_advisory_lock, pg_advisory_unlock",
            &raw,
            &raw,
        ),
        (
            "raw, released as the library releases (NOTIFY, resets)",
            &raw_library_release,
            &raw_library_release,
        ),
        ("library holder, raw waiter", &backend_side, &raw),
        (
            "raw holder released as the library releases, library waiter",
            &raw_library_release,
            &backend_side,
        ),
        ("backend acquire + release", &backend_side, &backend_side),
        ("Locker lock + release", &locker, &locker),
        (
            "Locker lock + release, waits unrecorded",
            &locker_unrecorded,
            &locker_unrecorded,
        ),
    ];
    let steps: Vec<_> = steps
        .into_iter()
        .filter(|(_, holder, waiter)| tasks < 2 || Arc::ptr_eq(holder, waiter))
        .collect();
    let rtt = stores::pg_rtt(conns);
    let mut p50s = vec![Vec::with_capacity(rounds); steps.len()];
    let mut opened = vec![0i64; steps.len()];
    let mut rtts = Vec::with_capacity(rounds);
    // Each step's sessions are the count after it less the count after the
    // step before (or after the round trip figure, read at each round's end).
    let mut sessions = sessions_opened(&pool).await?;
    for round in 0..rounds {
        for (i, (_, holder, waiter)) in steps.iter().enumerate() {
            let label = format!("pg-handoff-cost-{i}-{round}");
            let p = if tasks < 2 {
                harness::handoff_between(&label, holder, waiter, samples, HOLD).await?
            } else {
                harness::handoff(&label, holder, tasks, samples).await?
            };
            p50s[i].push(p.p50);
            let after = sessions_opened(&pool).await?;
            opened[i] += after - sessions;
            sessions = after;
        }
        let label = format!("pg-handoff-cost-rtt-{round}");
        rtts.push(harness::latency(&label, std::slice::from_ref(&rtt), samples, 5).await?[0].p50);
        sessions = sessions_opened(&pool).await?;
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let rtt = median(&mut rtts);
    let medians: Vec<f64> = p50s.iter_mut().map(median).collect();
    let who = if tasks < 2 {
        format!("one waiter parked behind a holder that keeps the key {HOLD:?}")
    } else {
        format!("{tasks} tasks all contending for one key")
    };
    println!(
        "Postgres 15 stand-in (container, loopback): {who}; release sent → the next \
         holder has it. Median over {rounds} interleaved rounds of each round's p50 \
         ({samples} handoffs per step per round); round trip (SELECT 1) p50 {rtt:.0} µs"
    );
    println!("| steps | handoff p50 | round trips | p50 / raw p50 | sessions opened per handoff |");
    println!("|---|---|---|---|---|");
    for (((name, ..), p50), opened) in steps.iter().zip(&medians).zip(&opened) {
        println!(
            "| {name} | {p50:.0} µs | {:.1} | {:.2} | {:.2} |",
            p50 / rtt,
            p50 / medians[0],
            *opened as f64 / (rounds * samples) as f64
        );
    }
    drop(store);
    Ok(())
}

/// Sessions the server has started in this database so far (Postgres 14+):
/// a step that opens connections while it hands the lock on pays their
/// start-up round trips. Each server process reports its own start at most
/// once a second (`PGSTAT_MIN_INTERVAL`), so the count is read after that
/// long: the step before is all in it.
async fn sessions_opened(pool: &leasehold_postgres::sqlx::PgPool) -> Result<i64, String> {
    tokio::time::sleep(Duration::from_millis(1100)).await;
    leasehold_postgres::sqlx::query_scalar(
        "SELECT sessions FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(pool)
    .await
    .map_err(err)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let samples = leasehold_benches::flag("--samples").unwrap_or(30);
    let rounds = leasehold_benches::flag("--rounds").unwrap_or(10);
    let tasks = leasehold_benches::flag("--tasks").unwrap_or(1);
    leasehold_benches::finish("pg_handoff_cost", run(samples, rounds, tasks).await)
}
