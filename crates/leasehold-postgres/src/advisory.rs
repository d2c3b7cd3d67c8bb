//! Advisory mode: a session advisory lock on a connection pinned to the lease.

use std::time::Duration;

use leasehold_core::{FencingToken, Key, Lease, LockError, LockInfo, OwnerToken, with_timeout};
use sqlx::Postgres;
use sqlx::pool::PoolConnection;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::error::{map, session_ended};
use crate::options::{advisory_lock_id, signal_name};
use crate::{ADVISORY, Shared};

/// The connection a lease holds its lock on. It leaves the lease in exactly
/// two ways: returned to the pool after `pg_advisory_unlock` said true, or
/// detached from the pool and closed (release failed, the lease was dropped
/// unreleased, a call on it timed out), which ends the session and so the lock.
#[derive(Debug)]
pub(crate) struct Pinned {
    conn: Mutex<Option<PoolConnection<Postgres>>>,
    id: i64,
    lost: CancellationToken,
    timeout: Duration,
}

impl Drop for Pinned {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.get_mut().take() {
            tracing::debug!(
                id = self.id,
                "lease dropped unreleased; closing its connection"
            );
            close(conn, self.timeout);
        }
    }
}

/// Detaches a connection that may hold a lock and closes it: never back into
/// the pool. Without a runtime the socket is simply dropped, which also ends
/// the session.
fn close(conn: PoolConnection<Postgres>, timeout: Duration) {
    let raw = conn.detach();
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            let _ = tokio::time::timeout(timeout, sqlx::Connection::close(raw)).await;
        });
    }
}

/// A checked-out connection that is closed on drop unless declared clean:
/// whatever interrupts an operation (an error, the per-call timeout dropping
/// the future) cannot leak a locked connection into the pool.
struct Checkout {
    conn: Option<PoolConnection<Postgres>>,
    timeout: Duration,
}

impl Checkout {
    fn conn(&mut self) -> &mut PoolConnection<Postgres> {
        self.conn.as_mut().expect("checked-out connection present")
    }
    /// Holds no lock: back to the pool.
    fn clean(mut self) {
        self.conn.take();
    }
    fn into_inner(mut self) -> PoolConnection<Postgres> {
        self.conn.take().expect("checked-out connection present")
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            close(conn, self.timeout);
        }
    }
}

/// The lease's pinned connection. A lease of another backend is a usage
/// error; a lease of ours without a connection (forged, or rebuilt from its
/// parts) proves nothing and holds nothing: `None`.
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

/// Lock, then (only if we got it) bump the key's fencing counter and set the
/// session's `idle_session_timeout` to the TTL, all in one statement and
/// session; when the lock is busy, report the last holder's counter and
/// metadata instead (and leave the session's settings alone, since it goes
/// back to the pool).
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
                (SELECT count(*) FROM t)"
    )
}

/// Still held by this very session? And restart the idle clock at the new TTL.
const HELD_SQL: &str = "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' \
     AND pid = pg_backend_pid() AND classid::int8 = $1 AND objid::int8 = $2 \
     AND objsubid = 1 AND granted), set_config('idle_session_timeout', $3, false)";

/// Unlock, signal, and restore the session's idle timeout before it goes back
/// to the pool, in one round trip. The NOTIFY is delivered at commit, i.e.
/// after the unlock whatever the evaluation order. NOTIFY makes the statement
/// a transaction that commits; it need not be durable (a lost signal after a
/// crash costs nothing), so it skips the WAL flush: measured, a flush per
/// release doubled the lock+unlock time.
const RELEASE_SQL: &str = "SELECT pg_advisory_unlock($1), pg_notify($2, $3)::text, \
     set_config('idle_session_timeout', \
         (SELECT reset_val FROM pg_settings WHERE name = 'idle_session_timeout'), false), \
     set_config('synchronous_commit', 'off', true)";

