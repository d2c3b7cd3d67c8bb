//! # leasehold-postgres
//!
//! Postgres backend of [leasehold](leasehold_core): distributed locks with
//! strict fencing tokens, in one of two modes chosen by option or by URL
//! (`postgres://user:pw@host/db?mode=advisory|table`).
//!
//! ```no_run
//! use leasehold_core::Locker;
//! use leasehold_postgres::PostgresBackend;
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), leasehold_core::LockError> {
//! let backend =
//!     PostgresBackend::connect("postgres://app:secret@127.0.0.1/app?mode=table&namespace=billing")
//!         .await?;
//! let locker = Locker::new(backend);
//! let guard = locker.lock("invoice:2024-06").await?;
//! // Hand guard.fencing_token() to the resource you protect.
//! guard.release().await?;
//! # Ok(()) }
//! ```
//!
//! ## Advisory mode (`mode=advisory`, the default)
//! - Acquire runs `pg_try_advisory_lock(id)` on a session (connection)
//!   that is then **pinned to the lease** for its whole life; in the same
//!   statement and session, once it holds the lock, it draws the fencing
//!   token from the sequence `<table>_token` (`Fencing::Strict`: one
//!   sequence for all keys, so a key's tokens strictly increase across
//!   releases, crashes and server restarts; across a failover only with
//!   synchronous replication) and labels the session with the grant: its
//!   `application_name` reads `lh <token> <acquired ms> <holder>`
//!   while it holds the lock (what `inspect` and `list` report, and what an
//!   operator sees in `pg_stat_activity`). The grant writes no row (a key's
//!   first grant adds the key's row, for listings) and commits without a
//!   flush; a crash that sets the sequence back also empties an unlogged
//!   table holding the *store epoch*, and the next grant starts a new epoch
//!   (one flushed commit) whose tokens lie above every earlier one (the
//!   migration makes `<table>_epoch`, `<table>_in_force` and the sequence
//!   for it; the whole argument is in the `epoch` module's source).
//!   **Upgrade note:** releases whose reader, writer or permit grants did
//!   not draw from the sequence too are refused by a table this release
//!   migrated (they fail closed, with "cannot insert into view" or "cannot
//!   delete from view"); stop or upgrade them first. A refused grant reads
//!   the holder's label through the function `<table>_holder(bigint)`,
//!   which the migration makes; with `migrate=false`, apply
//!   [`migration_sql`] before this version connects (until then every call
//!   is a `Config` error naming it).
//! - `id` is [`advisory_lock_id`]: 64 bits of SHA-256 over the namespace
//!   (length-prefixed) and the key. Two keys whose ids collide only contend
//!   falsely; exclusion is never lost. The id space is the database's
//!   single-`bigint` advisory space, shared with any other user of it.
//! - **The session is watched.** Each held lease's session is owned by a
//!   task that serves its renewals and its release and, in between, waits on
//!   the connection's socket (no polling, no timer). When the session ends —
//!   `pg_terminate_backend`, a server restart or failover, a reset or closed
//!   connection — the server frees the lock at once, and the task fires the
//!   lease's loss signal ([`Lease::loss_signal`](leasehold_core::Lease::loss_signal)) as soon as the socket
//!   reports end-of-stream or an error; a [`Locker`](leasehold_core::Locker)
//!   guard then reports `lost()` with reason `SessionEnded`. Measured on
//!   loopback, from `pg_terminate_backend` returning to the guard's `lost()`
//!   completing, over 20 terminations (five runs): **p50 2.3–3.2 ms, max
//!   3.4–7.1 ms** (`cargo test -p leasehold-postgres --test advisory
//!   session_end_to_lost -- --nocapture`). `pg_terminate_backend` returns
//!   once it has signalled the server process, so this includes that
//!   process's exit.
//! - **What is left, honestly.** Between the server freeing the lock and the
//!   signal firing (milliseconds on a live network, measured above) another
//!   client can already hold the key while this holder still believes it
//!   does. When no packet reaches the holder at all — a network partition, a
//!   failover whose old primary goes silent instead of closing its
//!   connections, a holder process that is paused — nothing can fire the
//!   signal, and the new holder may coexist with the old one until the old
//!   one's `valid_until` passes (at most the TTL). Only fencing tokens
//!   protect the resource in those windows: hand [`Lease::fencing_token`](leasehold_core::Lease::fencing_token) to
//!   it and have it reject lower tokens.
//! - **Expiry is the session** (`Expiry::Session`), and the TTL bounds how
//!   long the session may sit idle: acquire and extend set the pinned
//!   session's `idle_session_timeout` to the TTL (in the same statement), so
//!   a holder that neither extends nor releases within its TTL — paused,
//!   hung, or dead with its TCP connection still open — has its session
//!   ended *by the server* and the lock freed; a holder whose process or
//!   connection dies loses it as soon as Postgres notices. `extend` restarts
//!   that idle clock and checks that the pinned session is alive and still
//!   holds the lock in `pg_locks` for its own backend pid (else `Lost`). If
//!   the server ends the session for idling, that happens no earlier than the
//!   TTL after the renewal's statement, while the client's `valid_until` is
//!   measured from when the request was *sent*, minus drift: so this path
//!   never frees the lock inside the holder's validity. Needs PostgreSQL 14
//!   or later (`idle_session_timeout`); TTLs are at most
//!   [`MAX_ADVISORY_TTL`].
//! - **A session that may hold a lock is never reused.** Pinned sessions come
//!   from a private pool (the same connect options; as many connections as
//!   the backend's pool, `max_connections`) that closes every connection
//!   handed back to it, whatever happened. Only a session whose
//!   `pg_advisory_unlock` answered `true`, or whose lock attempt was
//!   refused, is kept by the backend for reuse (one idle for over 10
//!   minutes is closed the next time the backend takes or keeps one); a
//!   lease dropped unreleased, a failed or timed-out release, a lost lease
//!   and an attempt interrupted mid-call close their session, which frees
//!   the lock.
//! - Each held lease costs one task and one connection: size
//!   `max_connections` for the locks held at once (the backend opens
//!   connections lazily; default 50). `extend_many` sends every renewal to
//!   its session at once (core's `extend_each`), so a slow or stalled
//!   session delays only its own lease; table mode renews a batch in one
//!   statement.
//! - **Not supported behind a transaction-pooling proxy** (PgBouncer
//!   `pool_mode=transaction` or `statement`): session advisory locks belong to
//!   the server session, and such a proxy hands that session to other clients
//!   between transactions, so the lock would be held by (and released by)
//!   strangers. Connect directly or through session pooling, or use table
//!   mode, which only needs single statements.
//!
//! ## Table mode (`mode=table`)
//! - A lease table (default `public.leasehold_leases`; schema and name are
//!   options) with `namespace`, `key` (both `text COLLATE "C"`, the primary
//!   key, matched byte for byte), `owner` (the 128-bit owner token), `counter`,
//!   `expires_at`, `holder` metadata. [`migration_sql`] prints its DDL;
//!   connecting runs it (idempotent, serialized by a transaction advisory lock).
//! - Expiry by the **database clock** only: acquire is one
//!   `INSERT ... ON CONFLICT DO UPDATE ... WHERE owner IS NULL OR expires_at <=
//!   clock_timestamp()` that bumps the counter; extend and release compare
//!   the owner token and `expires_at > clock_timestamp()`; release clears the
//!   owner and keeps the row, so the counter never resets. Client wall clocks
//!   are never used. A paused holder is safe only while it acts before its
//!   `valid_until` (measured from when its request was sent, minus drift);
//!   after that only fencing tokens stop it.
//! - Every value is a bind parameter; any legal key (quotes, backslashes,
//!   `%`, `_`, emoji) is stored and matched exactly.
//! - Works through any pooler, including PgBouncer transaction mode (the
//!   LISTEN connection aside: without it waiters fall back to polling).
//!
//! ## Both modes
//! - Waiting: release sends `NOTIFY` on a channel (default
//!   `leasehold_release`); one shared LISTEN per backend, on its own
//!   connection and owned by core's [`ReleaseFeed`](leasehold_core::ReleaseFeed),
//!   wakes waiters (`Waiting::Notified`), and wakes all of them after a
//!   reconnect. Polling with the wait policy's backoff remains the
//!   fallback: a lost signal costs latency, never a hang.
//! - **Advisory mode also queues waiters in the server.** After a refused
//!   attempt, a waiter that can pin a session blocks in `pg_advisory_lock`
//!   under `lock_timeout` (the rest of its wait, at most 10 s at one go), so
//!   the server hands it the lock at the holder's unlock, and also at the end
//!   of a killed or timed-out holder's session, which sends no `NOTIFY`
//!   (before, such a waiter sat out its backoff); queued waiters are served
//!   in arrival order, so one hot key no longer starves a waiter that keeps
//!   losing the race. Its bounds: at most half the backend's sessions
//!   queue (the rest wait as above, so waiters never take every session);
//!   the client waits for the statement at most its `lock_timeout` plus the
//!   per-call timeout (a paused server is `Unavailable` then); a dropped
//!   call cancels its statement (`pg_cancel_backend` from the backend's
//!   pool) and closes the session, and a waiting process that dies leaves
//!   the queue within a second (`client_connection_check_interval`); a
//!   grant that waited more than a quarter of its TTL is renewed once
//!   before it is returned, since its validity counts from when the
//!   statement was sent. Table mode has no server queue and waits as above.
//! - **An advisory mutex's release signals only a waiter that needs it.**
//!   A waiter that waits for the signal (it could not queue in the
//!   server) first marks the key: a shared advisory lock on a mark id,
//!   held on one mark session per backend for the rest of its wait. The
//!   release, in its one statement, unlocks and then sends its `NOTIFY`
//!   only if the key is marked, so an uncontended release, and one whose
//!   waiter is queued in the server (handed the lock at the unlock),
//!   commits nothing: no transaction id, no commit record, no entry in the
//!   server's notification queue (see `marks.rs` for why no signal is
//!   lost). It also
//!   skips the check when a waiter of the same backend is queued for the
//!   key in the server. A permit's waiters mark its semaphore the same
//!   way, and a reader's release signals only while a writer waits (the
//!   writer holds the lock's gate: below); a writer's release always
//!   signals (waiting readers hold nothing). A waiter of an older release
//!   of this crate does not mark: it finds the key at its next poll.
//!   A `Locker`'s waiter entries (core's `waits` registry, one lease per
//!   waiting call, so one pinned session each here) take a session only
//!   while fewer than half are in use; past that a wait goes unrecorded
//!   rather than take the sessions the waits need.
//! - Cost: one statement to lock (with the token drawn from the sequence and
//!   the session labelled; nothing written) and one to unlock. `tests/latency.rs` measures
//!   it against the raw statements in the same run.
//! - Every call is bounded by the `timeout` option ([`PostgresConfig::timeout`];
//!   default 5 s; also the pool's acquire timeout when the backend builds the
//!   pool): a paused or dead server gives `LockError::Unavailable` in bounded
//!   time.
//! - **Cancel safety.** A caller that stops waiting (a `select!`, a
//!   timeout, an aborted task) never strands a grant. Table mode: every
//!   acquisition attempt runs on a task of its own
//!   ([`leasehold_core::cancel_safe`]), and a lease won after the caller
//!   left, or that reached the caller just as it left, is released at once
//!   (it would otherwise keep the key for the whole TTL). Advisory mode: an
//!   attempt runs in the caller's future, since whatever it holds it holds
//!   on a session it owns, and a dropped session is closed, never reused,
//!   so the server frees the lock as that session ends (a task per attempt
//!   doubled the client CPU of a lock+unlock). Either way an attempt still
//!   waiting for a connection when its caller leaves stops there, asking
//!   nothing, so abandoned attempts never take connections ahead of live
//!   callers. Renewals and releases may be dropped at any point; see each
//!   method.
//! - TTLs: at least [`MIN_TTL`], at most one year ([`MAX_TTL`]; advisory
//!   mode at most [`MAX_ADVISORY_TTL`]); anything else, `Duration::MAX`
//!   included, is `LockError::InvalidTtl` before any store call.
//! - Configuration ([`PostgresConfig`]): URL options are the shared ones
//!   (`namespace`, `timeout`, `poll`, `holder`, `drift_factor`,
//!   `drift_fixed`), the locker's (`ttl`, `wait`, ...), this backend's own
//!   (`mode`, `schema`, `table`, `channel`, `max_connections`, `migrate`) or
//!   sqlx's ([`SQLX_OPTIONS`]); any other name, `timeout_ms` included (no
//!   deprecated alias: a duration names its unit), is a `LockError::Config`
//!   naming the closest known one (a typo such as `?mod=table` must never run in the
//!   default mode). Durations follow the one grammar of
//!   [`leasehold_core::config::duration`] (`timeout=250ms`; a bare number is
//!   an error). Errors and `Debug` output never show the password.
//! - Connect by URL ([`PostgresBackend::connect`]), with a config built in
//!   code ([`PostgresBackend::connect_with`]) or from your own `PgPool`
//!   ([`PostgresBackend::from_pool`]); a namespace keeps applications apart.
//!   The `holder` option is stored with each lease (its `holder` column) and
//!   shown by `inspect` and `list`.
//!
//! ## TLS
//! sqlx is built with rustls (on `ring`; no OpenSSL), so TLS needs nothing
//! but URL options, named as libpq names them (sqlx's aliases `ssl-mode`,
//! `ssl-root-cert`/`ssl-ca`, `ssl-cert`, `ssl-key` work too):
//!
//! | option | value | meaning |
//! | --- | --- | --- |
//! | `sslmode` | `disable` | plaintext |
//! | | `allow` | plaintext (sqlx does not implement libpq's retry with TLS) |
//! | | `prefer` (default) | TLS when the server offers it, **unverified**, else plaintext |
//! | | `require` | TLS or no connection; the certificate is not verified, unless `sslrootcert` is given (then as `verify-ca`, libpq's rule) |
//! | | `verify-ca` | TLS, the server's certificate chains to a trusted CA (with sqlx 0.8 the host name is checked too: see below) |
//! | | `verify-full` | as `verify-ca`, and the certificate names the URL's host (DNS name or IP address) |
//! | `sslrootcert` | path of a PEM file | CA certificates to trust, besides the built-in Mozilla roots (`webpki-roots`) |
//! | `sslcert` | path of a PEM file | the client certificate chain, for servers that ask for one (`pg_hba.conf` `cert`, `clientcert=verify-ca`/`verify-full`) |
//! | `sslkey` | path of a PEM file | its private key (PKCS#8, PKCS#1 or SEC1); `sslcert` and `sslkey` go together |
//!
//! Use `verify-full` (with `sslrootcert` for a private CA, as managed
//! Postgres services hand out) in production: `prefer` and `require` stop a
//! passive eavesdropper but not an active one. An unknown mode, a file that
//! cannot be read or holds no usable PEM, or `sslcert` without `sslkey` is
//! a `LockError::Config` when the URL is parsed, naming the option and the
//! path and never a file's contents. A refused handshake (untrusted CA,
//! wrong host name, a server without TLS under `require`) is a
//! `LockError::Unavailable` whose source says why.
//!
//! Differences from libpq, all sqlx 0.8's: `verify-ca` also checks the
//! host name, as `verify-full` does (stricter than libpq: sqlx's verifier
//! misses the error rustls 0.23.24 and later give for a name mismatch,
//! sqlx issue 3793, fixed in sqlx 0.9), so connect by a name the
//! certificate carries; `sslrootcert` adds to the built-in
//! roots rather than replacing them; there is no default
//! `~/.postgresql/root.crt` and no `sslrootcert=system`; `prefer` does not
//! retry in plaintext after a failed handshake. sqlx reads libpq's
//! environment variables (`PGSSLMODE`, `PGSSLROOTCERT`, `PGSSLCERT`,
//! `PGSSLKEY`, ...) for options the URL leaves out; leasehold checks only
//! the URL's.
//!
//! ## Reader–writer locks and semaphores (both modes)
//! [`LockKind::Read`](leasehold_core::LockKind::Read)/`Write` and
//! `Permit` (see [`LockKind`](leasehold_core::LockKind) for the semantics).
//! The mutex, the reader–writer lock and the semaphore of one key are three
//! independent locks; `inspect`, `list` and `force_release` see mutexes
//! only (listing reader–writer or semaphore holders is not offered).
//! Fencing: a writer's token exceeds every earlier grant of its lock and a
//! reader's every earlier writer's, and permits strictly increase, durably.
//! In table mode every grant bumps a counter row of its lock (family and
//! key) in a second table, `<table>_shared` (created by the migration in
//! both modes; [`migration_sql`] prints it), in the same statement as the
//! grant; rows are never deleted. In advisory mode a grant draws its token
//! from the store's sequence once it holds its lock, as the mutex does, and
//! writes no row.
//! - **Table mode**: a row per holder in `<table>_shared`, expiring by the
//!   database clock like the mutex's lease. One attempt is one transaction:
//!   lock the lock's counter row, then one statement that locks the holder
//!   rows, drops expired ones, decides and (granted) bumps the counter and
//!   inserts the holder's row. A *waiting* writer keeps a registration row
//!   (expiring within the TTL, renewed by each attempt, which come at least
//!   twice per TTL) that refuses new readers; it is removed by the grant,
//!   by the end of the wait, or, for a dropped call, on a spawned task (at
//!   the latest it expires). Releases and withdrawals NOTIFY like the mutex.
//! - **Advisory mode**: session advisory locks on a pinned session, like the
//!   mutex (the grant ends with its session, whose end fires the loss
//!   signal; renewals restart the session's idle clock). A reader–writer
//!   lock is one advisory id taken shared by readers
//!   (`pg_try_advisory_lock_shared`) and exclusively by a writer; a waiting
//!   writer holds a second "gate" id shared on the session it waits on
//!   (its idle timeout set to the TTL), and a reader's attempt is refused
//!   while anyone holds the gate shared (it tries the gate exclusively for
//!   its statement, and reads `pg_locks` only when that fails). A
//!   semaphore of N is N advisory
//!   ids, an attempt taking the first free one in one statement; at most
//!   1024 permits (more is a `Config` error). These ids are hashes of the
//!   namespace, key and part, distinct from every mutex id.
//!
//! ## Operations
//! - `list` pages by key (the cursor is the last key shown), one statement
//!   per page, each lock shown with its fencing token, `holder` label and
//!   `acquired_at` by the database clock. Table mode: the namespace's rows
//!   under the prefix whose lease is live by the database clock (owner hint
//!   and time left too), read along the primary key. Advisory mode: the
//!   granted advisory locks in `pg_locks` (the server's lock table, in
//!   memory) joined to the namespace's key rows by their `lock_id` column,
//!   and each holder's session label (`pg_stat_activity`); the label reads
//!   `backend pid <pid>; <holder>` (the holder label cut where the server
//!   cuts `application_name`, at 63 bytes), with no owner hint or time left
//!   (the lock lasts as long as its session). The
//!   migration adds `lock_id` (indexed) to a fencing table made by an older
//!   version and fills it once from the same hash as [`advisory_lock_id`];
//!   on a large table run [`migration_sql`] by hand in a quiet moment, and
//!   with `migrate=false` apply it before this version connects. During a
//!   rolling upgrade, a key that an older version locks for the first time
//!   after the migration has no `lock_id` and is not listed until a newer
//!   version locks it. A lock whose session carries no grant label (taken
//!   by an older version, or its grant still under way) is listed by its
//!   session's pid, without a token.
//! - `force_release` is one statement. Table mode: clears the row's owner
//!   and bumps its counter (the row is kept, the commit is durable), so the
//!   holder's next renewal is `Lost` and the next grant's token is two
//!   above the evicted one; waiters get a NOTIFY. Advisory mode:
//!   `pg_terminate_backend` of the session `pg_locks` shows holding the lock
//!   (waiting up to half the operation timeout for it to exit, which frees
//!   the lock and fires the holder's loss signal at once), reporting the
//!   holder its label names, and NOTIFYs (the next grant's token is above
//!   the evicted one: the sequence never goes back). Ending another session needs the holder's role,
//!   membership in it or in `pg_signal_backend` (a superuser's session only a
//!   superuser may end); without it the call is a `Backend` error saying so
//!   and nothing changes. Whatever else that session held (only this lock,
//!   for a leasehold session) goes with it. The reason is only logged (at
//!   `DEBUG`); [`Admin`](leasehold_core::Admin) audits.
//! - Not possible: a listing is not a snapshot (a key changing hands while
//!   it runs may be missed or shown twice); in advisory mode a key whose id
//!   collides with another advisory lock of the database (another
//!   application's, or a 64-bit hash collision) is shown as held while that
//!   lock is, and a force release ends that lock's session. A force release
//!   that timed out may or may not have evicted: inspect before retrying.
#![warn(missing_docs)]

/// The statements of an advisory mutex, as a backend built from `config`
/// sends them. For benchmarks that time them from a bare client beside the
/// backend (`pg_lock_cost`); not a stable interface.
///
/// ```
/// use leasehold_postgres::{Mode, PostgresConfig, advisory_mutex_statements};
/// let sql = advisory_mutex_statements(&PostgresConfig::new(Mode::Advisory));
/// assert!(sql.first_grant.contains("pg_try_advisory_lock($1)"));
/// assert!(sql.grant.contains("$6::int8") && sql.grant.contains("EXISTS"));
/// assert!(!sql.grant_known_row.contains("EXISTS"));
/// assert!(sql.release.contains("pg_advisory_unlock($1)"));
/// ```
#[doc(hidden)]
#[derive(Debug)]
pub struct AdvisoryMutexStatements {
    /// A session's first grant. Binds: the advisory lock id, the
    /// namespace, the key, the holder label, the idle timeout in ms.
    pub first_grant: String,
    /// The grant on a session that remembers the store epoch: the same
    /// binds, then the epoch and the session's server pid.
    pub grant: String,
    /// [`grant`](Self::grant) for a key whose row the backend has seen.
    pub grant_known_row: String,
    /// The release. Binds: the lock id, the channel, the signal payload,
    /// the idle timeout and `application_name` to restore, whether a signal
    /// may be needed, the key's waiter mark id or `NULL`.
    pub release: &'static str,
}

/// The [`AdvisoryMutexStatements`] of a backend built from `config`.
#[doc(hidden)]
pub fn advisory_mutex_statements(config: &PostgresConfig) -> AdvisoryMutexStatements {
    let sql = advisory::sql(&config.settings());
    AdvisoryMutexStatements {
        first_grant: sql.acquire,
        grant: sql.acquire_in_epoch,
        grant_known_row: sql.acquire_known_row,
        release: store::RELEASE_SQL,
    }
}

mod admin;
mod advisory;
mod backend;
mod config;
mod epoch;
mod error;
mod keys;
mod kinds;
mod marks;
mod notify;
mod schema;
mod store;
mod table;
mod tls;

pub use advisory::session_pid;
pub use backend::PostgresBackend;
pub use config::{MAX_ADVISORY_TTL, MAX_TTL, MIN_TTL, Mode, PostgresConfig, SQLX_OPTIONS};
pub use keys::advisory_lock_id;
pub use schema::migration_sql;
pub use sqlx;
pub use tls::SSL_MODES;
