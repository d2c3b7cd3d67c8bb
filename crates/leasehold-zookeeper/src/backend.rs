//! The lock recipe: a FIFO queue of ephemeral sequential nodes per key.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use leasehold_core::{
    Capabilities, Expiry, Fairness, Fencing, FencingToken, Key, Lease, LockBackend, LockError,
    LockInfo, OwnerToken, RetryPolicy, Waiting, with_timeout,
};
use tokio::time::Instant;
use zookeeper_client::{Acls, Client, CreateMode, Error as ZkError, MultiReadResult};

use crate::NAME;
use crate::options::ZkOptions;
use crate::path::{Contender, contender_prefix, encode_key, queue};
use crate::session::{Session, Sessions};

/// Locks in ZooKeeper, one session per TTL class.
///
/// See the [crate docs](crate) for the recipe and its guarantees.
#[derive(Debug)]
pub struct ZkBackend {
    sessions: Sessions,
    options: ZkOptions,
    wakes: WakeCounters,
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
struct WakeCounters {
    watch: AtomicU64,
    poll: AtomicU64,
}

/// What a ZooKeeper lease carries: its session and its node.
#[derive(Debug)]
pub(crate) struct Held {
    pub(crate) session: Arc<Session>,
    pub(crate) path: String,
}

/// Our contender node, and the queue as listed right after its create when
/// that list came with it.
struct Enqueued {
    name: String,
    czxid: i64,
    queue: Option<Vec<Contender>>,
}

impl ZkBackend {
    /// Connects with `options`: probes the server's minimum session timeout
    /// and opens the session of `options.session_timeout`; the sessions of
    /// other TTL classes open on first use. A session that ends later is
    /// replaced by a new one on the next call.
    pub async fn connect(options: ZkOptions) -> Result<Self, LockError> {
        Ok(ZkBackend {
            sessions: Sessions::connect(options.clone()).await?,
            options,
            wakes: WakeCounters::default(),
        })
    }

    /// Connects by URL: `zk://h1:p1,h2:p2/namespace?session_timeout=10s&timeout=5s`.
    pub async fn connect_url(url: &str) -> Result<Self, LockError> {
        Self::connect(ZkOptions::from_url(url)?).await
    }

    /// Uses a caller's connected client (its session, its chroot). Only
    /// `namespace`, `operation_timeout`, `recheck_interval` and `drift` of
    /// `options` apply. That one session serves every TTL: a crashed
    /// holder's keys free after its session timeout, whatever their TTL
    /// (which is also the only TTL the capabilities offer). When that session
    /// ends, the backend cannot open a new one: calls fail with `Unavailable`
    /// and the caller builds a new backend. Call it inside a tokio runtime (it
    /// starts the session-state reporter).
    pub fn from_client(client: Client, options: ZkOptions) -> Self {
        ZkBackend {
            sessions: Sessions::fixed(client),
            options,
            wakes: WakeCounters::default(),
        }
    }

    /// How queued waiters of this backend woke up so far.
    pub fn wake_counts(&self) -> WakeCounts {
        WakeCounts {
            watch: self.wakes.watch.load(Ordering::Relaxed),
            poll: self.wakes.poll.load(Ordering::Relaxed),
        }
    }

    /// The session timeout the server granted to the session of
    /// [`ZkOptions::session_timeout`] (the session of calls that hold no
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
        format!("{}/{}", self.options.namespace, encode_key(key))
    }

    /// Runs one store call under the operation timeout. The outer error is
    /// the timeout; the inner result is ZooKeeper's answer, to match on.
    async fn call<T>(
        &self,
        call: impl Future<Output = Result<T, ZkError>>,
    ) -> Result<Result<T, ZkError>, LockError> {
        with_timeout(NAME, self.options.operation_timeout, async {
            Ok(call.await)
        })
        .await
    }

    /// Checks `ttl` (zero, or more than one year, is `InvalidTtl`).
    fn valid_ttl(&self, ttl: Duration) -> Result<(), LockError> {
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
    fn check_ttl(&self, ttl: Duration, session: &Session) -> Result<Duration, LockError> {
        self.valid_ttl(ttl)?;
        Ok(ttl.max(self.sessions.min_ttl()).min(session.timeout))
    }

    fn lease(
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
            self.options.drift,
        )
        .with_handle(Arc::new(Held {
            session: session.clone(),
            path,
        }))
        .with_loss_signal(session.ended.child_token())
    }

