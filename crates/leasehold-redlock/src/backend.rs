//! [`RedlockBackend`]: connecting, tooling accessors, and the thin
//! [`LockBackend`] impl over the quorum steps ([`Quorum`]).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use leasehold_core::config::BackendConfig;
use leasehold_core::{
    Capabilities, Fairness, Fencing, Key, Lease, ListPage, ListQuery, LockBackend, LockError,
    LockInfo, LockKind, OwnerToken, ReleaseFeed, ReleaseListener, WaitPolicy, Waiting, cancel_safe,
    wait_for_grant, wait_for_lock,
};
use leasehold_redis::{KeyLayout, RedisNode, extend_split};

use crate::config::{DEFAULT_NAMESPACE, DEFAULT_TIMEOUT, RedlockConfig};
use crate::notify::Releases;
use crate::quorum::Quorum;
use crate::store::Nodes;
use crate::{MIN_TTL, NAME};

/// Locks over N Redis servers (see the [crate docs](crate) for the algorithm
/// and its guarantees). Cheap to clone; clones share connections.
#[derive(Debug, Clone)]
pub struct RedlockBackend {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    quorum: Quorum,
    /// Whether every server was connected at start and keeps its counters
    /// across a restart.
    durable: bool,
    poll: Option<Duration>,
    holder: String,
    /// Release signals from every server (`None`: notifications are off).
    feed: Option<ReleaseFeed>,
    /// Names the keys the release signals carry.
    layout: KeyLayout,
}

impl RedlockBackend {
    /// Connects by URL (`redlock://h1:p1,h2:p2,h3:p3?…`, see
    /// [`RedlockConfig::from_url`]). Cancel safe: a dropped connect takes no
    /// lock and leaves nothing behind.
    pub async fn connect(url: &str) -> Result<Self, LockError> {
        Self::connect_with(RedlockConfig::from_url(url)?).await
    }

    /// Connects with `config`: returns once a quorum of servers is
    /// connected; the rest connect in the background. Fewer than a quorum
    /// within the per-call timeout is [`LockError::Unavailable`]. Cancel
    /// safe: a dropped connect takes no lock and leaves nothing behind.
    pub async fn connect_with(config: RedlockConfig) -> Result<Self, LockError> {
        let shared = config.shared();
        let timeout = shared.timeout.unwrap_or(DEFAULT_TIMEOUT);
        if timeout.is_zero() {
            return Err(LockError::Config(
                "redlock timeout must be above zero".into(),
            ));
        }
        if !(0.0..1.0).contains(&config.node_timeout_factor) {
            return Err(LockError::Config(format!(
                "redlock node_timeout_factor {} must be from 0 up to 1",
                config.node_timeout_factor
            )));
        }
        let layout = KeyLayout::new(shared.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE))?;
        let holder = shared.holder_or_default();
        let (nodes, durable) =
            Nodes::connect(config.servers.clone(), layout.clone(), timeout, &holder).await?;
        let feed = config
            .notifications
            .then(|| ReleaseFeed::new(Releases::new(nodes.clone(), timeout)));
        let quorum = Quorum::new(
            nodes,
            timeout,
            config.node_timeout_factor,
            config.min_node_timeout,
            shared.drift.unwrap_or_default(),
            config.clock.clone(),
        );
        Ok(RedlockBackend {
            inner: Arc::new(Inner {
                quorum,
                durable,
                poll: shared.poll,
                holder,
                feed,
                layout,
            }),
        })
    }

    /// How many servers must agree: N/2+1.
    pub fn quorum(&self) -> usize {
        self.inner.quorum.nodes.quorum()
    }

    /// The servers' `host:port`, in configuration order.
    pub fn servers(&self) -> Vec<String> {
        self.inner.quorum.nodes.servers()
    }

    /// The connected servers' nodes (`None`: not connected yet), for raw
    /// calls and tooling.
    pub fn nodes(&self) -> Vec<Option<RedisNode>> {
        self.inner.quorum.nodes.nodes()
    }

    /// Who holds the locks taken through this backend (the `holder`
    /// option), stored with each lease on every server and shown by
    /// `inspect` and `list`.
    pub fn holder(&self) -> &str {
        &self.inner.holder
    }

    /// Each server's share of an operation on a lease of `ttl`:
    /// `ttl × factor`, clamped to the floor and the per-call timeout. Never
    /// panics: the factor is below 1 (checked at connect), so the product
    /// is at most `ttl`.
    pub fn node_timeout(&self, ttl: Duration) -> Duration {
        self.inner.quorum.node_timeout(ttl)
    }

    /// Starts the release subscription now and waits until it is up on a
    /// quorum of servers (at most the per-call timeout). Optional: the
    /// first waiter starts it anyway, and waiters poll until it is up.
    /// Cancel safe: dropped, the subscription goes on being set up in the
    /// background.
    pub async fn subscribe_releases(&self) -> Result<(), LockError> {
        let Some(feed) = &self.inner.feed else {
            return Err(LockError::Config(
                "release notifications are off for this backend".into(),
            ));
        };
        let timeout = self.inner.quorum.timeout;
        if feed.ready(timeout).await {
            Ok(())
        } else {
            Err(LockError::unavailable(
                NAME,
                format!(
                    "release channels not subscribed on a quorum of servers within {timeout:?}"
                ),
            ))
        }
    }

    /// How many times the release subscription (over every server that
    /// answered, a quorum at least) has been (re)established; 0: not yet, or notifications
    /// are off. For tooling and tests.
    pub fn release_subscriptions(&self) -> u64 {
        self.inner
            .feed
            .as_ref()
            .map_or(0, ReleaseFeed::subscriptions)
    }
}

