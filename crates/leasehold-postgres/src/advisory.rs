//! Advisory mode: a session advisory lock on a connection pinned to the lease
//! (see `session.rs` for the task that owns it).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use leasehold_core::{
    FencingToken, HeldLock, Key, Lease, ListPage, ListQuery, LockError, LockInfo, OwnerToken,
    with_timeout,
};
use tokio_util::sync::CancellationToken;

use crate::admin::{self, PAGE_KEYS, acquired_at, not_permitted};
use crate::config::{ADVISORY, Settings};
use crate::epoch;
use crate::error::{map, session_ended};
use crate::keys::{advisory_lock_id, halves, signal_name};
use crate::schema::{dollar_quote, quote_literal};
use crate::store::{Checkout, Held, Pinned, Shared, Sql, idle_timeout, timed_out};

/// The lease's pinned session. A lease of another backend is a usage error;
/// a lease of ours without a session (forged, or rebuilt from its parts)
/// proves nothing and holds nothing: `None`.
fn pinned(lease: &Lease) -> Result<Option<&Pinned>, LockError> {
    if lease.backend() != ADVISORY {
        return Err(LockError::Config(format!(
            "lease on {:?} was granted by {}, not by the postgres advisory backend",
            lease.key(),
            lease.backend()
        )));
    }
    Ok(lease.handle::<Pinned>())
}

/// The server process id of the session holding `lease`'s advisory lock
/// (`pg_backend_pid()` of its pinned connection), or `None` for a lease not
/// granted by the advisory backend. For tooling and tests (e.g. to
/// `pg_terminate_backend` the holder); the pid may belong to another session
/// once the lease is over.
pub fn session_pid(lease: &Lease) -> Option<i32> {
    pinned(lease).ok().flatten().map(|p| p.pid)
}

/// Lock, then (only if we got it) draw the fencing token from the store's
/// sequence, label the session with the grant ([`label_sql`]) and set its
/// `idle_session_timeout` to the TTL, all in one statement and session;
/// when the lock is busy, report the holder's label instead (and leave the
/// session's settings alone, since it is kept for reuse). Also returns the
/// session's server pid ([`session_pid`]) and the store epoch.
///
/// The grant writes nothing: the token is `nextval` of `<table>_token`,
/// drawn only while the lock is held, so tokens of one key increase with its
/// holders (a token drawn before the lock could be overtaken by a later draw
/// that locked first). The holder, its token and when it took the key live
/// in the session's `application_name` ([`label_sql`]: what `inspect`,
/// `list` and `force_release` read, and what an operator sees in
/// `pg_stat_activity`). It reports whether the key's row exists, and only a
/// key's first grant adds it ([`key_row_sql`]); a grant of a key whose row
/// the backend has seen does not look ([`Sessions::known_rows`](crate::store::Sessions::known_rows)).
/// Measured with pgbench inside
/// the container (lock+unlock per pair, one client): about 138 µs for the
/// bare pair, 223 µs with this grant and the release, and a grant that
/// bumped a counter row cost about 120 µs more (measured from a client).
/// Under load the statement's size is what costs: with 64 clients and no
/// client library in the way (`cargo run --release -p leasehold-benches
/// --bin pg_lock_cost`, its server-side table), grant and release ran at
/// 0.36 of the bare pair's rate and 0.67 without all three lookups; the
/// holder lookup, inlined here then, cost the most though no grant runs it
/// (now a function call: [`holder_function_ddl`]). In the next run, on
/// another machine: 0.30, 0.33 without the epoch's lookup or the key
/// row's, 0.37 without all three (the label and timeout alone took the
/// bare pair to 0.53 there). Since grants on a kept session take the epoch
/// they remember ([`session_epoch`]) and skip a known key row, on a third
/// machine: 0.58, against 0.46 for a session's first grant, which still
/// reads both (2026-12-02).
///
/// The statement commits without waiting for a flush: the store epoch
/// ([`crate::epoch`]) keeps tokens increasing across a crash that sets the
/// sequence back. With no epoch in force the statement takes no lock and
/// returns `NULL` as the epoch: the caller starts one and asks again. A
/// token at the epoch's ceiling is not handed out: the lock is given back
/// in the same statement and the epoch is `NULL` too, and the epoch the
/// caller starts lies above it.
///
/// [`Wait::Queue`] makes it the queued grant ([`queue`]): it sets the
/// session's `lock_timeout` to the wait (`$8`) and
/// `client_connection_check_interval` to `$9`, then `pg_advisory_lock`
/// waits in the server's lock queue (bounded by that `lock_timeout`), then
/// the token is drawn, and the settings the wait changed are restored to
/// `$6` and `$7`. (`set_config` takes effect at once, so the wait in the
/// same statement runs under it.)
///
/// `epoch` is where the statement takes the store epoch from: the store
/// ([`epoch::current_sql`]) or, on a session that read it before,
/// [`session_epoch`]. `row_known`: the key's row is known to be there
/// ([`Sessions::known_rows`](crate::store::Sessions::known_rows)), so the grant does not look.
fn acquire_sql(settings: &Settings, wait: Wait, epoch: &str, row_known: bool) -> String {
    let table = settings.qualified_table();
    let row_exists = if row_known {
        "true".to_owned()
    } else {
        format!("EXISTS (SELECT 1 FROM {table} WHERE namespace = $2 AND key = $3)")
    };
    let next = epoch::next_token_sql(settings);
    let ceiling = epoch::ceiling_sql("g.e");
    let label = label_sql("g.t", "$4::text");
    let holder = format!("{}($1)", holder_function(settings));
    let (lock, restore) = match wait {
        Wait::Refuse => ("pg_try_advisory_lock($1)", ""),
        Wait::Queue => (
            "CASE WHEN length(set_config('lock_timeout', $8, false)) \
                     + length(set_config('client_connection_check_interval', $9, false)) < 0 \
                  THEN false ELSE pg_advisory_lock($1) IS NOT NULL END",
            " + length(set_config('lock_timeout', $6, false)) \
             + length(set_config('client_connection_check_interval', $7, false))",
        ),
    };
    // No CTEs: one level of CASEs in a subquery kept apart (`OFFSET 0`)
    // orders the steps (epoch, lock, draw), and the outer CASEs act on the
    // draw. CASE evaluates its branches in order and only the one taken.
    // Measured with pgbench in the container, the same steps as
    // materialized CTEs (with the key row's insert) cost a lock+unlock
    // about 24 µs more (247 vs 223 µs).
    format!(
        "SELECT CASE WHEN g.t < {ceiling} THEN g.t END, \
                CASE WHEN g.e IS NOT NULL AND g.t IS NULL THEN {holder} END, \
                CASE WHEN g.t IS NULL THEN 0 \
                     WHEN g.t >= {ceiling} THEN pg_advisory_unlock($1)::int \
                     ELSE length(set_config('application_name', {label}, false)) \
                        + length(set_config('idle_session_timeout', $5, false)) \
                        + length(set_config('synchronous_commit', 'off', true)){restore} END, \
                pg_backend_pid(), \
                CASE WHEN g.t IS NULL OR g.t < {ceiling} THEN g.e END, \
                CASE WHEN g.t IS NOT NULL THEN {row_exists} END \
         FROM (SELECT a.e, CASE WHEN a.e IS NULL THEN NULL WHEN {lock} THEN {next} END AS t \
               FROM (SELECT {epoch} AS e) a OFFSET 0) g"
    )
}

