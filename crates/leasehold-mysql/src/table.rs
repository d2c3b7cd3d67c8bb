//! Table mode: lease rows that expire by the database clock
//! (`UTC_TIMESTAMP(6)`, the time the statement started).

use std::time::Duration;

use leasehold_core::{
    FencingToken, HeldLock, Key, Lease, ListPage, ListQuery, LockError, LockInfo, OwnerToken,
    with_timeout,
};

use crate::admin::{self, PAGE_KEYS, acquired_at, acquired_us, key_text};
use crate::config::{Settings, TABLE};
use crate::error::{duplicate_key, map};
use crate::store::{Shared, Sql};

/// The mode's statements, built once per backend. Every value is a bind
/// parameter; only the (quoted) table name is spliced in.
pub(crate) fn sql(options: &Settings) -> Sql {
    let t = options.quoted_table();
    const NOW: &str = "UTC_TIMESTAMP(6)";
    const LIVE: &str = "owner IS NOT NULL AND expires_at > UTC_TIMESTAMP(6)";
    // Microseconds left on the lease of the row aliased `row`.
    let left =
        |row: &str| format!("CAST(TIMESTAMPDIFF(MICROSECOND, {NOW}, {row}.expires_at) AS SIGNED)");
    let holder_columns = |row: &str| {
        format!(
            "{row}.counter, LEFT({row}.owner, 8), {row}.holder, {}, {}",
            left(row),
            acquired_us(row)
        )
    };
    Sql {
        // Take an existing row that is free or expired (by the database
        // clock: the WHERE is evaluated before the assignments), bumping the
        // counter; the new counter comes back as LAST_INSERT_ID.
        acquire: format!(
            "UPDATE {t} SET counter = LAST_INSERT_ID(counter + 1), owner = ?, \
                 expires_at = {NOW} + INTERVAL ? MICROSECOND, holder = ?, acquired_at = {NOW} \
             WHERE namespace = ? AND `key` = ? AND (owner IS NULL OR expires_at <= {NOW})"
        ),
        // A key never locked before: its first row (a duplicate means
        // another client inserted it first).
        insert: format!(
            "INSERT INTO {t} (namespace, `key`, owner, counter, expires_at, holder, acquired_at) \
             VALUES (?, ?, ?, 1, {NOW} + INTERVAL ? MICROSECOND, ?, {NOW})"
        ),
        // The row as it is: live or not, and its holder.
        holder: format!(
            "SELECT CAST({LIVE} AS SIGNED), {} FROM {t} AS cur \
             WHERE cur.namespace = ? AND cur.`key` = ?",
            holder_columns("cur")
        ),
        extend: format!(
            "UPDATE {t} SET expires_at = {NOW} + INTERVAL ? MICROSECOND \
             WHERE namespace = ? AND `key` = ? AND owner = ? AND expires_at > {NOW}"
        ),
        // Clears the owner, keeps the row (and its counter).
        release: format!(
            "UPDATE {t} SET owner = NULL, expires_at = NULL \
             WHERE namespace = ? AND `key` = ? AND owner = ? AND expires_at > {NOW}"
        ),
        inspect: format!(
            "SELECT {} FROM {t} AS cur WHERE cur.namespace = ? AND cur.`key` = ? AND cur.{LIVE}",
            holder_columns("cur")
        ),
        list: format!(
            "SELECT f.`key`, {} FROM {t} AS f WHERE {PAGE_KEYS} \
               AND f.owner IS NOT NULL AND f.expires_at > {NOW} \
             ORDER BY f.`key` LIMIT ?",
            holder_columns("f")
        ),
        // Force release, in a transaction: lock and read the live lease...
        evict: format!(
            "SELECT {} FROM {t} AS cur WHERE cur.namespace = ? AND cur.`key` = ? \
               AND cur.{LIVE} FOR UPDATE",
            holder_columns("cur")
        ),
        // ... then clear it and bump the counter (the row is kept).
        bump: format!(
            "UPDATE {t} SET owner = NULL, expires_at = NULL, counter = counter + 1 \
             WHERE namespace = ? AND `key` = ?"
        ),
        ..Sql::default()
    }
}

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
    Vec<u8>,
    i64,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<i64>,
);

