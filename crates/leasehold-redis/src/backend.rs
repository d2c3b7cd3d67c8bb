//! [`RedisBackend`]: connecting, tooling accessors, and the thin
//! [`LockBackend`] impl over the lease steps ([`Leases`]).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use leasehold_core::config::{BackendConfig, MAX_DURATION};
use leasehold_core::{
    Capabilities, Fairness, Fencing, Key, Lease, ListPage, ListQuery, LockBackend, LockError,
    LockInfo, LockKind, ReleaseFeed, ReleaseListener, WaitPolicy, Waiting, wait_for_grant,
    wait_for_lock,
};

use crate::NAME;
use crate::config::{DEFAULT_NAMESPACE, DEFAULT_TIMEOUT, RedisConfig, Target};
use crate::keys::KeyLayout;
use crate::lease::Leases;
use crate::safety::{Persistence, SafetyFinding};
use crate::sharded::ShardedFeed;
use crate::store::RedisNode;

/// Locks on one Redis server (see the [crate docs](crate) for the
/// mechanism and its guarantees). Cheap to clone; clones share connections.
#[derive(Debug, Clone)]
pub struct RedisBackend {
    leases: Leases,
    feed: Option<Feed>,
    poll: Option<Duration>,
    persistence: Persistence,
    topology: Topology,
}

/// Where waiters hear of releases.
#[derive(Debug, Clone)]
enum Feed {
    /// The namespace's channel, one subscription (one server, Sentinel).
    Classic(Arc<ReleaseFeed>),
    /// Each waited-for key's shard channel (a cluster).
    Sharded(Arc<ShardedFeed>),
}

/// What the backend knows of the server's topology at connect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topology {
    /// One server at a fixed address (`redis://`, `rediss://`,
    /// `redis+unix://`); nothing follows a failover.
    Direct,
    /// The master a set of sentinels names, followed across failovers.
    Sentinel {
        /// Replicas the master reported (`connected_slaves`) at connect.
        replicas: u32,
    },
    /// A Redis Cluster: each key on the master of its slot; the cluster
    /// fails a shard over to an asynchronous replica by itself.
    Cluster {
        /// The most replicas any master serving slots had at connect.
        replicas: u32,
    },
}

impl RedisBackend {
    /// Connects by URL (see [`RedisConfig::from_url`] for the URL and its
    /// options). Cancel safe: a dropped connect takes no lock and leaves
    /// nothing behind.
    pub async fn connect(url: &str) -> Result<Self, LockError> {
        Self::connect_with(RedisConfig::from_url(url)?).await
    }

