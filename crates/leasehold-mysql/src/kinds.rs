//! Table mode's reader–writer locks and semaphores: rows of a second table
//! (`<table>_shared`, see [`ddl`]) keyed by (namespace, family, key,
//! owner), where the family is `rw` or `sem`, so the mutex, the
//! reader–writer lock and the semaphore of a key never share a row.
//!
//! Per (family, key): a **counter row** (owner `''`, never deleted: tokens
//! never go back), one **holder row** per grant (kind `read`, `write` or
//! `permit`, its token, `expires_at` by the database clock), and for a
//! reader–writer lock one **waiter row** per waiting writer (`expires_at`
//! `ttl` ahead, refreshed at each of its attempts). An attempt is one
//! transaction that first locks the counter row (`INSERT ... ON DUPLICATE
//! KEY UPDATE`, which takes its exclusive lock), so attempts on one lock
//! run one at a time; it reads the live rows with a locking read (a
//! concurrent renewal is waited for, never read stale), decides, and either
//! bumps the counter and inserts its holder row, or (a waiting writer)
//! records its wait. Expiry is judged by `UTC_TIMESTAMP(6)` only.

use std::sync::Arc;
use std::time::Duration;

use leasehold_core::{
    Key, Lease, LockError, LockKind, OwnerToken, WaitPolicy, wait_for_grant, with_timeout,
};

use crate::MysqlBackend;
use crate::admin::acquired_us;
use crate::config::{Settings, TABLE};
use crate::error::map;
use crate::keys::quote_ident;
use crate::store::Shared;
use crate::table::{grant, holder_info, micros, released, renewal};

/// The suffix of the second table's name.
const SUFFIX: &str = "_shared";

/// The second table's name for `settings`: `<table>_shared`.
fn table_name(settings: &Settings) -> String {
    format!("{}{SUFFIX}", settings.table)
}

/// Refuses a table name too long to take the suffix.
pub(crate) fn check_table(settings: &Settings) -> Result<(), LockError> {
    settings.check_suffix(SUFFIX, "table mode's reader-writer locks and semaphores")
}

/// The second table's idempotent DDL (see the module docs). Namespace and
/// key are `VARBINARY` like the lease table's; the primary key fits
/// InnoDB's 3072-byte limit.
pub(crate) fn ddl(settings: &Settings) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {} (\n\
         \x20   namespace VARBINARY(1024) NOT NULL,\n\
         \x20   family CHAR(3) CHARACTER SET ascii NOT NULL,\n\
         \x20   `key` VARBINARY(1024) NOT NULL,\n\
         \x20   owner CHAR(32) CHARACTER SET ascii NOT NULL,\n\
         \x20   kind VARCHAR(8) CHARACTER SET ascii NOT NULL,\n\
         \x20   counter BIGINT NOT NULL,\n\
         \x20   expires_at DATETIME(6) NULL,\n\
         \x20   holder VARCHAR(1024) CHARACTER SET utf8mb4 NULL,\n\
         \x20   acquired_at DATETIME(6) NULL,\n\
         \x20   PRIMARY KEY (namespace, family, `key`, owner)\n\
         ) ENGINE = InnoDB;\n",
        quote_ident(&table_name(settings))
    )
}

/// The statements, built once per table-mode backend. Every value is a bind
/// parameter; the first three of each are namespace, family and key.
#[derive(Debug)]
pub(crate) struct KindsSql {
    lock: String,
    live: String,
    bump: String,
    grant: String,
    prune: String,
    wait: String,
    unwait: String,
    extend: String,
    release: String,
}

