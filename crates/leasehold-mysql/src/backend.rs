//! [`MysqlBackend`]: construction, and the thin [`LockBackend`] impl that
//! hands each call to its mode's algorithm ([`crate::named`] or
//! [`crate::table`]).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use leasehold_core::relay::Relay;
use leasehold_core::{
    Capabilities, Expiry, Fairness, Fencing, Key, Lease, ListPage, ListQuery, LockBackend,
    LockError, LockInfo, LockKind, ReleaseHub, ReleaseListener, WaitPolicy, Waiting, async_trait,
    cancel_safe, extend_each, wait_for_lock,
};
use sqlx::MySqlPool;
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};

use crate::config::{MAX_NAMED_TTL, MIN_TTL, Mode, MysqlConfig};
use crate::store::{Sessions, Shared};
use crate::{kinds, named, schema, table};

/// Locks in MySQL or MariaDB: `GET_LOCK` on watched pinned sessions, or a
/// lease table (see the crate docs for each mode's guarantees and limits).
/// Cheap to clone.
#[derive(Clone)]
pub struct MysqlBackend {
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for MysqlBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MysqlBackend")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl MysqlBackend {
    /// Connects by URL ([`MysqlConfig::from_url`]: leasehold's query
    /// parameters are read and removed, sqlx's go to sqlx, any other name is
    /// a [`LockError::Config`] naming the closest known one). Runs the
    /// migration unless `migrate=false`. Errors never show the password.
    ///
    /// Cancel safety: dropping the future leaves at most an idle pool behind.
    pub async fn connect(url: &str) -> Result<Self, LockError> {
        Self::connect_with(MysqlConfig::from_url(url)?).await
    }

    /// Connects with `config`, which must name a URL
    /// ([`MysqlConfig::from_url`] or [`MysqlConfig::url`]). The backend's
    /// pool has `max_connections`; in named mode so do the pinned sessions
    /// and their watchers, on private pools (see
    /// [`from_pool`](Self::from_pool)). The operation timeout is also the
    /// pools' acquire timeout. Connections open lazily.
    ///
    /// Cancel safety: dropping the future leaves at most an idle pool behind.
    pub async fn connect_with(config: MysqlConfig) -> Result<Self, LockError> {
        // sqlx builds its certificate verifier from rustls's process-wide
        // provider; a build with two providers (ZooKeeper TLS brings
        // aws-lc beside ring) has none until one is installed, and the
        // first verified TLS connection would panic.
        leasehold_core::tls::install_default_crypto_provider();
        let url = config.sqlx_url().ok_or_else(|| {
            LockError::Config(
                "no URL to connect to: give one with MysqlConfig::url, \
                 or use MysqlBackend::from_pool"
                    .into(),
            )
        })?;
        let connect = MySqlConnectOptions::from_str(url)
            .map_err(|e| LockError::Config(format!("bad mysql URL: {e}")))?;
        let settings = config.settings();
        settings.validate()?;
        let pool = MySqlPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(settings.timeout)
            // A ping per checkout would add a round trip to every call.
            .test_before_acquire(false)
            .connect_lazy_with(connect);
        let sessions = settings.max_connections;
        Self::build(pool, config, sessions).await
    }

    /// Uses an existing pool (its own acquire timeout applies to checkouts,
    /// and every call is still bounded by the operation timeout); the URL in
    /// `config`, if any, is not used. Runs the migration unless
    /// `config.migrate(false)`.
    ///
    /// Named mode pins each held lock's session, and a connection that may
    /// still hold a lock must never go back to a pool: so the pinned
    /// sessions (and their watchers) are opened from this pool's connect
    /// options on private pools of the same size that close every connection
    /// handed back to them. This pool's own hooks do not run on them.
    ///
    /// Table mode's grants, renewals and releases take this pool's
    /// connections through a [`Relay`]: under load a connection goes from
    /// one call straight to the next waiting one, skipping the pool's
    /// release ping and `after_release` hook for at most
    /// [`MAX_RELAYS`](leasehold_core::relay::MAX_RELAYS) calls in a row.
    pub async fn from_pool(pool: MySqlPool, config: MysqlConfig) -> Result<Self, LockError> {
        let sessions = pool.options().get_max_connections();
        Self::build(pool, config, sessions).await
    }

    async fn build(pool: MySqlPool, config: MysqlConfig, sessions: u32) -> Result<Self, LockError> {
        let settings = config.settings();
        settings.validate()?;
        let sql = match settings.mode {
            Mode::Named => named::sql(&settings),
            Mode::Table => table::sql(&settings),
        };
        let kinds = match settings.mode {
            Mode::Named => {
                crate::epoch::check_table(&settings)?;
                None
            }
            Mode::Table => {
                kinds::check_table(&settings)?;
                Some(kinds::KindsSql::new(&settings))
            }
        };
        let sessions = match settings.mode {
            Mode::Named => Some(Arc::new(Sessions::new(
                pool.connect_options().as_ref().clone(),
                sessions,
                settings.timeout,
            ))),
            Mode::Table => None,
        };
        let backend = MysqlBackend {
            shared: Arc::new(Shared {
                relay: Relay::new(pool.clone()),
                pool,
                options: settings,
                sql,
                config,
                hub: ReleaseHub::new(),
                sessions,
                kinds,
            }),
        };
        if backend.shared.options.migrate {
            backend.migrate().await?;
        }
        Ok(backend)
    }