    /// Connects with `config` (eagerly: an unreachable server is
    /// [`LockError::Unavailable`] after the per-call timeout), reads the
    /// server's persistence and eviction settings and logs what breaks a
    /// guarantee. Cancel safe: a dropped connect takes no lock and leaves
    /// nothing behind.
    pub async fn connect_with(config: RedisConfig) -> Result<Self, LockError> {
        let shared = config.shared();
        let timeout = shared.timeout.unwrap_or(DEFAULT_TIMEOUT);
        if timeout.is_zero() || timeout > MAX_DURATION {
            return Err(LockError::Config(
                "redis timeout must be above zero and at most one year".into(),
            ));
        }
        let layout = KeyLayout::new(shared.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE))?;
        if let Some(rule) = config.replicas
            && rule.timeout >= timeout
        {
            return Err(LockError::Config(format!(
                "redis replica_timeout ({:?}) must be below the per-call timeout ({timeout:?})",
                rule.timeout
            )));
        }
        let node = match &config.target {
            Target::Direct(client) => {
                RedisNode::connect(client.clone(), layout.clone(), timeout).await?
            }
            Target::Sentinel(target) => {
                RedisNode::via_sentinels(target.client()?, layout.clone(), timeout, NAME).await?
            }
            Target::Cluster(target) => {
                RedisNode::via_cluster(target, layout.clone(), timeout, NAME).await?
            }
        }
        .with_holder(&shared.holder_or_default())
        .with_replica_rule(config.replicas);
        let topology = match config.target {
            Target::Direct(_) => Topology::Direct,
            Target::Sentinel(_) => Topology::Sentinel {
                replicas: node.connected_replicas().await?,
            },
            Target::Cluster(_) => Topology::Cluster {
                replicas: node.cluster_replicas().await?,
            },
        };
        let persistence = node.persistence().await;
        persistence.log_findings(&node.addr());
        let feed = config.notifications.then(|| match &config.target {
            Target::Cluster(target) => {
                Feed::Sharded(Arc::new(ShardedFeed::new(target.clone(), timeout)))
            }
            _ => Feed::Classic(Arc::new(ReleaseFeed::new(node.release_source()))),
        });
        Ok(RedisBackend {
            leases: Leases::new(node, config.clock.clone(), shared.drift.unwrap_or_default()),
            feed,
            poll: shared.poll,
            persistence,
            topology,
        })
    }

    /// What the backend knew of the topology at connect.
    pub fn topology(&self) -> Topology {
        self.topology
    }

    /// The fencing promise of this topology and replica rule: `Strict` for
    /// one server (while it keeps its data). Under Sentinel a failover
    /// promotes an asynchronous replica, which may lack the latest grants
    /// and counter increments (a lock vanishes, a token repeats), so it is
    /// `BestEffort`, unless `min_replicas` is at least the number of
    /// replicas the master had at connect: then every grant and renewal was
    /// on every replica before it counted, and whichever is promoted has
    /// it (while no replica is added later and none restarts without its
    /// data). A cluster is the same per shard: its masters fail over to
    /// asynchronous replicas, so it is `BestEffort`, unless `min_replicas`
    /// is at least the most replicas any master had at connect (each
    /// grant's and renewal's `WAIT` goes to the key's own master, so every
    /// replica of that shard has it before it counts, and whichever replica
    /// the cluster promotes has it). Not covered: a replica added or
    /// migrated to a shard later (`cluster-allow-replica-migration`) and
    /// promoted before it synced, and a replica restarted without its data.
    pub fn fencing(&self) -> Fencing {
        let replicas = match self.topology {
            Topology::Direct => return Fencing::Strict,
            Topology::Cluster { replicas } | Topology::Sentinel { replicas } => replicas,
        };
        match self.node().replica_rule() {
            Some(rule) if rule.min_replicas >= replicas => Fencing::Strict,
            _ => Fencing::BestEffort,
        }
    }

    /// The server node (scripts, raw calls, the connection).
    pub fn node(&self) -> &RedisNode {
        &self.leases.node
    }

    /// Who holds the locks taken through this backend (the `holder`
    /// option), stored with each lease and shown by `inspect` and `list`.
    pub fn holder(&self) -> &str {
        self.node().holder()
    }

    /// What `CONFIG GET` said about persistence and eviction at connect.
    pub fn persistence(&self) -> &Persistence {
        &self.persistence
    }

    /// The server's `maxmemory-policy` at connect (`None`: `CONFIG GET` was
    /// refused). Only `noeviction` is safe for locks.
    pub fn eviction_policy(&self) -> Option<&str> {
        self.persistence.maxmemory_policy.as_deref()
    }

    /// What was found at connect that breaks a guarantee (each was logged
    /// with `tracing::warn!` then): an eviction policy other than
    /// `noeviction`, or a configuration that could not be read. Empty:
    /// nothing found. The policy can change at run time (`CONFIG SET`):
    /// [`RedisBackend::check_safety`] asks again.
    pub fn safety_findings(&self) -> Vec<SafetyFinding> {
        self.persistence.safety_findings()
    }

    /// Asks the server again (`CONFIG GET`, bounded by the per-call timeout)
    /// and returns what breaks a guarantee now, for health checks. Logs
    /// nothing; the capabilities keep what was found at connect. Read-only;
    /// cancel safe.
    pub async fn check_safety(&self) -> Vec<SafetyFinding> {
        self.node().persistence().await.safety_findings()
    }

    /// Starts the release subscription now and waits until it is up (at most
    /// the per-call timeout). Optional: the first waiter starts it anyway, and
    /// waiters poll until it is up. Cancel safe: dropped, the subscription
    /// goes on being set up in the background.
    pub async fn subscribe_releases(&self) -> Result<(), LockError> {
        let Some(feed) = &self.feed else {
            return Err(LockError::Config(
                "release notifications are off for this backend".into(),
            ));
        };
        let timeout = self.node().timeout();
        let ready = match feed {
            Feed::Classic(feed) => feed.ready(timeout).await,
            Feed::Sharded(feed) => feed.ready(timeout).await,
        };
        if ready {
            Ok(())
        } else {
            Err(LockError::unavailable(
                NAME,
                format!("release channel subscription not up within {timeout:?}"),
            ))
        }
    }

    /// How many times the release subscription has been (re)established
    /// (0: not yet, or notifications are off); on a cluster, how many
    /// `SSUBSCRIBE`s of a key's shard channel (or heartbeats with none)
    /// were answered. For tooling and tests.
    pub fn release_subscriptions(&self) -> u64 {
        match &self.feed {
            None => 0,
            Some(Feed::Classic(feed)) => feed.subscriptions(),
            Some(Feed::Sharded(feed)) => feed.subscriptions(),
        }
    }

    /// How many release messages of a key's shard channel were heard on a
    /// cluster (each wakes that key's waiters); `None` elsewhere (the
    /// namespace's channel is not counted) or with notifications off. For
    /// tooling and tests: it tells a notified wake-up from a poll.
    pub fn shard_notifications(&self) -> Option<u64> {
        match &self.feed {
            Some(Feed::Sharded(feed)) => Some(feed.notifications()),
            _ => None,
        }
    }
}