/// The store epoch as the session's last grant read it (bind `epoch`), in
/// a grant on a kept session (why that is safe: [`crate::epoch`]).
/// Bound with the pid that grant ran on (bind `pid`): should the connection
/// behind the session ever be another one, the epoch is `NULL`, so the
/// grant takes no lock and the client reads the epoch from the store again.
fn session_epoch(epoch: &str, pid: &str) -> String {
    format!("CASE WHEN pg_backend_pid() = {pid} THEN {epoch}::int8 END")
}

/// The grant statement of `wait` for a session: on a session new to the
/// call, the one that reads the store's epoch; on a kept session
/// (`remembered`), the one binding the epoch the session remembers
/// ([`session_epoch`]), which also skips the key row's lookup once the
/// backend has seen the row (`row_known`).
fn grant_sql(sql: &Sql, wait: Wait, remembered: bool, row_known: bool) -> &str {
    match (wait, remembered, row_known) {
        (Wait::Refuse, false, _) => &sql.acquire,
        (Wait::Refuse, true, false) => &sql.acquire_in_epoch,
        (Wait::Refuse, true, true) => &sql.acquire_known_row,
        (Wait::Queue, false, _) => &sql.queue,
        (Wait::Queue, true, false) => &sql.queue_in_epoch,
        (Wait::Queue, true, true) => &sql.queue_known_row,
    }
}

/// Adds a key's row after its first grant (the grant reports it missing):
/// a listing finds a held key's name through its row's `lock_id`. Binds:
/// id, namespace, key, token, holder. Run on the lease's session; a key
/// whose row is not in yet is not listed.
fn key_row_sql(table: &str) -> String {
    format!(
        "INSERT INTO {table} (namespace, key, counter, holder, acquired_at, lock_id) \
         VALUES ($2, $3, $4, $5, clock_timestamp(), $1) ON CONFLICT (namespace, key) DO NOTHING"
    )
}

/// What a mutex holder's session shows as `application_name`:
/// `lh <token> <acquired, ms since 1970> <holder label>`, e.g.
/// `lh 1099511627790 1764540000123 api-7d9f8b pid 1`. The server keeps 63
/// bytes of it and shows characters outside printable ASCII as `?`, so the
/// prefix is short and the time in milliseconds, leaving the holder label
/// about 30 bytes (26 at the least; it is cut short past that). A release
/// sets the name back.
fn label_sql(token: &str, holder: &str) -> String {
    format!(
        "'{LABEL_PREFIX}' || {token} || ' ' || \
         (extract(epoch FROM clock_timestamp()) * 1000)::int8 || ' ' || {holder}"
    )
}

