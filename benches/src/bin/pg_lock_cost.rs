//! What Postgres advisory mode's lock+unlock costs over the bare advisory
//! lock, step by step, in one run, interleaved: p50 of each as a ratio to
//! the bare pair (from the main thread, then from a spawned task with the
//! client's CPU per pair), then operations per second with `--tasks` tasks (default
//! 64, each on its own key) as a ratio to the bare pair's (see
//! `leasehold_benches::steps`):
//!
//! `cargo run --release -p leasehold-benches --bin pg_lock_cost [-- --samples N --tasks N] [--print-sql]`
//!
//! Each store step is sent from bare sqlx on one connection (taken by
//! hand, [`leasehold_benches::bare`], so no pool pings it):
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
//!   them for a key it has granted before (on a session that remembers the
//!   store epoch, the key's row known to be there), with nobody marked as
//!   waiting (so no NOTIFY), from bare sqlx;
//! - the same with the key row looked up (a key's first grant on a
//!   backend), and a session's first grant, which also reads the epoch from
//!   the store; the same without the holder's lookup (what each costs);
//! - backend: `try_acquire` + `release`;
//! - locker: `Locker::try_lock` + `release`.
//!
//! Then the server's side alone ([`server_side`]): `pgbench` inside the
//! store's container runs the bare pair and the backend's statements with
//! `--tasks` clients and no client library in the way, so a ratio there is
//! what the statements cost the server (the floor under the 64-task figure).
//! Two steps there draw the token from a sequence named at run time, one
//! for every lock or one of eight by lock id: whether one sequence for
//! every grant (one hot page) limits many clients.
//! `--print-sql` prints the backend's grant and release and stops.

use std::sync::Arc;

use leasehold_benches::bare::Bare;
use leasehold_benches::harness::{self, Op};
use leasehold_benches::stores::TTL;
use leasehold_benches::{steps, stores};
use leasehold_conformance::fixtures;
use leasehold_core::LockBackend;
use leasehold_postgres::sqlx::{self, Postgres};

use stores::{err, op};

/// Draws a token once the lock is held, without a flush at commit.
const TOKEN_LOCK: &str = "SELECT CASE WHEN pg_try_advisory_lock($1) \
     THEN nextval('bench_raw_token') > 0 ELSE false END, \
     set_config('synchronous_commit', 'off', true)";

/// [`TOKEN_LOCK`] drawing from one of `shards` sequences by lock id,
/// `bench_raw_token_<id % shards>`, named at run time: with one shard, the
/// cost of the name's lookup alone; with [`TOKEN_SHARDS`], whether one
/// sequence for every grant is what limits many clients (one hot sequence
/// page), so that keys should draw from sequences of their own.
fn token_lock_from(shards: usize) -> &'static str {
    let sql = format!(
        "SELECT CASE WHEN pg_try_advisory_lock($1) \
         THEN nextval(('bench_raw_token_' || ($1 % {shards}))::regclass) > 0 ELSE false END, \
         set_config('synchronous_commit', 'off', true)"
    );
    Box::leak(sql.into_boxed_str())
}

/// How many sequences the sharded step draws from ([`token_lock_from`]).
const TOKEN_SHARDS: usize = 8;

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
/// [`leasehold_postgres::advisory_mutex_statements`]) sent on one
/// connection for the key's lock in namespace `bench-raw`; the release
/// names a mark id nobody holds, as when no waiter marked the key.
fn backend_statements(conns: Bare<Postgres>, grant: &'static str, release: &'static str) -> Op {
    op(move |k: String| {
        let conns = conns.clone();
        async move {
            let id = leasehold_postgres::advisory_lock_id("bench-raw", &k);
            let mut conn = conns.take().await?;
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
            conns.give_back(conn);
            Ok(())
        }
    })
}

/// Where `from` … `to` lies in `grant`.
fn find(grant: &str, from: &str, to: &str) -> Result<std::ops::Range<usize>, String> {
    let start = grant
        .find(from)
        .ok_or_else(|| format!("the grant has no {from:?}"))?;
    let end = grant[start..]
        .find(to)
        .ok_or_else(|| format!("the grant has no {to:?} after {from:?}"))?;
    Ok(start..start + end + to.len())
}

/// `grant` without the refused grant's holder lookup (a function call in
/// a branch the pair never takes), replaced by a constant of its type.
fn without_holder_lookup(grant: &str) -> Result<String, String> {
    let range = find(
        grant,
        "THEN \"public\".\"leasehold_fencing_holder\"(",
        "($1)",
    )?;
    Ok(format!(
        "{}THEN NULL::text{}",
        &grant[..range.start],
        &grant[range.end..]
    ))
}

