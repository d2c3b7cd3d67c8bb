//! Named mode: `GET_LOCK` on a session pinned to the lease (see `store.rs`
//! for the task that owns it and the watcher that reports its end).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use leasehold_core::{
    FencingToken, HeldLock, Key, Lease, ListPage, ListQuery, LockError, LockInfo, OwnerToken,
    with_timeout,
};
use tokio_util::sync::CancellationToken;

use crate::admin::{self, PAGE_KEYS, acquired_at, acquired_us, key_text};
use crate::config::{NAMED, Settings};
use crate::epoch::{self, EpochSql};
use crate::error::{map, number, session_ended};
use crate::keys::lock_name;
use crate::store::{Pinned, Session, Sessions, Shared, Sql, alive_lock};
use sqlx::mysql::MySqlQueryResult;

/// The lease's pinned session. A lease of another backend is a usage error;
/// a lease of ours without a session (forged, or rebuilt from its parts)
/// proves nothing and holds nothing: `None`.
fn pinned(lease: &Lease) -> Result<Option<&Pinned>, LockError> {
    if lease.backend() != NAMED {
        return Err(LockError::Config(format!(
            "lease on {:?} was granted by {}, not by the mysql named backend",
            lease.key(),
            lease.backend()
        )));
    }
    Ok(lease.handle::<Pinned>())
}

/// The connection id (`CONNECTION_ID()`) of the session holding `lease`'s
/// lock, or `None` for a lease not granted by the named backend. For tooling
/// and tests (e.g. to `KILL` the holder); the id may belong to another
/// session once the lease is over.
pub fn session_id(lease: &Lease) -> Option<u64> {
    pinned(lease).ok().flatten().map(|p| p.id)
}

/// Lock, then (only if we got it) take the lease's alive lock and draw the
/// key's next fencing token, in one statement: the key's row in
/// `<table>_held` is inserted or updated only when the floor in force was
/// set on this server (else no `GET_LOCK` runs: [`crate::epoch`]) and both
/// `GET_LOCK`s answer 1 (the `CASE` takes the alive lock only after the
/// key's), and the token comes back as the statement's `LAST_INSERT_ID`.
/// No row is written when the lock is busy. The row is a `MEMORY` table's:
/// the grant waits for no disk. Affected rows: 1 for a new row, 2 for an
/// updated one.
///
/// A token that would reach the epoch's ceiling ([`epoch::ceiling_sql`]) is
/// not handed out: the statement gives both locks back, leaves the token
/// as it was, and its `LAST_INSERT_ID` is 0, which no grant's token is (a
/// floor is at least 2⁴⁴). `RELEASE_ALL_LOCKS`, in the branch `IF` takes
/// only then, adds no binds to every grant: the session came clean from
/// the pool, so this grant's are the only locks it holds. Binds: lock
/// name, holder, lock name, alive lock, holder.
fn acquire_sql(settings: &Settings) -> String {
    let held = epoch::held_table(settings);
    let in_force = epoch::in_force_table(settings);
    let ceiling = epoch::ceiling_sql("f.floor");
    let next = "GREATEST(token + 1, f.floor + 1)";
    format!(
        "INSERT INTO {held} (lock_name, token, holder, acquired_at) \
         SELECT ?, LAST_INSERT_ID(f.floor + 1), ?, UTC_TIMESTAMP(6) \
         FROM {in_force} AS f \
         WHERE f.id = 1 AND (CASE WHEN f.server <> @@server_id THEN 0 \
             WHEN GET_LOCK(?, 0) = 1 THEN GET_LOCK(?, 0) ELSE 0 END) = 1 \
         ON DUPLICATE KEY UPDATE token = IF({next} < {ceiling}, LAST_INSERT_ID({next}), \
                 token + LEAST(0, RELEASE_ALL_LOCKS() + LAST_INSERT_ID(0))), \
             holder = ?, acquired_at = UTC_TIMESTAMP(6)"
    )
}

/// The key's row in the keys' table, if it has none, so that listings can
/// name the key. Binds: namespace, key, lock name.
fn register_sql(table: &str) -> String {
    format!("INSERT IGNORE INTO {table} (namespace, `key`, lock_name, counter) VALUES (?, ?, ?, 0)")
}

/// The holder's token, label and acquisition time from `<table>_held`
/// (aliased `h`).
fn holder_columns() -> String {
    let acquired = acquired_us("h");
    format!("h.token, CONVERT(h.holder USING utf8mb4), {acquired}")
}