/// The start of a holder's label ([`label_sql`]).
const LABEL_PREFIX: &str = "lh ";

/// `"schema"."<table>_holder"`: the function a refused grant calls for the
/// holder's label ([`holder_function_ddl`]).
fn holder_function(settings: &Settings) -> String {
    settings.qualified_sibling("_holder")
}

/// Creates (once) `<table>_holder(bigint)`, the label of the session holding
/// that advisory lock ([`holder_label_sql`]), `NULL` when none does. The
/// grant calls it only when refused. Inlined in the grant instead, the
/// lookup cost every grant its share of starting the statement's plan (the
/// `pg_locks` and activity scans), though no grant runs it: measured with
/// pgbench inside the container, 64 clients, lock+unlock ran at about 0.29
/// of the bare pair's rate inlined and 0.41 through the function, the same
/// as with no lookup at all (2026-12-02). Created only when missing, so a
/// client whose role does not own it still migrates; a changed body needs a
/// new name.
pub(crate) fn holder_function_ddl(settings: &Settings) -> String {
    let function = holder_function(settings);
    let lookup = holder_label_sql("(($1 >> 32) & 4294967295)", "($1 & 4294967295)");
    let create = format!(
        "\x20   IF to_regprocedure({signature}) IS NULL THEN\n\
         \x20       CREATE FUNCTION {function}(bigint) RETURNS text LANGUAGE sql STABLE AS {body};\n\
         \x20   END IF;\n",
        signature = quote_literal(&format!("{function}(bigint)")),
        body = dollar_quote(&format!("SELECT {lookup}\n")),
    );
    format!("DO {};\n", dollar_quote(&format!("BEGIN\n{create}END\n")))
}

/// A scalar subquery: the `application_name` of the session holding
/// advisory lock (`hi`, `lo`), `NULL` when none does.
fn holder_label_sql(hi: &str, lo: &str) -> String {
    format!(
        "(SELECT a.application_name FROM {HOLDERS} \
          WHERE {GRANTED} AND l.classid::int8 = {hi} AND l.objid::int8 = {lo} LIMIT 1)"
    )
}

/// A holder's label read back: its token, when it took the key, and its
/// holder label. `None` for a session not labelled by a grant (the grant's
/// statement is still running, or the lock is someone else's).
fn parse_label(label: &str) -> Option<(FencingToken, Option<SystemTime>, &str)> {
    let rest = label.strip_prefix(LABEL_PREFIX)?;
    let (token, rest) = rest.split_once(' ')?;
    let (acquired, holder) = rest.split_once(' ').unwrap_or((rest, ""));
    let token = token.parse::<u64>().ok()?;
    let acquired_us = acquired
        .parse::<i64>()
        .ok()
        .map(|ms| ms.saturating_mul(1000));
    Some((FencingToken(token), acquired_at(acquired_us), holder))
}

/// Whether a grant statement refuses a held lock or waits for it.
#[derive(Clone, Copy)]
enum Wait {
    /// `pg_try_advisory_lock`: one attempt.
    Refuse,
    /// `pg_advisory_lock` under the session's `lock_timeout`.
    Queue,
}

/// The server's locks (`l`, `pg_locks`), each with its session's activity
/// (`a`, where the holder's label is: [`label_sql`]).
const HOLDERS: &str = "pg_locks l CROSS JOIN LATERAL pg_stat_get_activity(l.pid) a";

/// The granted single-`bigint` advisory locks of this database, as
/// `pg_locks` (aliased `l`) shows them.
const GRANTED: &str = "l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
     AND l.mode = 'ExclusiveLock' AND l.pid IS NOT NULL \
     AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())";

/// The holder of advisory lock (`$1`, `$2`): its server pid and label.
fn inspect_sql() -> String {
    format!(
        "SELECT l.pid, a.application_name FROM {HOLDERS} \
         WHERE {GRANTED} AND l.classid::int8 = $1 AND l.objid::int8 = $2 LIMIT 1"
    )
}

/// A page of the granted locks whose key row is in the namespace (the
/// row's `lock_id` rebuilt from `pg_locks`' two halves), by key, with the
/// holder's pid and label.
fn list_sql(table: &str) -> String {
    format!(
        "SELECT f.key, l.pid, a.application_name FROM {HOLDERS} \
         JOIN {table} f ON f.lock_id = ((l.classid::int8 << 32) | l.objid::int8) \
         WHERE {GRANTED} AND {PAGE_KEYS} \
         ORDER BY f.key LIMIT $4"
    )
}