impl KindsSql {
    pub(crate) fn new(settings: &Settings) -> Self {
        let t = quote_ident(&table_name(settings));
        const NOW: &str = "UTC_TIMESTAMP(6)";
        const LOCK: &str = "namespace = ? AND family = ? AND `key` = ?";
        KindsSql {
            lock: format!(
                "INSERT INTO {t} (namespace, family, `key`, owner, kind, counter) \
                 VALUES (?, ?, ?, '', 'counter', 0) ON DUPLICATE KEY UPDATE counter = counter"
            ),
            live: format!(
                "SELECT cur.kind, cur.owner, cur.counter, LEFT(cur.owner, 8), cur.holder, \
                   CAST(TIMESTAMPDIFF(MICROSECOND, {NOW}, cur.expires_at) AS SIGNED), {} \
                 FROM {t} AS cur WHERE cur.namespace = ? AND cur.family = ? AND cur.`key` = ? \
                   AND cur.owner <> '' AND cur.expires_at > {NOW} FOR UPDATE",
                acquired_us("cur")
            ),
            bump: format!(
                "UPDATE {t} SET counter = LAST_INSERT_ID(counter + 1) WHERE {LOCK} AND owner = ''"
            ),
            grant: format!(
                "INSERT INTO {t} \
                   (namespace, family, `key`, owner, kind, counter, expires_at, holder, acquired_at) \
                 VALUES (?, ?, ?, ?, ?, ?, {NOW} + INTERVAL ? MICROSECOND, ?, {NOW})"
            ),
            prune: format!("DELETE FROM {t} WHERE {LOCK} AND owner <> '' AND expires_at <= {NOW}"),
            wait: format!(
                "INSERT INTO {t} \
                   (namespace, family, `key`, owner, kind, counter, expires_at, holder, acquired_at) \
                 VALUES (?, ?, ?, ?, 'waiter', 0, {NOW} + INTERVAL ? MICROSECOND, ?, {NOW}) \
                 ON DUPLICATE KEY UPDATE expires_at = {NOW} + INTERVAL ? MICROSECOND"
            ),
            unwait: format!("DELETE FROM {t} WHERE {LOCK} AND owner = ? AND kind = 'waiter'"),
            extend: format!(
                "UPDATE {t} SET expires_at = {NOW} + INTERVAL ? MICROSECOND \
                 WHERE {LOCK} AND owner = ? AND kind <> 'waiter' AND expires_at > {NOW}"
            ),
            release: format!(
                "DELETE FROM {t} WHERE {LOCK} AND owner = ? AND kind <> 'waiter' \
                   AND expires_at > {NOW}"
            ),
        }
    }
}

/// A live row: kind, owner, token, owner hint, holder label, microseconds
/// left, acquisition time.
type LiveRow = (
    String,
    String,
    i64,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<i64>,
);

/// The family column of `kind`'s lock.
fn family(kind: LockKind) -> &'static str {
    if kind.is_rw() { "rw" } else { "sem" }
}

/// The kind column of a grant of `kind`.
fn kind_column(kind: LockKind) -> &'static str {
    kind.as_str()
}

fn statements(shared: &Shared) -> Result<&KindsSql, LockError> {
    shared.kinds.as_ref().ok_or_else(|| {
        LockError::Config("reader-writer locks and semaphores need table mode".into())
    })
}

/// Whether `kind` may be granted beside the live `holders` (kinds), with
/// other writers waiting or not.
fn admits(kind: LockKind, holders: &[&LiveRow], others_wait: bool) -> bool {
    match kind {
        LockKind::Read => !others_wait && holders.iter().all(|h| h.0 == "read"),
        LockKind::Permit { permits } => holders.len() < permits as usize,
        _ => holders.is_empty(),
    }
}