    /// Creates `owner`'s contender node for `key`, making the key's node (a
    /// container, which the server removes once it is empty again) and the
    /// namespace on demand. A create whose reply was lost is found again by
    /// the owner token in its name. Returns the node's name and czxid.
    async fn enqueue(
        &self,
        session: &Session,
        key: &Key,
        owner: &OwnerToken,
        cleanup: &mut Cleanup,
    ) -> Result<Enqueued, LockError> {
        let client = &session.client;
        let key_path = self.key_path(key);
        let prefix = format!("{key_path}/{}", contender_prefix(owner));
        let options = CreateMode::EphemeralSequential.with_acls(Acls::anyone_all());
        for _ in 0..5 {
            let created = client.create(&prefix, &[], &options);
            // The client orders requests when they are made, not when polled,
            // and the server answers a session's requests in order: this list
            // already shows our node, and the uncontended case costs one
            // round trip instead of two.
            let listed = client.list_children(&key_path);
            match self.call(created).await? {
                Ok((stat, sequence)) => {
                    let name = format!("{}{sequence}", contender_prefix(owner));
                    cleanup.known(format!("{key_path}/{name}"));
                    let queue = match self.call(listed).await {
                        Ok(Ok(children)) => Some(queue(&children)),
                        _ => None,
                    };
                    return Ok(Enqueued {
                        name,
                        czxid: stat.czxid,
                        queue,
                    });
                }
                Err(ZkError::NoNode) => self.make_key_node(client, &key_path).await?,
                Err(ZkError::ConnectionLoss) => {
                    // The create may have been applied: look for our token.
                    if let Some((name, czxid)) = self.find_own(client, &key_path, owner).await? {
                        cleanup.known(format!("{key_path}/{name}"));
                        return Ok(Enqueued {
                            name,
                            czxid,
                            queue: None,
                        });
                    }
                }
                Err(error) => return Err(zk_error(error)),
            }
        }
        Err(LockError::unavailable(
            NAME,
            format!("could not create a contender node under {key_path} in 5 attempts"),
        ))
    }

    async fn make_key_node(&self, client: &Client, key_path: &str) -> Result<(), LockError> {
        let container = CreateMode::Container.with_acls(Acls::anyone_all());
        match self.call(client.create(key_path, &[], &container)).await? {
            Ok(_) | Err(ZkError::NodeExists) => Ok(()),
            Err(ZkError::NoNode) => {
                let persistent = CreateMode::Persistent.with_acls(Acls::anyone_all());
                self.call(client.mkdir(&self.options.namespace, &persistent))
                    .await?
                    .map_err(zk_error)?;
                match self.call(client.create(key_path, &[], &container)).await? {
                    Ok(_) | Err(ZkError::NodeExists) => Ok(()),
                    Err(error) => Err(zk_error(error)),
                }
            }
            Err(error) => Err(zk_error(error)),
        }
    }

    async fn find_own(
        &self,
        client: &Client,
        key_path: &str,
        owner: &OwnerToken,
    ) -> Result<Option<(String, i64)>, LockError> {
        // sync first so the server we read from has applied our create, if
        // it was applied anywhere.
        let _ = self.call(client.sync(key_path)).await?;
        let Some(own) = self
            .contenders(client, key_path)
            .await?
            .into_iter()
            .find(|c| c.is_owned_by(owner))
        else {
            return Ok(None);
        };
        let stat = self
            .call(client.check_stat(&format!("{key_path}/{}", own.name)))
            .await?
            .map_err(zk_error)?;
        Ok(stat.map(|stat| (own.name, stat.czxid)))
    }

    /// The key's contenders in queue order (empty if the key's node is gone).
    async fn contenders(
        &self,
        client: &Client,
        key_path: &str,
    ) -> Result<Vec<Contender>, LockError> {
        match self.call(client.list_children(key_path)).await? {
            Ok(children) => Ok(queue(&children)),
            Err(ZkError::NoNode) => Ok(Vec::new()),
            Err(error) => Err(zk_error(error)),
        }
    }

