//! What both modes' operations tools share: paging a listing by key, the
//! acquisition time as the database clock recorded it, and the lease
//! metadata shown for a holder.

use std::time::{Duration, SystemTime};

use leasehold_core::{HeldLock, ListPage, ListQuery, LockError, with_timeout};
use sqlx::FromRow;
use sqlx::mysql::MySqlRow;

use crate::error::map;
use crate::store::Shared;

/// `acquired_at` of the row aliased `row`, in microseconds since the epoch
/// (the column holds UTC; decoded by [`acquired_at`]).
pub(crate) fn acquired_us(row: &str) -> String {
    format!("CAST(TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', {row}.acquired_at) AS SIGNED)")
}

/// The keys of a listing page (binds: namespace, prefix, prefix, cursor,
/// cursor): those of the namespace starting with the prefix (byte-wise: the
/// columns are `VARBINARY`; the range condition lets the primary key find
/// them) after the cursor (if any). `f` is the table's alias.
pub(crate) const PAGE_KEYS: &str = "f.namespace = ? AND f.`key` >= ? \
     AND LEFT(f.`key`, LENGTH(?)) = CAST(? AS BINARY) AND (? IS NULL OR f.`key` > ?)";

/// The database clock's `acquired_at` as a time.
pub(crate) fn acquired_at(micros: Option<i64>) -> Option<SystemTime> {
    let micros = u64::try_from(micros?).ok()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_micros(micros))
}

/// A key read back from a `VARBINARY` column (keys are UTF-8 when written).
pub(crate) fn key_text(key: Vec<u8>) -> String {
    String::from_utf8(key).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// One listing page: runs the mode's listing statement (binds as
/// [`PAGE_KEYS`], then the row count; rows in key order) and turns each row
/// into a held lock with `held`; core's [`ListPage::from_held`] pages it
/// (the cursor is the last key shown).
pub(crate) async fn list<O>(
    name: &'static str,
    shared: &Shared,
    query: &ListQuery,
    held: impl Fn(O) -> HeldLock,
) -> Result<ListPage, LockError>
where
    O: for<'r> FromRow<'r, MySqlRow> + Send + Unpin,
{
    let options = &shared.options;
    let limit = query.limit.max(1);
    let rows = i64::try_from(limit).map_or(i64::MAX, |l| l.saturating_add(1));
    let cursor = query.cursor.as_deref();
    let rows: Vec<O> = with_timeout(name, options.timeout, async {
        sqlx::query_as(&shared.sql.list)
            .bind(&options.namespace)
            .bind(&query.prefix)
            .bind(&query.prefix)
            .bind(&query.prefix)
            .bind(cursor)
            .bind(cursor)
            .bind(rows)
            .fetch_all(&shared.pool)
            .await
            .map_err(|e| map(name, e))
    })
    .await?;
    let mut page = query.clone();
    page.limit = limit;
    Ok(ListPage::from_held(
        rows.into_iter().map(held).map(|l| (l.key, l.info)),
        &page,
    ))
}
