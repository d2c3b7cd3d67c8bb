//! `ZkBackend`: the thin [`LockBackend`] over the queue (`queue.rs`)
//! and the sessions (`store.rs`).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use leasehold_core::config::BackendConfig;
use leasehold_core::{
    Capabilities, Drift, Expiry, Fairness, Fencing, FencingToken, Key, Lease, ListPage, ListQuery,
    LockBackend, LockError, LockInfo, LockKind, OwnerToken, ReleaseListener, WaitPolicy, Waiting,
    extend_each, with_timeout,
};
use tokio::time::Instant;
use zookeeper_client::{Acl, Acls, Client, Error as ZkError, MultiReadResult, Permission};

use crate::NAME;
use crate::config::ZkConfig;
use crate::error::map;
use crate::path::encode_key;
use crate::store::{Session, Sessions};

/// Locks in ZooKeeper, one session per TTL class.
///
/// See the [crate docs](crate) for the recipe and its guarantees.
#[derive(Debug)]
pub struct ZkBackend {
    pub(crate) sessions: Sessions,
    config: ZkConfig,
    /// The checked namespace path.
    pub(crate) namespace: String,
    /// The bound on each store call.
    pub(crate) timeout: Duration,
    /// The re-check interval of queued waiters.
    pub(crate) poll: Duration,
    pub(crate) drift: Drift,
    /// The holder label, the data of every contender node this backend makes.
    pub(crate) holder: String,
    pub(crate) wakes: WakeCounters,
}

/// How often queued waiters woke up, and why.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WakeCounts {
    /// Woken by the watch on their predecessor (deletion or session event).
    pub watch: u64,
    /// Woken by the re-check timer (no event within `recheck_interval`).
    pub poll: u64,
}

#[derive(Debug, Default)]
pub(crate) struct WakeCounters {
    pub(crate) watch: AtomicU64,
    pub(crate) poll: AtomicU64,
}

/// What a ZooKeeper lease carries: its session and its node.
#[derive(Debug)]
pub(crate) struct Held {
    pub(crate) session: Arc<Session>,
    pub(crate) path: String,
}

impl ZkBackend {
    /// Connects by URL: `zk://h1:p1,h2:p2/namespace?session_timeout=10s&timeout=5s`
    /// (see [`ZkConfig::from_url`](BackendConfig::from_url)).
    pub async fn connect(url: &str) -> Result<Self, LockError> {
        Self::connect_with(ZkConfig::from_url(url)?).await
    }

    /// Connects with `config`: probes the server's minimum session timeout
    /// and opens the session of `config.session_timeout`; the sessions of
    /// other TTL classes open on first use. A session that ends later is
    /// replaced by a new one on the next call.
    pub async fn connect_with(config: ZkConfig) -> Result<Self, LockError> {
        let namespace = config.namespace_path()?;
        let sessions = Sessions::connect(config.clone()).await?;
        Ok(Self::with_sessions(sessions, config, namespace))
    }

    fn with_sessions(sessions: Sessions, config: ZkConfig, namespace: String) -> Self {
        ZkBackend {
            sessions,
            namespace,
            timeout: config.timeout_value(),
            poll: config.poll_value(),
            drift: config.drift_value(),
            holder: config.shared.holder_or_default(),
            config,
            wakes: WakeCounters::default(),
        }
    }