    async fn holder_info(
        &self,
        client: &Client,
        key_path: &str,
        head: &Contender,
    ) -> Option<LockInfo> {
        let stat = self
            .call(client.check_stat(&format!("{key_path}/{}", head.name)))
            .await
            .ok()?
            .ok()??;
        let mut info = LockInfo::new(Some(FencingToken(stat.czxid as u64)), None);
        info.owner_hint = Some(head.owner_hint());
        Some(info)
    }

    /// Deletes our node and waits for the answer (gone already is fine).
    async fn withdraw(
        &self,
        client: &Client,
        path: &str,
        cleanup: &mut Cleanup,
    ) -> Result<(), LockError> {
        match self.call(client.delete(path, None)).await? {
            Ok(()) | Err(ZkError::NoNode) => {
                cleanup.disarm();
                Ok(())
            }
            Err(error) => Err(zk_error(error)),
        }
    }

    /// One queued attempt in one session: returns `Ok(None)` when our node
    /// vanished (session ended) and the caller should queue again.
    async fn wait_in_queue(
        &self,
        session: &Arc<Session>,
        key: &Key,
        validity: Duration,
        deadline: Instant,
        wait: &RetryPolicy,
    ) -> Result<Option<Lease>, LockError> {
        let client = &session.client;
        let key_path = self.key_path(key);
        let owner = OwnerToken::generate();
        let mut cleanup = Cleanup::new(
            session,
            key_path.clone(),
            owner,
            self.options.operation_timeout,
        );
        let mut sent_at = Instant::now();
        let Enqueued {
            name,
            czxid,
            mut queue,
        } = self.enqueue(session, key, &owner, &mut cleanup).await?;
        let path = format!("{key_path}/{name}");
        let mut delays = wait.schedule();
        loop {
            let listed = match queue.take() {
                Some(queue) => Ok(queue),
                None => {
                    sent_at = Instant::now();
                    self.contenders(client, &key_path).await
                }
            };
            let queue = match listed {
                Ok(queue) => queue,
                Err(error) if error.is_retryable() && !session.is_ended() => {
                    let delay = delays.next().unwrap_or(wait.max_delay);
                    if later(Instant::now(), delay) >= deadline {
                        return Err(error);
                    }
                    tokio::time::sleep(delay).await;
                    continue;
                }
                Err(error) if session.is_ended() => {
                    tracing::debug!(%error, key = %key, "session ended while queued; queueing again");
                    cleanup.disarm();
                    return Ok(None);
                }
                Err(error) => return Err(error),
            };
            let Some(at) = queue.iter().position(|c| c.name == name) else {
                tracing::debug!(key = %key, owner = %owner, "our contender node vanished; queueing again");
                cleanup.disarm();
                return Ok(None);
            };
            if at == 0 {
                cleanup.disarm();
                return Ok(Some(self.lease(
                    key,
                    owner,
                    (path, czxid),
                    sent_at,
                    validity,
                    session,
                )));
            }
            let now = Instant::now();
            if now >= deadline {
                self.withdraw(client, &path, &mut cleanup).await?;
                return Err(LockError::Timeout {
                    backend: NAME,
                    key: key.as_str().to_owned(),
                    waited: Duration::ZERO,
                });
            }
            let predecessor = format!("{key_path}/{}", queue[at - 1].name);
            let watcher = match self.call(client.get_and_watch_data(&predecessor)).await {
                Ok(Ok((_, _, watcher))) => watcher,
                Ok(Err(ZkError::NoNode)) => continue,
                Ok(Err(error)) => {
                    let error = zk_error(error);
                    if !error.is_retryable() {
                        return Err(error);
                    }
                    tokio::time::sleep(delays.next().unwrap_or(wait.max_delay).min(deadline - now))
                        .await;
                    continue;
                }
                Err(timeout) => {
                    if Instant::now() >= deadline {
                        return Err(timeout);
                    }
                    continue;
                }
            };
            let recheck = self.options.recheck_interval.min(deadline - now);
            tokio::select! {
                _ = watcher.changed() => { self.wakes.watch.fetch_add(1, Ordering::Relaxed); }
                () = tokio::time::sleep(recheck) => { self.wakes.poll.fetch_add(1, Ordering::Relaxed); }
            }
        }
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
                Ok(lease.renewed(sent_at, validity, self.options.drift))
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
    }

