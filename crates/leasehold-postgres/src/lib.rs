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
//!   statement and session it bumps the key's fencing counter row
//!   (`Fencing::Strict`; rows are never deleted, so tokens survive releases,
//!   crashes and server restarts; across a failover only with synchronous
//!   replication, since an asynchronous standby may lack the last bumps).
//! - `id` is [`advisory_lock_id`]: 64 bits of SHA-256 over the namespace
//!   (length-prefixed) and the key. Two keys whose ids collide only contend
//!   falsely; exclusion is never lost. The id space is the database's
//!   single-`bigint` advisory space, shared with any other user of it.
//! - **The session is watched.** Each held lease's session is owned by a
//!   task that serves its renewals and its release and, in between, waits on
//!   the connection's socket (no polling, no timer). When the session ends —
//!   `pg_terminate_backend`, a server restart or failover, a reset or closed
//!   connection — the server frees the lock at once, and the task fires the
//!   lease's loss signal ([`Lease::loss_signal`]) as soon as the socket
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
//!   protect the resource in those windows: hand [`Lease::fencing_token`] to
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
//!   its session at once, so a slow or stalled session delays only its own
//!   lease.
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
//!   `leasehold_release`); one shared listener per backend, on its own
//!   connection, wakes waiters (`Waiting::Notified`), and wakes all of them
//!   after a reconnect. Polling with the retry policy's backoff remains the
//!   fallback: a lost signal costs latency, never a hang. Try-then-wait was
//!   chosen over a blocking `pg_advisory_lock` with `lock_timeout` because a
//!   blocked statement cannot be bounded by the per-call timeout without
//!   killing its connection, it holds a server backend per waiter, and it
//!   would not serve table mode. (Not measured here; the design notes report
//!   a blocking lock hands off in about 3 round trips, against about 4 for a
//!   NOTIFY wake-up and retry.)
//! - Cost: lock+unlock is dominated by the durable counter bump (one WAL
//!   flush per acquire; release skips the flush). `tests/latency.rs` measures
//!   it against the raw statements in the same run.
//! - Every call is bounded by [`PostgresOptions::operation_timeout`]
//!   (default 5 s; also the pool's acquire timeout when the backend builds the
//!   pool): a paused or dead server gives `LockError::Unavailable` in bounded
//!   time.
//! - **Cancel safety.** Every acquisition attempt runs on a task of its own:
//!   a caller that stops waiting (a `select!`, a timeout, an aborted task)
//!   never strands a grant; a lease won after the caller left, or that
//!   reached the caller just as it left, is released at once (table mode
//!   would otherwise keep the key for the whole TTL). Renewals and releases
//!   may be dropped at any point; see each method.
//! - TTLs: at least [`MIN_TTL`], at most one year ([`MAX_TTL`]; advisory
//!   mode at most [`MAX_ADVISORY_TTL`]); anything else, `Duration::MAX`
//!   included, is `LockError::InvalidTtl` before any store call.
//! - Configuration: URL options are leasehold's ([`OWN_OPTIONS`]) or sqlx's
//!   ([`SQLX_OPTIONS`]); any other name is a `LockError::Config` naming the
//!   closest known one (a typo such as `?mod=table` must never run in the
//!   default mode). Durations follow the one grammar of
//!   [`leasehold_core::config::duration`] (`timeout=250ms`; a bare number is
//!   an error). Errors and `Debug` output never show the password.
//! - Connect by URL ([`PostgresBackend::connect`]) or from your own `PgPool`
//!   ([`PostgresBackend::from_pool`]); a namespace keeps applications apart.
#![warn(missing_docs)]

mod advisory;
mod error;
mod notify;
mod options;
mod session;
mod table;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use leasehold_core::{
    Capabilities, Expiry, Fairness, Fencing, Key, Lease, LockBackend, LockError, LockInfo,
    ReleaseListener, RetryPolicy, Waiting, async_trait, wait_for_lock, with_timeout,
};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::sync::oneshot;

pub use advisory::session_pid;
pub use options::{Mode, OWN_OPTIONS, PostgresOptions, SQLX_OPTIONS, advisory_lock_id};
pub use sqlx;