/// Ends the session holding the lock (waiting up to `$3` ms for it to exit,
/// which frees the lock), reading its label first, and wakes waiters at
/// commit. One statement: the pid terminated is the one `pg_locks` showed
/// holding the lock in the same statement. No row when nobody held it. The
/// next grant's token is above the evicted holder's: the sequence never
/// goes back within an epoch.
fn force_release_sql() -> String {
    format!(
        "WITH h AS MATERIALIZED (SELECT l.pid, a.application_name FROM {HOLDERS} \
               WHERE {GRANTED} AND l.classid::int8 = $1 AND l.objid::int8 = $2 \
               AND l.pid <> pg_backend_pid() LIMIT 1), \
         k AS MATERIALIZED (SELECT h.pid, h.application_name, \
               pg_terminate_backend(h.pid, $3) AS gone FROM h) \
         SELECT k.pid, k.gone, k.application_name, pg_notify($4, $5)::text FROM k"
    )
}

/// A holder's server pid and its session's label ([`label_sql`]).
type HolderRow = (i32, Option<String>);

/// A listed key and its [`HolderRow`].
type ListedRow = (String, i32, Option<String>);

/// What the store tells of an advisory holder: its token, its server pid
/// with its holder label, and when it took the key, read from the session's
/// label ([`label_sql`]); only the pid for an unlabelled session. No owner
/// hint or remaining time: the lock lasts as long as its session.
fn holder_info((pid, label): HolderRow) -> LockInfo {
    match label.as_deref().and_then(parse_label) {
        Some((token, acquired, holder)) => LockInfo::new(Some(token), None)
            .with_metadata(Some(format!("backend pid {pid}; {holder}")))
            .with_acquired_at(acquired),
        None => LockInfo::new(None, None).with_metadata(Some(format!("backend pid {pid}"))),
    }
}

/// Our fencing token (when we got the lock); the holder's label (when
/// refused); the settings applied; the session's server pid; the store
/// epoch (`None`: none in force, or the token reached its ceiling; no lock
/// kept); whether the key's row exists (when we drew a token).
type AcquireRow = (
    Option<i64>,
    Option<String>,
    Option<i32>,
    i32,
    Option<i64>,
    Option<bool>,
);

/// A session holding no lock from `sessions` (see
/// [`Sessions::checkout`](crate::store::Sessions::checkout)), a full pool
/// being `Unavailable` after `timeout`. Advisory attempts run in their
/// caller's future, so a caller that leaves drops the wait with it.
pub(crate) async fn checkout(
    sessions: &Arc<crate::store::Sessions>,
    timeout: Duration,
) -> Result<Checkout, LockError> {
    sessions.checkout().await.map_err(|error| match error {
        sqlx::Error::PoolTimedOut => LockError::unavailable(
            ADVISORY,
            format!(
                "no connection within {timeout:?} (each held advisory lease pins one \
                     of the backend's {} connections)",
                sessions.max_connections()
            ),
        ),
        other => map(ADVISORY, other),
    })
}

/// One attempt. A pinned session comes from [`Sessions`](crate::store::Sessions):
/// if this future is dropped mid-call, the session is dropped with it and
/// closed (never reused), which frees a lock the server may have granted.
pub(crate) async fn try_acquire(
    shared: &Shared,
    key: &Key,
    ttl: Duration,
) -> Result<Lease, LockError> {
    let options = &shared.options;
    let sessions = shared.sessions()?;
    if key
        .as_str()
        .starts_with(leasehold_core::waits::WAITS_PREFIX)
        && !sessions.room_for_bookkeeping()
    {
        // The waiting call carries on unrecorded (core logs it at debug).
        return Err(LockError::unavailable(
            ADVISORY,
            "half the sessions are in use: waiter entries wait for room, \
             this wait goes unrecorded",
        ));
    }
    let id = advisory_lock_id(&options.namespace, key.as_str());
    let sent_at = options.clock.now();
    let timeout = options.timeout;
    with_timeout(ADVISORY, timeout, async {
        loop {
            let Checkout {
                mut session,
                reused,
                pid,
                epoch,
            } = checkout(sessions, timeout).await?;
            // A kept session binds the epoch it remembers and its pid.
            let remembered = pid.zip(epoch);
            let sql = grant_sql(
                &shared.sql,
                Wait::Refuse,
                remembered.is_some(),
                sessions.known_rows.contains(&id),
            );
            let mut grant = sqlx::query_as(sql)
                .bind(id)
                .bind(&options.namespace)
                .bind(key.as_str())
                .bind(&options.holder)
                .bind(idle_timeout(ttl));
            if let Some((pid, epoch)) = remembered {
                grant = grant.bind(epoch).bind(pid);
            }
            let row: AcquireRow = match grant.fetch_one(&mut session).await {
                Ok(row) => row,
                // A kept session that died while idle: try the next one.
                Err(error) if reused && session_ended(&error) => continue,
                Err(error) => return Err(map(ADVISORY, error)),
            };
            let (token, holder, _, pid, epoch, row_exists) = row;
            if epoch.is_none() {
                // The sequence may have gone back (a crash, a new standby,
                // a fresh table) or reached the epoch's ceiling, or the
                // session is not the one that read its remembered epoch:
                // start an epoch (if none is in force), then ask again. The
                // session is closed, not kept: a token at the ceiling gave
                // its lock back in the statement, and a session whose state
                // we did not check is not reused.
                drop(session);
                start_epoch(shared).await?;
                continue;
            }
            let Some(token) = token else {
                // Refused: this session holds no lock, keep it.
                sessions.checkin(session, Some(pid), epoch);
                let info = holder.map(|label| holder_info((pid, Some(label))));
                return Err(LockError::contended(ADVISORY, key.as_str(), info));
            };
            if row_exists == Some(false) {
                // On error the session is dropped (closed), freeing the lock.
                add_key_row(shared, &mut session, id, key, token)
                    .await
                    .map_err(|e| map(ADVISORY, e))?;
            }
            sessions.known_rows.insert(id);
            let granted = Granted {
                token,
                epoch,
                sent_at,
                ttl,
            };
            let held = Held::mutex(id);
            return Ok(pinned_lease(
                shared, sessions, session, key, held, pid, granted,
            ));
        }
    })
    .await
}