    /// Queues, and withdraws unless at the head. Cancel safe: dropped before
    /// it returns, its node is removed from a background task.
    async fn try_acquire(&self, key: &Key, ttl: Duration) -> Result<Lease, LockError> {
        self.valid_ttl(ttl)?;
        let session = self.sessions.for_ttl(ttl).await?;
        let validity = self.check_ttl(ttl, &session)?;
        let client = &session.client;
        let key_path = self.key_path(key);
        let owner = OwnerToken::generate();
        let mut cleanup = Cleanup::new(
            &session,
            key_path.clone(),
            owner,
            self.options.operation_timeout,
        );
        let sent_at = Instant::now();
        let Enqueued { name, czxid, queue } =
            self.enqueue(&session, key, &owner, &mut cleanup).await?;
        let path = format!("{key_path}/{name}");
        let queue = match queue {
            Some(queue) => queue,
            None => self.contenders(client, &key_path).await?,
        };
        match queue.first() {
            Some(head) if head.name == name => {
                cleanup.disarm();
                Ok(self.lease(key, owner, (path, czxid), sent_at, validity, &session))
            }
            head => {
                self.withdraw(client, &path, &mut cleanup).await?;
                let holder = match head {
                    Some(head) => self.holder_info(client, &key_path, head).await,
                    None => None,
                };
                Err(LockError::contended(NAME, key.as_str(), holder))
            }
        }
    }