pub(crate) const ADVISORY: &str = "postgres-advisory";
pub(crate) const TABLE: &str = "postgres-table";

/// The shortest TTL accepted (both modes).
pub const MIN_TTL: Duration = Duration::from_millis(1);
/// The longest TTL accepted in table mode: one year
/// ([`leasehold_core::config::MAX_DURATION`], the bound on every store).
pub const MAX_TTL: Duration = leasehold_core::config::MAX_DURATION;
/// The longest TTL accepted in advisory mode: the largest
/// `idle_session_timeout` (2^31 - 1 ms, about 24.8 days).
pub const MAX_ADVISORY_TTL: Duration = Duration::from_millis(i32::MAX as u64);

/// The statements of one mode, built once per backend.
#[derive(Debug, Default)]
pub(crate) struct Sql {
    pub(crate) acquire: String,
    pub(crate) extend: String,
    pub(crate) extend_many: String,
    pub(crate) release: String,
    pub(crate) inspect: String,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) pool: PgPool,
    pub(crate) options: PostgresOptions,
    pub(crate) sql: Sql,
    notifier: notify::Notifier,
    /// Advisory mode's pinned sessions (`None` in table mode).
    sessions: Option<Arc<session::Sessions>>,
}

impl Shared {
    pub(crate) fn sessions(&self) -> Result<&Arc<session::Sessions>, LockError> {
        self.sessions.as_ref().ok_or_else(|| {
            LockError::Config("advisory sessions used by a table-mode backend".into())
        })
    }
}

/// Locks in Postgres: session advisory locks or a lease table (see the crate
/// docs for each mode's guarantees and limits). Cheap to clone.
#[derive(Clone)]
pub struct PostgresBackend {
    shared: Arc<Shared>,
}

impl fmt::Debug for PostgresBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresBackend")
            .field("options", &self.shared.options)
            .finish_non_exhaustive()
    }
}

/// The idempotent DDL the crate runs for `options` (print it to apply it by
/// hand, with `migrate(false)`).
///
/// ```
/// use leasehold_postgres::{Mode, PostgresOptions, migration_sql};
/// let sql = migration_sql(&PostgresOptions::new(Mode::Table).schema("locks"));
/// assert!(sql.contains(r#"CREATE TABLE IF NOT EXISTS "locks"."leasehold_leases""#));
/// ```
pub fn migration_sql(options: &PostgresOptions) -> String {
    let mut sql = String::new();
    if options.schema != "public" {
        sql.push_str(&format!(
            "CREATE SCHEMA IF NOT EXISTS {};\n",
            options::quote_ident(&options.schema)
        ));
    }
    // Advisory mode keeps only the fencing counter; table mode adds the
    // lease itself. Rows are never deleted by the crate, so counters never
    // reset. Keys compare byte for byte (`COLLATE "C"`).
    let lease_columns = match options.mode {
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
        options.qualified_table()
    ));
    sql
}

/// Serializes concurrent migrations (two processes starting at once would
/// otherwise race on `CREATE TABLE IF NOT EXISTS`).
const MIGRATION_LOCK: i64 = 0x6c65_6173_6568_6f6c; // "leasehol"

impl PostgresBackend {
    /// Connects by URL; leasehold's own query parameters ([`OWN_OPTIONS`],
    /// see [`PostgresOptions::from_url`]) are read and removed, sqlx's
    /// ([`SQLX_OPTIONS`]) go to sqlx, and any other name is a
    /// [`LockError::Config`] naming the closest known one. Runs the migration
    /// unless `migrate=false`. Errors never show the password.
    ///
    /// Cancel safety: dropping the future leaves at most an idle pool behind.
    pub async fn connect(url: &str) -> Result<Self, LockError> {
        let (options, url) = PostgresOptions::from_url(url)?;
        Self::connect_with(&url, options).await
    }