/// Who holds a key's lock (its connection id, or NULL), with the key's
/// token, label and acquisition time; whether this very session holds it;
/// whether a fencing floor is in force on this server. Binds: lock name,
/// lock name, lock name.
fn holder_sql(settings: &Settings) -> String {
    let held = epoch::held_table(settings);
    let in_force = epoch::in_force_table(settings);
    let columns = holder_columns();
    format!(
        "SELECT CAST(IS_USED_LOCK(?) AS SIGNED), \
                CAST(COALESCE(IS_USED_LOCK(?) = CONNECTION_ID(), 0) AS SIGNED), \
                {columns}, \
                CAST((SELECT COUNT(*) FROM {in_force} \
                      WHERE id = 1 AND server = @@server_id) AS SIGNED) \
         FROM (SELECT 1) AS one LEFT JOIN {held} AS h ON h.lock_name = ?"
    )
}

/// A page of the namespace's keys whose lock some session holds, by key.
fn list_sql(settings: &Settings) -> String {
    let table = settings.quoted_table();
    let held = epoch::held_table(settings);
    let columns = holder_columns();
    format!(
        "SELECT f.`key`, CAST(IS_USED_LOCK(f.lock_name) AS SIGNED) AS conn, {columns} \
         FROM {table} AS f LEFT JOIN {held} AS h ON h.lock_name = f.lock_name \
         WHERE {PAGE_KEYS} HAVING conn IS NOT NULL ORDER BY f.`key` LIMIT ?"
    )
}

/// A holder's connection id, token, label and acquisition time.
type HolderRow = (i64, Option<i64>, Option<String>, Option<i64>);

/// A listed key and its [`HolderRow`].
type ListedRow = (Vec<u8>, i64, Option<i64>, Option<String>, Option<i64>);

/// What the store tells of a named holder: its token, its connection id
/// with the label it stored, and when it took the key. No owner hint or
/// remaining time: the lock lasts as long as its session.
fn holder_info((conn, token, holder, acquired): HolderRow) -> LockInfo {
    let metadata = match holder {
        Some(holder) => format!("connection {conn}; {holder}"),
        None => format!("connection {conn}"),
    };
    LockInfo::new(token.map(|t| FencingToken(t as u64)), None)
        .with_metadata(Some(metadata))
        .with_acquired_at(acquired_at(acquired))
}

/// [`holder_sql`]'s row: holder connection, held by this session, then a
/// [`HolderRow`]'s token, label and time, then whether a floor is in force.
type HolderQuery = (
    Option<i64>,
    i64,
    Option<i64>,
    Option<String>,
    Option<i64>,
    i64,
);

/// One attempt. A pinned session comes from [`Sessions`](crate::store::Sessions):
/// if this future is dropped mid-call, the session is dropped with it and
/// closed (never reused), which frees a lock the server may have granted.
pub(crate) async fn try_acquire(
    shared: &Shared,
    key: &Key,
    ttl: Duration,
) -> Result<Lease, LockError> {
    let sent_at = shared.options.clock.now();
    with_timeout(
        NAMED,
        shared.options.timeout,
        grant(shared, key, ttl, sent_at),
    )
    .await
}

/// MySQL's "the table is full" (1114): `<table>_held` reached its
/// `MEMORY` size limit.
const TABLE_FULL: u16 = 1114;

