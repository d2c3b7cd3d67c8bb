//! Table mode: lease rows that expire by the database clock.

use std::time::Duration;

use leasehold_core::{
    FencingToken, HeldLock, Key, Lease, ListPage, ListQuery, LockError, LockInfo, OwnerToken,
    with_timeout,
};

use crate::admin::{self, PAGE_KEYS, acquired_at, acquired_us};
use crate::config::{Settings, TABLE};
use crate::error::map;
use crate::keys::{advisory_lock_id, signal_name};
use crate::kinds::CallerLeft;
use crate::store::{Shared, Sql};

/// The mode's statements, built once per backend. Every value is a bind
/// parameter; only the (quoted) table name is spliced in.
pub(crate) fn sql(options: &Settings) -> Sql {
    let t = options.qualified_table();
    // Microseconds left on the lease of the row aliased `row`.
    let remaining = |row: &str| {
        format!("(extract(epoch FROM {row}.expires_at - clock_timestamp()) * 1000000)::int8")
    };
    let (left, acquired) = (remaining("cur"), acquired_us("f"));
    Sql {
        // One statement: take the row if it is free or expired (by the
        // database clock), bumping the counter; otherwise read the holder from
        // the statement's snapshot.
        acquire: format!(
            "WITH got AS (\
               INSERT INTO {t} AS l (namespace, key, owner, counter, expires_at, holder, acquired_at) \
               VALUES ($1, $2, $3, 1, clock_timestamp() + $4::int8 * interval '1 microsecond', $5, clock_timestamp()) \
               ON CONFLICT (namespace, key) DO UPDATE \
               SET owner = EXCLUDED.owner, counter = l.counter + 1, expires_at = EXCLUDED.expires_at, \
                   holder = EXCLUDED.holder, acquired_at = EXCLUDED.acquired_at \
               WHERE l.owner IS NULL OR l.expires_at <= clock_timestamp() \
               RETURNING l.counter) \
             SELECT got.counter, cur.counter, left(cur.owner, 8), cur.holder, {left} \
             FROM (SELECT 1) AS one \
             LEFT JOIN got ON true \
             LEFT JOIN {t} AS cur ON got.counter IS NULL AND cur.namespace = $1 AND cur.key = $2 \
                 AND cur.owner IS NOT NULL"
        ),
        extend: format!(
            "UPDATE {t} SET expires_at = clock_timestamp() + $4::int8 * interval '1 microsecond' \
             WHERE namespace = $1 AND key = $2 AND owner = $3 AND expires_at > clock_timestamp() \
             RETURNING counter"
        ),
        extend_many: format!(
            "UPDATE {t} AS l SET expires_at = clock_timestamp() + u.ttl * interval '1 microsecond' \
             FROM unnest($2::text[], $3::text[], $4::int8[]) AS u(key, owner, ttl) \
             WHERE l.namespace = $1 AND l.key = u.key AND l.owner = u.owner \
               AND l.expires_at > clock_timestamp() \
             RETURNING l.key, l.owner"
        ),
        // Clears the owner, keeps the row (and its counter), signals waiters;
        // the NOTIFY goes out when the statement commits. The commit skips
        // the WAL flush: a release lost in a crash only keeps the key until
        // its TTL (liveness, not safety), while acquire and extend stay
        // durable (the counter must never go back, an extension never vanish).
        // Measured: lock+unlock 6.7 ms with two flushes, see tests/latency.rs.
        release: format!(
            "UPDATE {t} SET owner = NULL, expires_at = NULL \
             WHERE namespace = $1 AND key = $2 AND owner = $3 AND expires_at > clock_timestamp() \
             RETURNING counter, pg_notify($4, $5)::text, set_config('synchronous_commit', 'off', true)"
        ),
        inspect: format!(
            "SELECT cur.counter, left(cur.owner, 8), cur.holder, {left}, {} FROM {t} AS cur \
             WHERE cur.namespace = $1 AND cur.key = $2 AND cur.owner IS NOT NULL \
               AND cur.expires_at > clock_timestamp()",
            acquired_us("cur")
        ),
        list: format!(
            "SELECT f.key, f.counter, left(f.owner, 8), f.holder, {}, {acquired} FROM {t} AS f \
             WHERE {PAGE_KEYS} AND f.owner IS NOT NULL AND f.expires_at > clock_timestamp() \
             ORDER BY f.key LIMIT $4",
            remaining("f")
        ),
        // Clears the owner and bumps the counter of a live lease in one
        // statement, keeping the row; the locked self-join (`cur`) returns
        // the evicted owner and expiry the update clears. Durable, unlike
        // release: a lost eviction would give the key back to its holder.
        force_release: format!(
            "UPDATE {t} AS f SET owner = NULL, expires_at = NULL, counter = f.counter + 1 \
             FROM (SELECT namespace, key, owner, expires_at FROM {t} \
                   WHERE namespace = $1 AND key = $2 FOR UPDATE) AS cur \
             WHERE f.namespace = cur.namespace AND f.key = cur.key \
               AND f.owner IS NOT NULL AND f.expires_at > clock_timestamp() \
             RETURNING f.counter - 1, left(cur.owner, 8), f.holder, {left}, {acquired}, \
                 pg_notify($3, $4)::text"
        ),
        // Table mode commits every grant flushed: the row is the lease.
        epoch_bump: String::new(),
        acquire_in_epoch: String::new(),
        acquire_known_row: String::new(),
        queue: String::new(),
        queue_in_epoch: String::new(),
        queue_known_row: String::new(),
        key_row: String::new(),
        kinds: crate::kinds::KindSql::table(options),
    }
}

