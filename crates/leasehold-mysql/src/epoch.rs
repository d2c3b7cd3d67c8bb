//! Named mode's fencing tokens: strictly increasing across restarts and
//! crashes, with no durable write per grant.
//!
//! A grant used to bump the key's counter row in the InnoDB table, a
//! commit the server flushes to disk before it answers: on the machine the
//! benchmarks run on, that flush cost a grant more than the bare
//! `GET_LOCK` and `RELEASE_LOCK` pair together. Tokens now live in two
//! `MEMORY` tables, which the server never writes to disk and empties
//! whenever it starts:
//!
//! - `<table>_held`: one row per key (by lock name) with the key's last
//!   token, the holder's label and the time it was taken.
//!   The grant statement takes the lock and then raises the row's token to
//!   `GREATEST(token + 1, floor + 1)`, or inserts the row at `floor + 1`,
//!   in one statement.
//! - `<table>_in_force`: one row, the *floor* of the epoch in force and
//!   the server it was started on (`@@server_id`).
//! - `<table>_epoch` (InnoDB, durable): the epoch number.
//!
//! A grant with no floor in force for this server (after a restart, which
//! empties both `MEMORY` tables, or after a failover to a server with
//! another `server_id`) takes no lock; the client then bumps the epoch
//! (a flushed commit: the only durable write), sets the floor to
//! `epoch << 44`, and asks again. Every token of an epoch lies below the
//! next epoch's floor, its *ceiling* ([`ceiling_sql`]): a grant whose
//! token would reach it (a key granted 2⁴⁴ times, 17 trillion, in one
//! epoch) gives both its locks back in the same statement and returns no
//! token, and the client starts the next epoch and asks again. So tokens
//! never go back whatever a restart forgets.
//! Two clients starting an epoch at once both bump it; the floor only ever
//! rises (`GREATEST`), so the later epoch wins whatever the order.
//!
//! The `MEMORY` engine's rows have a fixed size (about 1.2 KB here) and a
//! table is capped by `max_heap_table_size` (16 MiB by default: some
//! 13,000 keys). When `<table>_held` is full, [`prune`] first raises the
//! floor to the highest token in the table, then deletes the rows of keys
//! nobody holds whose token is at most the floor: their next grant starts
//! above the floor, so above every token they had. Only held keys' rows
//! stay, and a held key pins a connection, so the table never fills with
//! held keys alone unless a server admits thousands of connections.
//!
//! What a crash forgets, a restart with the same `server_id` finds (the
//! tables are empty); a failover finds the `server_id` changed. Tokens
//! increase across a failover only when the standby had the epoch's
//! commit (semi-synchronous replication), the promise a flushed counter
//! row gave too. Never empty `<table>_held` alone by hand (emptying
//! `<table>_in_force`, or both, is safe: it starts a new epoch). The
//! InnoDB table still holds one row per key (written at the key's first
//! grant since the server started) so that listings can name keys; its
//! `counter` column is what releases before this one bumped: those tokens
//! lie below the first epoch's floor, 2⁴⁴. A client of such a release
//! beside this one would hand out tokens below this one's: upgrade every
//! client of a table together.
//!
//! On MySQL 8 with its binary log on (its default) and `sync_binlog = 1`,
//! a write to a `MEMORY` table is still logged and flushed: there a grant
//! costs what it did before.

use leasehold_core::LockError;

use crate::config::{NAMED, Settings};
use crate::error::map;
use crate::keys::quote_ident;
use crate::store::Shared;

/// Low bits of a token left to the keys' counts within one epoch.
const EPOCH_SHIFT: u32 = 44;

/// The suffixes of named mode's three tables beside the keys' table.
const SUFFIXES: [&str; 3] = [HELD, IN_FORCE, EPOCH];
const HELD: &str = "_held";
const IN_FORCE: &str = "_in_force";
const EPOCH: &str = "_epoch";

/// `<table><suffix>`, quoted.
fn table(settings: &Settings, suffix: &str) -> String {
    quote_ident(&format!("{}{suffix}", settings.table))
}

/// `<table>_held`, quoted.
pub(crate) fn held_table(settings: &Settings) -> String {
    table(settings, HELD)
}

/// `<table>_in_force`, quoted.
pub(crate) fn in_force_table(settings: &Settings) -> String {
    table(settings, IN_FORCE)
}

/// Refuses a table name too long to take the suffixes.
pub(crate) fn check_table(settings: &Settings) -> Result<(), LockError> {
    SUFFIXES
        .iter()
        .try_for_each(|suffix| settings.check_suffix(suffix, "named mode's fencing tokens"))
}

/// The DDL of the three tables (see the module docs). `holder` is
/// `VARBINARY` because a `MEMORY` row reserves a column's full width, four
/// bytes a character for `utf8mb4`.
pub(crate) fn ddl(settings: &Settings) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {held} (\n\
         \x20   lock_name CHAR(64) CHARACTER SET ascii NOT NULL,\n\
         \x20   token BIGINT NOT NULL,\n\
         \x20   holder VARBINARY(1024) NULL,\n\
         \x20   acquired_at DATETIME(6) NOT NULL,\n\
         \x20   PRIMARY KEY (lock_name)\n\
         ) ENGINE = MEMORY;\n\
         CREATE TABLE IF NOT EXISTS {in_force} (\n\
         \x20   id TINYINT NOT NULL,\n\
         \x20   server BIGINT NOT NULL,\n\
         \x20   floor BIGINT NOT NULL,\n\
         \x20   PRIMARY KEY (id)\n\
         ) ENGINE = MEMORY;\n\
         CREATE TABLE IF NOT EXISTS {epoch} (\n\
         \x20   id TINYINT NOT NULL,\n\
         \x20   epoch BIGINT NOT NULL,\n\
         \x20   PRIMARY KEY (id)\n\
         ) ENGINE = InnoDB;\n",
        held = held_table(settings),
        in_force = in_force_table(settings),
        epoch = table(settings, EPOCH),
    )
}