/// Adds `key`'s row on the lease's `session` after a grant that found none
/// ([`key_row_sql`]).
async fn add_key_row(
    shared: &Shared,
    session: &mut sqlx::postgres::PgListener,
    id: i64,
    key: &Key,
    token: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(&shared.sql.key_row)
        .bind(id)
        .bind(&shared.options.namespace)
        .bind(key.as_str())
        .bind(token)
        .bind(&shared.options.holder)
        .execute(session)
        .await
        .map(|_| ())
}

/// The longest a waiter stays in the server's lock queue at one go. The
/// client waits at most this plus the operation timeout for an answer, so a
/// paused or partitioned server is `Unavailable` within that; a waiter whose
/// wait is longer joins the queue again (at its end).
const QUEUE_SPAN: Duration = Duration::from_secs(10);

/// How often the server of a queued waiter checks that the client is still
/// connected (`client_connection_check_interval`, ms): when the waiting
/// process dies, its server process leaves the queue within this instead of
/// taking the lock for nobody at the grant. (A dropped call cancels its
/// statement at once: [`CancelOnDrop`].)
const CLIENT_CHECK_MS: &str = "1000";

/// A queued grant that waited longer than this share of its TTL is renewed
/// before it is handed out (see [`queue`]).
const RENEW_AFTER_WAIT_SHARE: u32 = 4;