    /// Connects to `url` (a plain sqlx URL) with explicit options. The
    /// backend's pool has `max_connections`; in advisory mode so do the
    /// pinned sessions, on their own private pool (see
    /// [`from_pool`](Self::from_pool)), while the pool serves `inspect` and
    /// migrations. The operation timeout is also the pools' acquire timeout.
    /// Connections open lazily, so an unused pool costs nothing.
    ///
    /// Cancel safety: dropping the future leaves at most an idle pool behind.
    pub async fn connect_with(url: &str, options: PostgresOptions) -> Result<Self, LockError> {
        let connect = PgConnectOptions::from_str(url)
            .map_err(|e| LockError::Config(format!("bad postgres URL: {e}")))?;
        options.validate()?;
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.operation_timeout)
            // A ping per checkout would add a round trip to every call; a
            // dead connection shows up as a (retryable) error instead, and
            // sqlx drops it when it comes back.
            .test_before_acquire(false)
            .connect_lazy_with(connect);
        let sessions = options.max_connections;
        Self::build(pool, options, sessions).await
    }

    /// Uses an existing pool (its own acquire timeout applies to checkouts,
    /// and every call is still bounded by the operation timeout). Runs the
    /// migration unless `options.migrate(false)`. Tip: build it with
    /// `test_before_acquire(false)`, or every call pays an extra ping.
    ///
    /// Advisory mode pins each held lock's session, and a connection that
    /// may still hold a lock must never go back to a pool; so the pinned
    /// sessions are opened from this pool's connect options on a private
    /// pool of the same size that closes every connection handed back to it
    /// (clean sessions are kept for reuse by the backend). This pool's own
    /// hooks (`after_connect` and the like) do not run on them; it serves
    /// `inspect` and migrations.
    ///
    /// Cancel safety: dropping the future may interrupt the migration, which
    /// runs in one transaction and is rolled back.
    pub async fn from_pool(pool: PgPool, options: PostgresOptions) -> Result<Self, LockError> {
        let sessions = pool.options().get_max_connections();
        Self::build(pool, options, sessions).await
    }

    async fn build(
        pool: PgPool,
        options: PostgresOptions,
        sessions: u32,
    ) -> Result<Self, LockError> {
        options.validate()?;
        let sql = match options.mode {
            Mode::Advisory => advisory::sql(&options),
            Mode::Table => table::sql(&options),
        };
        let notifier = notify::Notifier::new(
            pool.connect_options().as_ref().clone(),
            options.channel.clone(),
            options.operation_timeout,
        );
        let sessions = match options.mode {
            Mode::Advisory => Some(Arc::new(session::Sessions::new(
                pool.connect_options().as_ref().clone(),
                sessions,
                options.operation_timeout,
                options.channel.clone(),
            ))),
            Mode::Table => None,
        };
        let backend = PostgresBackend {
            shared: Arc::new(Shared {
                pool,
                options,
                sql,
                notifier,
                sessions,
            }),
        };
        if backend.shared.options.migrate {
            backend.migrate().await?;
        }
        Ok(backend)
    }

    /// Runs the idempotent migration ([`migration_sql`]) in one transaction.
    ///
    /// Cancel safety: a dropped call leaves the transaction to roll back.
    pub async fn migrate(&self) -> Result<(), LockError> {
        let name = self.name();
        let script = format!(
            "BEGIN;\nSELECT pg_advisory_xact_lock({MIGRATION_LOCK});\n{}COMMIT;\n",
            migration_sql(&self.shared.options)
        );
        with_timeout(name, self.shared.options.operation_timeout, async {
            sqlx::raw_sql(&script)
                .execute(&self.shared.pool)
                .await
                .map(|_| ())
                .map_err(|e| error::map(name, e))
        })
        .await
    }

    /// The pool for `inspect`, migrations and (table mode) every call; in
    /// advisory mode locks are held on the backend's private sessions.
    pub fn pool(&self) -> &PgPool {
        &self.shared.pool
    }

    /// The options in use.
    pub fn options(&self) -> &PostgresOptions {
        &self.shared.options
    }

    /// The shared bounds ([`Capabilities::check_ttl`]: at least [`MIN_TTL`],
    /// at most one year), and in advisory mode at most
    /// [`MAX_ADVISORY_TTL`]. Every later `Instant + ttl` and `ttl * factor`
    /// stays in range.
    fn check_ttl(&self, ttl: Duration) -> Result<(), LockError> {
        self.capabilities().check_ttl(self.name(), ttl)?;
        if self.shared.options.mode == Mode::Advisory && ttl > MAX_ADVISORY_TTL {
            return Err(LockError::InvalidTtl {
                backend: self.name(),
                ttl,
                reason: format!(
                    "must be at most {MAX_ADVISORY_TTL:?} in advisory mode \
                     (the largest idle_session_timeout)"
                ),
            });
        }
        Ok(())
    }

    /// One attempt on its own task: a caller that stops waiting never
    /// strands a grant. The attempt runs to its end (bounded by the operation
    /// timeout); a lease it wins after the caller left is released there at
    /// once, and so is a lease that reached the caller's channel just as the
    /// caller dropped it ([`Answer`]'s `Drop`).
    ///
    /// Not core's `cancel_safe`: that one loses a lease sent in the instant
    /// between the send succeeding and the dropped receiver being freed (the
    /// lease is dropped unreleased: a table lease then holds the key for its
    /// whole TTL).
    async fn attempt(&self, key: &Key, ttl: Duration) -> Result<Lease, LockError> {
        let (reply, answer) = oneshot::channel();
        let shared = self.shared.clone();
        let key = key.clone();
        tokio::spawn(async move {
            let result = match shared.options.mode {
                Mode::Advisory => advisory::try_acquire(&shared, &key, ttl).await,
                Mode::Table => table::try_acquire(&shared, &key, ttl).await,
            };
            if let Err(Ok(lease)) = reply.send(result) {
                give_back(shared, lease).await;
            }
        });
        let mut answer = Answer {
            reply: answer,
            shared: self.shared.clone(),
        };
        (&mut answer.reply).await.unwrap_or_else(|_| {
            Err(LockError::backend(
                self.name(),
                "the acquisition task panicked",
            ))
        })
    }
}