/// Our counter (when we got it), else the holder's counter, owner hint,
/// metadata and remaining microseconds.
type AcquireRow = (
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<i64>,
);
/// A holder's counter, owner hint, metadata, remaining microseconds and
/// acquisition time (microseconds since the epoch).
type HolderRow = (
    i64,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<i64>,
);

/// A listed key and its [`HolderRow`].
type ListedRow = (
    String,
    i64,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<i64>,
);
/// The evicted holder's [`HolderRow`] and the NOTIFY's (empty) result.
type ForcedRow = (
    i64,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<String>,
);

pub(crate) fn micros(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX)
}

fn info(counter: i64, hint: Option<String>, holder: Option<String>, left_us: i64) -> LockInfo {
    let mut info = LockInfo::new(
        Some(FencingToken(counter as u64)),
        Some(Duration::from_micros(left_us.max(0) as u64)),
    )
    .with_metadata(holder);
    info.owner_hint = hint;
    info
}

fn holder_info((counter, hint, holder, left, acquired): HolderRow) -> LockInfo {
    info(counter, hint, holder, left.unwrap_or(0)).with_acquired_at(acquired_at(acquired))
}

pub(crate) async fn try_acquire(
    shared: &Shared,
    key: &Key,
    ttl: Duration,
    mut left: CallerLeft,
) -> Result<Lease, LockError> {
    let options = &shared.options;
    let owner = OwnerToken::generate();
    let sent_at = options.clock.now();
    let row: AcquireRow = with_timeout(TABLE, options.timeout, async {
        left.unless_gone(TABLE, shared.connection(TABLE))
            .await??
            .run(async |connection| {
                sqlx::query_as(&shared.sql.acquire)
                    .bind(&options.namespace)
                    .bind(key.as_str())
                    .bind(owner.to_hex())
                    .bind(micros(ttl))
                    .bind(&options.holder)
                    .fetch_one(&mut *connection)
                    .await
                    .map_err(|e| map(TABLE, e))
            })
            .await
    })
    .await?;
    match row {
        (Some(token), ..) => Ok(Lease::new(
            TABLE,
            key.clone(),
            owner,
            FencingToken(token as u64),
            sent_at,
            ttl,
            options.drift,
        )),
        (None, Some(counter), hint, holder, left) => Err(LockError::contended(
            TABLE,
            key.as_str(),
            Some(info(counter, hint, holder, left.unwrap_or(0))),
        )),
        // Taken and released again between our insert and our read.
        (None, None, ..) => Err(LockError::contended(TABLE, key.as_str(), None)),
    }
}

pub(crate) fn check_lease(lease: &Lease) -> Result<(), LockError> {
    if lease.backend() == TABLE {
        Ok(())
    } else {
        Err(LockError::Config(format!(
            "lease on {:?} was not granted by the postgres table backend",
            lease.key()
        )))
    }
}

pub(crate) async fn extend(
    shared: &Shared,
    lease: &Lease,
    ttl: Duration,
) -> Result<Lease, LockError> {
    check_lease(lease)?;
    let options = &shared.options;
    let sent_at = options.clock.now();
    let row: Option<i64> = with_timeout(TABLE, options.timeout, async {
        shared
            .connection(TABLE)
            .await?
            .run(async |connection| {
                sqlx::query_scalar(&shared.sql.extend)
                    .bind(&options.namespace)
                    .bind(lease.key().as_str())
                    .bind(lease.owner().to_hex())
                    .bind(micros(ttl))
                    .fetch_optional(&mut *connection)
                    .await
                    .map_err(|e| map(TABLE, e))
            })
            .await
    })
    .await?;
    match row {
        Some(_) => Ok(lease.renewed(sent_at, ttl, options.drift)),
        None => Err(LockError::lost(
            TABLE,
            lease.key().as_str(),
            "the lease expired or another owner holds the key",
        )),
    }
}