/// [`try_acquire`]'s work, unbounded. Starts a fencing epoch when none is
/// in force, and prunes a full `<table>_held`, each at most once a call
/// ([`crate::epoch`]).
async fn grant(
    shared: &Shared,
    key: &Key,
    ttl: Duration,
    sent_at: Instant,
) -> Result<Lease, LockError> {
    let options = &shared.options;
    let sessions = shared.sessions()?;
    let name = lock_name(&options.namespace, key.as_str());
    let timeout = options.timeout;
    let (mut started_epoch, mut pruned, mut looked_free) = (false, false, false);
    loop {
        let (mut session, reused) = sessions.checkout().await.map_err(|error| match error {
            sqlx::Error::PoolTimedOut => LockError::unavailable(
                NAMED,
                format!(
                    "no connection within {timeout:?} (each held named lease pins one \
                     of the backend's {} connections)",
                    sessions.max_connections()
                ),
            ),
            other => map(NAMED, other),
        })?;
        let owner = OwnerToken::generate();
        let alive = alive_lock(&owner);
        let done = match lock(shared, &mut session, &name, &alive, ttl).await {
            Ok(done) => done,
            // A kept session that died while idle: try the next one.
            Err(error) if reused && session_ended(&error) => continue,
            // The statement may hold the locks it took before the row was
            // refused: they are given back before the retry.
            Err(error) if number(&error) == Some(TABLE_FULL) => {
                give_back(sessions, session).await;
                if pruned {
                    return Err(LockError::backend(
                        NAMED,
                        format!(
                            "{} is full of held keys' tokens even after pruning: raise \
                             max_heap_table_size and ALTER TABLE it ENGINE = MEMORY: {error}",
                            epoch::held_table(options)
                        ),
                    ));
                }
                pruned = true;
                epoch::prune(shared).await?;
                continue;
            }
            Err(error) => return Err(map(NAMED, error)),
        };
        match done.rows_affected() {
            0 => match refused(shared, sessions, session, key, &name).await {
                Refusal::NoFloor => {
                    next_epoch(shared, &mut started_epoch, "no fencing epoch in force").await?;
                    continue;
                }
                // Nobody held it when we looked: most often an epoch another
                // call started after our attempt found none. Once more.
                Refusal::Free if !looked_free => {
                    looked_free = true;
                    continue;
                }
                Refusal::Free => {
                    return Err(LockError::contended(NAMED, key.as_str(), None));
                }
                Refusal::Busy(error) => return Err(error),
            },
            // The key reached its epoch's ceiling: the statement gave the
            // locks back. Only the next epoch's tokens lie above it.
            _ if done.last_insert_id() == 0 => {
                let why = "the key's token reached its epoch's ceiling";
                next_epoch(shared, &mut started_epoch, why).await?;
                continue;
            }
            // Granted: 1 for the key's first grant since the server started,
            // 2 for a later one.
            _ => {}
        }
        if !sessions.registered.contains(&name) {
            // A failure drops, so closes, the session: the grant fails.
            register(shared, &mut session, key, &name).await?;
            sessions.registered.insert(name.clone());
        }
        let lost = CancellationToken::new();
        let token = FencingToken(done.last_insert_id());
        let handle = Pinned::start(
            sessions.clone(),
            session,
            key.as_str().to_owned(),
            name,
            alive,
            lost.clone(),
        );
        return Ok(Lease::new(
            NAMED,
            key.clone(),
            owner,
            token,
            sent_at,
            ttl,
            options.drift,
        )
        .with_handle(Arc::new(handle))
        .with_loss_signal(lost));
    }
}

/// Frees every lock `session` holds, which are only this call's (it came
/// clean from the pool), and keeps it for reuse; a session that fails to is
/// dropped, which closes it. Not by dropping it alone: a dropped session is
/// closed on a task of its own, and a retry's `GET_LOCK` found the key
/// still held by it (a free key refused as contended).
async fn give_back(sessions: &Sessions, mut session: Session) {
    match sqlx::query("DO RELEASE_ALL_LOCKS()")
        .execute(&mut *session.conn)
        .await
    {
        Ok(_) => sessions.checkin(session),
        Err(error) => tracing::debug!(%error, "closing a session that failed to free its locks"),
    }
}

/// Starts the next fencing epoch for a grant that needs one (`why`), at
/// most once a call (`started`): a second need right after a start is
/// `Unavailable`.
async fn next_epoch(shared: &Shared, started: &mut bool, why: &str) -> Result<(), LockError> {
    if *started {
        return Err(LockError::unavailable(
            NAMED,
            format!("{why} right after starting one"),
        ));
    }
    *started = true;
    epoch::start(shared).await
}

/// Sets the session's `wait_timeout` for `ttl` and runs the acquiring
/// statement on it.
async fn lock(
    shared: &Shared,
    session: &mut Session,
    name: &str,
    alive: &str,
    ttl: Duration,
) -> Result<MySqlQueryResult, sqlx::Error> {
    let options = &shared.options;
    session.set_wait_timeout(ttl).await?;
    sqlx::query(&shared.sql.acquire)
        .bind(name)
        .bind(&options.holder)
        .bind(name)
        .bind(alive)
        .bind(&options.holder)
        .execute(&mut *session.conn)
        .await
}