/// The caller's end of an attempt. Dropped before it received the answer,
/// it closes the channel and releases a lease that was already in it.
struct Answer {
    reply: oneshot::Receiver<Result<Lease, LockError>>,
    shared: Arc<Shared>,
}

impl Drop for Answer {
    fn drop(&mut self) {
        self.reply.close();
        if let Ok(Ok(lease)) = self.reply.try_recv()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(give_back(self.shared.clone(), lease));
        }
        // Without a runtime the lease is dropped: an advisory session closes
        // (freeing the lock), a table lease expires with its TTL.
    }
}

/// Releases a lease won for a caller that had already left.
async fn give_back(shared: Arc<Shared>, lease: Lease) {
    let key = lease.key().clone();
    let result = match shared.options.mode {
        Mode::Advisory => advisory::release(&shared, &lease).await,
        Mode::Table => table::release(&shared, &lease).await,
    };
    match result {
        Ok(()) => tracing::debug!(%key, "released a lease granted after its caller gave up"),
        Err(error) => tracing::warn!(%key, %error,
            "could not release a lease granted after its caller gave up; it ends with its TTL or session"),
    }
}

#[async_trait]
impl LockBackend for PostgresBackend {
    fn name(&self) -> &'static str {
        match self.shared.options.mode {
            Mode::Advisory => ADVISORY,
            Mode::Table => TABLE,
        }
    }

    fn capabilities(&self) -> Capabilities {
        let caps = Capabilities::new()
            .fencing(Fencing::Strict)
            .durable_fencing(true)
            .waiting(Waiting::Notified)
            .fairness(Fairness::None)
            .min_ttl(MIN_TTL)
            .ttl_granularity(Duration::from_millis(1))
            .holder_info(true);
        match self.shared.options.mode {
            Mode::Advisory => caps.expiry(Expiry::Session),
            Mode::Table => caps.expiry(Expiry::Ttl),
        }
    }

    /// One attempt.
    ///
    /// Cancel safety: dropping the future never strands a grant; the attempt
    /// finishes on its own task and a lease won after the caller left is
    /// released at once. In advisory mode a session interrupted mid-call is
    /// closed, never reused, which frees whatever it held.
    async fn try_acquire(&self, key: &Key, ttl: Duration) -> Result<Lease, LockError> {
        self.check_ttl(ttl)?;
        self.attempt(key, ttl).await
    }

    /// Waits with core's loop ([`wait_for_lock`]): attempts woken by
    /// LISTEN/NOTIFY release signals, polling as the fallback.
    ///
    /// Cancel safety: as [`try_acquire`](LockBackend::try_acquire); each
    /// attempt runs on its own task, and between attempts nothing is held.
    async fn acquire(
        &self,
        key: &Key,
        ttl: Duration,
        wait: &RetryPolicy,
    ) -> Result<Lease, LockError> {
        self.check_ttl(ttl)?;
        wait_for_lock(self, key, ttl, wait).await
    }

    /// Advisory mode: asks the lease's session task to check the lock is
    /// still held by its session and to restart the server's idle clock at
    /// `ttl`. Table mode: moves `expires_at` by the database clock, comparing
    /// the owner token.
    ///
    /// Cancel safety: safe to drop. A dropped advisory renewal still runs on
    /// the session task (its answer is discarded); a dropped table renewal
    /// may or may not have moved the expiry, and either outcome is valid.
    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<Lease, LockError> {
        self.check_ttl(ttl)?;
        match self.shared.options.mode {
            Mode::Advisory => advisory::extend(&self.shared, lease, ttl).await,
            Mode::Table => table::extend(&self.shared, lease, ttl).await,
        }
    }

    /// Table mode: one statement for all leases. Advisory mode: each lease
    /// has its own session, so every renewal is sent to its session task at
    /// once and they run concurrently; a slow session delays only its own
    /// lease. Results come in input order; a bad TTL fails only its lease.
    ///
    /// Cancel safety: as [`extend`](LockBackend::extend).
    async fn extend_many(&self, renewals: &[(Lease, Duration)]) -> Vec<Result<Lease, LockError>> {
        match self.shared.options.mode {
            Mode::Table if renewals.iter().all(|(_, ttl)| self.check_ttl(*ttl).is_ok()) => {
                table::extend_many(&self.shared, renewals).await
            }
            Mode::Table => {
                let mut results = Vec::with_capacity(renewals.len());
                for (lease, ttl) in renewals {
                    results.push(self.extend(lease, *ttl).await);
                }
                results
            }
            Mode::Advisory => {
                let started: Vec<_> = renewals
                    .iter()
                    .map(|(lease, ttl)| {
                        self.check_ttl(*ttl)?;
                        advisory::start_extend(&self.shared, lease, *ttl)
                    })
                    .collect();
                let mut results = Vec::with_capacity(renewals.len());
                for ((lease, _), started) in renewals.iter().zip(started) {
                    results.push(match started {
                        Ok(renewal) => advisory::finish_extend(&self.shared, lease, renewal).await,
                        Err(error) => Err(error),
                    });
                }
                results
            }
        }
    }

    /// Owner-only release. Advisory mode: `pg_advisory_unlock` on the pinned
    /// session; only a confirmed unlock keeps the session for reuse, anything
    /// else closes it (which frees the lock). Table mode: clears the owner
    /// (compare on the owner token), keeping the row and its counter. Both
    /// send a NOTIFY that wakes waiters.
    ///
    /// Cancel safety: safe to drop. In advisory mode the unlock still runs
    /// on the session task; in table mode the statement may or may not have
    /// run, and an unreleased table lease expires with its TTL.
    async fn release(&self, lease: &Lease) -> Result<(), LockError> {
        match self.shared.options.mode {
            Mode::Advisory => advisory::release(&self.shared, lease).await,
            Mode::Table => table::release(&self.shared, lease).await,
        }
    }

    /// The holder's fencing token and metadata (advisory mode: its server
    /// pid; table mode: owner hint and remaining TTL). Read-only, so safe to
    /// drop at any point.
    async fn inspect(&self, key: &Key) -> Result<Option<LockInfo>, LockError> {
        match self.shared.options.mode {
            Mode::Advisory => advisory::inspect(&self.shared, key).await,
            Mode::Table => table::inspect(&self.shared, key).await,
        }
    }

    /// A listener woken by the shared LISTEN connection's release signals.
    fn release_listener(&self, key: &Key) -> Option<ReleaseListener> {
        let id = advisory_lock_id(&self.shared.options.namespace, key.as_str());
        Some(self.shared.notifier.listen(&options::signal_name(id)))
    }
}