/// One attempt (one transaction, see the module docs): the granted token.
/// `waiting` is the calling writer's wait, recorded or refreshed when it is
/// refused and removed when it is granted.
async fn take(
    shared: &Shared,
    key: &Key,
    kind: LockKind,
    owner: &OwnerToken,
    ttl: Duration,
    waiting: Option<&OwnerToken>,
) -> Result<u64, LockError> {
    let sql = statements(shared)?;
    let options = &shared.options;
    let (ns, fam, k) = (&options.namespace, family(kind), key.as_str());
    // A grant or a refusal committed and read every answer: the
    // connection goes to the next call.
    shared
        .connection(TABLE)
        .await?
        .run(async |conn| {
            let mut tx = sqlx::Connection::begin(conn)
                .await
                .map_err(|e| map(TABLE, e))?;
            sqlx::query(&sql.lock)
                .bind(ns)
                .bind(fam)
                .bind(k)
                .execute(&mut *tx)
                .await
                .map_err(|e| map(TABLE, e))?;
            let rows: Vec<LiveRow> = sqlx::query_as(&sql.live)
                .bind(ns)
                .bind(fam)
                .bind(k)
                .fetch_all(&mut *tx)
                .await
                .map_err(|e| map(TABLE, e))?;
            let waiter = waiting.map(OwnerToken::to_hex);
            let holders: Vec<&LiveRow> = rows.iter().filter(|r| r.0 != "waiter").collect();
            let others_wait = rows
                .iter()
                .any(|r| r.0 == "waiter" && Some(&r.1) != waiter.as_ref());
            if !admits(kind, &holders, others_wait) {
                if let Some(waiter) = &waiter {
                    sqlx::query(&sql.wait)
                        .bind(ns)
                        .bind(fam)
                        .bind(k)
                        .bind(waiter)
                        .bind(micros(ttl))
                        .bind(&options.holder)
                        .bind(micros(ttl))
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| map(TABLE, e))?;
                }
                tx.commit().await.map_err(|e| map(TABLE, e))?;
                let blocker = holders
                    .iter()
                    .filter(|h| kind != LockKind::Read || h.0 != "read")
                    .min_by_key(|h| h.5)
                    .map(|h| holder_info((h.2, h.3.clone(), h.4.clone(), h.5, h.6)));
                return Err(LockError::contended(TABLE, k, blocker));
            }
            let mut bumped = 0;
            for statement in [&sql.prune, &sql.bump] {
                bumped = sqlx::query(statement)
                    .bind(ns)
                    .bind(fam)
                    .bind(k)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| map(TABLE, e))?
                    .last_insert_id();
            }
            // The new counter, as `LAST_INSERT_ID(counter + 1)` set it.
            let token = bumped;
            sqlx::query(&sql.grant)
                .bind(ns)
                .bind(fam)
                .bind(k)
                .bind(owner.to_hex())
                .bind(kind_column(kind))
                .bind(i64::try_from(token).unwrap_or(i64::MAX))
                .bind(micros(ttl))
                .bind(&options.holder)
                .execute(&mut *tx)
                .await
                .map_err(|e| map(TABLE, e))?;
            if let Some(waiter) = &waiter {
                unwait(sql, &mut *tx, ns, fam, k, waiter).await?;
            }
            tx.commit().await.map_err(|e| map(TABLE, e))?;
            Ok(token)
        })
        .await
}

/// Removes a waiter row.
async fn unwait<'c, E>(
    sql: &KindsSql,
    executor: E,
    ns: &str,
    fam: &str,
    key: &str,
    waiter: &str,
) -> Result<(), LockError>
where
    E: sqlx::Executor<'c, Database = sqlx::MySql>,
{
    sqlx::query(&sql.unwait)
        .bind(ns)
        .bind(fam)
        .bind(key)
        .bind(waiter)
        .execute(executor)
        .await
        .map_err(|e| map(TABLE, e))?;
    Ok(())
}

/// One attempt at a reader, writer or permit, under the operation timeout.
pub(crate) async fn try_acquire(
    shared: &Shared,
    key: &Key,
    kind: LockKind,
    ttl: Duration,
    waiting: Option<OwnerToken>,
) -> Result<Lease, LockError> {
    let lease = grant(shared, key, ttl, |owner| async move {
        take(shared, key, kind, &owner, ttl, waiting.as_ref()).await
    })
    .await?;
    Ok(lease.with_kind(kind))
}

