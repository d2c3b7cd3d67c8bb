//! The crate's tables: their DDL and the migration that creates them.

use std::time::Duration;

use leasehold_core::{LockError, with_timeout};
use sqlx::PgPool;

use crate::config::{Mode, PostgresConfig, Settings};
use crate::error;
use crate::keys::quote_ident;

/// Serializes concurrent migrations (two processes starting at once would
/// otherwise race on `CREATE TABLE IF NOT EXISTS`).
const MIGRATION_LOCK: i64 = 0x6c65_6173_6568_6f6c; // "leasehol"

/// Runs the idempotent migration ([`migration_sql`]) in one transaction.
///
/// Cancel safety: a dropped call leaves the transaction to roll back.
pub(crate) async fn migrate(
    name: &'static str,
    pool: &PgPool,
    settings: &Settings,
    timeout: Duration,
) -> Result<(), LockError> {
    let script = format!(
        "BEGIN;\nSELECT pg_advisory_xact_lock({MIGRATION_LOCK});\n{}COMMIT;\n",
        ddl(settings)
    );
    with_timeout(name, timeout, async {
        sqlx::raw_sql(&script)
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
/// use leasehold_postgres::{Mode, PostgresConfig, migration_sql};
/// let sql = migration_sql(&PostgresConfig::new(Mode::Table).schema("locks"));
/// assert!(sql.contains(r#"CREATE TABLE IF NOT EXISTS "locks"."leasehold_leases""#));
/// ```
pub fn migration_sql(config: &PostgresConfig) -> String {
    ddl(&config.settings())
}

pub(crate) fn ddl(settings: &Settings) -> String {
    let mut sql = String::new();
    if settings.schema != "public" {
        sql.push_str(&format!(
            "CREATE SCHEMA IF NOT EXISTS {};\n",
            quote_ident(&settings.schema)
        ));
    }
    // Advisory mode keeps only the fencing counter; table mode adds the
    // lease itself. Rows are never deleted by the crate, so counters never
    // reset. Keys compare byte for byte (`COLLATE "C"`).
    let lease_columns = match settings.mode {
        Mode::Advisory => "",
        Mode::Table => "    owner text,\n    expires_at timestamptz,\n",
    };
    sql.push_str(&format!(
        "CREATE TABLE IF NOT EXISTS {} (\n\
         \x20   namespace text COLLATE \"C\" NOT NULL,\n\
         \x20   key text COLLATE \"C\" NOT NULL,\n\
         \x20   counter bigint NOT NULL,\n\
         {lease_columns}\
         \x20   holder text,\n\
         \x20   acquired_at timestamptz,\n\
         \x20   PRIMARY KEY (namespace, key)\n\
         );\n",
        settings.qualified_table()
    ));
    sql
}
