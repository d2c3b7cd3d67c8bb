//! Advisory mode's store epoch and token sequence: durable fencing without
//! a write per acquisition.
//!
//! Every grant (a mutex's, and a reader's, writer's or permit's of
//! [`crate::kinds`]) takes its fencing token from one sequence per table,
//! `<table>_token`, in the statement that takes the lock, once it holds
//! it: `nextval` writes no row and, most of the time, no WAL (the server
//! logs a sequence 32 values ahead), so a grant commits nothing. Measured on
//! one machine, a grant that bumped a counter row cost lock+unlock about
//! 120 µs over the bare lock pair (449 µs); one that draws from the
//! sequence, about 20 µs. The readers of one key all bumped the same row,
//! one after another. One sequence for all keys and kinds still gives every
//! lock strictly increasing tokens (tokens skip numbers; they never repeat
//! or go back).
//!
//! A sequence's WAL is flushed with the commit that wrote it, and grants
//! commit without waiting for the flush, so a crash may set the sequence
//! back to a value it already handed out. The epoch closes that hole:
//!
//! - `<table>_epoch` (durable) holds one number, bumped with a *flushed*
//!   commit, and `<table>_in_force` (`UNLOGGED`) holds the epoch in force.
//!   PostgreSQL empties every unlogged table when it recovers from a crash
//!   (of the server or of any backend) and a promoted standby starts with
//!   them empty; a clean shutdown flushes everything and keeps them.
//! - A grant reads `<table>_in_force` in its own statement. Empty means
//!   "the sequence may have gone back": the statement takes no lock, and the
//!   client bumps the epoch, lifts the sequence to the new epoch's floor
//!   `(epoch - 1) << 40` and records the epoch in `<table>_in_force`, in one
//!   flushed transaction serialised by an advisory lock, then asks again.
//! - A grant whose token reached the *next* epoch's floor (`epoch << 40`:
//!   2⁴⁰ tokens drawn in one epoch) gives its lock back and reports no
//!   epoch, and the client starts the next one: every token of an epoch lies
//!   below the floor of every later epoch, whatever a crash undoes.
//! - A session remembers the epoch a grant on it read, and its later grants
//!   take the epoch from there instead of reading `<table>_in_force`
//!   (one relation fewer for every grant to open). That is safe because a
//!   crash ends every session: PostgreSQL recovers from the crash of any
//!   of its processes by restarting them all, so a session still open has
//!   seen no crash since it read the epoch, and a promoted standby never
//!   had the session. An epoch started at the ceiling leaves a remembered
//!   epoch behind, but the sequence then lies past that epoch's ceiling, so
//!   such a grant gives its lock back and reports no epoch, as above. The
//!   grant also binds the server pid of the session that read the epoch
//!   and uses the epoch only on that same server process.
//!
//! The promise is the one a flushed write per grant gave: tokens strictly
//! increase across restarts and crashes of the server; across a failover
//! only when the standby received the epoch's flushed commit (synchronous
//! replication).
//!
//! # Older clients are refused, not mixed in
//! Two earlier generations kept tokens elsewhere: the first bumped a counter
//! row per grant and kept the epoch in `<table>_alive`; the second drew
//! mutex tokens from the sequence but still bumped a counter row (in
//! `<table>_shared`) per reader, writer and permit grant, and kept the
//! epoch in `<table>_live`. Run beside this one on the same table, either
//! would hand out tokens from its row counters, below tokens this one drew,
//! or this one below theirs. The migration therefore replaces both epoch
//! tables with empty views that cannot be written: an older client reads
//! "no epoch", fails to start one ("cannot insert into view", "cannot
//! delete from view"), and grants nothing. Stop or upgrade older clients
//! before the first client of this release migrates the table; until then
//! they fail closed, they do not break fencing. The first epoch of this
//! release also lifts the sequence above every counter the older releases
//! left in either table.

use crate::config::Settings;
use crate::schema::{dollar_quote, quote_literal};

/// Low bits of a token left to the sequence within one epoch. An epoch
/// number above 2²³ would overflow the floor: that many crashes do not
/// happen.
pub(crate) const EPOCH_SHIFT: u32 = 40;

/// Serialises epoch bumps (`pg_advisory_xact_lock`), so sessions that find
/// `<table>_live` empty at once bump it once. "leasepoc".
const EPOCH_LOCK: i64 = 0x6c65_6173_6570_6f63;

/// `"schema"."<table>_epoch"`: the durable epoch.
fn epoch_table(settings: &Settings) -> String {
    settings.qualified_sibling("_epoch")
}

/// `"schema"."<table>_in_force"`: the epoch in force, gone after a crash.
fn live_table(settings: &Settings) -> String {
    settings.qualified_sibling("_in_force")
}

/// `"schema"."<table>_token"`: the sequence mutex tokens come from.
fn token_sequence(settings: &Settings) -> String {
    settings.qualified_sibling("_token")
}

/// Where older releases kept the epoch in force, `<table>_alive` and
/// `<table>_live` (see "Older clients are refused" above).
const RETIRED_SUFFIXES: [&str; 2] = ["_alive", "_live"];