/// The epoch statements, built once per named backend.
#[derive(Debug, Default)]
pub(crate) struct EpochSql {
    /// Bumps the durable epoch; the new one comes back as
    /// `LAST_INSERT_ID`.
    bump: String,
    /// Raises the floor in force for this server to the bound value, or
    /// replaces another server's. Binds: the floor, twice.
    raise: String,
    /// Raises the floor to the highest token held in `<table>_held`.
    floor_to_tokens: String,
    /// Deletes the rows of unheld keys at or below the floor.
    prune: String,
}

impl EpochSql {
    pub(crate) fn new(settings: &Settings) -> Self {
        let held = held_table(settings);
        let in_force = in_force_table(settings);
        let epoch = table(settings, EPOCH);
        EpochSql {
            bump: format!(
                "INSERT INTO {epoch} (id, epoch) VALUES (1, LAST_INSERT_ID(1)) \
                 ON DUPLICATE KEY UPDATE epoch = LAST_INSERT_ID(epoch + 1)"
            ),
            raise: format!(
                "INSERT INTO {in_force} (id, server, floor) VALUES (1, @@server_id, ?) \
                 ON DUPLICATE KEY UPDATE \
                     floor = IF(server = @@server_id, GREATEST(floor, ?), ?), \
                     server = @@server_id"
            ),
            floor_to_tokens: format!(
                "UPDATE {in_force} SET floor = GREATEST(floor, \
                     (SELECT COALESCE(MAX(token), 0) FROM {held})) \
                 WHERE id = 1 AND server = @@server_id"
            ),
            prune: format!(
                "DELETE FROM {held} WHERE IS_USED_LOCK(lock_name) IS NULL \
                 AND token <= (SELECT floor FROM {in_force} WHERE id = 1 \
                     AND server = @@server_id)"
            ),
        }
    }
}

/// Starts a new epoch: bumps the durable epoch (a flushed commit, on the
/// pool's connection: `LAST_INSERT_ID` is the connection's own), then
/// raises the floor in force to the epoch's.
pub(crate) async fn start(shared: &Shared) -> Result<(), LockError> {
    let sql = &shared.sql.epoch;
    let mut conn = shared.pool.acquire().await.map_err(|e| map(NAMED, e))?;
    let epoch = sqlx::query(&sql.bump)
        .execute(&mut *conn)
        .await
        .map_err(|e| map(NAMED, e))?
        .last_insert_id();
    let floor = floor_of(epoch)?;
    sqlx::query(&sql.raise)
        .bind(floor)
        .bind(floor)
        .bind(floor)
        .execute(&mut *conn)
        .await
        .map_err(|e| map(NAMED, e))?;
    tracing::info!(
        epoch,
        "started a fencing epoch (the store restarted or failed over)"
    );
    Ok(())
}

/// The first floor of the epoch after the one `floor` (a SQL expression)
/// lies in: no token of an epoch may reach it, or a restart could hand out
/// that token again (see the module docs).
pub(crate) fn ceiling_sql(floor: &str) -> String {
    format!("((({floor}) >> {EPOCH_SHIFT}) + 1) << {EPOCH_SHIFT}")
}

/// The first token of `epoch` less one.
fn floor_of(epoch: u64) -> Result<i64, LockError> {
    epoch
        .checked_shl(EPOCH_SHIFT)
        .filter(|floor| floor >> EPOCH_SHIFT == epoch)
        .and_then(|floor| i64::try_from(floor).ok())
        .ok_or_else(|| {
            LockError::Config(format!(
                "the fencing epoch reached {epoch}, past the last one tokens can hold"
            ))
        })
}

/// Makes room in a full `<table>_held` (see the module docs): raises the
/// floor to the highest token there, then deletes unheld keys' rows at or
/// below it.
pub(crate) async fn prune(shared: &Shared) -> Result<(), LockError> {
    let sql = &shared.sql.epoch;
    sqlx::query(&sql.floor_to_tokens)
        .execute(&shared.pool)
        .await
        .map_err(|e| map(NAMED, e))?;
    let gone = sqlx::query(&sql.prune)
        .execute(&shared.pool)
        .await
        .map_err(|e| map(NAMED, e))?
        .rows_affected();
    tracing::info!(
        gone,
        "pruned the fencing tokens of unheld keys: the table was full"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Mode, MysqlConfig};

    #[test]
    fn a_table_name_without_room_for_the_suffixes_is_a_config_error() {
        let fits = MysqlConfig::new(Mode::Named).table("t".repeat(55));
        check_table(&fits.settings()).unwrap();
        let long = MysqlConfig::new(Mode::Named).table("t".repeat(56));
        let error = check_table(&long.settings()).unwrap_err();
        assert!(error.to_string().contains("_in_force"), "{error}");
    }

    #[test]
    fn epochs_have_disjoint_token_ranges() {
        assert_eq!(floor_of(1).unwrap(), 1 << 44);
        assert_eq!(floor_of(2).unwrap(), 2 << 44);
        assert!(floor_of(1 << 19).is_err(), "2^63 does not fit a BIGINT");
        assert!(floor_of(u64::MAX).is_err());
    }
}