/// Waits for the lock in the server's own queue (`pg_advisory_lock` under
/// `lock_timeout`) for at most `wait` ([`QUEUE_SPAN`] at one go), on a
/// session pinned for the wait: the server hands the lock over at the
/// holder's unlock, or at the end of its session (a killed holder, which
/// sends no release signal), in arrival order among queued waiters. A
/// key's waiters of one backend queue one at a time, in the order they
/// asked ([`Sessions::turn`](crate::store::Sessions::turn)); at most half
/// the backend's sessions queue at once
/// ([`Sessions::queue_slot`](crate::store::Sessions::queue_slot)); `None`
/// when no place is free, when the wait ran out, when its session had
/// ended, or when there is no epoch in force or the session's remembered
/// one no longer holds (the next ordinary attempt starts or reads one):
/// the caller then makes an ordinary attempt and waits with core's
/// notified loop. A free key is granted at once, in one statement like an
/// ordinary attempt's; a kept session takes the epoch it remembers, as
/// there.
///
/// The lease's validity counts from when the statement was *sent*, as every
/// grant's does; a grant that waited more than a quarter of its TTL for the
/// lock is renewed once on its session before it is handed out, so it
/// starts with (nearly) the whole TTL.
///
/// Cancel safety: not run on a task of its own. A dropped wait cancels its
/// statement ([`CancelOnDrop`]), so its server process leaves the queue at
/// once, and its session is closed, never reused: whatever the server
/// granted it is freed.
pub(crate) async fn queue(
    shared: &Shared,
    key: &Key,
    ttl: Duration,
    wait: Duration,
) -> Result<Option<Lease>, LockError> {
    let options = &shared.options;
    let sessions = shared.sessions()?;
    let id = advisory_lock_id(&options.namespace, key.as_str());
    let until = leasehold_core::instant_after(tokio::time::Instant::now(), wait);
    // This backend's earlier waiters of the key queue first (waiting here
    // holds no session).
    let Some(_turn) = sessions.turn(id, wait).await else {
        return Ok(None);
    };
    let wait = until
        .saturating_duration_since(tokio::time::Instant::now())
        .min(QUEUE_SPAN);
    let (Some(_slot), Some(defaults)) = (sessions.queue_slot(), sessions.defaults().cloned())
    else {
        return Ok(None);
    };
    let lock_timeout = wait.as_millis();
    if lock_timeout == 0 {
        return Ok(None);
    }
    let Checkout {
        mut session,
        pid,
        epoch,
        ..
    } = checkout(sessions, options.timeout).await?;
    // A kept session binds the epoch it remembers, as in `try_acquire`.
    let remembered = pid.zip(epoch);
    let pid = match pid {
        Some(pid) => pid,
        // A session new to this call: learn its pid first, so a dropped
        // wait can cancel its statement.
        None => {
            let asked =
                sqlx::query_scalar::<_, i32>("SELECT pg_backend_pid()").fetch_one(&mut session);
            match tokio::time::timeout(options.timeout, asked).await {
                Ok(Ok(pid)) => pid,
                // A kept session that died while idle: the next attempt
                // tries another.
                Ok(Err(error)) if session_ended(&error) => return Ok(None),
                Ok(Err(error)) => return Err(map(ADVISORY, error)),
                Err(_) => return Err(timed_out(options.timeout)),
            }
        }
    };
    let cancel = CancelOnDrop {
        pool: Some(shared.pool.clone()),
        pid,
    };
    let sent_at = options.clock.now();
    let sql = grant_sql(
        &shared.sql,
        Wait::Queue,
        remembered.is_some(),
        sessions.known_rows.contains(&id),
    );
    let mut grant = sqlx::query_as::<_, AcquireRow>(sql)
        .bind(id)
        .bind(&options.namespace)
        .bind(key.as_str())
        .bind(&options.holder)
        .bind(idle_timeout(ttl))
        .bind(&defaults.lock_timeout)
        .bind(&defaults.check_interval)
        .bind(lock_timeout.to_string())
        .bind(CLIENT_CHECK_MS);
    if let Some((pid, epoch)) = remembered {
        grant = grant.bind(epoch).bind(pid);
    }
    let granted = grant.fetch_one(&mut session);
    let answer = tokio::time::timeout(wait + options.timeout, granted).await;
    if answer.is_ok() {
        cancel.disarm();
    }
    let row = match answer {
        Ok(Ok(row)) => row,
        // The wait ran out: the session is dropped (closed), whatever it
        // may hold.
        Ok(Err(error)) if lock_wait_ran_out(&error) => return Ok(None),
        // A kept session that died while idle, or one ended while it
        // waited: the next attempt tries another.
        Ok(Err(error)) if session_ended(&error) => return Ok(None),
        Ok(Err(error)) => return Err(map(ADVISORY, error)),
        Err(_) => {
            return Err(LockError::unavailable(
                ADVISORY,
                format!(
                    "no answer within the {wait:?} queued for the lock plus the \
                     operation timeout of {:?}",
                    options.timeout
                ),
            ));
        }
    };
    let (Some(token), _, _, pid, Some(epoch), row_exists) = row else {
        // No epoch in force: no lock taken, and the session still has the
        // wait's settings, so it is closed rather than kept.
        return Ok(None);
    };
    if row_exists == Some(false) {
        // On error or timeout the session is dropped (closed), freeing the lock.
        let added = add_key_row(shared, &mut session, id, key, token);
        match tokio::time::timeout(options.timeout, added).await {
            Ok(added) => added.map_err(|e| map(ADVISORY, e))?,
            Err(_) => return Err(timed_out(options.timeout)),
        }
    }
    sessions.known_rows.insert(id);
    let granted = Granted {
        token,
        epoch: Some(epoch),
        sent_at,
        ttl,
    };
    let lease = pinned_lease(
        shared,
        sessions,
        session,
        key,
        Held::mutex(id),
        pid,
        granted,
    );
    if options.clock.now().saturating_duration_since(sent_at) > ttl / RENEW_AFTER_WAIT_SHARE {
        return extend(shared, &lease, ttl).await.map(Some);
    }
    Ok(Some(lease))
}

/// Cancels the statement of a queued waiter's server process
/// (`pg_cancel_backend`, from the backend's pool) when dropped while armed:
/// the call was dropped, or got no answer in time. sqlx closes a dropped
/// session only after the statement in flight has answered (it runs
/// `UNLISTEN *` on it first), so without this a waiter that went away would
/// stay in the server's queue, holding a session, until its wait ran out or
/// the server granted it the lock for nobody. Should the lock be granted
/// just before the cancel lands, the session is closed and the lock freed
/// all the same.
struct CancelOnDrop {
    pool: Option<sqlx::PgPool>,
    pid: i32,
}

