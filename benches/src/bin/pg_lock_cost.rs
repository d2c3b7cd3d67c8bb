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
//! - the backend's statements: its grant and release exactly as it sends
//!   them, with nobody marked as waiting (so no NOTIFY), from bare sqlx;
//! - the same without their three lookups: the store epoch, the key row
//!   and the holder's label (what those cost);
//! - backend: `try_acquire` + `release`;
//! - locker: `Locker::try_lock` + `release`.

use std::sync::Arc;

use leasehold_benches::harness::Op;
use leasehold_benches::stores::TTL;
use leasehold_benches::{steps, stores};
use leasehold_conformance::fixtures;
use leasehold_core::LockBackend;
use leasehold_postgres::sqlx;

use stores::{err, op};

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

/// The backend's grant and release (see
/// [`leasehold_postgres::advisory_mutex_statements`]) sent on one pooled
/// connection for the key's lock in namespace `bench-raw`; the release
/// names a mark id nobody holds, as when no waiter marked the key.
fn backend_statements(pool: sqlx::PgPool, grant: &'static str, release: &'static str) -> Op {
    op(move |k: String| {
        let pool = pool.clone();
        async move {
            let id = leasehold_postgres::advisory_lock_id("bench-raw", &k);
            let mut conn = pool.acquire().await.map_err(err)?;
            let (token,): (Option<i64>,) = sqlx::query_as(grant)
                .bind(id)
                .bind("bench-raw")
                .bind(k.as_str())
                .bind("bench-holder")
                .bind("10000")
                .fetch_one(&mut *conn)
                .await
                .map_err(err)?;
            if token.is_none() {
                return Err(format!("lock {k} refused, or no store epoch in force"));
            }
            sqlx::query(release)
                .bind(id)
                .bind("leasehold_bench_raw")
                .bind(&k)
                .bind("0")
                .bind("")
                .bind(true)
                .bind(Some(!id))
                .execute(&mut *conn)
                .await
                .map_err(err)?;
            Ok(())
        }
    })
}

/// `grant` without its three lookups (the store epoch, whether the key's
/// row exists, the holder's label when refused), each replaced by a
/// constant of its type.
fn without_lookups(grant: &str) -> Result<String, String> {
    let cut = |sql: &str, from: &str, to: &str, with: &str| {
        let start = sql
            .find(from)
            .ok_or_else(|| format!("the grant has no {from:?}"))?;
        let end = sql[start..]
            .find(to)
            .ok_or_else(|| format!("the grant has no {to:?} after {from:?}"))?
            + start
            + to.len();
        Ok::<_, String>(format!("{}{with}{}", &sql[..start], &sql[end..]))
    };
    let sql = cut(grant, "(SELECT max(epoch) FROM", "_in_force\")", "1::int8")?;
    let sql = cut(
        &sql,
        "EXISTS (SELECT 1 FROM",
        "AND key = $3)",
        "($2::text || $3::text) IS NOT NULL",
    )?;
    cut(
        &sql,
        "(SELECT a.application_name FROM",
        "LIMIT 1)",
        "NULL::text",
    )
}

async fn run(samples: usize, tasks: usize) -> Result<(), String> {
    let spec = fixtures::postgres_spec().args(["-c", "max_connections=300"]);
    let (store, backend) = stores::pg_advisory_backend(spec, "namespace=bench-lock").await?;
    let pool = backend.pool().clone();
    leasehold_postgres::sqlx::query("CREATE SEQUENCE IF NOT EXISTS bench_raw_token")
        .execute(&pool)
        .await
        .map_err(err)?;
    // The first grant starts the store epoch the bare statements need.
    let warm = leasehold_core::Key::new("warm").map_err(err)?;
    let lease = backend.try_acquire(&warm, TTL).await.map_err(err)?;
    backend.release(&lease).await.map_err(err)?;
    let (grant, release) = leasehold_postgres::advisory_mutex_statements(backend.config());
    let bare_grant: &'static str = Box::leak(without_lookups(&grant)?.into_boxed_str());
    let grant: &'static str = Box::leak(grant.into_boxed_str());
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
        (
            "the backend's statements (no waiter marked, so no NOTIFY)",
            backend_statements(pool.clone(), grant, release),
        ),
        (
            "the same without the epoch, key-row and holder lookups",
            backend_statements(pool.clone(), bare_grant, release),
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
