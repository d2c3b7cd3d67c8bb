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
    if settings.mode == Mode::Advisory {
        sql.push_str(&lock_id_column(settings));
        sql.push_str(&crate::epoch::ddl(settings));
        sql.push_str(&crate::advisory::holder_function_ddl(settings));
    }
    sql.push_str(&shared_table_ddl(settings));
    sql
}

/// The shared-grant table's DDL (idempotent; both modes).
pub(crate) fn shared_table_ddl(settings: &Settings) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {} (\n\
         \x20   namespace text COLLATE \"C\" NOT NULL,\n\
         \x20   family text NOT NULL,\n\
         \x20   key text COLLATE \"C\" NOT NULL,\n\
         \x20   owner text COLLATE \"C\" NOT NULL,\n\
         \x20   kind text NOT NULL,\n\
         \x20   counter bigint NOT NULL,\n\
         \x20   expires_at timestamptz,\n\
         \x20   PRIMARY KEY (namespace, family, key, owner)\n\
         );\n",
        settings.qualified_shared_table()
    )
}

/// Advisory mode's `lock_id` column (the key's advisory lock id, so a
/// listing joins `pg_locks` to the keys), indexed. Tables created before it
/// existed get it once: added, filled from the same hash as
/// [`advisory_lock_id`](crate::advisory_lock_id) (SHA-256 in SQL), indexed.
/// Guarded by a catalog check rather than `ADD COLUMN IF NOT EXISTS`, which
/// would take an exclusive lock on the table at every connect.
fn lock_id_column(settings: &Settings) -> String {
    let table = settings.qualified_table();
    let body = format!(
        "BEGIN\n\
         \x20   IF NOT EXISTS (SELECT 1 FROM information_schema.columns \
         WHERE table_schema = {schema} AND table_name = {name} AND column_name = 'lock_id') THEN\n\
         \x20       ALTER TABLE {table} ADD COLUMN lock_id bigint;\n\
         \x20       UPDATE {table} SET lock_id = {LOCK_ID_SQL};\n\
         \x20       CREATE INDEX ON {table} (lock_id);\n\
         \x20   END IF;\n\
         END\n",
        schema = quote_literal(&settings.schema),
        name = quote_literal(&settings.table),
    );
    format!("DO {};\n", dollar_quote(&body))
}

/// [`advisory_lock_id`](crate::advisory_lock_id) of a row's `namespace` and
/// `key`, in SQL: the first 8 bytes of
/// `SHA-256("leasehold\0" || u32_be(len(namespace)) || namespace || key)`
/// as a signed big-endian `bigint`.
const LOCK_ID_SQL: &str = "('x' || left(encode(sha256('\\x6c65617365686f6c6400'::bytea \
     || int4send(octet_length(convert_to(namespace, 'UTF8'))) \
     || convert_to(namespace, 'UTF8') || convert_to(key, 'UTF8')), 'hex'), 16))::bit(64)::int8";

/// A string literal (standard conforming strings: only quotes are doubled).
pub(crate) fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// `body` dollar-quoted with a tag it does not contain.
pub(crate) fn dollar_quote(body: &str) -> String {
    let mut tag = String::from("$leasehold$");
    while body.contains(&tag) {
        tag.insert(tag.len() - 1, '_');
    }
    format!("{tag}\n{body}{tag}")
}
