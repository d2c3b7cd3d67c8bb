//! The crate's table: its DDL and the migration that creates it.

use std::time::Duration;

use leasehold_core::{LockError, with_timeout};
use sqlx::MySqlPool;

use crate::config::{Mode, MysqlConfig, Settings};
use crate::error;

/// Runs the idempotent migration ([`migration_sql`]). `CREATE TABLE IF NOT
/// EXISTS` is atomic in MySQL, so concurrent migrations need no lock.
///
/// Cancel safety: a dropped call leaves the table created or not.
pub(crate) async fn migrate(
    name: &'static str,
    pool: &MySqlPool,
    settings: &Settings,
    timeout: Duration,
) -> Result<(), LockError> {
    let ddl = ddl(settings);
    with_timeout(name, timeout, async {
        sqlx::raw_sql(&ddl)
            .execute(pool)
            .await
            .map(|_| ())
            .map_err(|e| error::map(name, e))
    })
    .await
}

/// The idempotent DDL the crate runs for `config` (print it to apply it by
/// hand, with `migrate(false)`).
///
/// ```
/// use leasehold_mysql::{Mode, MysqlConfig, migration_sql};
/// let sql = migration_sql(&MysqlConfig::new(Mode::Table).table("locks"));
/// assert!(sql.contains("CREATE TABLE IF NOT EXISTS `locks`"));
/// ```
pub fn migration_sql(config: &MysqlConfig) -> String {
    ddl(&config.settings())
}

/// Named mode keeps the key's lock name (so a listing can ask
/// `IS_USED_LOCK` per row), and its tokens in three more tables
/// ([`crate::epoch`]); table mode adds the fencing counter and the lease,
/// and a second table for reader–writer locks and semaphores. Rows are
/// never deleted by the crate, so counters never reset. Namespace and
/// key are `VARBINARY`, so they compare byte for byte (no collation folds
/// case or trailing spaces); the primary key fits InnoDB's 3072-byte limit.
pub(crate) fn ddl(settings: &Settings) -> String {
    let mode_columns = match settings.mode {
        Mode::Named => "    lock_name CHAR(64) CHARACTER SET ascii NOT NULL,\n",
        Mode::Table => {
            "    owner CHAR(32) CHARACTER SET ascii NULL,\n    expires_at DATETIME(6) NULL,\n"
        }
    };
    let kinds = match settings.mode {
        Mode::Named => crate::epoch::ddl(settings),
        Mode::Table => crate::kinds::ddl(settings),
    };
    format!(
        "CREATE TABLE IF NOT EXISTS {} (\n\
         \x20   namespace VARBINARY(1024) NOT NULL,\n\
         \x20   `key` VARBINARY(1024) NOT NULL,\n\
         \x20   counter BIGINT NOT NULL,\n\
         {mode_columns}\
         \x20   holder VARCHAR(1024) CHARACTER SET utf8mb4 NULL,\n\
         \x20   acquired_at DATETIME(6) NULL,\n\
         \x20   PRIMARY KEY (namespace, `key`)\n\
         ) ENGINE = InnoDB;\n{kinds}",
        settings.quoted_table()
    )
}
