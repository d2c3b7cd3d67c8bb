//! Advisory mode: a session advisory lock on a connection pinned to the lease
//! (see `session.rs` for the task that owns it).

use std::sync::Arc;
use std::time::Duration;

use leasehold_core::{FencingToken, Key, Lease, LockError, LockInfo, OwnerToken, with_timeout};
use tokio_util::sync::CancellationToken;

use crate::config::{ADVISORY, Settings};
use crate::error::{map, session_ended};
use crate::keys::advisory_lock_id;
use crate::keys::halves;
use crate::store::{Pinned, Shared, Sql, idle_timeout};

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

/// Lock, then (only if we got it) bump the key's fencing counter and set the
/// session's `idle_session_timeout` to the TTL, all in one statement and
/// session; when the lock is busy, report the last holder's counter and
/// metadata instead (and leave the session's settings alone, since it is kept
/// for reuse). Also returns the session's server pid ([`session_pid`]).
fn acquire_sql(table: &str) -> String {
    format!(
        "WITH l AS (SELECT pg_try_advisory_lock($1) AS got), \
         b AS (INSERT INTO {table} AS f (namespace, key, counter, holder, acquired_at) \
               SELECT $2, $3, 1, $4, clock_timestamp() FROM l WHERE l.got \
               ON CONFLICT (namespace, key) DO UPDATE \
               SET counter = f.counter + 1, holder = EXCLUDED.holder, acquired_at = EXCLUDED.acquired_at \
               RETURNING f.counter), \
         t AS (SELECT set_config('idle_session_timeout', $5, false) FROM l WHERE l.got) \
         SELECT (SELECT counter FROM b), \
                (SELECT counter FROM {table} WHERE namespace = $2 AND key = $3), \
                (SELECT holder FROM {table} WHERE namespace = $2 AND key = $3), \
                (SELECT count(*) FROM t), pg_backend_pid()"
    )
}

fn inspect_sql(table: &str) -> String {
    format!(
        "SELECT l.pid, f.counter, f.holder FROM pg_locks l \
         LEFT JOIN {table} f ON f.namespace = $3 AND f.key = $4 \
         WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
         AND l.classid::int8 = $1 AND l.objid::int8 = $2 \
         AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         LIMIT 1"
    )
}

/// Our fencing token (when we got the lock), else the last holder's; the
/// last holder's metadata; whether the settings were applied; the session's
/// server pid.
type AcquireRow = (Option<i64>, Option<i64>, Option<String>, i64, i32);

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
    let id = advisory_lock_id(&options.namespace, key.as_str());
    let sent_at = options.clock.now();
    let timeout = options.timeout;
    with_timeout(ADVISORY, timeout, async {
        loop {
            let (mut session, reused) = sessions.checkout().await.map_err(|error| match error {
                sqlx::Error::PoolTimedOut => LockError::unavailable(
                    ADVISORY,
                    format!(
                        "no connection within {timeout:?} (each held advisory lease pins one \
                             of the backend's {} connections)",
                        sessions.max_connections()
                    ),
                ),
                other => map(ADVISORY, other),
            })?;
            let row: AcquireRow = match sqlx::query_as(&shared.sql.acquire)
                .bind(id)
                .bind(&options.namespace)
                .bind(key.as_str())
                .bind(&options.holder)
                .bind(idle_timeout(ttl))
                .fetch_one(&mut session)
                .await
            {
                Ok(row) => row,
                // A kept session that died while idle: try the next one.
                Err(error) if reused && session_ended(&error) => continue,
                Err(error) => return Err(map(ADVISORY, error)),
            };
            let (token, last, holder, _, pid) = row;
            let Some(token) = token else {
                // Refused: this session holds no lock, keep it.
                sessions.checkin(session);
                let info =
                    LockInfo::new(last.map(|t| FencingToken(t as u64)), None).with_metadata(holder);
                return Err(LockError::contended(ADVISORY, key.as_str(), Some(info)));
            };
            let lost = CancellationToken::new();
            let handle = Pinned::start(
                sessions.clone(),
                session,
                key.as_str().to_owned(),
                id,
                pid,
                lost.clone(),
            );
            return Ok(Lease::new(
                ADVISORY,
                key.clone(),
                OwnerToken::generate(),
                FencingToken(token as u64),
                sent_at,
                ttl,
                options.drift,
            )
            .with_handle(Arc::new(handle))
            .with_loss_signal(lost));
        }
    })
    .await
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

pub(crate) async fn inspect(shared: &Shared, key: &Key) -> Result<Option<LockInfo>, LockError> {
    let options = &shared.options;
    let id = advisory_lock_id(&options.namespace, key.as_str());
    let (hi, lo) = halves(id);
    with_timeout(ADVISORY, options.timeout, async {
        let row: Option<(i32, Option<i64>, Option<String>)> = sqlx::query_as(&shared.sql.inspect)
            .bind(hi)
            .bind(lo)
            .bind(&options.namespace)
            .bind(key.as_str())
            .fetch_optional(&shared.pool)
            .await
            .map_err(|e| map(ADVISORY, e))?;
        Ok(row.map(|(pid, counter, holder)| {
            let metadata = match holder {
                Some(holder) => format!("backend pid {pid}; {holder}"),
                None => format!("backend pid {pid}"),
            };
            LockInfo::new(counter.map(|c| FencingToken(c as u64)), None)
                .with_metadata(Some(metadata))
        }))
    })
    .await
}

/// The mode's statements, built once per backend.
pub(crate) fn sql(options: &Settings) -> Sql {
    let table = options.qualified_table();
    Sql {
        acquire: acquire_sql(&table),
        inspect: inspect_sql(&table),
        ..Sql::default()
    }
}
