//! # leasehold-mysql
//!
//! MySQL and MariaDB backend of [leasehold](leasehold_core): distributed
//! locks with strict fencing tokens, in one of two modes chosen by option or
//! by URL (`mysql://user:pw@host/db?mode=named|table`; `mariadb://` is the
//! same).
//!
//! ```no_run
//! use leasehold_core::Locker;
//! use leasehold_mysql::MysqlBackend;
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), leasehold_core::LockError> {
//! let backend =
//!     MysqlBackend::connect("mysql://app:secret@127.0.0.1/app?mode=table&namespace=billing")
//!         .await?;
//! let locker = Locker::new(backend);
//! let guard = locker.lock("invoice:2024-06").await?;
//! // Hand guard.fencing_token() to the resource you protect.
//! guard.release().await?;
//! # Ok(()) }
//! ```
//!
//! Needs several `GET_LOCK`s per session (MySQL 5.7+, MariaDB 10.0.2+). The
//! conformance suite runs against MariaDB 10.11 only (`tests/conformance.rs`,
//! Debian's `mariadb-server`: no MySQL server image can be pulled where
//! the project is tested, and Debian ships none); MySQL 8 is expected to
//! behave the same but is not run. What differs on MySQL 8, from its
//! documentation: its default `caching_sha2_password` needs TLS or an RSA
//! key exchange for the password (see the `rsa` advisory below); it makes
//! self-signed server certificates at first start, so `preferred` encrypts
//! out of the box and `verify_*` needs the server's `ca.pem`; ending
//! another user's session needs `CONNECTION_ADMIN` (MariaDB: `CONNECTION
//! ADMIN`); its default `binlog_format` is `ROW`.
//!
//! ## Named mode (`mode=named`, the default)
//! - Acquire runs `GET_LOCK(name, 0)` on a session (connection) that is then
//!   **pinned to the lease** for its whole life; in the same statement it
//!   draws the key's next fencing token from a `MEMORY` table (`INSERT ...
//!   SELECT ... WHERE GET_LOCK(..) ON DUPLICATE KEY UPDATE token =
//!   LAST_INSERT_ID(token + 1)`: the token comes back in the statement's
//!   reply), so a grant is one round trip (plus one to set `wait_timeout`
//!   when a session is new or the TTL changes, and one to name the key in
//!   the InnoDB table at a backend's first grant of the key) and
//!   waits for no disk flush. `Fencing::Strict`: a durable *epoch*, bumped
//!   when the server has forgotten its tokens (a restart or crash empties
//!   `MEMORY` tables; a failover changes `@@server_id`), keeps every later
//!   token above every earlier one across releases, crashes and restarts
//!   (with InnoDB's default durable commits; across a failover only with
//!   semi-synchronous or Galera-style replication). How, and the limits of
//!   the `MEMORY` table: `epoch.rs`'s docs; upgrade every client of a table
//!   together (an older release's tokens lie below this one's).
//! - `name` is [`lock_name`]: `leasehold:` and 216 bits of SHA-256 over the
//!   namespace (length-prefixed) and the key, 64 characters (MySQL's limit).
//!   Every key is hashed, since MySQL limits names to 64 characters and
//!   compares them case-insensitively; two keys whose names collide would
//!   only contend falsely. Lock names are **server-wide**, shared by every
//!   database and application on the server: keep namespaces apart.
//! - **The session is watched.** Each held lease's session is owned by a
//!   task that serves its renewals and its release. At acquire the session
//!   also takes an *alive lock* of its own (`leasehold-alive:<owner
//!   token>`), and once the lease has lived 100 ms a second connection (a
//!   *watcher*) waits in `GET_LOCK` on that name: the server grants it the
//!   moment the session ends (`KILL`, `wait_timeout`, a restart, a reset or
//!   closed connection), or at once if it already has, and the task then
//!   fires the lease's loss signal
//!   ([`Lease::loss_signal`](leasehold_core::Lease::loss_signal)); a
//!   [`Locker`](leasehold_core::Locker) guard reports `lost()` with reason
//!   `SessionEnded`. No polling. A held lease costs two connections (its
//!   session and, past its first 100 ms, its watcher) and a task; a lease
//!   released sooner never opens a watcher, which is why the signal may
//!   come up to 100 ms late.
//! - **What is left, honestly.** Between the server freeing the lock and the
//!   signal firing, another client can already hold the key while this
//!   holder still believes it does; when no packet reaches the holder at all
//!   (a partition, a paused holder) nothing can fire the signal until its
//!   `valid_until` passes. Only fencing tokens protect the resource in those
//!   windows: hand [`Lease::fencing_token`](leasehold_core::Lease::fencing_token)
//!   to it and have it reject lower tokens.
//! - **Expiry is the session** (`Expiry::Session`), and the TTL bounds how
//!   long the session may sit idle: acquire and extend set the pinned
//!   session's `wait_timeout` to the TTL rounded **up to whole seconds**
//!   (the server's unit; `Capabilities::ttl_granularity` is 1 s), so a holder
//!   that neither extends nor releases within that time (paused, hung, or
//!   dead with its TCP connection open) has its session closed *by the
//!   server* and the lock freed, never inside the holder's validity. TTLs
//!   are at most [`MAX_NAMED_TTL`]. `extend` checks that the pinned session
//!   still holds the lock (`IS_USED_LOCK(name) = CONNECTION_ID()`), else
//!   `Lost`.
//! - **A session that may hold a lock is never reused.** Pinned sessions
//!   come from a private pool that closes every connection handed back to
//!   it; only a session whose `RELEASE_LOCK` answered 1, or whose attempt
//!   was refused, is kept for reuse (one idle for over 10 minutes is closed).
//!   A lease dropped unreleased, a failed release, a lost lease and an
//!   attempt interrupted mid-call close their session, which frees the lock.
//! - **Not behind a statement- or transaction-level proxy** that hands a
//!   server session to other clients between statements (ProxySQL with
//!   multiplexing, for example: it disables multiplexing for `GET_LOCK`
//!   sessions, which is what is needed). Table mode needs only single
//!   statements.
//! - Tables (option `table`, default `leasehold_fencing`, at most 55
//!   characters): `<table>` (InnoDB, one row per key, so listings can name
//!   keys), `<table>_held` and `<table>_in_force` (`MEMORY`: the tokens),
//!   `<table>_epoch` (InnoDB: the epoch). [`migration_sql`] prints their
//!   DDL; connecting runs it (idempotent).
//! - Statement-based binary logging calls `GET_LOCK` in an `INSERT` unsafe
//!   (a warning); use `binlog_format=ROW` or `MIXED` (MySQL 8's default is
//!   `ROW`).
//!
//! ## Table mode (`mode=table`)
//! - A lease table (default `leasehold_leases` in the connection's
//!   database; option `table`) with `namespace` and `key` (`VARBINARY`, the
//!   primary key, matched byte for byte), `owner` (the 128-bit owner
//!   token), `counter`, `expires_at`, `holder`. [`migration_sql`] prints its
//!   DDL; connecting runs it (idempotent).
//! - Expiry by the **database clock** only (`UTC_TIMESTAMP(6)`, which MySQL
//!   fixes at the start of each statement): acquire is one `UPDATE ... SET
//!   counter = LAST_INSERT_ID(counter + 1), owner = ... WHERE owner IS NULL
//!   OR expires_at <= now` (a key's first acquisition inserts its row);
//!   extend and release compare the owner token and `expires_at > now`;
//!   release clears the owner and keeps the row, so the counter never
//!   resets. Client clocks are never used. A paused holder is safe only
//!   while it acts before its `valid_until`; after that only fencing tokens
//!   stop it.
//! - Works through any proxy or pooler.
//!
//! ## Reader–writer locks and semaphores (table mode only)
//! - In a second table, `<table>_shared` (created by the same migration;
//!   with `migrate=false` apply [`migration_sql`], which now holds both;
//!   the table name must leave room for the suffix within MySQL's 64
//!   characters), keyed by (namespace, family, key, owner), the family
//!   being `rw` or `sem`: the mutex, the reader–writer lock and the
//!   semaphore of a key are three independent locks that never share a
//!   row. Per lock: a counter row (never deleted), one row per holder
//!   (kind, token, `expires_at`), and one row per waiting writer.
//! - An attempt is one transaction: it locks the counter row first
//!   (`INSERT ... ON DUPLICATE KEY UPDATE`, an exclusive row lock, so
//!   attempts on one lock run one at a time), reads the live rows with a
//!   locking read (a renewal in flight is waited for, never read stale),
//!   and either bumps the counter (`LAST_INSERT_ID(counter + 1)`) and
//!   inserts its holder row, or reports `Contended`. Expiry by the
//!   database clock only, like the mutex. A reader is granted when no
//!   writer holds or waits, a writer when nobody holds, a permit of `N`
//!   while fewer than `N` hold (each attempt judged by its own `N`).
//! - Fencing: one counter per lock, so a writer's token exceeds every
//!   earlier grant of the key's reader–writer lock, a reader's exceeds
//!   every earlier writer's, and permits strictly increase; durable like
//!   the mutex's counter.
//! - A waiting writer (`acquire_kind`) records a waiter row at its first
//!   refused attempt, `ttl` ahead by the database clock and refreshed at
//!   each attempt; new readers are refused while it is live. Its grant
//!   deletes it in the same transaction; a wait that ends otherwise
//!   (deadline, error, a dropped call) deletes it on a task of its own,
//!   and a crashed waiter's row expires within its `ttl`.
//! - `extend` and `release` take leases of every kind; `inspect`, `list`
//!   and `force_release` see mutexes only.
//! - **Named mode has the mutex only**: `GET_LOCK` has no shared mode, so
//!   a reader–writer lock or a semaphore there would need a second
//!   mechanism with its own expiry; [`Capabilities`](leasehold_core::Capabilities)
//!   says `rw_locks: false, semaphores: false` and the calls are
//!   `LockError::Unsupported`. Use table mode for them.
//!
//! ## Both modes
//! - Waiting is polled (`Waiting::Polled`): MySQL has no release
//!   notifications. The backend's own releases wake its waiters at once
//!   (core's [`ReleaseHub`](leasehold_core::ReleaseHub)); waiters in other
//!   processes find the key free at their next poll (cap it with `poll`).
//! - Every call is bounded by the `timeout` option (default 5 s; also the
//!   pools' acquire timeout): a paused or dead server gives
//!   `LockError::Unavailable` in bounded time.
//! - **Cancel safety.** Every acquisition attempt runs on a task of its own
//!   ([`leasehold_core::cancel_safe`]): a caller that stops waiting never
//!   strands a grant.
//! - TTLs: at least [`MIN_TTL`], at most one year ([`MAX_TTL`]; named mode
//!   [`MAX_NAMED_TTL`]); anything else is `LockError::InvalidTtl` before
//!   any store call.
//! - Configuration ([`MysqlConfig`]): URL options are the shared ones
//!   (`namespace`, `timeout`, `poll`, `holder`, `drift_factor`,
//!   `drift_fixed`), the locker's (`ttl`, `wait`, ...), this backend's own
//!   (`mode`, `table`, `max_connections`, `migrate`) or sqlx's
//!   ([`SQLX_OPTIONS`]); any other name is a `LockError::Config` naming the
//!   closest known one. Errors and `Debug` output never show the password.
//!   The `holder` option is stored with each lease and shown by `inspect`
//!   and `list`.
//! - **TLS** with rustls (no OpenSSL): `ssl-mode=verify_identity` with
//!   `ssl-ca=/path/ca.pem` (the server's CA; without it only the built-in
//!   web roots are trusted), and `ssl-cert`/`ssl-key` for a client
//!   certificate (a user created `REQUIRE X509`). Use it in production. The
//!   modes are sqlx's (`disabled`, `preferred`, the default, `required`,
//!   `verify_ca`, `verify_identity`; any case, underscores: another
//!   spelling is a `LockError::Config`). `preferred` and `required` encrypt
//!   but verify nothing, **even with `ssl-ca`** (sqlx's rule): anyone on the
//!   path can impersonate the server. With sqlx 0.8, `verify_ca` also checks the host
//!   name (sqlx issue 3793), so it is as strict as `verify_identity`. A
//!   failed handshake is `LockError::Unavailable`, as every TLS error of the
//!   driver is. `tests/tls.rs` proves each against a MariaDB that refuses
//!   plaintext; `tests/conformance_tls.rs` runs the suite over
//!   `verify_identity`.
//!
//! ## The `rsa` advisory (RUSTSEC-2023-0071)
//! sqlx's MySQL driver depends on the `rsa` crate, which has the "Marvin"
//! timing side channel in RSA **decryption** with a private key. A MySQL
//! client never decrypts: over a link without TLS, the
//! `caching_sha2_password` and `sha256_password` plugins have it
//! *encrypt* the password with the server's public key. So the advisory
//! does not apply to this crate. Prefer TLS anyway: then the password goes
//! over the encrypted link and no RSA is used at all.
//!
//! ## Operations
//! - `list` pages by key, one statement per page. Table mode: the
//!   namespace's live rows under the prefix (owner hint and time left too).
//!   Named mode: the namespace's key rows under the prefix whose lock
//!   `IS_USED_LOCK` reports held (a scan of the namespace's rows; works on
//!   MySQL and MariaDB without `performance_schema`); the label reads
//!   `connection <id>; <holder>`, with no owner hint or time left.
//! - `force_release`. Table mode: one transaction clears the owner and
//!   bumps the counter (the row is kept), so the holder's next renewal is
//!   `Lost` and the next grant's token is two above the evicted one. Named
//!   mode: `KILL CONNECTION` of the holder's session (which frees the lock
//!   and fires the holder's loss signal), then the backend takes the lock
//!   itself (waiting up to half the operation timeout for the killed session
//!   to go), bumps the key's token and releases it. Killing another user's
//!   connection needs `CONNECTION_ADMIN` (MySQL), `CONNECTION ADMIN`
//!   (MariaDB) or `SUPER`; without it the call is a `Backend` error saying
//!   so and nothing changes. This backend's waiters are woken.
//! - Not possible: a listing is not a snapshot; a force release that timed
//!   out may or may not have evicted: inspect before retrying.
#![warn(missing_docs)]

mod admin;
mod backend;
mod config;
mod epoch;
mod error;
mod keys;
mod kinds;
mod named;
mod schema;
mod store;
mod table;

pub use backend::MysqlBackend;
pub use config::{MAX_NAMED_TTL, MAX_TTL, MIN_TTL, Mode, MysqlConfig, SQLX_OPTIONS};
pub use keys::lock_name;
pub use named::session_id;
pub use schema::migration_sql;
pub use sqlx;