/// Replaces an older release's epoch table with an empty view that cannot
/// be written, once (a PL/pgSQL block body).
fn retire(table: &str) -> String {
    let literal = quote_literal(table);
    let note = quote_literal(
        "retired by leasehold-postgres: the epoch in force is in <table>_in_force, \
         tokens come from <table>_token; a client that writes here is too old \
         to share this table and is refused",
    );
    format!(
        "\x20   IF (SELECT relkind FROM pg_class WHERE oid = to_regclass({literal})) = 'r' THEN\n\
         \x20       DROP TABLE {table};\n\
         \x20   END IF;\n\
         \x20   IF to_regclass({literal}) IS NULL THEN\n\
         \x20       CREATE VIEW {table} AS SELECT NULL::bigint AS epoch WHERE false;\n\
         \x20       COMMENT ON VIEW {table} IS {note};\n\
         \x20   END IF;\n"
    )
}

/// The epoch tables, the token sequence, and the older releases' epoch
/// tables made unwritable views (all idempotent).
pub(crate) fn ddl(settings: &Settings) -> String {
    let (epoch, live) = (epoch_table(settings), live_table(settings));
    let sequence = token_sequence(settings);
    let retired: String = RETIRED_SUFFIXES
        .iter()
        .map(|suffix| retire(&settings.qualified_sibling(suffix)))
        .collect();
    let retire = format!("BEGIN\n{retired}END\n");
    format!(
        "CREATE TABLE IF NOT EXISTS {epoch} (\n\
         \x20   one boolean PRIMARY KEY DEFAULT true CHECK (one),\n\
         \x20   epoch bigint NOT NULL\n\
         );\n\
         INSERT INTO {epoch} (one, epoch) VALUES (true, 0) ON CONFLICT (one) DO NOTHING;\n\
         CREATE UNLOGGED TABLE IF NOT EXISTS {live} (epoch bigint NOT NULL);\n\
         CREATE SEQUENCE IF NOT EXISTS {sequence} AS bigint;\n\
         DO {};\n",
        dollar_quote(&retire)
    )
}

/// A scalar subquery: the epoch in force, `NULL` when `<table>_live` is
/// empty (after a crash, or before the first grant).
pub(crate) fn current_sql(settings: &Settings) -> String {
    format!("(SELECT max(epoch) FROM {})", live_table(settings))
}

/// The next token (`nextval` of `<table>_token`).
pub(crate) fn next_token_sql(settings: &Settings) -> String {
    format!(
        "nextval({}::regclass)",
        quote_literal(&token_sequence(settings))
    )
}

/// The lowest token a grant in epoch `epoch_sql` may take.
pub(crate) fn floor_sql(epoch_sql: &str) -> String {
    format!("(({epoch_sql} - 1) << {EPOCH_SHIFT})")
}

/// The first token epoch `epoch_sql` may not hand out: the next epoch's
/// floor.
pub(crate) fn ceiling_sql(epoch_sql: &str) -> String {
    format!("({epoch_sql} << {EPOCH_SHIFT})")
}

/// Starts a new epoch when none is in force or the sequence reached the
/// ceiling of the one in force (else another session just did), and records
/// it in `<table>_in_force`. The new epoch is the next one, or higher when
/// the sequence or a counter row older releases left (in the key table or
/// the shared-grant table) is already past its floor;
/// the sequence is lifted to the new floor. One flushed transaction
/// (whatever the server's `synchronous_commit`), so no token of the new
/// epoch is handed out before the epoch and the lifted sequence are on disk.
pub(crate) fn bump_sql(settings: &Settings) -> String {
    let (epoch, live) = (epoch_table(settings), live_table(settings));
    let sequence = token_sequence(settings);
    let sequence_literal = quote_literal(&sequence);
    let counters = settings.qualified_table();
    let kind_counters = settings.qualified_shared_table();
    let ceiling = ceiling_sql("(SELECT e FROM c)");
    let floor = floor_sql("u.epoch");
    format!(
        "BEGIN;\n\
         SET LOCAL synchronous_commit = on;\n\
         SELECT pg_advisory_xact_lock({EPOCH_LOCK});\n\
         WITH c AS MATERIALIZED (SELECT max(epoch) AS e FROM {live}), \
         h AS MATERIALIZED (SELECT GREATEST((SELECT last_value FROM {sequence}), \
               (SELECT max(counter) FROM {counters}), \
               (SELECT max(counter) FROM {kind_counters})) AS high), \
         u AS (UPDATE {epoch} SET epoch = GREATEST(epoch + 1, \
                   ((SELECT high FROM h) >> {EPOCH_SHIFT}) + 1) \
               WHERE (SELECT e FROM c) IS NULL \
                  OR (SELECT last_value FROM {sequence}) >= {ceiling} \
               RETURNING epoch), \
         d AS (DELETE FROM {live} WHERE EXISTS (SELECT 1 FROM u)), \
         s AS MATERIALIZED (SELECT setval({sequence_literal}::regclass, \
               GREATEST((SELECT high FROM h), {floor})) AS lifted FROM u) \
         INSERT INTO {live} (epoch) SELECT u.epoch FROM u, s;\n\
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
                r#"CREATE UNLOGGED TABLE IF NOT EXISTS "locks"."leasehold_fencing_in_force""#
            ),
            "{ddl}"
        );
        assert!(
            ddl.contains(r#"CREATE SEQUENCE IF NOT EXISTS "locks"."leasehold_fencing_token""#),
            "{ddl}"
        );
    }
}