    /// The ACL of every node this backend creates: with digest credentials,
    /// "the creating identity may do anything, the world may read"
    /// (ZooKeeper's `CREATOR_ALL_ACL` plus `READ_ACL_UNSAFE`), so that no
    /// other identity can delete a holder's node (ZooKeeper checks a delete
    /// against the parent's ACL: the key node's) or queue under the key;
    /// without credentials, open to all (`OPEN_ACL_UNSAFE`).
    pub(crate) fn acls(&self) -> Acls<'static> {
        /// `auth:` (the creating session's identities): all; `world:anyone`:
        /// read.
        static CREATOR_ALL_WORLD_READ: [Acl; 2] = [
            Acl::new_const(Permission::ALL, "auth", ""),
            Acl::new_const(Permission::READ, "world", "anyone"),
        ];
        if self.config.digest.is_some() {
            Acls::new(&CREATOR_ALL_WORLD_READ)
        } else {
            Acls::anyone_all()
        }
    }

    /// The configuration this backend was made from.
    pub fn config(&self) -> &ZkConfig {
        &self.config
    }

    /// Uses a caller's connected client (its session, its chroot). Only the
    /// shared settings of `config` apply. That one session serves every TTL: a crashed
    /// holder's keys free after its session timeout, whatever their TTL
    /// (which is also the only TTL the capabilities offer). When that session
    /// ends, the backend cannot open a new one: calls fail with `Unavailable`
    /// and the caller builds a new backend. Call it inside a tokio runtime (it
    /// starts the session-state reporter).
    pub fn from_client(client: Client, config: ZkConfig) -> Result<Self, LockError> {
        let namespace = config.namespace_path()?;
        Ok(Self::with_sessions(
            Sessions::fixed(client),
            config,
            namespace,
        ))
    }

    /// How queued waiters of this backend woke up so far.
    pub fn wake_counts(&self) -> WakeCounts {
        WakeCounts {
            watch: self.wakes.watch.load(Ordering::Relaxed),
            poll: self.wakes.poll.load(Ordering::Relaxed),
        }
    }

    /// The session timeout the server granted to the session of
    /// [`ZkConfig::session_timeout`] (the session of calls that hold no
    /// lock; leases live in the session of their TTL class).
    pub async fn session_timeout(&self) -> Result<Duration, LockError> {
        Ok(self.sessions.default_session().await?.timeout)
    }

    /// The session timeout leases taken with `ttl` get: how long after a
    /// crash their keys stay taken (the TTL rounded up to whole seconds,
    /// within the server's bounds; see the crate docs).
    pub fn session_class(&self, ttl: Duration) -> Duration {
        self.sessions.class(ttl)
    }

    /// The client of the session of calls that hold no lock (for raw calls
    /// next to the locks, and for measurements).
    pub async fn client(&self) -> Result<Client, LockError> {
        Ok(self.sessions.default_session().await?.client.clone())
    }

    /// The path of `key`'s node.
    pub fn key_path(&self, key: &Key) -> String {
        format!("{}/{}", self.namespace, encode_key(key))
    }

    /// Runs one store call under the operation timeout. The outer error is
    /// the timeout; the inner result is ZooKeeper's answer, to match on.
    pub(crate) async fn call<T>(
        &self,
        call: impl Future<Output = Result<T, ZkError>>,
    ) -> Result<Result<T, ZkError>, LockError> {
        with_timeout(NAME, self.timeout, async { Ok(call.await) }).await
    }

    /// Checks `ttl` (zero, or more than one year, is `InvalidTtl`).
    pub(crate) fn valid_ttl(&self, ttl: Duration) -> Result<(), LockError> {
        Capabilities::new()
            .min_ttl(Duration::from_nanos(1))
            .check_ttl(NAME, ttl)
    }

    /// The validity a lease gets for `ttl`: the TTL, raised to the server's
    /// minimum session timeout (a shorter one could not be honoured after a
    /// crash, so it is raised as etcd raises its TTLs, and the lease reports
    /// it), and never longer than its session's timeout, because the server
    /// may expire a silent session (and hand the lock to the next in line)
    /// that long after it last heard from us.
    pub(crate) fn check_ttl(
        &self,
        ttl: Duration,
        session: &Session,
    ) -> Result<Duration, LockError> {
        self.valid_ttl(ttl)?;
        Ok(ttl.max(self.sessions.min_ttl()).min(session.timeout))
    }

    pub(crate) fn lease(
        &self,
        key: &Key,
        owner: OwnerToken,
        (path, czxid): (String, i64),
        sent_at: Instant,
        validity: Duration,
        session: &Arc<Session>,
    ) -> Lease {
        Lease::new(
            NAME,
            key.clone(),
            owner,
            FencingToken(czxid as u64),
            sent_at,
            validity,
            self.drift,
        )
        .with_handle(Arc::new(Held {
            session: session.clone(),
            path,
        }))
        .with_loss_signal(session.ended.child_token())
    }

    /// Checks that `lease`'s node is still ours; the error says why not.
    fn held<'a>(&self, lease: &'a Lease) -> Result<&'a Held, LockError> {
        lease.handle::<Held>().ok_or_else(|| {
            LockError::lost(
                NAME,
                lease.key().as_str(),
                "the lease was not made by the zookeeper backend",
            )
        })
    }

    fn judge_stat(
        &self,
        lease: &Lease,
        held: &Held,
        stat: Option<zookeeper_client::Stat>,
        sent_at: Instant,
        validity: Duration,
    ) -> Result<Lease, LockError> {
        match stat {
            Some(stat) if stat.ephemeral_owner == held.session.id => {
                Ok(lease.renewed(sent_at, validity, self.drift))
            }
            _ => Err(LockError::lost(
                NAME,
                lease.key().as_str(),
                "our lock node is gone (released, or its session ended)",
            )),
        }
    }
}