/// Renews every lease in one statement (the guard's watchdog batches). A
/// lease of another backend in the batch, or a failed statement, is the
/// whole call's error.
pub(crate) async fn extend_many(
    shared: &Shared,
    renewals: &[(Lease, Duration)],
) -> Result<Vec<Result<Lease, LockError>>, LockError> {
    for (lease, _) in renewals {
        check_lease(lease)?;
    }
    let options = &shared.options;
    let sent_at = options.clock.now();
    let keys: Vec<&str> = renewals.iter().map(|(l, _)| l.key().as_str()).collect();
    let owners: Vec<String> = renewals.iter().map(|(l, _)| l.owner().to_hex()).collect();
    let ttls: Vec<i64> = renewals.iter().map(|(_, ttl)| micros(*ttl)).collect();
    let renewed: Vec<(String, String)> = with_timeout(TABLE, options.timeout, async {
        shared
            .connection(TABLE)
            .await?
            .run(async |connection| {
                sqlx::query_as(&shared.sql.extend_many)
                    .bind(&options.namespace)
                    .bind(&keys)
                    .bind(&owners)
                    .bind(&ttls)
                    .fetch_all(&mut *connection)
                    .await
                    .map_err(|e| map(TABLE, e))
            })
            .await
    })
    .await?;
    Ok(renewals
        .iter()
        .zip(&owners)
        .map(|((lease, ttl), owner)| {
            if renewed
                .iter()
                .any(|(k, o)| k == lease.key().as_str() && o == owner)
            {
                Ok(lease.renewed(sent_at, *ttl, options.drift))
            } else {
                Err(LockError::lost(
                    TABLE,
                    lease.key().as_str(),
                    "the lease expired or another owner holds the key",
                ))
            }
        })
        .collect())
}

pub(crate) async fn release(shared: &Shared, lease: &Lease) -> Result<(), LockError> {
    check_lease(lease)?;
    let options = &shared.options;
    let key = lease.key().as_str();
    let row: Option<(i64, Option<String>)> = with_timeout(TABLE, options.timeout, async {
        shared
            .connection(TABLE)
            .await?
            .run(async |connection| {
                sqlx::query_as(&shared.sql.release)
                    .bind(&options.namespace)
                    .bind(key)
                    .bind(lease.owner().to_hex())
                    .bind(&options.channel)
                    .bind(signal_name(advisory_lock_id(&options.namespace, key)))
                    .fetch_optional(&mut *connection)
                    .await
                    .map_err(|e| map(TABLE, e))
            })
            .await
    })
    .await?;
    match row {
        Some(_) => Ok(()),
        None => Err(LockError::not_held(TABLE, key)),
    }
}

pub(crate) async fn inspect(shared: &Shared, key: &Key) -> Result<Option<LockInfo>, LockError> {
    let options = &shared.options;
    let row: Option<HolderRow> = with_timeout(TABLE, options.timeout, async {
        sqlx::query_as(&shared.sql.inspect)
            .bind(&options.namespace)
            .bind(key.as_str())
            .fetch_optional(&shared.pool)
            .await
            .map_err(|e| map(TABLE, e))
    })
    .await?;
    Ok(row.map(holder_info))
}

/// A page of the namespace's live leases, by key (the primary key's order).
pub(crate) async fn list(shared: &Shared, query: &ListQuery) -> Result<ListPage, LockError> {
    admin::list(
        TABLE,
        shared,
        query,
        |(key, counter, hint, holder, left, acquired): ListedRow| HeldLock {
            key,
            info: holder_info((counter, hint, holder, left, acquired)),
        },
    )
    .await
}

/// Clears a live lease's owner and bumps its counter in one statement, so
/// the holder's next renewal finds another owner (`Lost`) and the next grant
/// gets a higher token; wakes waiters. The reason is only logged.
pub(crate) async fn force_release(
    shared: &Shared,
    key: &Key,
    reason: &str,
) -> Result<Option<LockInfo>, LockError> {
    let options = &shared.options;
    let row: Option<ForcedRow> = with_timeout(TABLE, options.timeout, async {
        sqlx::query_as(&shared.sql.force_release)
            .bind(&options.namespace)
            .bind(key.as_str())
            .bind(&options.channel)
            .bind(signal_name(advisory_lock_id(
                &options.namespace,
                key.as_str(),
            )))
            .fetch_optional(&shared.pool)
            .await
            .map_err(|e| map(TABLE, e))
    })
    .await?;
    Ok(row.map(|(counter, hint, holder, left, acquired, _)| {
        tracing::debug!(
            key = key.as_str(),
            counter,
            reason,
            "cleared a lease by force"
        );
        holder_info((counter, hint, holder, left, acquired))
    }))
}