/// Writes the key's row in the keys' table if it has none, so that `list`
/// names the key. A grant does this for every key its backend has not seen
/// there ([`Sessions::registered`](crate::store::Sessions::registered)),
/// not only at the key's first grant since the server started: a grant
/// whose registration failed leaves the key's token row behind, and the
/// next grant of the key, from any process, must still name it.
async fn register(
    shared: &Shared,
    session: &mut Session,
    key: &Key,
    name: &str,
) -> Result<(), LockError> {
    sqlx::query(&shared.sql.register)
        .bind(&shared.options.namespace)
        .bind(key.as_str())
        .bind(name)
        .execute(&mut *session.conn)
        .await
        .map(|_| ())
        .map_err(|e| map(NAMED, e))
}

/// Why an attempt took nothing.
enum Refusal {
    /// Another session holds the lock: the contention error.
    Busy(LockError),
    /// No fencing floor is in force on this server: start an epoch.
    NoFloor,
    /// Nobody holds the lock any more, and a floor is in force.
    Free,
}

/// Reads why an attempt took nothing, with the holder's details, on the
/// same session; the session is kept for reuse only when it holds nothing
/// (it never should after a refusal; if it does, it is closed).
async fn refused(
    shared: &Shared,
    sessions: &Sessions,
    mut session: Session,
    key: &Key,
    name: &str,
) -> Refusal {
    let row: Result<HolderQuery, _> = sqlx::query_as(&shared.sql.holder)
        .bind(name)
        .bind(name)
        .bind(name)
        .fetch_one(&mut *session.conn)
        .await;
    let info = match row {
        Ok((_, 1, ..)) | Err(_) => None,
        Ok((.., 0)) => {
            sessions.checkin(session);
            return Refusal::NoFloor;
        }
        Ok((None, ..)) => {
            sessions.checkin(session);
            return Refusal::Free;
        }
        Ok((Some(conn), _, token, holder, acquired, _)) => {
            sessions.checkin(session);
            Some(holder_info((conn, token, holder, acquired)))
        }
    };
    Refusal::Busy(LockError::contended(NAMED, key.as_str(), info))
}

/// Checks that the pinned session is alive and still holds the lock, and
/// sets its `wait_timeout` for `ttl`; the lock itself needs no renewal.
pub(crate) async fn extend(
    shared: &Shared,
    lease: &Lease,
    ttl: Duration,
) -> Result<Lease, LockError> {
    let key = lease.key().as_str();
    let Some(pinned) = pinned(lease)? else {
        return Err(LockError::lost(
            NAMED,
            key,
            "the lease has no session of ours",
        ));
    };
    let options = &shared.options;
    let sent_at = options.clock.now();
    // Sent to the lease's task before the first await: renewals of many
    // leases run concurrently, each on its own session.
    let asked = pinned.extend(key, ttl);
    with_timeout(NAMED, options.timeout, asked.answer()).await?;
    Ok(lease.renewed(sent_at, ttl, options.drift))
}

/// Unlocks on the pinned session; the session is reused only after the
/// server confirmed the unlock, else closed (which frees the lock).
pub(crate) async fn release(shared: &Shared, lease: &Lease) -> Result<(), LockError> {
    let key = lease.key().as_str();
    let Some(pinned) = pinned(lease)? else {
        return Err(LockError::not_held(NAMED, key));
    };
    let asked = pinned.release(key);
    let released = with_timeout(NAMED, shared.options.timeout, asked.answer()).await;
    shared.hub.notify(key);
    released
}

async fn holder(shared: &Shared, key: &Key) -> Result<Option<LockInfo>, LockError> {
    let options = &shared.options;
    let name = lock_name(&options.namespace, key.as_str());
    let row: HolderQuery = sqlx::query_as(&shared.sql.holder)
        .bind(&name)
        .bind(&name)
        .bind(&name)
        .fetch_one(&shared.pool)
        .await
        .map_err(|e| map(NAMED, e))?;
    let (conn, _, token, holder, acquired, _) = row;
    Ok(conn.map(|conn| holder_info((conn, token, holder, acquired))))
}

pub(crate) async fn inspect(shared: &Shared, key: &Key) -> Result<Option<LockInfo>, LockError> {
    with_timeout(NAMED, shared.options.timeout, holder(shared, key)).await
}