    /// Runs the idempotent migration ([`migration_sql`](crate::migration_sql)).
    pub async fn migrate(&self) -> Result<(), LockError> {
        let options = &self.shared.options;
        schema::migrate(self.name(), &self.shared.pool, options, options.timeout).await
    }

    /// The pool for `inspect`, `list`, migrations and (table mode) every
    /// call, its grants, renewals and releases relayed between calls
    /// ([`from_pool`](Self::from_pool)); in named mode locks are held on
    /// the backend's private sessions.
    pub fn pool(&self) -> &MySqlPool {
        &self.shared.pool
    }

    /// The configuration in use.
    pub fn config(&self) -> &MysqlConfig {
        &self.shared.config
    }

    /// The shared bounds ([`Capabilities::check_ttl`]), and in named mode at
    /// most [`MAX_NAMED_TTL`].
    fn check_ttl(&self, ttl: Duration) -> Result<(), LockError> {
        self.capabilities().check_ttl(self.name(), ttl)?;
        if self.shared.options.mode == Mode::Named && ttl > MAX_NAMED_TTL {
            return Err(LockError::InvalidTtl {
                backend: self.name(),
                ttl,
                reason: format!(
                    "must be at most {MAX_NAMED_TTL:?} in named mode (the largest wait_timeout)"
                ),
            });
        }
        Ok(())
    }
}

impl MysqlBackend {
    /// One attempt at a reader, writer or permit (table mode), on its own
    /// task like the mutex's ([`cancel_safe`]).
    pub(crate) async fn try_kind(
        &self,
        key: &Key,
        kind: LockKind,
        ttl: Duration,
        waiting: Option<leasehold_core::OwnerToken>,
    ) -> Result<Lease, LockError> {
        let (shared, back, key) = (self.shared.clone(), self.shared.clone(), key.clone());
        cancel_safe(
            self.name(),
            async move { kinds::try_acquire(&shared, &key, kind, ttl, waiting).await },
            move |lease| async move { release(&back, &lease).await },
        )
        .await
    }
}

/// One attempt in the backend's mode.
async fn attempt(shared: Arc<Shared>, key: Key, ttl: Duration) -> Result<Lease, LockError> {
    match shared.options.mode {
        Mode::Named => named::try_acquire(&shared, &key, ttl).await,
        Mode::Table => table::try_acquire(&shared, &key, ttl).await,
    }
}

/// Releases a lease in the backend's mode (of any kind).
async fn release(shared: &Shared, lease: &Lease) -> Result<(), LockError> {
    if lease.kind() != LockKind::Exclusive {
        return kinds::release(shared, lease).await;
    }
    match shared.options.mode {
        Mode::Named => named::release(shared, lease).await,
        Mode::Table => table::release(shared, lease).await,
    }
}