impl CancelOnDrop {
    fn disarm(mut self) {
        self.pool = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let (Some(pool), Ok(runtime)) = (self.pool.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let pid = self.pid;
        // Bounded by the pool's acquire timeout and the server's answer.
        runtime.spawn(async move {
            let cancelled = sqlx::query("SELECT pg_cancel_backend($1)")
                .bind(pid)
                .execute(&pool)
                .await;
            if let Err(error) = cancelled {
                tracing::debug!(pid, %error, "could not cancel a dropped queued wait");
            }
        });
    }
}

/// Whether a queued statement ended without the lock because its wait ran
/// out: `lock_timeout` (55P03), or a `statement_timeout` the role or
/// database sets that is shorter than the wait (57014; the next attempt
/// queues again).
fn lock_wait_ran_out(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db)
        if matches!(db.code().as_deref(), Some("55P03" | "57014")))
}

/// Starts a new store epoch ([`crate::epoch`]).
pub(crate) async fn start_epoch(shared: &Shared) -> Result<(), LockError> {
    sqlx::raw_sql(&shared.sql.epoch_bump)
        .execute(&shared.pool)
        .await
        .map(|_| ())
        .map_err(|e| map(ADVISORY, e))
}

/// When and for how long a grant was asked, its fencing token, and the
/// store epoch it read (kept with its session for the session's next
/// grants, [`crate::epoch`]).
pub(crate) struct Granted {
    pub(crate) token: i64,
    pub(crate) epoch: Option<i64>,
    pub(crate) sent_at: tokio::time::Instant,
    pub(crate) ttl: Duration,
}

/// The lease of a grant `session` holds (`held`): the session goes to the
/// lease's task, whose loss signal the lease carries.
pub(crate) fn pinned_lease(
    shared: &Shared,
    sessions: &Arc<crate::store::Sessions>,
    session: sqlx::postgres::PgListener,
    key: &Key,
    held: Held,
    pid: i32,
    granted: Granted,
) -> Lease {
    let lost = CancellationToken::new();
    let handle = Pinned::start(
        sessions.clone(),
        session,
        key.as_str().to_owned(),
        held,
        (pid, granted.epoch),
        lost.clone(),
    );
    Lease::new(
        ADVISORY,
        key.clone(),
        OwnerToken::generate(),
        FencingToken(granted.token as u64),
        granted.sent_at,
        granted.ttl,
        shared.options.drift,
    )
    .with_handle(Arc::new(handle))
    .with_loss_signal(lost)
}

/// Checks that the pinned session is alive and still holds the lock (in
/// `pg_locks`, for its own backend pid) and restarts its idle clock at `ttl`;
/// the lock itself needs no renewal.
pub(crate) async fn extend(
    shared: &Shared,
    lease: &Lease,
    ttl: Duration,
) -> Result<Lease, LockError> {
    let key = lease.key().as_str();
    let Some(pinned) = pinned(lease)? else {
        return Err(LockError::lost(
            ADVISORY,
            key,
            "the lease has no session of ours",
        ));
    };
    let options = &shared.options;
    let sent_at = options.clock.now();
    // Sent to the lease's task before the first await: renewals of many
    // leases run concurrently, each on its own session.
    let asked = pinned.extend(key, ttl);
    with_timeout(ADVISORY, options.timeout, asked.answer()).await?;
    Ok(lease.renewed(sent_at, ttl, options.drift))
}

/// Unlocks on the pinned session; the session is reused only after the
/// server confirmed the unlock, else closed (which frees the lock).
pub(crate) async fn release(shared: &Shared, lease: &Lease) -> Result<(), LockError> {
    let key = lease.key().as_str();
    let Some(pinned) = pinned(lease)? else {
        return Err(LockError::not_held(ADVISORY, key));
    };
    let asked = pinned.release(key);
    with_timeout(ADVISORY, shared.options.timeout, asked.answer()).await
}

/// How many times `inspect` reads a holder whose session is not labelled
/// yet before it reports the holder without a token: the grant labels its
/// session in the statement that took the lock, a moment after `pg_locks`
/// shows it, so one more read normally finds the label. A lock taken by
/// something other than this crate is never labelled.
const LABEL_READS: usize = 20;

pub(crate) async fn inspect(shared: &Shared, key: &Key) -> Result<Option<LockInfo>, LockError> {
    let options = &shared.options;
    let (hi, lo) = halves(advisory_lock_id(&options.namespace, key.as_str()));
    with_timeout(ADVISORY, options.timeout, async {
        let mut reads = 0;
        loop {
            reads += 1;
            let row: Option<HolderRow> = sqlx::query_as(&shared.sql.inspect)
                .bind(hi)
                .bind(lo)
                .fetch_optional(&shared.pool)
                .await
                .map_err(|e| map(ADVISORY, e))?;
            let labelled = row
                .as_ref()
                .is_none_or(|(_, label)| label.as_deref().and_then(parse_label).is_some());
            if labelled || reads >= LABEL_READS {
                return Ok(row.map(holder_info));
            }
        }
    })
    .await
}