/// A page of the held keys: the namespace's key rows under the prefix
/// whose lock name `IS_USED_LOCK` reports held.
pub(crate) async fn list(shared: &Shared, query: &ListQuery) -> Result<ListPage, LockError> {
    admin::list(
        NAMED,
        shared,
        query,
        |(key, conn, token, holder, acquired): ListedRow| HeldLock {
            key: key_text(key),
            info: holder_info((conn, token, holder, acquired)),
        },
    )
    .await
}

/// Ends the holder's session (`KILL CONNECTION`, which frees the lock and
/// fires the holder's loss signal through its watcher), then takes the lock
/// itself (waiting up to half the operation timeout for the killed session
/// to go), bumps the key's token while holding it, and releases it: so the
/// bump reads the evicted holder's token and no new holder slips in
/// between. The reason is only logged.
pub(crate) async fn force_release(
    shared: &Shared,
    key: &Key,
    reason: &str,
) -> Result<Option<LockInfo>, LockError> {
    let options = &shared.options;
    with_timeout(NAMED, options.timeout, async {
        let Some(info) = holder(shared, key).await? else {
            return Ok(None);
        };
        let conn = info
            .metadata
            .as_deref()
            .and_then(|m| m.strip_prefix("connection "))
            .and_then(|m| m.split(';').next())
            .and_then(|id| id.parse::<u64>().ok())
            .ok_or_else(|| LockError::backend(NAMED, "the holder's connection id is unreadable"))?;
        match sqlx::raw_sql(&format!("KILL CONNECTION {conn}"))
            .execute(&shared.pool)
            .await
        {
            Ok(_) => {}
            // 1094: unknown thread id (the holder is already gone).
            Err(error) if number(&error) == Some(1094) => {}
            // 1095: not the owner of the thread.
            Err(error) if number(&error) == Some(1095) => {
                return Err(LockError::backend(
                    NAMED,
                    format!(
                        "force release of {:?} needs to end the holder's session, which this \
                         user may not do: connect as the holder's user or one with the \
                         CONNECTION_ADMIN (MySQL) / CONNECTION ADMIN (MariaDB) or SUPER \
                         privilege: {error}",
                        key.as_str()
                    ),
                ));
            }
            Err(error) => return Err(map(NAMED, error)),
        }
        tracing::debug!(
            key = key.as_str(),
            conn,
            reason,
            "killed the session holding the named lock"
        );
        bump(shared, key).await?;
        shared.hub.notify(key.as_str());
        Ok(Some(info))
    })
    .await
}

/// Takes the key's lock on a clean session (waiting up to half the
/// operation timeout), bumps the key's token, releases. When another client
/// took the lock first, its own grant bumped the token: nothing to do.
async fn bump(shared: &Shared, key: &Key) -> Result<(), LockError> {
    let options = &shared.options;
    let sessions = shared.sessions()?;
    let name = lock_name(&options.namespace, key.as_str());
    let wait = (options.timeout / 2).as_secs_f64().max(0.001);
    let (mut session, _) = sessions.checkout().await.map_err(|e| map(NAMED, e))?;
    let got: Option<i64> = sqlx::query_scalar("SELECT CAST(GET_LOCK(?, ?) AS SIGNED)")
        .bind(&name)
        .bind(wait)
        .fetch_one(&mut *session.conn)
        .await
        .map_err(|e| map(NAMED, e))?;
    if got != Some(1) {
        sessions.checkin(session);
        return Ok(());
    }
    sqlx::query(&shared.sql.bump)
        .bind(&name)
        .execute(&mut *session.conn)
        .await
        .map_err(|e| map(NAMED, e))?;
    let back: Option<i64> = sqlx::query_scalar("SELECT CAST(RELEASE_LOCK(?) AS SIGNED)")
        .bind(&name)
        .fetch_one(&mut *session.conn)
        .await
        .map_err(|e| map(NAMED, e))?;
    if back == Some(1) {
        sessions.checkin(session);
    }
    Ok(())
}

/// The mode's statements, built once per backend.
pub(crate) fn sql(options: &Settings) -> Sql {
    let held = epoch::held_table(options);
    Sql {
        acquire: acquire_sql(options),
        holder: holder_sql(options),
        list: list_sql(options),
        bump: format!("UPDATE {held} SET token = token + 1 WHERE lock_name = ?"),
        register: register_sql(&options.quoted_table()),
        epoch: EpochSql::new(options),
        ..Sql::default()
    }
}