#[async_trait]
impl LockBackend for MysqlBackend {
    fn name(&self) -> &'static str {
        self.shared.options.mode.backend_name()
    }

    fn capabilities(&self) -> Capabilities {
        let caps = Capabilities::new()
            .fencing(Fencing::Strict)
            .durable_fencing(true)
            .waiting(Waiting::Polled)
            .fairness(Fairness::None)
            .min_ttl(MIN_TTL)
            .holder_info(true);
        match self.shared.options.mode {
            // wait_timeout counts whole seconds.
            Mode::Named => caps
                .expiry(Expiry::Session)
                .ttl_granularity(Duration::from_secs(1)),
            // GET_LOCK has no shared mode: the mutex only.
            Mode::Table => caps
                .expiry(Expiry::Ttl)
                .ttl_granularity(Duration::from_micros(1))
                .rw_locks(true)
                .semaphores(true),
        }
    }

    /// One attempt, on its own task (core's [`cancel_safe`]).
    ///
    /// Cancel safety: dropping the future never strands a grant; the attempt
    /// finishes on its own task and a lease won after the caller left is
    /// released at once. In named mode a session interrupted mid-call is
    /// closed, never reused, which frees whatever it held.
    async fn try_acquire(&self, key: &Key, ttl: Duration) -> Result<Lease, LockError> {
        self.check_ttl(ttl)?;
        let back = self.shared.clone();
        cancel_safe(
            self.name(),
            attempt(self.shared.clone(), key.clone(), ttl),
            move |lease| async move { release(&back, &lease).await },
        )
        .await
    }

    /// Waits with core's loop ([`wait_for_lock`]): polling with the wait
    /// policy's backoff (pauses capped at the `poll` option, if set), woken
    /// early by this backend's own releases.
    ///
    /// Cancel safety: as [`try_acquire`](LockBackend::try_acquire).
    async fn acquire(
        &self,
        key: &Key,
        ttl: Duration,
        wait: &WaitPolicy,
    ) -> Result<Lease, LockError> {
        self.check_ttl(ttl)?;
        wait_for_lock(self, key, ttl, &wait.polling_at(self.shared.options.poll)).await
    }

    /// Named mode: asks the lease's session task to check the lock is still
    /// held by its session and to set the session's `wait_timeout` for
    /// `ttl`. Table mode: moves `expires_at` by the database clock,
    /// comparing the owner token.
    ///
    /// Table mode: every kind (a reader, writer or permit is one
    /// transaction on the second table, cancel safe like the mutex). Named
    /// mode: the mutex only; other kinds are [`LockError::Unsupported`]
    /// (`GET_LOCK` has no shared mode, and [`Capabilities`] says so).
    async fn try_acquire_kind(
        &self,
        key: &Key,
        kind: LockKind,
        ttl: Duration,
    ) -> Result<Lease, LockError> {
        self.capabilities().check_kind(self.name(), kind)?;
        if kind == LockKind::Exclusive {
            return self.try_acquire(key, ttl).await;
        }
        self.check_ttl(ttl)?;
        self.try_kind(key, kind, ttl, None).await
    }

    /// As `try_acquire_kind`, polled like `acquire`; a waiting writer
    /// records its wait (new readers are refused while it lasts) and
    /// removes it when the wait ends.
    async fn acquire_kind(
        &self,
        key: &Key,
        kind: LockKind,
        ttl: Duration,
        wait: &WaitPolicy,
    ) -> Result<Lease, LockError> {
        self.capabilities().check_kind(self.name(), kind)?;
        if kind == LockKind::Exclusive {
            return self.acquire(key, ttl, wait).await;
        }
        self.check_ttl(ttl)?;
        self.wait_kind(key, kind, ttl, wait).await
    }

    /// Cancel safety: safe to drop; a dropped renewal may or may not have
    /// taken effect, and either outcome is valid. Leases of every kind.
    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<Lease, LockError> {
        self.check_ttl(ttl)?;
        if lease.kind() != LockKind::Exclusive {
            return kinds::extend(&self.shared, lease, ttl).await;
        }
        match self.shared.options.mode {
            Mode::Named => named::extend(&self.shared, lease, ttl).await,
            Mode::Table => table::extend(&self.shared, lease, ttl).await,
        }
    }

    /// Core's [`extend_each`]: every renewal at once, each on its own
    /// session (named) or pooled connection (table). Results come in input
    /// order.
    async fn extend_many(
        &self,
        renewals: &[(Lease, Duration)],
    ) -> Result<Vec<Result<Lease, LockError>>, LockError> {
        extend_each(self, renewals).await
    }

    /// Owner-only release. Named mode: `RELEASE_LOCK` on the pinned session;
    /// only a confirmed unlock keeps the session for reuse, anything else
    /// closes it (which frees the lock). Table mode: clears the owner
    /// (compare on the owner token), keeping the row and its counter.
    ///
    /// Cancel safety: safe to drop. In named mode the unlock still runs on
    /// the session task; in table mode the statement may or may not have
    /// run, and an unreleased table lease expires with its TTL.
    async fn release(&self, lease: &Lease) -> Result<(), LockError> {
        release(&self.shared, lease).await
    }

    /// The holder's fencing token and metadata (named mode: its connection
    /// id; table mode: owner hint and remaining TTL). Read-only.
    async fn inspect(&self, key: &Key) -> Result<Option<LockInfo>, LockError> {
        match self.shared.options.mode {
            Mode::Named => named::inspect(&self.shared, key).await,
            Mode::Table => table::inspect(&self.shared, key).await,
        }
    }

    /// Named mode: the namespace's counter rows whose lock `IS_USED_LOCK`
    /// reports held; table mode: the live rows. Both by key, a page per
    /// statement, the cursor being the last key shown.
    async fn list(&self, query: &ListQuery) -> Result<ListPage, LockError> {
        match self.shared.options.mode {
            Mode::Named => named::list(&self.shared, query).await,
            Mode::Table => table::list(&self.shared, query).await,
        }
    }

    /// Named mode: `KILL CONNECTION` of the holder's session (needing the
    /// holder's user or the connection-admin privilege), then bumps the
    /// counter; table mode: clears the owner and bumps the counter. Cancel
    /// safety: a dropped call may or may not have evicted.
    async fn force_release(&self, key: &Key, reason: &str) -> Result<Option<LockInfo>, LockError> {
        match self.shared.options.mode {
            Mode::Named => named::force_release(&self.shared, key, reason).await,
            Mode::Table => table::force_release(&self.shared, key, reason).await,
        }
    }

    /// A listener woken by this backend's own releases (core's
    /// [`ReleaseHub`]); other processes' releases are found by polling.
    fn release_listener(&self, key: &Key) -> Option<ReleaseListener> {
        Some(self.shared.hub.listen(key.as_str()))
    }
}
