//! Advisory mode's store epoch: durable fencing without a flushed commit
//! per acquisition.
//!
//! An advisory grant bumps the key's counter row in the same statement that
//! takes the lock. Flushing that commit to disk (`synchronous_commit = on`)
//! was most of an acquisition's time; committed asynchronously instead, the
//! last bumps before a crash can be lost, and the counter would hand out a
//! token again. The epoch closes that hole:
//!
//! - `<table>_epoch` (durable) holds one number, bumped with a *flushed*
//!   commit, and `<table>_alive` (`UNLOGGED`) holds the epoch in force.
//!   PostgreSQL empties every unlogged table when it recovers from a crash
//!   (of the server or of any backend) and a promoted standby starts with
//!   them empty; a clean shutdown flushes everything and keeps them.
//! - A grant reads `<table>_alive` in its own statement. Empty means "the
//!   counters may have gone back": the statement takes no lock, and the
//!   client bumps the epoch and records the new one in `<table>_alive`, in
//!   one flushed transaction serialised by an advisory lock, then tries
//!   again.
//! - A grant sets the counter to `max(counter + 1, (epoch - 1) << 40)`. A
//!   key granted fewer than 2⁴⁰ times within an epoch therefore gets, in
//!   every later epoch, tokens above all it ever got before. The first
//!   epoch's floor is 0, so existing counters carry on unchanged and a
//!   store that never crashed hands out small tokens.
//!
//! The promise is the one the flushed counter gave: tokens strictly increase
//! across restarts and crashes of the server; across a failover only when
//! the standby received the epoch's flushed commit (synchronous replication).

use crate::config::Settings;

/// Low bits of a token left to the counter within one epoch.
pub(crate) const EPOCH_SHIFT: u32 = 40;

/// Serialises epoch bumps (`pg_advisory_xact_lock`), so sessions that find
/// `<table>_alive` empty at once bump it once. "leasepoc".
const EPOCH_LOCK: i64 = 0x6c65_6173_6570_6f63;

/// `"schema"."<table>_epoch"`: the durable epoch.
fn epoch_table(settings: &Settings) -> String {
    settings.qualified_sibling("_epoch")
}

/// `"schema"."<table>_alive"`: the epoch in force, gone after a crash.
fn alive_table(settings: &Settings) -> String {
    settings.qualified_sibling("_alive")
}

/// The two tables' DDL (idempotent).
pub(crate) fn ddl(settings: &Settings) -> String {
    let (epoch, alive) = (epoch_table(settings), alive_table(settings));
    format!(
        "CREATE TABLE IF NOT EXISTS {epoch} (\n\
         \x20   one boolean PRIMARY KEY DEFAULT true CHECK (one),\n\
         \x20   epoch bigint NOT NULL\n\
         );\n\
         INSERT INTO {epoch} (one, epoch) VALUES (true, 0) ON CONFLICT (one) DO NOTHING;\n\
         CREATE UNLOGGED TABLE IF NOT EXISTS {alive} (epoch bigint NOT NULL);\n"
    )
}

/// A scalar subquery: the epoch in force, `NULL` when `<table>_alive` is
/// empty (after a crash, or before the first grant).
pub(crate) fn current_sql(settings: &Settings) -> String {
    format!("(SELECT max(epoch) FROM {})", alive_table(settings))
}

/// The lowest token a grant in epoch `epoch_sql` may take.
pub(crate) fn floor_sql(epoch_sql: &str) -> String {
    format!("(({epoch_sql} - 1) << {EPOCH_SHIFT})")
}

/// Starts a new epoch unless another session just did: one flushed
/// transaction (whatever the server's `synchronous_commit`), so no token of
/// the new epoch is handed out before the epoch itself is on disk.
pub(crate) fn bump_sql(settings: &Settings) -> String {
    let (epoch, alive) = (epoch_table(settings), alive_table(settings));
    format!(
        "BEGIN;\n\
         SET LOCAL synchronous_commit = on;\n\
         SELECT pg_advisory_xact_lock({EPOCH_LOCK});\n\
         WITH u AS (UPDATE {epoch} SET epoch = epoch + 1 \
                    WHERE NOT EXISTS (SELECT 1 FROM {alive}) RETURNING epoch) \
         INSERT INTO {alive} (epoch) SELECT epoch FROM u;\n\
         COMMIT;\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Mode, PostgresConfig};

    #[test]
    fn the_tables_sit_beside_the_counter_table() {
        let settings = PostgresConfig::new(Mode::Advisory)
            .schema("locks")
            .settings();
        let ddl = ddl(&settings);
        assert!(
            ddl.contains(r#""locks"."leasehold_fencing_epoch""#),
            "{ddl}"
        );
        assert!(
            ddl.contains(
                r#"CREATE UNLOGGED TABLE IF NOT EXISTS "locks"."leasehold_fencing_alive""#
            ),
            "{ddl}"
        );
    }
}