    /// Queues behind the current holder and waits for the watch on the
    /// predecessor; FIFO; one attempt always happens, even with a zero wait.
    /// A waiter that times out removes its node; cancel safe: one whose
    /// future is dropped has it removed from a background task.
    async fn acquire(
        &self,
        key: &Key,
        ttl: Duration,
        wait: &RetryPolicy,
    ) -> Result<Lease, LockError> {
        self.valid_ttl(ttl)?;
        let started = Instant::now();
        let deadline = later(started, wait.deadline);
        let mut delays = wait.schedule();
        loop {
            let attempt = async {
                let session = self.sessions.for_ttl(ttl).await?;
                let validity = self.check_ttl(ttl, &session)?;
                self.wait_in_queue(&session, key, validity, deadline, wait)
                    .await
            };
            let error = match attempt.await {
                Ok(Some(lease)) => return Ok(lease),
                Ok(None) => continue,
                Err(LockError::Timeout { backend, key, .. }) => {
                    return Err(LockError::Timeout {
                        backend,
                        key,
                        waited: started.elapsed(),
                    });
                }
                Err(error) if error.is_retryable() => error,
                Err(error) => return Err(error),
            };
            let now = Instant::now();
            if now >= deadline {
                return Err(error);
            }
            tokio::time::sleep(delays.next().unwrap_or(wait.max_delay).min(deadline - now)).await;
        }
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
            Err(error) => Err(zk_error(error)),
        }
    }

    /// Renews the leases of one session with one multi-read round trip.
    /// Writes nothing: cancel safe.
    async fn extend_many(&self, renewals: &[(Lease, Duration)]) -> Vec<Result<Lease, LockError>> {
        let Some(first) = renewals
            .first()
            .and_then(|(lease, _)| lease.handle::<Held>())
        else {
            return Vec::new();
        };
        let session = first.session.clone();
        let same_session = renewals.iter().all(|(lease, _)| {
            lease
                .handle::<Held>()
                .is_some_and(|held| Arc::ptr_eq(&held.session, &session))
        });
        if renewals.len() == 1 || !same_session || session.is_ended() {
            let mut results = Vec::with_capacity(renewals.len());
            for (lease, ttl) in renewals {
                results.push(self.extend(lease, *ttl).await);
            }
            return results;
        }
        let mut reader = session.client.new_multi_reader();
        for (lease, _) in renewals {
            if let Ok(held) = self.held(lease)
                && let Err(error) = reader.add_get_data(&held.path)
            {
                return renewals
                    .iter()
                    .map(|_| Err(zk_error(error.clone())))
                    .collect();
            }
        }
        let sent_at = Instant::now();
        let answers = match self.call(reader.commit()).await {
            Ok(Ok(answers)) if answers.len() == renewals.len() => answers,
            Ok(Ok(_)) => {
                let error =
                    || LockError::backend(NAME, "multi-read answered a different number of reads");
                return renewals.iter().map(|_| Err(error())).collect();
            }
            Ok(Err(error)) => {
                return renewals
                    .iter()
                    .map(|_| Err(zk_error(error.clone())))
                    .collect();
            }
            Err(_) => {
                let timeout = self.options.operation_timeout;
                return renewals
                    .iter()
                    .map(|_| {
                        Err(LockError::unavailable(
                            NAME,
                            format!("no answer within {timeout:?}"),
                        ))
                    })
                    .collect();
            }
        };
        renewals
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
                    MultiReadResult::Error { err } => return Err(zk_error(err)),
                    _ => {
                        return Err(LockError::backend(
                            NAME,
                            "multi-read answered an unexpected kind",
                        ));
                    }
                };
                self.judge_stat(lease, held, stat, sent_at, validity)
            })
            .collect()
    }

    /// Deletes our node and waits for ZooKeeper's answer: when this returns
    /// `Ok`, the next waiter's watch has fired. Cancel safe: dropped, the node
    /// stays with the lease, which can be released again.
    async fn release(&self, lease: &Lease) -> Result<(), LockError> {
        let held = self.held(lease)?;
        if held.session.is_ended() {
            return Err(LockError::not_held(NAME, lease.key().as_str()));
        }
        // A delete whose answer was lost may or may not have been applied:
        // ask again (deleting by path is idempotent for us) until the
        // operation timeout, and if that runs out, keep deleting in the
        // background so the lock does not stay taken for the session's life.
        let client = &held.session.client;
        let deadline = later(Instant::now(), self.options.operation_timeout);
        let mut retried = false;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let answer = tokio::time::timeout(left, client.delete(&held.path, None)).await;
            let error = match answer {
                Ok(Ok(())) => return Ok(()),
                // Gone after a retry: our earlier delete was applied.
                Ok(Err(ZkError::NoNode)) if retried => return Ok(()),
                Ok(Err(ZkError::NoNode | ZkError::SessionExpired | ZkError::ClientClosed)) => {
                    return Err(LockError::not_held(NAME, lease.key().as_str()));
                }
                Ok(Err(error)) => zk_error(error),
                Err(_) => LockError::unavailable(
                    NAME,
                    "no answer to the delete within the operation timeout",
                ),
            };
            if !error.is_retryable() || later(Instant::now(), Duration::from_millis(50)) >= deadline
            {
                let mut cleanup = Cleanup::new(
                    &held.session,
                    key_path_of(&held.path).to_owned(),
                    *lease.owner(),
                    self.options.operation_timeout,
                );
                cleanup.known(held.path.clone());
                drop(cleanup); // armed: deletes in the background
                return Err(error);
            }
            retried = true;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Lists the queue and stats its head. Writes nothing: cancel safe.
    async fn inspect(&self, key: &Key) -> Result<Option<LockInfo>, LockError> {
        let session = self.sessions.default_session().await?;
        let key_path = self.key_path(key);
        // The head may go between the listing and the stat: look again.
        for _ in 0..3 {
            let queue = self.contenders(&session.client, &key_path).await?;
            let Some(head) = queue.first() else {
                return Ok(None);
            };
            if let Some(info) = self.holder_info(&session.client, &key_path, head).await {
                return Ok(Some(info));
            }
        }
        Err(LockError::unavailable(
            NAME,
            "the holder changed on every look",
        ))
    }
}

impl Drop for ZkBackend {
    fn drop(&mut self) {
        self.sessions.shutdown.cancel();
    }
}

/// Maps a ZooKeeper error: connection trouble is `Unavailable` (the client's
/// own connection-level failures come as `Custom` errors, e.g. "no response
/// from connection"), throttling is a retryable backend error, the rest is
/// final.
fn zk_error(error: ZkError) -> LockError {
    match error {
        ZkError::ConnectionLoss | ZkError::Timeout | ZkError::NoHosts | ZkError::SessionMoved => {
            LockError::unavailable(NAME, error)
        }
        ZkError::SessionExpired | ZkError::ClientClosed | ZkError::Custom(_) => {
            LockError::unavailable(NAME, error)
        }
        ZkError::Throttled => LockError::Backend {
            backend: NAME,
            retryable: true,
            source: Box::new(error),
        },
        other => LockError::backend(NAME, other),
    }
}