/// The TTL as `idle_session_timeout` (whole milliseconds, rounded up; at
/// least 1, since 0 would disable it).
fn idle_timeout(ttl: Duration) -> String {
    ttl.as_micros()
        .div_ceil(1000)
        .clamp(1, i32::MAX as u128)
        .to_string()
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

/// `pg_locks` shows a bigint advisory key as its high half in `classid` and
/// its low half in `objid`.
fn halves(id: i64) -> (i64, i64) {
    let id = id as u64;
    ((id >> 32) as i64, (id & 0xffff_ffff) as i64)
}

pub(crate) async fn try_acquire(
    shared: &Shared,
    key: &Key,
    ttl: Duration,
) -> Result<Lease, LockError> {
    let options = &shared.options;
    let id = advisory_lock_id(&options.namespace, key.as_str());
    let sent_at = options.clock.now();
    let timeout = options.operation_timeout;
    with_timeout(ADVISORY, timeout, async {
        let conn = shared.pool.acquire().await.map_err(|error| match error {
            sqlx::Error::PoolTimedOut => LockError::unavailable(
                ADVISORY,
                format!(
                    "no pool connection within {timeout:?} (each held advisory lease pins one \
                     of the pool's {} connections)",
                    shared.pool.options().get_max_connections()
                ),
            ),
            other => map(ADVISORY, other),
        })?;
        let mut checkout = Checkout {
            conn: Some(conn),
            timeout,
        };
        let (token, last, holder, _): (Option<i64>, Option<i64>, Option<String>, i64) =
            sqlx::query_as(&shared.sql.acquire)
                .bind(id)
                .bind(&options.namespace)
                .bind(key.as_str())
                .bind(&options.holder)
                .bind(idle_timeout(ttl))
                .fetch_one(&mut **checkout.conn())
                .await
                .map_err(|e| map(ADVISORY, e))?;
        let Some(token) = token else {
            checkout.clean();
            let info =
                LockInfo::new(last.map(|t| FencingToken(t as u64)), None).with_metadata(holder);
            return Err(LockError::contended(ADVISORY, key.as_str(), Some(info)));
        };
        let lost = CancellationToken::new();
        let handle = Pinned {
            conn: Mutex::new(Some(checkout.into_inner())),
            id,
            lost: lost.clone(),
            timeout,
        };
        Ok(Lease::new(
            ADVISORY,
            key.clone(),
            OwnerToken::generate(),
            FencingToken(token as u64),
            sent_at,
            ttl,
            options.drift,
        )
        .with_handle(std::sync::Arc::new(handle))
        .with_loss_signal(lost))
    })
    .await
}

/// Checks that the pinned session is alive and still holds the lock (in
/// `pg_locks`, for its own backend pid); the lock itself needs no renewal.
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
    with_timeout(ADVISORY, options.operation_timeout, async {
        let mut slot = pinned.conn.lock().await;
        let Some(conn) = slot.as_mut() else {
            return Err(LockError::lost(ADVISORY, key, "the lease was released"));
        };
        let (hi, lo) = halves(pinned.id);
        let result = sqlx::query_as::<_, (bool, String)>(HELD_SQL)
            .bind(hi)
            .bind(lo)
            .bind(idle_timeout(ttl))
            .fetch_one(&mut **conn)
            .await;
        let reason = match result {
            Ok((true, _)) => return Ok(lease.renewed(sent_at, ttl, options.drift)),
            Ok((false, _)) => "the session no longer holds the advisory lock".to_owned(),
            Err(error) if session_ended(&error) => format!("the session ended: {error}"),
            Err(error) => return Err(map(ADVISORY, error)),
        };
        if let Some(conn) = slot.take() {
            close(conn, pinned.timeout);
        }
        pinned.lost.cancel();
        Err(LockError::lost(ADVISORY, key, reason))
    })
    .await
}

pub(crate) async fn release(shared: &Shared, lease: &Lease) -> Result<(), LockError> {
    let key = lease.key().as_str();
    let Some(pinned) = pinned(lease)? else {
        return Err(LockError::not_held(ADVISORY, key));
    };
    let options = &shared.options;
    with_timeout(ADVISORY, options.operation_timeout, async {
        let mut slot = pinned.conn.lock().await;
        let Some(conn) = slot.take() else {
            return Err(LockError::not_held(ADVISORY, key));
        };
        drop(slot);
        let mut checkout = Checkout {
            conn: Some(conn),
            timeout: pinned.timeout,
        };
        let result = sqlx::query_as::<_, (bool, Option<String>, Option<String>, Option<String>)>(
            RELEASE_SQL,
        )
        .bind(pinned.id)
        .bind(&options.channel)
        .bind(signal_name(pinned.id))
        .fetch_one(&mut **checkout.conn())
        .await;
        // Whatever happens from here on, the lease is over.
        pinned.lost.cancel();
        match result {
            Ok((true, ..)) => {
                checkout.clean();
                Ok(())
            }
            // Not ours any more: the checkout closes the connection anyway.
            Ok((false, ..)) => Err(LockError::not_held(ADVISORY, key)),
            Err(error) if session_ended(&error) => Err(LockError::lost(
                ADVISORY,
                key,
                format!("the session ended before release: {error}"),
            )),
            Err(error) => Err(map(ADVISORY, error)),
        }
    })
    .await
}

pub(crate) async fn inspect(shared: &Shared, key: &Key) -> Result<Option<LockInfo>, LockError> {
    let options = &shared.options;
    let id = advisory_lock_id(&options.namespace, key.as_str());
    let (hi, lo) = halves(id);
    with_timeout(ADVISORY, options.operation_timeout, async {
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
pub(crate) fn sql(options: &crate::PostgresOptions) -> crate::Sql {
    let table = options.qualified_table();
    crate::Sql {
        acquire: acquire_sql(&table),
        inspect: inspect_sql(&table),
        ..crate::Sql::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_match_pg_locks_layout() {
        assert_eq!(halves(0x0000_0001_0000_0002), (1, 2));
        assert_eq!(halves(-1), (0xffff_ffff, 0xffff_ffff));
    }
}