/// The store epoch in force, read with the first grant's lookup.
async fn epoch_in_force(pool: &sqlx::PgPool, first: &str) -> Result<i64, String> {
    let lookup = &first[find(first, "(SELECT max(epoch) FROM", "_in_force\")")?];
    sqlx::query_scalar(&format!("SELECT {lookup}"))
        .fetch_one(pool)
        .await
        .map_err(err)
}

/// `grant`, one for a session that remembers the store epoch, with `epoch`
/// and the session's pid written in, so it takes the first grant's binds.
fn on_a_kept_session(grant: &str, epoch: i64) -> &'static str {
    let grant = grant
        .replace("$7", "pg_backend_pid()")
        .replace("$6", &epoch.to_string());
    // The client's steps need it `'static`.
    Box::leak(grant.into_boxed_str())
}

async fn run(samples: usize, tasks: usize) -> Result<(), String> {
    let spec = fixtures::postgres_spec().args(["-c", "max_connections=300"]);
    let (store, backend) = stores::pg_advisory_backend(spec, "namespace=bench-lock").await?;
    let pool = backend.pool().clone();
    let sequences: String = std::iter::once("bench_raw_token".to_owned())
        .chain((0..TOKEN_SHARDS).map(|shard| format!("bench_raw_token_{shard}")))
        .map(|name| format!("CREATE SEQUENCE IF NOT EXISTS {name};"))
        .collect();
    leasehold_postgres::sqlx::raw_sql(&sequences)
        .execute(&pool)
        .await
        .map_err(err)?;
    // The first grant starts the store epoch the bare statements need.
    let warm = leasehold_core::Key::new("warm").map_err(err)?;
    let lease = backend.try_acquire(&warm, TTL).await.map_err(err)?;
    backend.release(&lease).await.map_err(err)?;
    let sql = leasehold_postgres::advisory_mutex_statements(backend.config());
    if std::env::args().any(|arg| arg == "--print-sql") {
        println!("{sql:#?}");
        return Ok(());
    }
    // Each grant variant built once, for both the client's and the
    // server's tables.
    let epoch = epoch_in_force(&pool, &sql.first_grant).await?;
    let grant = on_a_kept_session(&sql.grant_known_row, epoch);
    let row_looked_up = on_a_kept_session(&sql.grant, epoch);
    let no_holder: &'static str = Box::leak(without_holder_lookup(grant)?.into_boxed_str());
    let first_grant: &'static str = Box::leak(sql.first_grant.into_boxed_str());
    let release = sql.release;
    let server_steps = [
        (
            "bare: pg_try_advisory_lock, pg_advisory_unlock",
            BARE_LOCK,
            BARE_UNLOCK,
        ),
        ("+ token from a sequence", TOKEN_LOCK, BARE_UNLOCK),
        (
            "+ token from a sequence named at run time",
            token_lock_from(1),
            BARE_UNLOCK,
        ),
        (
            "the same, one of 8 sequences by lock",
            token_lock_from(TOKEN_SHARDS),
            BARE_UNLOCK,
        ),
        (
            "+ session label and idle timeout",
            LABELLED_LOCK,
            LABELLED_UNLOCK,
        ),
        ("the backend's grant, bare unlock", grant, BARE_UNLOCK),
        (
            "bare lock, the backend's release (no waiter marked)",
            BARE_LOCK,
            release,
        ),
        ("the backend's grant and release", grant, release),
        ("the same, key row looked up", row_looked_up, release),
        (
            "the same, a session's first grant (epoch and key row looked up)",
            first_grant,
            release,
        ),
        ("the same without the holder lookup", no_holder, release),
    ];
    let backend: Arc<dyn LockBackend> = Arc::new(backend);
    let conns = Bare::of(&pool);
    let statements = |lock, unlock| stores::pg_advisory_statements(conns.clone(), lock, unlock);
    let pairs = vec![
        (
            "raw: pg_try_advisory_lock, pg_advisory_unlock",
            stores::pg_advisory_raw(conns.clone()),
        ),
        (
            "+ token from a sequence",
            statements(TOKEN_LOCK, BARE_UNLOCK),
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
            backend_statements(conns.clone(), grant, release),
        ),
        (
            "the same, key row looked up",
            backend_statements(conns.clone(), row_looked_up, release),
        ),
        (
            "the same, a session's first grant (epoch and key row looked up)",
            backend_statements(conns.clone(), first_grant, release),
        ),
        (
            "the same without the holder lookup",
            backend_statements(conns.clone(), no_holder, release),
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
    server_side(store.id(), &server_steps, tasks)?;
    drop(store);
    Ok(())
}

/// The bare lock.
const BARE_LOCK: &str = "SELECT pg_try_advisory_lock($1)";

/// The bare unlock.
const BARE_UNLOCK: &str = "SELECT pg_advisory_unlock($1)";

/// `pgbench` rounds of each server-side step, interleaved; the first is a
/// warm-up, not counted.
const SERVER_ROUNDS: usize = 5;

/// Each server-side step's `pgbench` run, in seconds.
const SERVER_SECONDS: &str = "3";

/// Runs each step's lock and unlock as one `pgbench` transaction
/// (`-M prepared`, `clients` clients on 2 threads, each client on its own
/// advisory lock) inside the container `id`, over its Unix socket, and
/// prints transactions per second as a ratio to the first step's: the
/// server's own cost of each pair, with no client library or network in
/// the way. A step's lock takes the grant's binds and its unlock the
/// release's ([`for_pgbench`]).
fn server_side(id: &str, steps: &[(&str, &str, &str)], clients: usize) -> Result<(), String> {
    for (i, (_, lock, unlock)) in steps.iter().enumerate() {
        let script = format!(
            "\\set id :client_id + 1\n\\set mark :client_id + 1000000\n{};\n{};\n",
            for_pgbench(lock, GRANT_BINDS),
            for_pgbench(unlock, RELEASE_BINDS)
        );
        docker(
            id,
            &["sh", "-c", &format!("cat > /tmp/step-{i}.sql")],
            Some(&script),
        )?;
    }
    let clients = clients.to_string();
    let mut rates = vec![Vec::with_capacity(SERVER_ROUNDS); steps.len()];
    for round in 0..SERVER_ROUNDS {
        for (i, rates) in rates.iter_mut().enumerate() {
            let script = format!("/tmp/step-{i}.sql");
            let out = docker(
                id,
                &[
                    "pgbench",
                    "-n",
                    "-M",
                    "prepared",
                    "-T",
                    SERVER_SECONDS,
                    "-j",
                    "2",
                    "-c",
                    &clients,
                    "-f",
                    &script,
                    "-U",
                    "postgres",
                    "postgres",
                ],
                None,
            )?;
            let tps = out
                .lines()
                .find_map(|line| line.strip_prefix("tps = "))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|tps| tps.parse::<f64>().ok())
                .ok_or_else(|| format!("pgbench printed no tps for step {i}: {out}"))?;
            if round > 0 {
                rates.push(tps);
            }
        }
    }
    let medians = harness::medians(&mut rates);
    println!();
    println!(
        "The server alone: pgbench -M prepared inside the container, {clients} clients, \
         each on its own lock; median of {} interleaved {SERVER_SECONDS}s rounds after a warm-up",
        SERVER_ROUNDS - 1
    );
    println!("| steps | pairs/s | pairs/s / bare pairs/s |");
    println!("|---|---|---|");
    for ((name, ..), tps) in steps.iter().zip(&medians) {
        println!("| {name} | {tps:.0} | {:.2} |", tps / medians[0]);
    }
    Ok(())
}

/// The grant's binds as `pgbench` sends them (see [`for_pgbench`]).
const GRANT_BINDS: &[(&str, &str)] = &[
    ("$5", "'10000'"),
    ("$4", "'bench-holder'"),
    ("$3", "'pgbench'"),
    ("$2", "'bench-raw'"),
    ("$1", ":id"),
];

/// The release's binds as `pgbench` sends them, nobody marked as waiting
/// (see [`for_pgbench`]).
const RELEASE_BINDS: &[(&str, &str)] = &[
    ("$7", ":mark"),
    ("$6", "true"),
    ("$5", "''"),
    ("$4", "'0'"),
    ("$3", "'pgbench'"),
    ("$2", "'leasehold_bench_raw'"),
    ("$1", ":id"),
];

/// A statement's text with its `binds` written in for `pgbench`: the lock
/// id and the mark id are the client's own (`:id`, `:mark`, sent as
/// parameters), the rest literals as the benchmark's other steps bind them.
/// `binds` go from the highest down, so `$1` does not eat into `$10`.
fn for_pgbench(sql: &str, binds: &[(&str, &str)]) -> String {
    binds
        .iter()
        .fold(sql.to_owned(), |sql, (bind, with)| sql.replace(bind, with))
}

/// Runs `args` in container `id` as user `postgres`, with `stdin` fed to
/// it; its standard output, or why it failed.
fn docker(id: &str, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("docker")
        .args(["exec", "-i", "-u", "postgres", id])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("docker exec: {e}"))?;
    if let Some(mut pipe) = child.stdin.take() {
        pipe.write_all(stdin.unwrap_or("").as_bytes())
            .map_err(|e| format!("docker exec: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("docker exec: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "docker exec {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let (samples, tasks) = steps::options();
    leasehold_benches::finish("pg_lock_cost", run(samples, tasks).await)
}