#[async_trait]
impl LockBackend for RedisBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        let waiting = if self.feed.is_some() {
            Waiting::Notified
        } else {
            Waiting::Polled
        };
        Capabilities::new()
            .fencing(self.fencing())
            .durable_fencing(self.persistence.durable_fencing())
            .waiting(waiting)
            .fairness(Fairness::None)
            .min_ttl(Duration::from_millis(1))
            .ttl_granularity(Duration::from_millis(1))
            .holder_info(true)
            .atomic_multi_key(false)
            .batch_extend(true)
            .rw_locks(true)
            .semaphores(true)
    }

    /// One attempt. Cancel safe without a task of its own: a caller that
    /// stops waiting (a dropped `lock()`, a `select!`, a timeout) leaves no
    /// key held, because the node gives back a grant nobody took
    /// ([`RedisNode::try_acquire_raw`]). An attempt whose answer timed out
    /// sends a compare-and-delete on the same connection, so a frozen server
    /// that runs the queued acquire when it wakes deletes the key right
    /// after.
    async fn try_acquire(&self, key: &Key, ttl: Duration) -> Result<Lease, LockError> {
        self.leases.attempt(key, ttl).await
    }

    /// The core waiting loop, woken by the release feed; `poll` caps its
    /// pauses.
    async fn acquire(
        &self,
        key: &Key,
        ttl: Duration,
        wait: &WaitPolicy,
    ) -> Result<Lease, LockError> {
        wait_for_lock(self, key, ttl, &wait.polling_at(self.poll)).await
    }

    /// The mutex is `try_acquire`; a reader, writer or permit is one script
    /// on the key's hash slot (see the [crate docs](crate)), run to its end
    /// on its own task ([`leasehold_core::cancel_safe`]), so a dropped call
    /// never strands a grant.
    async fn try_acquire_kind(
        &self,
        key: &Key,
        kind: LockKind,
        ttl: Duration,
    ) -> Result<Lease, LockError> {
        self.capabilities().check_kind(self.name(), kind)?;
        match kind {
            LockKind::Exclusive => self.try_acquire(key, ttl).await,
            kind => self.leases.try_shared(key, kind, ttl, None).await,
        }
    }

    /// The core waiting loop ([`wait_for_grant`]) woken by the release feed;
    /// a writer registers as waiting from its first refused attempt (new
    /// readers are refused) until its wait ends, however it ends (a dropped
    /// call withdraws in the background; a registration left behind expires
    /// within `ttl`).
    async fn acquire_kind(
        &self,
        key: &Key,
        kind: LockKind,
        ttl: Duration,
        wait: &WaitPolicy,
    ) -> Result<Lease, LockError> {
        self.capabilities().check_kind(self.name(), kind)?;
        let wait = wait.polling_at(self.poll);
        match kind {
            LockKind::Exclusive => self.acquire(key, ttl, &wait).await,
            LockKind::Write => self.leases.wait_to_write(self, key, ttl, &wait).await,
            kind => {
                wait_for_grant(self, key, &wait, || {
                    self.leases.try_shared(key, kind, ttl, None)
                })
                .await
            }
        }
    }

    /// Cancel safety: a dropped extend may still be applied; that only keeps
    /// our own key longer, and the lease we hold is unchanged.
    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<Lease, LockError> {
        if lease.kind() != LockKind::Exclusive {
            return self.leases.extend_shared(lease, ttl).await;
        }
        self.leases.extend(lease, ttl).await
    }

    /// Renews up to 256 mutex leases per script call (one round trip for a
    /// typical watchdog batch; readers, writers and permits each with their
    /// own call, at the same time); a failed call fails the whole batch.
    /// Cancel safety as [`LockBackend::extend`].
    async fn extend_many(
        &self,
        renewals: &[(Lease, Duration)],
    ) -> Result<Vec<Result<Lease, LockError>>, LockError> {
        self.leases.extend_any(renewals).await
    }

    /// Cancel safety: a dropped release may or may not have deleted the key;
    /// it frees itself at its TTL, and releasing again finishes the job.
    async fn release(&self, lease: &Lease) -> Result<(), LockError> {
        if lease.kind() != LockKind::Exclusive {
            return self.leases.release_shared(lease).await;
        }
        self.leases.release(lease).await
    }

    /// Read-only; cancel safe.
    async fn inspect(&self, key: &Key) -> Result<Option<LockInfo>, LockError> {
        self.node().inspect_raw(key).await
    }

    /// `SCAN` over this namespace's lock keys under the prefix (`COUNT` the
    /// page size, at most [`MAX_SCAN_COUNT`](crate::MAX_SCAN_COUNT)), then
    /// the holders found read in one script call; the cursor is the `SCAN`
    /// cursor (see [`ScanCursor`](crate::ScanCursor)). Read-only; cancel
    /// safe.
    async fn list(&self, query: &ListQuery) -> Result<ListPage, LockError> {
        crate::admin::list(self.node(), query).await
    }

    /// One script: deletes the lock, advances the fencing counter past the
    /// evicted token, publishes the release (waiters wake) and logs `reason`
    /// in the server's log. The evicted holder's next renewal is `Lost`.
    /// Cancel safety: dropped, it may or may not have run.
    async fn force_release(&self, key: &Key, reason: &str) -> Result<Option<LockInfo>, LockError> {
        self.node().force_release_raw(key, reason).await
    }

    /// From the release feed (pub/sub on the namespace's channel; on a
    /// cluster the key's shard channel, subscribed while the key has
    /// waiters); `None` with notifications off.
    fn release_listener(&self, key: &Key) -> Option<ReleaseListener> {
        let lock = self.node().layout().lock_key(key);
        Some(match self.feed.as_ref()? {
            Feed::Classic(feed) => feed.listen(&lock),
            Feed::Sharded(feed) => feed.listen(&self.node().release_channel(key), &lock),
        })
    }
}