/// Whether the row is live, and its [`HolderRow`].
type RowState = (
    i64,
    i64,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<i64>,
);

pub(crate) fn micros(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX)
}

pub(crate) fn holder_info((counter, hint, holder, left, acquired): HolderRow) -> LockInfo {
    let mut info = LockInfo::new(
        Some(FencingToken(counter as u64)),
        Some(Duration::from_micros(left.unwrap_or(0).max(0) as u64)),
    )
    .with_metadata(holder)
    .with_acquired_at(acquired_at(acquired));
    info.owner_hint = hint;
    info
}

/// One attempt: take the row if it is free or expired; if there is no row,
/// insert the key's first one; if it is live, report its holder. A row
/// that changes state between these statements is looked at again (a few
/// times, then reported as contended without details).
pub(crate) async fn try_acquire(
    shared: &Shared,
    key: &Key,
    ttl: Duration,
) -> Result<Lease, LockError> {
    grant(shared, key, ttl, |owner| async move {
        take(shared, key, &owner, ttl).await
    })
    .await
}

/// Runs an attempt's `work` for a fresh owner under the operation timeout;
/// the lease of the token it granted (every kind).
pub(crate) async fn grant<F, Fut>(
    shared: &Shared,
    key: &Key,
    ttl: Duration,
    work: F,
) -> Result<Lease, LockError>
where
    F: FnOnce(OwnerToken) -> Fut,
    Fut: std::future::Future<Output = Result<u64, LockError>>,
{
    let options = &shared.options;
    let owner = OwnerToken::generate();
    let sent_at = options.clock.now();
    let token = with_timeout(TABLE, options.timeout, work(owner)).await?;
    Ok(Lease::new(
        TABLE,
        key.clone(),
        owner,
        FencingToken(token),
        sent_at,
        ttl,
        options.drift,
    ))
}

/// [`try_acquire`]'s work, unbounded: the granted token.
async fn take(
    shared: &Shared,
    key: &Key,
    owner: &OwnerToken,
    ttl: Duration,
) -> Result<u64, LockError> {
    let options = &shared.options;
    // A grant or a refusal read every statement's answer: the connection
    // goes to the next call.
    shared
        .connection(TABLE)
        .await?
        .run(async |conn| {
            for _ in 0..3 {
                let taken = sqlx::query(&shared.sql.acquire)
                    .bind(owner.to_hex())
                    .bind(micros(ttl))
                    .bind(&options.holder)
                    .bind(&options.namespace)
                    .bind(key.as_str())
                    .execute(&mut *conn)
                    .await
                    .map_err(|e| map(TABLE, e))?;
                if taken.rows_affected() == 1 {
                    return Ok(taken.last_insert_id());
                }
                let row: Option<RowState> = sqlx::query_as(&shared.sql.holder)
                    .bind(&options.namespace)
                    .bind(key.as_str())
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(|e| map(TABLE, e))?;
                match row {
                    Some((1, counter, hint, holder, left, acquired)) => {
                        let info = holder_info((counter, hint, holder, left, acquired));
                        return Err(LockError::contended(TABLE, key.as_str(), Some(info)));
                    }
                    // Freed or expired since the update looked: try again.
                    Some(_) => continue,
                    None => {}
                }
                let inserted = sqlx::query(&shared.sql.insert)
                    .bind(&options.namespace)
                    .bind(key.as_str())
                    .bind(owner.to_hex())
                    .bind(micros(ttl))
                    .bind(&options.holder)
                    .execute(&mut *conn)
                    .await;
                match inserted {
                    Ok(_) => return Ok(1),
                    Err(error) if duplicate_key(&error) => continue,
                    Err(error) => return Err(map(TABLE, error)),
                }
            }
            Err(LockError::contended(TABLE, key.as_str(), None))
        })
        .await
}