/// The key node's path of a contender node's path.
fn key_path_of(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(parent, _)| parent)
}

/// Removes the contender nodes an acquisition abandoned (the future was
/// dropped, an error cut it short, a release got no answer). Drop never
/// blocks: it spawns the removal, which lists the key's children and deletes
/// every one carrying the owner token (the node whose create was in flight,
/// and a duplicate a retried create may have made, ZOOKEEPER-22), and
/// retries with backoff (50 ms doubling to 5 s) until that succeeds or the
/// session ends, when the server removes the nodes itself. Each store call is
/// bounded by the operation timeout. It once gave up at the first error or
/// after 30 s, leaving an orphaned contender that blocked the key for the
/// session's life.
struct Cleanup {
    session: Arc<Session>,
    key_path: String,
    owner: OwnerToken,
    path: Option<String>,
    timeout: Duration,
    armed: bool,
}

impl Cleanup {
    fn new(session: &Arc<Session>, key_path: String, owner: OwnerToken, timeout: Duration) -> Self {
        Cleanup {
            session: session.clone(),
            key_path,
            owner,
            path: None,
            timeout,
            armed: true,
        }
    }

    fn known(&mut self, path: String) {
        self.path = Some(path);
    }

    fn disarm(&mut self) {
        self.armed = false;
    }
}

/// Deletes every child of `key_path` carrying `owner`'s token (only `known`
/// when the key path is not known): `Ok` with the count removed once none is
/// left.
async fn sweep(
    client: &Client,
    key_path: &str,
    owner: &OwnerToken,
    known: Option<&str>,
    timeout: Duration,
) -> Result<usize, LockError> {
    let mut paths: Vec<String> = Vec::new();
    if key_path.is_empty() {
        paths.extend(known.map(str::to_owned));
    } else {
        let listed = with_timeout(NAME, timeout, async {
            Ok(client.list_children(key_path).await)
        })
        .await?;
        match listed {
            Ok(children) => paths.extend(
                queue(&children)
                    .into_iter()
                    .filter(|c| c.is_owned_by(owner))
                    .map(|c| format!("{key_path}/{}", c.name)),
            ),
            Err(ZkError::NoNode) => {}
            Err(error) => return Err(zk_error(error)),
        }
    }
    let mut removed = 0;
    for path in paths {
        match with_timeout(NAME, timeout, async {
            Ok(client.delete(&path, None).await)
        })
        .await?
        {
            Ok(()) => removed += 1,
            Err(ZkError::NoNode) => {}
            Err(error) => return Err(zk_error(error)),
        }
    }
    Ok(removed)
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // no runtime: the node goes with the session.
        };
        let session = self.session.clone();
        let path = self.path.take();
        let key_path = std::mem::take(&mut self.key_path);
        let owner = self.owner;
        let timeout = self.timeout;
        runtime.spawn(async move {
            let mut delay = Duration::from_millis(50);
            loop {
                if session.is_ended() {
                    return; // its ephemeral nodes went with it
                }
                let swept = tokio::select! {
                    () = session.ended.cancelled() => return,
                    swept = sweep(&session.client, &key_path, &owner, path.as_deref(), timeout) => swept,
                };
                match swept {
                    Ok(removed) => {
                        tracing::debug!(owner = %owner, removed, "removed abandoned contender nodes");
                        return;
                    }
                    Err(error) => tracing::debug!(%error, owner = %owner,
                        "removing an abandoned contender node failed; retrying until it works or the session ends"),
                }
                tokio::select! {
                    () = session.ended.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        });
    }
}

/// `at + duration`, saturating one year later for an out-of-range sum (a
/// wait of `Duration::MAX` means "no deadline", never a panic).
fn later(at: Instant, duration: Duration) -> Instant {
    at.checked_add(duration)
        .or_else(|| at.checked_add(leasehold_core::config::MAX_DURATION))
        .unwrap_or(at)
}
