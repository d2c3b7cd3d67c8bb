//! [`PostgresBackend`]: construction, and the thin [`LockBackend`] impl that
//! hands each call to its mode's algorithm ([`crate::advisory`] or
//! [`crate::table`]).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use leasehold_core::relay::Relay;
use leasehold_core::{
    Capabilities, Expiry, Fairness, Fencing, Key, Lease, ListPage, ListQuery, LockBackend,
    LockError, LockInfo, LockKind, ReleaseFeed, ReleaseListener, WaitPolicy, Waiting, async_trait,
    extend_each, instant_after, wait_for_lock, wait_for_lock_with,
};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::config::{MAX_ADVISORY_TTL, MIN_TTL, Mode, PostgresConfig};
use crate::keys::{advisory_lock_id, signal_name};
use crate::store::{Sessions, Shared};
use crate::{advisory, kinds, notify, schema, table};

/// Locks in Postgres: session advisory locks or a lease table (see the crate
/// docs for each mode's guarantees and limits). Cheap to clone.
#[derive(Clone)]
pub struct PostgresBackend {
    shared: Arc<Shared>,
}

impl fmt::Debug for PostgresBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresBackend")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl PostgresBackend {
    /// Connects by URL ([`PostgresConfig::from_url`]: leasehold's query
    /// parameters are read and removed, sqlx's go to sqlx, any other name is
    /// a [`LockError::Config`] naming the closest known one). Runs the
    /// migration unless `migrate=false`. Errors never show the password.
    ///
    /// Cancel safety: dropping the future leaves at most an idle pool behind.
    pub async fn connect(url: &str) -> Result<Self, LockError> {
        Self::connect_with(PostgresConfig::from_url(url)?).await
    }

    /// Connects with `config`, which must name a URL
    /// ([`PostgresConfig::from_url`] or [`PostgresConfig::url`]). The
    /// backend's pool has `max_connections`; in advisory mode so do the
    /// pinned sessions, on their own private pool (see
    /// [`from_pool`](Self::from_pool)), while the pool serves `inspect` and
    /// migrations. The operation timeout is also the pools' acquire timeout.
    /// Connections open lazily, so an unused pool costs nothing.
    ///
    /// Cancel safety: dropping the future leaves at most an idle pool behind.
    pub async fn connect_with(config: PostgresConfig) -> Result<Self, LockError> {
        // sqlx builds its certificate verifier from rustls's process-wide
        // provider; a build with two providers (ZooKeeper TLS brings
        // aws-lc beside ring) has none until one is installed, and the
        // first verified TLS connection would panic.
        leasehold_core::tls::install_default_crypto_provider();
        let url = config.sqlx_url().ok_or_else(|| {
            LockError::Config(
                "no URL to connect to: give one with PostgresConfig::url, \
                 or use PostgresBackend::from_pool"
                    .into(),
            )
        })?;
        let connect = PgConnectOptions::from_str(url)
            .map_err(|e| LockError::Config(format!("bad postgres URL: {e}")))?;
        let settings = config.settings();
        settings.validate()?;
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(settings.timeout)
            // A ping per checkout would add a round trip to every call; a
            // dead connection shows up as a (retryable) error instead, and
            // sqlx drops it when it comes back.
            .test_before_acquire(false)
            .connect_lazy_with(connect);
        let sessions = settings.max_connections;
        Self::build(pool, config, sessions).await
    }

    /// Uses an existing pool (its own acquire timeout applies to checkouts,
    /// and every call is still bounded by the operation timeout); the URL in
    /// `config`, if any, is not used. Runs the migration unless
    /// `config.migrate(false)`. Tip: build it with
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
    /// Table mode's grants, renewals and releases take this pool's
    /// connections through a [`Relay`]: under load a connection goes from
    /// one call straight to the next waiting one, skipping the pool's
    /// release ping and `after_release` hook for at most
    /// [`MAX_RELAYS`](leasehold_core::relay::MAX_RELAYS) calls in a row.
    ///
    /// Cancel safety: dropping the future may interrupt the migration, which
    /// runs in one transaction and is rolled back.
    pub async fn from_pool(pool: PgPool, config: PostgresConfig) -> Result<Self, LockError> {
        let sessions = pool.options().get_max_connections();
        Self::build(pool, config, sessions).await
    }

    async fn build(pool: PgPool, config: PostgresConfig, sessions: u32) -> Result<Self, LockError> {
        let settings = config.settings();
        settings.validate()?;
        let name = settings.mode.backend_name();
        let sql = match settings.mode {
            Mode::Advisory => advisory::sql(&settings),
            Mode::Table => table::sql(&settings),
        };
        let connect = pool.connect_options().as_ref().clone();
        let feed = ReleaseFeed::new(notify::Listen::new(
            name,
            connect.clone(),
            settings.channel.clone(),
            settings.timeout,
        ));
        let sessions = match settings.mode {
            Mode::Advisory => Some(Arc::new(Sessions::new(
                connect,
                sessions,
                settings.timeout,
                settings.channel.clone(),
            ))),
            Mode::Table => None,
        };
        let backend = PostgresBackend {
            shared: Arc::new(Shared {
                relay: Relay::new(pool.clone()),
                pool,
                options: settings,
                sql,
                config,
                feed,
                sessions,
            }),
        };
        if backend.shared.options.migrate {
            backend.migrate().await?;
        }
        Ok(backend)
    }

    /// Runs the idempotent migration ([`migration_sql`](crate::migration_sql))
    /// in one transaction.
    ///
    /// Cancel safety: a dropped call leaves the transaction to roll back.
    pub async fn migrate(&self) -> Result<(), LockError> {
        let options = &self.shared.options;
        schema::migrate(self.name(), &self.shared.pool, options, options.timeout).await
    }

    /// The pool for `inspect`, migrations and (table mode) every call, its
    /// grants, renewals and releases relayed between calls
    /// ([`from_pool`](Self::from_pool)); in advisory mode locks are held on
    /// the backend's private sessions.
    pub fn pool(&self) -> &PgPool {
        &self.shared.pool
    }

    /// The configuration in use.
    pub fn config(&self) -> &PostgresConfig {
        &self.shared.config
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
}