#[async_trait]
impl LockBackend for RedlockBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            .fencing(Fencing::BestEffort)
            .durable_fencing(self.inner.durable)
            .waiting(if self.inner.feed.is_some() {
                Waiting::Notified
            } else {
                Waiting::Polled
            })
            .fairness(Fairness::None)
            .min_ttl(MIN_TTL)
            .ttl_granularity(Duration::from_millis(1))
            .holder_info(true)
            .atomic_multi_key(false)
            .batch_extend(true)
            .rw_locks(true)
    }

    /// One attempt, run to its end on its own task ([`cancel_safe`]): a
    /// caller that stops waiting (a dropped `lock()`, a `select!`, a
    /// timeout) leaves no key held, because a quorum granted after it left is
    /// released at once in the background. Servers that did not answer are
    /// sent a compare-and-delete too, on the same connection as the acquire,
    /// so a frozen server that runs the queued acquire when it wakes runs the
    /// delete right after it.
    async fn try_acquire(&self, key: &Key, ttl: Duration) -> Result<Lease, LockError> {
        self.attempt(key, LockKind::Exclusive, ttl, None).await
    }

    /// The core waiting loop, woken by the servers' release signals (see
    /// the [crate docs](crate)); `poll` caps its pauses.
    async fn acquire(
        &self,
        key: &Key,
        ttl: Duration,
        wait: &WaitPolicy,
    ) -> Result<Lease, LockError> {
        wait_for_lock(self, key, ttl, &wait.polling_at(self.inner.poll)).await
    }

    /// The mutex is `try_acquire`; a reader or writer is the same quorum
    /// step over the reader–writer scripts, cancel safe the same way.
    /// Semaphores are [`LockError::Unsupported`]: a majority of
    /// independent counts does not bound the holders (see the
    /// [crate docs](crate)).
    async fn try_acquire_kind(
        &self,
        key: &Key,
        kind: LockKind,
        ttl: Duration,
    ) -> Result<Lease, LockError> {
        self.capabilities().check_kind(self.name(), kind)?;
        self.attempt(key, kind, ttl, None).await
    }

    /// Waits with the caller's [`WaitPolicy`], woken by release signals
    /// (`poll` caps its pauses); a writer registers as waiting on the servers that refuse it, which
    /// refuse new readers, until its wait ends (withdrawn from every
    /// server, in the background for a dropped call) or the registrations
    /// expire within `ttl`.
    async fn acquire_kind(
        &self,
        key: &Key,
        kind: LockKind,
        ttl: Duration,
        wait: &WaitPolicy,
    ) -> Result<Lease, LockError> {
        self.capabilities().check_kind(self.name(), kind)?;
        let wait = wait.polling_at(self.inner.poll);
        match kind {
            LockKind::Write => {
                self.inner.quorum.check_ttl(ttl)?;
                let attempt = |waiter| self.attempt(key, kind, ttl, Some(waiter));
                (self.inner.quorum)
                    .wait_to_write(self, key, ttl, &wait, attempt)
                    .await
            }
            kind => wait_for_grant(self, key, &wait, || self.attempt(key, kind, ttl, None)).await,
        }
    }

    /// Cancel safety: dropping it may leave the renewal applied on some
    /// servers; that only keeps our own key longer (until the new TTL), and
    /// the lease's `valid_until` is unchanged, so nothing is promised that
    /// the servers do not keep.
    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<Lease, LockError> {
        self.inner.quorum.extend(lease, ttl).await
    }

    /// One script call per server for the whole batch, all servers at
    /// once: a slow server costs the per-node timeout once, not once per
    /// lease (readers and writers each with their own quorum step, at the
    /// same time). Fewer than a quorum of servers answering the batch fails
    /// the whole call. Cancel safety as [`LockBackend::extend`].
    async fn extend_many(
        &self,
        renewals: &[(Lease, Duration)],
    ) -> Result<Vec<Result<Lease, LockError>>, LockError> {
        let quorum = &self.inner.quorum;
        extend_split(
            renewals,
            |batch| async move { quorum.extend_many(&batch).await },
            |lease, ttl| quorum.extend(lease, ttl),
        )
        .await
    }

    /// Cancel safety: dropping it may leave the key deleted on some servers
    /// and not on others; what is left frees itself at its TTL, and a later
    /// `release` of the same lease finishes the job.
    async fn release(&self, lease: &Lease) -> Result<(), LockError> {
        self.inner.quorum.release(lease).await
    }

    /// Read-only; cancel safe.
    async fn inspect(&self, key: &Key) -> Result<Option<LockInfo>, LockError> {
        self.inner.quorum.inspect(key).await
    }

    /// One `SCAN` step on every server at once, then the keys found read on
    /// every server (one script call each); a key is listed when a majority
    /// of servers agree on its owner, as [`LockBackend::inspect`] tells it.
    /// The cursor holds every server's `SCAN` cursor. Read-only; cancel safe.
    async fn list(&self, query: &ListQuery) -> Result<ListPage, LockError> {
        self.inner.quorum.list(query).await
    }

    /// The force-release script on every server at once (each deletes the
    /// key and advances its counter), then the servers whose counter lags
    /// the highest evicted token are raised to it. `Ok` when a majority
    /// answered; the evicted token is the highest reported. Cancel safety:
    /// dropped, some servers may have run it and others not.
    async fn force_release(&self, key: &Key, reason: &str) -> Result<Option<LockInfo>, LockError> {
        self.inner.quorum.force_release(key, reason).await
    }

    /// From the release subscription on every server (see the
    /// [crate docs](crate)); the same signal for every kind. `None` with
    /// notifications off.
    fn release_listener(&self, key: &Key) -> Option<ReleaseListener> {
        let feed = self.inner.feed.as_ref()?;
        Some(feed.listen(&self.inner.layout.lock_key(key)))
    }
}

impl RedlockBackend {
    /// One attempt at a grant of `kind` (registering `waiter` as a waiting
    /// writer where refused), cancel safe as `try_acquire` says.
    async fn attempt(
        &self,
        key: &Key,
        kind: LockKind,
        ttl: Duration,
        waiter: Option<OwnerToken>,
    ) -> Result<Lease, LockError> {
        self.inner.quorum.check_ttl(ttl)?;
        let (this, key) = (self.inner.clone(), key.clone());
        let releaser = self.inner.clone();
        cancel_safe(
            NAME,
            async move { this.quorum.attempt(&key, kind, ttl, waiter).await },
            move |lease| async move { releaser.quorum.release(&lease).await },
        )
        .await
    }
}