fn check_lease(lease: &Lease) -> Result<(), LockError> {
    if lease.backend() == TABLE {
        Ok(())
    } else {
        Err(LockError::Config(format!(
            "lease on {:?} was not granted by the mysql table backend",
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
    let done = with_timeout(TABLE, options.timeout, async {
        shared
            .connection(TABLE)
            .await?
            .run(async |conn| {
                sqlx::query(&shared.sql.extend)
                    .bind(micros(ttl))
                    .bind(&options.namespace)
                    .bind(lease.key().as_str())
                    .bind(lease.owner().to_hex())
                    .execute(&mut *conn)
                    .await
                    .map_err(|e| map(TABLE, e))
            })
            .await
    })
    .await?;
    // The connection reports rows found (not only changed), so a renewal
    // that happens to leave `expires_at` unchanged still counts.
    renewal(done.rows_affected() == 1, shared, lease, sent_at, ttl)
}

/// A renewal's answer (every kind): the renewed lease if the statement
/// found the live grant, else `Lost`.
pub(crate) fn renewal(
    found: bool,
    shared: &Shared,
    lease: &Lease,
    sent_at: tokio::time::Instant,
    ttl: Duration,
) -> Result<Lease, LockError> {
    if found {
        Ok(lease.renewed(sent_at, ttl, shared.options.drift))
    } else {
        Err(LockError::lost(
            TABLE,
            lease.key().as_str(),
            "the lease expired or another owner holds the key",
        ))
    }
}

/// A release's answer (every kind): wakes this backend's waiters of the
/// key if the statement found the live grant, else `NotHeld`.
pub(crate) fn released(found: bool, shared: &Shared, key: &str) -> Result<(), LockError> {
    if found {
        shared.hub.notify(key);
        Ok(())
    } else {
        Err(LockError::not_held(TABLE, key))
    }
}

pub(crate) async fn release(shared: &Shared, lease: &Lease) -> Result<(), LockError> {
    check_lease(lease)?;
    let options = &shared.options;
    let key = lease.key().as_str();
    let done = with_timeout(TABLE, options.timeout, async {
        shared
            .connection(TABLE)
            .await?
            .run(async |conn| {
                sqlx::query(&shared.sql.release)
                    .bind(&options.namespace)
                    .bind(key)
                    .bind(lease.owner().to_hex())
                    .execute(&mut *conn)
                    .await
                    .map_err(|e| map(TABLE, e))
            })
            .await
    })
    .await?;
    released(done.rows_affected() == 1, shared, key)
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
            key: key_text(key),
            info: holder_info((counter, hint, holder, left, acquired)),
        },
    )
    .await
}

/// Clears a live lease's owner and bumps its counter in one transaction
/// (the row locked while read), so the holder's next renewal finds another
/// owner (`Lost`) and the next grant gets a higher token; wakes this
/// backend's waiters. The reason is only logged.
pub(crate) async fn force_release(
    shared: &Shared,
    key: &Key,
    reason: &str,
) -> Result<Option<LockInfo>, LockError> {
    let options = &shared.options;
    let evicted: Option<HolderRow> = with_timeout(TABLE, options.timeout, async {
        let mut tx = shared.pool.begin().await.map_err(|e| map(TABLE, e))?;
        let row: Option<HolderRow> = sqlx::query_as(&shared.sql.evict)
            .bind(&options.namespace)
            .bind(key.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| map(TABLE, e))?;
        if row.is_some() {
            sqlx::query(&shared.sql.bump)
                .bind(&options.namespace)
                .bind(key.as_str())
                .execute(&mut *tx)
                .await
                .map_err(|e| map(TABLE, e))?;
        }
        tx.commit().await.map_err(|e| map(TABLE, e))?;
        Ok(row)
    })
    .await?;
    Ok(evicted.map(|row| {
        tracing::debug!(
            key = key.as_str(),
            counter = row.0,
            reason,
            "cleared a lease by force"
        );
        shared.hub.notify(key.as_str());
        holder_info(row)
    }))
}