/// A page of the held keys: the granted advisory locks (`pg_locks`, the
/// server's lock table in memory) whose ids belong to the namespace's keys.
/// A lock whose grant is still labelling its session shows without a token.
pub(crate) async fn list(shared: &Shared, query: &ListQuery) -> Result<ListPage, LockError> {
    admin::list(ADVISORY, shared, query, |(key, pid, label): ListedRow| {
        HeldLock {
            key,
            info: holder_info((pid, label)),
        }
    })
    .await
}

/// Ends the holder's session (`pg_terminate_backend`, which frees the lock
/// and fires the holder's loss signal) and wakes the key's waiters, in one
/// statement ([`force_release_sql`]).
pub(crate) async fn force_release(
    shared: &Shared,
    key: &Key,
    reason: &str,
) -> Result<Option<LockInfo>, LockError> {
    let options = &shared.options;
    let id = advisory_lock_id(&options.namespace, key.as_str());
    let (hi, lo) = halves(id);
    // Half the call's time to wait for the session to exit, so the answer
    // normally comes after the lock is free.
    let exit_wait = i64::try_from((options.timeout / 2).as_millis().max(1)).unwrap_or(i64::MAX);
    let row: Option<ForcedRow> = with_timeout(ADVISORY, options.timeout, async {
        sqlx::query_as(&shared.sql.force_release)
            .bind(hi)
            .bind(lo)
            .bind(exit_wait)
            .bind(&options.channel)
            .bind(signal_name(id))
            .fetch_optional(&shared.pool)
            .await
            .map_err(|error| match &error {
                sqlx::Error::Database(db) if db.code().as_deref() == Some("42501") => {
                    not_permitted(ADVISORY, key.as_str(), error)
                }
                _ => map(ADVISORY, error),
            })
    })
    .await?;
    Ok(row.map(|(pid, gone, label, _)| {
        tracing::debug!(
            key = key.as_str(),
            pid,
            exited = gone,
            reason,
            "ended the session holding the advisory lock"
        );
        holder_info((pid, label))
    }))
}

/// The terminated pid, whether it exited in time, its label, and the
/// NOTIFY's (empty) result.
type ForcedRow = (i32, bool, Option<String>, Option<String>);

/// The mode's statements, built once per backend.
pub(crate) fn sql(options: &Settings) -> Sql {
    // Each grant binds the remembered epoch and pid after its own binds:
    // five for the refused grant, nine for the queued one.
    let refuse_epoch = session_epoch("$6", "$7");
    let queue_epoch = session_epoch("$10", "$11");
    Sql {
        acquire: acquire_sql(options, Wait::Refuse, &epoch::current_sql(options), false),
        acquire_in_epoch: acquire_sql(options, Wait::Refuse, &refuse_epoch, false),
        acquire_known_row: acquire_sql(options, Wait::Refuse, &refuse_epoch, true),
        queue: acquire_sql(options, Wait::Queue, &epoch::current_sql(options), false),
        queue_in_epoch: acquire_sql(options, Wait::Queue, &queue_epoch, false),
        queue_known_row: acquire_sql(options, Wait::Queue, &queue_epoch, true),
        key_row: key_row_sql(&options.qualified_table()),
        epoch_bump: epoch::bump_sql(options),
        inspect: inspect_sql(),
        list: list_sql(&options.qualified_table()),
        force_release: force_release_sql(),
        kinds: crate::kinds::KindSql::advisory(options),
        ..Sql::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_grant_calls_the_holder_function_the_migration_makes() {
        use crate::config::{Mode, PostgresConfig};
        let settings = PostgresConfig::new(Mode::Advisory)
            .schema("locks")
            .settings();
        let function = r#""locks"."leasehold_fencing_holder""#;
        for wait in [Wait::Refuse, Wait::Queue] {
            let grant = acquire_sql(&settings, wait, &epoch::current_sql(&settings), false);
            assert!(grant.contains(&format!("{function}($1)")));
        }
        let ddl = crate::schema::ddl(&settings);
        assert!(
            ddl.contains(&format!("CREATE FUNCTION {function}(bigint)")),
            "{ddl}"
        );
    }

    #[test]
    fn a_label_reads_back_as_token_time_and_holder() {
        let (token, acquired, holder) = parse_label("lh 42 1764540000123 api-7d9f pid 1").unwrap();
        assert_eq!(token, FencingToken(42));
        assert_eq!(
            acquired,
            SystemTime::UNIX_EPOCH.checked_add(Duration::from_millis(1_764_540_000_123))
        );
        assert_eq!(holder, "api-7d9f pid 1");
        // Cut short by the server: the token still reads.
        let (token, _, holder) = parse_label("lh 42 17645").unwrap();
        assert_eq!((token, holder), (FencingToken(42), ""));
    }

    #[test]
    fn a_session_not_labelled_by_a_grant_has_no_token() {
        for name in ["", "psql", "lh", "lh x 1 h", "leasehold 42 1 h"] {
            assert!(parse_label(name).is_none(), "{name:?}");
        }
    }
}