#[async_trait]
impl LockBackend for ZkBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            .fencing(Fencing::Strict)
            .durable_fencing(true)
            .expiry(Expiry::Session)
            .waiting(Waiting::Notified)
            .fairness(Fairness::Fifo)
            .min_ttl(self.sessions.min_ttl())
            .ttl_granularity(Duration::from_secs(1))
            .holder_info(true)
            .batch_extend(true)
            .rw_locks(true)
            .semaphores(true)
    }

    /// Queues, and withdraws unless at the head (see `queue.rs`).
    /// Cancel safe.
    async fn try_acquire(&self, key: &Key, ttl: Duration) -> Result<Lease, LockError> {
        self.try_lock(key, ttl).await
    }

    /// Its own queue: waits on a watch of the predecessor (see
    /// `queue.rs`). Cancel safe.
    async fn acquire(
        &self,
        key: &Key,
        ttl: Duration,
        wait: &WaitPolicy,
    ) -> Result<Lease, LockError> {
        self.lock(key, LockKind::Exclusive, ttl, wait).await
    }

    /// The mutex is `try_acquire`; readers, writers and permits queue a
    /// node under the lock's own parent and withdraw it unless their rank
    /// lets them hold (see `shared.rs`). Cancel safe.
    async fn try_acquire_kind(
        &self,
        key: &Key,
        kind: LockKind,
        ttl: Duration,
    ) -> Result<Lease, LockError> {
        self.capabilities().check_kind(self.name(), kind)?;
        match kind {
            LockKind::Exclusive => self.try_acquire(key, ttl).await,
            kind => self.try_share(key, kind, ttl).await,
        }
    }

    /// Waits for its rank on a watch of the lock's nodes (see `shared.rs`);
    /// a waiting writer's node keeps later readers out. Cancel safe.
    async fn acquire_kind(
        &self,
        key: &Key,
        kind: LockKind,
        ttl: Duration,
        wait: &WaitPolicy,
    ) -> Result<Lease, LockError> {
        self.capabilities().check_kind(self.name(), kind)?;
        self.lock(key, kind, ttl, wait).await
    }

    /// Checks that the lease's node is still ours. Writes nothing: cancel safe.
    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<Lease, LockError> {
        let held = self.held(lease)?;
        if held.session.is_ended() {
            return Err(LockError::lost(
                NAME,
                lease.key().as_str(),
                "its zookeeper session ended",
            ));
        }
        let validity = self.check_ttl(ttl, &held.session)?;
        let sent_at = Instant::now();
        match self
            .call(held.session.client.check_stat(&held.path))
            .await?
        {
            Ok(stat) => self.judge_stat(lease, held, stat, sent_at, validity),
            Err(ZkError::SessionExpired | ZkError::ClientClosed) => Err(LockError::lost(
                NAME,
                lease.key().as_str(),
                "its zookeeper session ended",
            )),
            Err(error) => Err(map(error)),
        }
    }

    /// Renews the leases of one session with one multi-read round trip.
    /// Writes nothing: cancel safe.
    async fn extend_many(
        &self,
        renewals: &[(Lease, Duration)],
    ) -> Result<Vec<Result<Lease, LockError>>, LockError> {
        let Some(first) = renewals
            .first()
            .and_then(|(lease, _)| lease.handle::<Held>())
        else {
            return extend_each(self, renewals).await;
        };
        let session = first.session.clone();
        let same_session = renewals.iter().all(|(lease, _)| {
            lease
                .handle::<Held>()
                .is_some_and(|held| Arc::ptr_eq(&held.session, &session))
        });
        if renewals.len() == 1 || !same_session || session.is_ended() {
            return extend_each(self, renewals).await;
        }
        let mut reader = session.client.new_multi_reader();
        for (lease, _) in renewals {
            if let Ok(held) = self.held(lease)
                && let Err(error) = reader.add_get_data(&held.path)
            {
                return Err(map(error));
            }
        }
        let sent_at = Instant::now();
        let answers = match self.call(reader.commit()).await {
            Ok(Ok(answers)) if answers.len() == renewals.len() => answers,
            Ok(Ok(_)) => {
                return Err(LockError::backend(
                    NAME,
                    "multi-read answered a different number of reads",
                ));
            }
            Ok(Err(error)) => return Err(map(error)),
            Err(timeout) => return Err(timeout),
        };
        Ok(renewals
            .iter()
            .zip(answers)
            .map(|((lease, ttl), answer)| {
                let held = self.held(lease)?;
                let validity = self.check_ttl(*ttl, &held.session)?;
                let stat = match answer {
                    MultiReadResult::Data { stat, .. } => Some(stat),
                    MultiReadResult::Error {
                        err: ZkError::NoNode,
                    } => None,
                    MultiReadResult::Error { err } => return Err(map(err)),
                    _ => {
                        return Err(LockError::backend(
                            NAME,
                            "multi-read answered an unexpected kind",
                        ));
                    }
                };
                self.judge_stat(lease, held, stat, sent_at, validity)
            })
            .collect())
    }

    /// Deletes our node and waits for ZooKeeper's answer: when this returns
    /// `Ok`, the next waiter's watch has fired. Cancel safe: dropped, the node
    /// stays with the lease, which can be released again.
    async fn release(&self, lease: &Lease) -> Result<(), LockError> {
        let held = self.held(lease)?;
        if held.session.is_ended() {
            return Err(LockError::not_held(NAME, lease.key().as_str()));
        }
        self.delete_node(lease, held).await
    }

    /// Lists the queue and stats its head. Writes nothing: cancel safe.
    async fn inspect(&self, key: &Key) -> Result<Option<LockInfo>, LockError> {
        let session = self.sessions.default_session().await?;
        let key_path = self.key_path(key);
        // The head may go between the listing and the stat: look again.
        for _ in 0..3 {
            let queue = self.contenders(&session.client, &key_path).await?;
            if queue.is_empty() {
                return Ok(None);
            }
            if let Some(info) = self.holder_info(&session.client, &key_path, &queue).await {
                return Ok(Some(info));
            }
        }
        Err(LockError::unavailable(
            NAME,
            "the holder changed on every look",
        ))
    }

    /// One listing of the namespace's key nodes, then two multi-reads: the
    /// queues of the page's keys, and their heads (see `admin.rs`). Writes
    /// nothing: cancel safe.
    async fn list(&self, query: &ListQuery) -> Result<ListPage, LockError> {
        self.list_page(query).await
    }

    /// A version-checked delete of the head node (see `admin.rs`): the next
    /// contender's watch fires and it holds the lock with a higher czxid.
    /// One delete: cancel safe.
    async fn force_release(&self, key: &Key, _reason: &str) -> Result<Option<LockInfo>, LockError> {
        self.evict(key).await
    }

    /// None: waiters watch their predecessor's node themselves.
    fn release_listener(&self, _key: &Key) -> Option<ReleaseListener> {
        None
    }
}

impl Drop for ZkBackend {
    fn drop(&mut self) {
        self.sessions.shutdown.cancel();
    }
}
