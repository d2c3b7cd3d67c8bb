//! What Postgres advisory mode's lock+unlock costs over the bare advisory
//! lock, step by step, in one run, interleaved: p50 of each as a ratio to
//! the bare pair, then operations per second with `--tasks` tasks (default
//! 64, each on its own key) as a ratio to the bare pair's (see
//! `leasehold_benches::steps`):
//!
//! `cargo run --release -p leasehold-benches --bin pg_lock_cost [-- --samples N --tasks N]`
//!
//! Each store step is sent from bare sqlx on one pooled connection:
//!
//! - raw: `pg_try_advisory_lock`, `pg_advisory_unlock` (the benchmark's
//!   raw baseline);
//! - with a token: the lock statement also draws a fencing token from a
//!   sequence once it holds the lock, committed without a flush (what a
//!   durable token costs at the least);
//! - with a label and TTL: the lock statement also labels the session with the
//!   holder and sets `idle_session_timeout`; the unlock sets both back (what
//!   `inspect` and a killed holder's expiry cost);
//! - with a NOTIFY: the unlock also sends a release signal (what a waiter
//!   elsewhere needs to wake);
//! - backend: `try_acquire` + `release`;
//! - locker: `Locker::try_lock` + `release`.

use std::sync::Arc;

use leasehold_benches::{steps, stores};
use leasehold_conformance::fixtures;
use leasehold_core::LockBackend;

use stores::err;

/// Draws a token once the lock is held, without a flush at commit.
const TOKEN_LOCK: &str = "SELECT CASE WHEN pg_try_advisory_lock($1) \
     THEN nextval('bench_raw_token') > 0 ELSE false END, \
     set_config('synchronous_commit', 'off', true)";

/// [`TOKEN_LOCK`], with the session labelled and its idle timeout set.
const LABELLED_LOCK: &str = "SELECT CASE WHEN pg_try_advisory_lock($1) \
     THEN nextval('bench_raw_token') > 0 ELSE false END, \
     set_config('synchronous_commit', 'off', true), \
     set_config('application_name', 'lh 1 ' || (extract(epoch FROM clock_timestamp()) \
         * 1000)::int8 || ' bench-holder', false), \
     set_config('idle_session_timeout', '10000', false)";

/// Unlocks and sets the label and idle timeout back.
const LABELLED_UNLOCK: &str = "SELECT pg_advisory_unlock($1), \
     set_config('idle_session_timeout', '0', false), \
     set_config('application_name', '', false), \
     set_config('synchronous_commit', 'off', true)";

/// [`LABELLED_UNLOCK`] with a release signal.
const NOTIFYING_UNLOCK: &str = "SELECT pg_advisory_unlock($1), \
     pg_notify('leasehold_bench_raw', $1::text), \
     set_config('idle_session_timeout', '0', false), \
     set_config('application_name', '', false), \
     set_config('synchronous_commit', 'off', true)";

async fn run(samples: usize, tasks: usize) -> Result<(), String> {
    let spec = fixtures::postgres_spec().args(["-c", "max_connections=300"]);
    let (store, backend) = stores::pg_advisory_backend(spec, "namespace=bench-lock").await?;
    let pool = backend.pool().clone();
    leasehold_postgres::sqlx::query("CREATE SEQUENCE IF NOT EXISTS bench_raw_token")
        .execute(&pool)
        .await
        .map_err(err)?;
    let backend: Arc<dyn LockBackend> = Arc::new(backend);
    let statements = |lock, unlock| stores::pg_advisory_statements(pool.clone(), lock, unlock);
    let pairs = vec![
        (
            "raw: pg_try_advisory_lock, pg_advisory_unlock",
            stores::pg_advisory_raw(pool.clone()),
        ),
        (
            "+ token from a sequence",
            statements(TOKEN_LOCK, "SELECT pg_advisory_unlock($1)"),
        ),
        (
            "+ session label and idle timeout",
            statements(LABELLED_LOCK, LABELLED_UNLOCK),
        ),
        (
            "+ NOTIFY at unlock",
            statements(LABELLED_LOCK, NOTIFYING_UNLOCK),
        ),
    ];
    steps::compare(
        "pg-lock-cost",
        "Postgres 15 stand-in, advisory",
        pairs,
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
    leasehold_benches::finish("pg_lock_cost", run(samples, tasks).await)
}
