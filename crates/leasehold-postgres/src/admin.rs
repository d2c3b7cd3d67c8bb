//! What both modes' operations tools share: paging a listing by key, and
//! the acquisition time as the database clock recorded it.

use std::time::{Duration, SystemTime};

use leasehold_core::{HeldLock, ListPage, ListQuery, LockError, with_timeout};
use sqlx::FromRow;
use sqlx::postgres::PgRow;

use crate::error::map;
use crate::store::Shared;

/// `acquired_at` of the row aliased `row`, in microseconds since the epoch
/// (decoded by [`acquired_at`]; no date-time feature of sqlx needed).
pub(crate) fn acquired_us(row: &str) -> String {
    format!("(extract(epoch FROM {row}.acquired_at) * 1000000)::int8")
}

/// The keys of a listing page: those of the namespace starting with `$2`
/// (byte-wise, the column being `COLLATE "C"`; the range condition lets the
/// primary key's index find them) after the cursor `$3` (if any), in key
/// order. `f` is the table's alias.
pub(crate) const PAGE_KEYS: &str = "f.namespace = $1 AND f.key >= $2 AND starts_with(f.key, $2) \
     AND ($3::text IS NULL OR f.key > $3)";

/// The database clock's `acquired_at` as a time.
pub(crate) fn acquired_at(micros: Option<i64>) -> Option<SystemTime> {
    let micros = u64::try_from(micros?).ok()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_micros(micros))
}

/// How many rows a page asks for: one more than it shows, to know whether
/// another page follows.
fn rows_for(query: &ListQuery) -> i64 {
    i64::try_from(query.limit.max(1)).map_or(i64::MAX, |limit| limit.saturating_add(1))
}

/// One listing page: runs the mode's listing statement (binds: namespace,
/// prefix, cursor, row count; rows in key order) and turns each row into a
/// held lock with `held`. The cursor is the last key shown.
pub(crate) async fn list<O>(
    name: &'static str,
    shared: &Shared,
    query: &ListQuery,
    held: impl Fn(O) -> HeldLock,
) -> Result<ListPage, LockError>
where
    O: for<'r> FromRow<'r, PgRow> + Send + Unpin,
{
    let options = &shared.options;
    let rows: Vec<O> = with_timeout(name, options.timeout, async {
        sqlx::query_as(&shared.sql.list)
            .bind(&options.namespace)
            .bind(&query.prefix)
            .bind(query.cursor.as_deref())
            .bind(rows_for(query))
            .fetch_all(&shared.pool)
            .await
            .map_err(|e| map(name, e))
    })
    .await?;
    let limit = query.limit.max(1);
    let more = rows.len() > limit;
    let locks: Vec<HeldLock> = rows.into_iter().take(limit).map(held).collect();
    let next = more.then(|| locks.last().map(|l| l.key.clone())).flatten();
    Ok(ListPage { locks, next })
}

/// A permission error of `pg_terminate_backend`, said plainly.
pub(crate) fn not_permitted(backend: &'static str, key: &str, error: sqlx::Error) -> LockError {
    LockError::backend(
        backend,
        format!(
            "force release of {key:?} needs to end the holder's session, which this role may \
             not do: connect as the holder's role, a member of it or of pg_signal_backend \
             (only a superuser may end a superuser's session): {error}"
        ),
    )
}