/// One attempt in the backend's mode.
async fn attempt(
    shared: Arc<Shared>,
    key: Key,
    ttl: Duration,
    left: kinds::CallerLeft,
) -> Result<Lease, LockError> {
    match shared.options.mode {
        Mode::Advisory => advisory::try_acquire(&shared, &key, ttl).await,
        Mode::Table => table::try_acquire(&shared, &key, ttl, left).await,
    }
}

#[async_trait]
impl LockBackend for PostgresBackend {
    fn name(&self) -> &'static str {
        self.shared.options.mode.backend_name()
    }

    fn capabilities(&self) -> Capabilities {
        let caps = Capabilities::new()
            .fencing(Fencing::Strict)
            .durable_fencing(true)
            .waiting(Waiting::Notified)
            .fairness(Fairness::None)
            .min_ttl(MIN_TTL)
            .ttl_granularity(Duration::from_millis(1))
            .holder_info(true)
            .rw_locks(true)
            .semaphores(true);
        match self.shared.options.mode {
            Mode::Advisory => caps.expiry(Expiry::Session),
            Mode::Table => caps.expiry(Expiry::Ttl).batch_extend(true),
        }
    }

    /// One attempt: in table mode on its own task (core's
    /// [`cancel_safe`](leasehold_core::cancel_safe)), in advisory mode in the
    /// caller's future (see below).
    ///
    /// Cancel safety: dropping the future never strands a grant. Table mode:
    /// the attempt finishes on its own task and a lease won after the caller
    /// left, or answered but not yet read, is released at once. Advisory
    /// mode: the attempt's session goes with it, and a session dropped
    /// mid-call is closed, never reused, which frees whatever the server
    /// granted it. An attempt still waiting for a connection (advisory mode:
    /// a session; table mode: one of the pool's) when its caller leaves
    /// stops there, having asked the store nothing.
    async fn try_acquire(&self, key: &Key, ttl: Duration) -> Result<Lease, LockError> {
        self.check_ttl(ttl)?;
        let (shared, key) = (self.shared.clone(), key.clone());
        kinds::guarded(&self.shared, move |left| attempt(shared, key, ttl, left)).await
    }

    /// Waits with core's loop ([`wait_for_lock_with`]): attempts woken by
    /// LISTEN/NOTIFY release signals, polling as the fallback (pauses capped
    /// at the `poll` option, if set).
    ///
    /// Advisory mode also queues in the server: each attempt of a waiter
    /// that can pin a session (at most half the backend's sessions wait this
    /// way) blocks in `pg_advisory_lock` for the rest of its wait (10 s at
    /// one go), so the server hands it the lock at once if it is free, or at
    /// the holder's unlock, or at the end of the holder's session (a killed
    /// holder, whose end sends no signal), without a signal's round trips,
    /// and queued waiters are served in arrival order. The others wait with
    /// core's loop as in table mode. A waiter queues without asking
    /// `pg_try_advisory_lock` first: that refusal was one more statement
    /// per contended wait, on the server every waiter shares.
    ///
    /// Cancel safety: as [`try_acquire`](LockBackend::try_acquire); between
    /// attempts nothing is held.
    /// A dropped queued wait closes its session (never reused), which frees
    /// whatever the server granted it.
    async fn acquire(
        &self,
        key: &Key,
        ttl: Duration,
        wait: &WaitPolicy,
    ) -> Result<Lease, LockError> {
        self.check_ttl(ttl)?;
        let wait = wait.polling_at(self.shared.options.poll);
        if self.shared.options.mode == Mode::Table {
            return wait_for_lock(self, key, ttl, &wait).await;
        }
        let deadline = instant_after(tokio::time::Instant::now(), wait.deadline);
        let sessions = self.shared.sessions()?;
        // Taken when the call first waits for a release signal, kept until
        // it returns (or is dropped).
        let mark = tokio::sync::OnceCell::new();
        wait_for_lock_with(self, key, &wait, || {
            let mark = &mark;
            async move {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if let Some(lease) = advisory::queue(&self.shared, key, ttl, left).await? {
                    return Ok(lease);
                }
                // Not granted in the server's queue: no place in it, the
                // wait ran out, no epoch in force (this attempt starts one)
                // or its session had ended.
                let refused = match self.try_acquire(key, ttl).await {
                    Err(refused @ LockError::Contended { .. }) => refused,
                    other => return other,
                };
                // Not queued in the server: this call waits for a release
                // signal, which a mutex release sends only to a marked key.
                let id = advisory_lock_id(&self.shared.options.namespace, key.as_str());
                let again = self.try_acquire(key, ttl);
                sessions.marks.after_refusal(mark, id, refused, again).await
            }
        })
        .await
    }

    /// Advisory mode: asks the lease's session task to check the lock is
    /// still held by its session and to restart the server's idle clock at
    /// `ttl`. Table mode: moves `expires_at` by the database clock, comparing
    /// the owner token.
    ///
    /// Cancel safety: safe to drop. A dropped advisory renewal still runs on
    /// the session task (its answer is discarded); a dropped table renewal
    /// may or may not have moved the expiry, and either outcome is valid.
    /// A reader, writer or permit: see the crate docs for each mode's
    /// mechanism. Cancel safety: as [`try_acquire`](LockBackend::try_acquire).
    async fn try_acquire_kind(
        &self,
        key: &Key,
        kind: LockKind,
        ttl: Duration,
    ) -> Result<Lease, LockError> {
        if kind == LockKind::Exclusive {
            return self.try_acquire(key, ttl).await;
        }
        self.capabilities().check_kind(self.name(), kind)?;
        self.check_ttl(ttl)?;
        let (shared, key) = (self.shared.clone(), key.clone());
        kinds::guarded(&self.shared, move |left| {
            kinds::attempt(shared, key, kind, ttl, left)
        })
        .await
    }

    /// Waits with core's loop, woken by release signals of any kind on
    /// `key`; a waiting writer registers so new readers are refused (see the
    /// crate docs). Cancel safety: as [`acquire`](LockBackend::acquire); a
    /// dropped writer's registration is withdrawn (table mode: on a spawned
    /// task, else it expires within `ttl`; advisory mode: its session is
    /// closed).
    async fn acquire_kind(
        &self,
        key: &Key,
        kind: LockKind,
        ttl: Duration,
        wait: &WaitPolicy,
    ) -> Result<Lease, LockError> {
        if kind == LockKind::Exclusive {
            return self.acquire(key, ttl, wait).await;
        }
        self.capabilities().check_kind(self.name(), kind)?;
        self.check_ttl(ttl)?;
        let wait = wait.polling_at(self.shared.options.poll);
        kinds::acquire(&self.shared, key, kind, ttl, &wait, self).await
    }

    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<Lease, LockError> {
        self.check_ttl(ttl)?;
        match self.shared.options.mode {
            Mode::Advisory => advisory::extend(&self.shared, lease, ttl).await,
            Mode::Table if lease.kind() == LockKind::Exclusive => {
                table::extend(&self.shared, lease, ttl).await
            }
            Mode::Table => kinds::extend(&self.shared, lease, ttl).await,
        }
    }

    /// Table mode: one statement for all mutex leases (a bad TTL anywhere, or
    /// a lease of another kind in the batch, makes it renew each lease alone,
    /// so a bad one fails only its own slot).
    /// Advisory mode: core's [`extend_each`]; each lease has its own session,
    /// so every renewal reaches its session task at once and a slow session
    /// delays only its own lease. Results come in input order.
    ///
    /// Cancel safety: as [`extend`](LockBackend::extend).
    async fn extend_many(
        &self,
        renewals: &[(Lease, Duration)],
    ) -> Result<Vec<Result<Lease, LockError>>, LockError> {
        match self.shared.options.mode {
            Mode::Table
                if renewals.iter().all(|(lease, ttl)| {
                    lease.kind() == LockKind::Exclusive && self.check_ttl(*ttl).is_ok()
                }) =>
            {
                table::extend_many(&self.shared, renewals).await
            }
            Mode::Table | Mode::Advisory => extend_each(self, renewals).await,
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
        kinds::release_any(&self.shared, lease).await
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

    /// Advisory mode: the granted advisory locks in `pg_locks` joined to the
    /// namespace's key rows and their holders' session labels; table mode: the live rows. Both by key, a
    /// page per statement, the cursor being the last key shown.
    async fn list(&self, query: &ListQuery) -> Result<ListPage, LockError> {
        match self.shared.options.mode {
            Mode::Advisory => advisory::list(&self.shared, query).await,
            Mode::Table => table::list(&self.shared, query).await,
        }
    }

    /// Advisory mode: ends the holder's session (`pg_terminate_backend`,
    /// needing the holder's role or `pg_signal_backend`) and bumps the
    /// counter; table mode: clears the owner and bumps the counter. Both wake
    /// waiters. Cancel safety: a dropped call may or may not have evicted.
    async fn force_release(&self, key: &Key, reason: &str) -> Result<Option<LockInfo>, LockError> {
        match self.shared.options.mode {
            Mode::Advisory => advisory::force_release(&self.shared, key, reason).await,
            Mode::Table => table::force_release(&self.shared, key, reason).await,
        }
    }

    /// A listener woken by the shared LISTEN subscription (core's
    /// [`ReleaseFeed`]).
    fn release_listener(&self, key: &Key) -> Option<ReleaseListener> {
        let id = advisory_lock_id(&self.shared.options.namespace, key.as_str());
        Some(self.shared.feed.listen(&signal_name(id)))
    }
}