/// Runs `statement` (binds: ttl in µs if `ttl`, the lease's namespace,
/// family, key and owner) for `lease`; whether it found the live grant.
async fn on_lease(
    shared: &Shared,
    lease: &Lease,
    ttl: Option<Duration>,
    statement: impl Fn(&KindsSql) -> &String,
) -> Result<bool, LockError> {
    let sql = statements(shared)?;
    let options = &shared.options;
    let mut query = sqlx::query(statement(sql));
    if let Some(ttl) = ttl {
        query = query.bind(micros(ttl));
    }
    let done = with_timeout(TABLE, options.timeout, async {
        shared
            .connection(TABLE)
            .await?
            .run(async |conn| {
                query
                    .bind(&options.namespace)
                    .bind(family(lease.kind()))
                    .bind(lease.key().as_str())
                    .bind(lease.owner().to_hex())
                    .execute(&mut *conn)
                    .await
                    .map_err(|e| map(TABLE, e))
            })
            .await
    })
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Moves a live grant's `expires_at` `ttl` ahead (database clock).
pub(crate) async fn extend(
    shared: &Shared,
    lease: &Lease,
    ttl: Duration,
) -> Result<Lease, LockError> {
    let sent_at = shared.options.clock.now();
    let found = on_lease(shared, lease, Some(ttl), |s| &s.extend).await?;
    renewal(found, shared, lease, sent_at, ttl)
}

/// Deletes a live grant's row; wakes this backend's waiters of the key.
pub(crate) async fn release(shared: &Shared, lease: &Lease) -> Result<(), LockError> {
    let found = on_lease(shared, lease, None, |s| &s.release).await?;
    released(found, shared, lease.key().as_str())
}

/// A writer's wait in progress; dropping it removes its waiter row on a
/// task of its own (if that fails, the row expires within `ttl`).
struct WaitingWriter {
    shared: Arc<Shared>,
    key: Key,
    owner: OwnerToken,
}

impl Drop for WaitingWriter {
    fn drop(&mut self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (shared, key, owner) = (self.shared.clone(), self.key.clone(), self.owner);
        runtime.spawn(async move {
            let Ok(sql) = statements(&shared) else { return };
            let options = &shared.options;
            let removed = with_timeout(
                TABLE,
                options.timeout,
                unwait(
                    sql,
                    &shared.pool,
                    &options.namespace,
                    family(LockKind::Write),
                    key.as_str(),
                    &owner.to_hex(),
                ),
            )
            .await;
            if let Err(error) = removed {
                tracing::debug!(%key, %error, "could not remove a finished writer's wait; it expires with its TTL");
            }
            // Readers held back by this writer may go now.
            shared.hub.notify(key.as_str());
        });
    }
}

impl MysqlBackend {
    /// Waits for a reader, writer or permit with core's [`wait_for_grant`],
    /// each attempt cancel safe; a writer records its wait (see the module
    /// docs) and removes it when the wait ends, however it ends.
    pub(crate) async fn wait_kind(
        &self,
        key: &Key,
        kind: LockKind,
        ttl: Duration,
        wait: &WaitPolicy,
    ) -> Result<Lease, LockError> {
        let wait = wait.polling_at(self.shared.options.poll);
        let waiting = (kind == LockKind::Write).then(|| WaitingWriter {
            shared: self.shared.clone(),
            key: key.clone(),
            owner: OwnerToken::generate(),
        });
        let owner = waiting.as_ref().map(|w| w.owner);
        wait_for_grant(self, key, &wait, || self.try_kind(key, kind, ttl, owner)).await
    }
}

#[cfg(test)]
mod tests {
    use leasehold_core::LockBackend;

    use super::*;
    use crate::{Mode, MysqlConfig, migration_sql};

    #[test]
    fn table_mode_migrates_both_tables_and_named_mode_neither_kind_table() {
        let table = migration_sql(&MysqlConfig::new(Mode::Table).table("locks"));
        assert!(
            table.contains("CREATE TABLE IF NOT EXISTS `locks` ("),
            "{table}"
        );
        assert!(
            table.contains("CREATE TABLE IF NOT EXISTS `locks_shared` ("),
            "{table}"
        );
        let named = migration_sql(&MysqlConfig::new(Mode::Named).table("locks"));
        assert!(!named.contains("locks_shared"), "{named}");
    }

    #[test]
    fn a_table_name_without_room_for_the_suffix_is_a_config_error() {
        let fits = MysqlConfig::new(Mode::Table).table("t".repeat(57));
        check_table(&fits.settings()).unwrap();
        let long = MysqlConfig::new(Mode::Table).table("t".repeat(58));
        let error = check_table(&long.settings()).unwrap_err();
        assert!(matches!(error, LockError::Config(_)), "{error}");
    }

    /// Named mode refuses the other kinds before any store call (the pool
    /// is lazy and points nowhere).
    #[tokio::test]
    async fn named_mode_has_the_mutex_only() {
        let backend = MysqlBackend::connect("mysql://u:p@127.0.0.1:9/db?mode=named&migrate=false")
            .await
            .unwrap();
        let caps = backend.capabilities();
        assert!(!caps.rw_locks && !caps.semaphores, "{caps:?}");
        let key = Key::new("k").unwrap();
        for kind in [
            LockKind::Read,
            LockKind::Write,
            LockKind::Permit { permits: 2 },
        ] {
            let error = backend
                .try_acquire_kind(&key, kind, Duration::from_secs(5))
                .await
                .unwrap_err();
            assert!(
                matches!(error, LockError::Unsupported { .. }),
                "{kind}: {error}"
            );
        }
    }
}
