//! The client plumbing: one Redis server behind an auto-reconnecting
//! connection, spoken to through the [`scripts`]. The seam a multi-node
//! algorithm (Redlock) reuses.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use leasehold_core::config::default_holder;
use leasehold_core::{
    FencingToken, Key, LockError, LockInfo, OwnerToken, ReleaseSource, with_timeout,
};
use redis::RedisError;
use redis::aio::ConnectionManager;

use crate::batch::{Ask, Batches};
use crate::conn::NodeConnection;
use crate::error::map;
use crate::keys::KeyLayout;
use crate::link::{Link, SentinelLink, manager_config};
use crate::notify::PubSub;
use crate::replicas::{Confirmation, ReplicaRule};
use crate::scripts;

/// The longest TTL accepted, in milliseconds: one year
/// ([`MAX_DURATION`](leasehold_core::config::MAX_DURATION)), the bound every
/// backend shares; far inside what `PX`/`PEXPIRE` accept.
pub const MAX_TTL_MS: u64 = leasehold_core::config::MAX_DURATION.as_millis() as u64;

/// Leases renewed per `EVALSHA` by [`RedisNode::extend_many_raw`].
const EXTEND_BATCH: usize = 256;

/// What an acquire script found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AcquireOutcome {
    /// The key was free and is now ours, with this fencing token.
    Acquired(FencingToken),
    /// Someone holds it; what the server could tell about them.
    Held(LockInfo),
}

/// What a compare step (release, extend) found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// The key was ours, and the step was applied.
    Ours,
    /// The key is free: released already, expired, or never taken.
    Free,
    /// Another owner holds the key; nothing was changed.
    Other,
}

impl Ownership {
    pub(crate) fn from_reply(reply: i64) -> Self {
        match reply {
            1 => Ownership::Ours,
            0 => Ownership::Free,
            _ => Ownership::Other,
        }
    }
}

/// One Redis server behind a multiplexed, auto-reconnecting connection,
/// spoken to only through the [`scripts`]: the low-level per-node API.
///
/// Every call is bounded by the node's timeout and maps failures to
/// [`LockError::Unavailable`] (connection refused, I/O, timeout) or
/// [`LockError::Backend`] (anything else the server said). It measures no
/// validity: callers record the instant they send and build leases themselves
/// (a single-server backend from one node, Redlock from a quorum of nodes).
///
/// The server is one address, or the master a set of sentinels names
/// ([`RedisNode::via_sentinels`]): then a call that fails as a failover
/// would (no connection, a timeout, `READONLY`, a write too few replicas
/// confirmed) makes the node ask the sentinels again, and later calls wait
/// for their answer before they go anywhere (the old address may come back
/// as an empty master: see the `link` module's source), then go to the
/// master they name.
#[derive(Clone)]
pub struct RedisNode {
    pub(crate) link: Link,
    layout: Arc<KeyLayout>,
    timeout: Duration,
    pub(crate) backend: &'static str,
    holder: Arc<str>,
    pub(crate) replicas: Option<ReplicaRule>,
    /// Grants and releases waiting to share a script call (`batch.rs`).
    pub(crate) batches: Arc<Batches>,
}

impl std::fmt::Debug for RedisNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let addr = self.link.addr();
        let sentinel = matches!(self.link, Link::Sentinel(_));
        f.debug_struct("RedisNode")
            .field("addr", &addr)
            .field("sentinel", &sentinel)
            .field("replicas", &self.replicas)
            .field("namespace", &self.layout.namespace())
            .field("timeout", &self.timeout)
            .field("holder", &self.holder)
            .finish()
    }
}

impl RedisNode {
    /// Connects to the server of `client` (eagerly: an unreachable server is
    /// [`LockError::Unavailable`] after `timeout`). `timeout` bounds every
    /// later call too, and is the connection's connect and response timeout.
    pub async fn connect(
        client: redis::Client,
        layout: KeyLayout,
        timeout: Duration,
    ) -> Result<Self, LockError> {
        let config = manager_config(timeout);
        Self::connect_with(client, layout, timeout, crate::NAME, config).await
    }

    /// [`RedisNode::connect`] for one server of several that vote (Redlock),
    /// with the backend name its errors carry (so Redlock's errors say
    /// `redlock`). A lost connection is made again with one attempt per
    /// call, never retried after a pause: a server that does not answer is
    /// one missing vote, and a call waiting out the retries of a stopped
    /// server's reconnect (about 0.5 s each time, measured) would hold up
    /// the answer of the servers that are up.
    pub async fn connect_voter(
        client: redis::Client,
        layout: KeyLayout,
        timeout: Duration,
        backend: &'static str,
    ) -> Result<Self, LockError> {
        let config = manager_config(timeout).set_number_of_retries(0);
        Self::connect_with(client, layout, timeout, backend, config).await
    }

    async fn connect_with(
        client: redis::Client,
        layout: KeyLayout,
        timeout: Duration,
        backend: &'static str,
        config: redis::aio::ConnectionManagerConfig,
    ) -> Result<Self, LockError> {
        let conn = with_timeout(backend, timeout, async {
            ConnectionManager::new_with_config(client.clone(), config)
                .await
                .map_err(|e| map(backend, e))
        })
        .await?;
        Ok(Self::from_link(
            Link::direct(conn, client),
            layout,
            timeout,
            backend,
        ))
    }

    /// A node on the master that `sentinels` name, found now (each
    /// sentinel in turn; an unreachable set is [`LockError::Unavailable`]
    /// after `timeout`) and followed across failovers.
    pub async fn via_sentinels(
        sentinels: redis::sentinel::SentinelClient,
        layout: KeyLayout,
        timeout: Duration,
        backend: &'static str,
    ) -> Result<Self, LockError> {
        let link = SentinelLink::connect(sentinels, timeout, backend).await?;
        Ok(Self::from_link(
            Link::Sentinel(link),
            layout,
            timeout,
            backend,
        ))
    }

    /// A node that connects on its first call instead of now, so a server
    /// that is down at start-up costs that call an `Unavailable`, not the
    /// whole client (what a quorum over several nodes needs). Must be called
    /// inside a tokio runtime.
    pub fn lazy(
        client: redis::Client,
        layout: KeyLayout,
        timeout: Duration,
        backend: &'static str,
    ) -> Result<Self, LockError> {
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), manager_config(timeout))
            .map_err(|e| map(backend, e))?;
        Ok(Self::from_link(
            Link::direct(conn, client),
            layout,
            timeout,
            backend,
        ))
    }

    pub(crate) fn from_link(
        link: Link,
        layout: KeyLayout,
        timeout: Duration,
        backend: &'static str,
    ) -> Self {
        RedisNode {
            link,
            layout: Arc::new(layout),
            timeout,
            backend,
            holder: default_holder().into(),
            replicas: None,
            batches: Arc::default(),
        }
    }

    /// Stores `holder` as the label of every lease this node grants (shown
    /// by `inspect` and `list` as [`LockInfo::metadata`]); the default is
    /// [`default_holder`], `"<host> pid <pid>"`.
    pub fn with_holder(mut self, holder: &str) -> Self {
        self.holder = holder.into();
        self
    }

    /// The label stored with every lease this node grants.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// The key layout (namespace) of this node.
    pub fn layout(&self) -> &KeyLayout {
        &self.layout
    }

    /// The per-call timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The client of the server calls go to now (for extra connections,
    /// e.g. pub/sub): the one it was made from, or the master the sentinels
    /// named last.
    pub fn client(&self) -> redis::Client {
        self.link.client()
    }

    /// The address calls go to now (`host:port`).
    pub fn addr(&self) -> String {
        self.link.addr()
    }

    /// The multiplexed connection calls go through now, for commands of
    /// your own.
    pub fn connection(&self) -> NodeConnection {
        self.link.conn()
    }

    /// How many times a Sentinel node moved to another master (0 for a
    /// direct node).
    pub fn master_switches(&self) -> u64 {
        match &self.link {
            Link::Direct { .. } | Link::Cluster { .. } => 0,
            Link::Sentinel(link) => link.switches(),
        }
    }

    /// Asks the sentinels where the master is now and moves there if it
    /// moved (`true`); a direct node answers `false`. Calls do this by
    /// themselves after a failure; for tooling and tests.
    pub async fn find_master(&self) -> Result<bool, LockError> {
        match &self.link {
            Link::Direct { .. } | Link::Cluster { .. } => Ok(false),
            Link::Sentinel(link) => link.refresh().await,
        }
    }

    /// Runs `call` under the node's timeout with a fresh connection handle.
    pub(crate) async fn call<T, F, Fut>(&self, call: F) -> Result<T, LockError>
    where
        F: FnOnce(NodeConnection) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let backend = self.backend;
        let link = &self.link;
        let result = with_timeout(backend, self.timeout, async move {
            link.settle().await?;
            call(link.conn()).await.map_err(|e| map(backend, e))
        })
        .await;
        if let Err(error) = &result {
            self.link.failed(error);
        }
        result
    }

    /// One acquisition: `SET NX PX` of `owner` (with the server's time and
    /// the node's [holder label](RedisNode::with_holder)) plus the fencing
    /// counter's `INCR`, as [`scripts::ACQUIRE_SRC`] does; callers asking at
    /// the same moment share one [`scripts::BATCH_SRC`] call (group commit,
    /// `batch.rs`), and a lone caller sends its own call from its own
    /// future. Records nothing about time: take the sent instant before.
    /// Bounded by the node's timeout, queueing included.
    ///
    /// Cancel safe: dropped, or timed out, while its own call is out or
    /// after its ask was queued, the grant it may still get is given back
    /// (behind it, on the same connection). A call that failed
    /// `Unavailable` may have run all the same: the node gives that key back
    /// too, whether or not the caller still waits.
    pub async fn try_acquire_raw(
        &self,
        key: &Key,
        owner: &OwnerToken,
        ttl: Duration,
    ) -> Result<AcquireOutcome, LockError> {
        let ttl_ms = ttl_millis(self.backend, ttl)?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        let asked = async {
            self.ask(Ask::Acquire {
                key: key.clone(),
                owner: *owner,
                ttl_ms,
                reply,
            })
            .await;
            answer.await.map_err(|_| self.call_dropped())
        };
        let (outcome, confirmed, claim) = with_timeout(self.backend, self.timeout, asked).await??;
        if let Confirmation::Short(acked) = confirmed {
            // Too few replicas have it: a failover could lose it. Undo it
            // (the counter stays raised; tokens only move forward).
            if let Some(claim) = claim {
                claim.give_back();
            }
            return Err(self.short_of_replicas("the grant", acked));
        }
        if let Some(claim) = claim {
            claim.take();
        }
        Ok(outcome)
    }

    /// The error of an ask whose call was dropped unanswered.
    fn call_dropped(&self) -> LockError {
        LockError::unavailable(
            self.backend,
            "the call carrying this step was dropped (its tokio runtime shut down)",
        )
    }

    /// The channel `key`'s releases are announced on: the namespace's
    /// channel ([`KeyLayout::channel`], `PUBLISH`), or on a cluster the
    /// key's shard channel ([`KeyLayout::shard_channel`], `SPUBLISH`).
    pub fn release_channel(&self, key: &Key) -> String {
        if self.is_cluster() {
            self.layout.shard_channel(key)
        } else {
            self.layout.channel()
        }
    }

    /// This node's release channel ([`KeyLayout::channel`]) as a
    /// [`ReleaseSource`]: each subscription is one pub/sub connection to
    /// the node's server (after a Sentinel failover, the new master),
    /// pinged every few seconds so a connection that died silently ends
    /// the stream; each item is a released lock key's name
    /// ([`KeyLayout::lock_key`]). A cluster's releases go to shard channels
    /// instead ([`RedisNode::release_channel`]), which this does not hear.
    /// For a backend's [`ReleaseFeed`](leasehold_core::ReleaseFeed), or
    /// one merged over several servers (Redlock).
    pub fn release_source(&self) -> impl ReleaseSource + use<> {
        PubSub::new(self.clone(), self.layout.channel(), self.timeout)
    }

    /// Compare-and-delete plus the release's announcement on
    /// [`RedisNode::release_channel`], shared with other callers' steps like
    /// [`RedisNode::try_acquire_raw`].
    /// Cancel safety: dropped, it may or may not have run; running it again
    /// is harmless (`Free` the second time).
    pub async fn release_raw(&self, key: &Key, owner: &OwnerToken) -> Result<Ownership, LockError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let asked = async {
            self.ask(Ask::Release {
                key: key.clone(),
                owner: *owner,
                reply: Some(reply),
            })
            .await;
            answer.await.map_err(|_| self.call_dropped())
        };
        with_timeout(self.backend, self.timeout, asked).await?
    }

    /// Compare-and-`PEXPIRE` to `ttl` from the server's now. Cancel safety:
    /// dropped, it may still run, which only keeps `owner`'s own key longer.
    pub async fn extend_raw(
        &self,
        key: &Key,
        owner: &OwnerToken,
        ttl: Duration,
    ) -> Result<Ownership, LockError> {
        let ttl_ms = ttl_millis(self.backend, ttl)?;
        let mut invocation = scripts::extend().prepare_invoke();
        invocation
            .key(self.layout.lock_key(key))
            .arg(owner.to_hex())
            .arg(ttl_ms);
        let (reply, confirmed): (i64, _) = self.invoke(&self.layout.tag(key), invocation).await?;
        if let Confirmation::Short(acked) = confirmed {
            return Err(self.short_of_replicas("the renewal", acked));
        }
        Ok(Ownership::from_reply(reply))
    }

    /// Renews many leases with one script call per 256 of them (one round
    /// trip for a typical watchdog batch). Results come in input order.
    /// Cancel safety as [`RedisNode::extend_raw`].
    /// A TTL out of range fails the whole call with [`LockError::InvalidTtl`]
    /// before anything is sent.
    pub async fn extend_many_raw(
        &self,
        renewals: &[(&Key, &OwnerToken, Duration)],
    ) -> Result<Vec<Ownership>, LockError> {
        let ttls = renewals
            .iter()
            .map(|(_, _, ttl)| ttl_millis(self.backend, *ttl))
            .collect::<Result<Vec<_>, _>>()?;
        // One script call touches one hash slot (in a cluster); outside a
        // cluster every renewal is in the one group.
        let names: Vec<String> = renewals
            .iter()
            .map(|(key, _, _)| self.layout.lock_key(key))
            .collect();
        let mut results = vec![Ownership::Free; renewals.len()];
        for group in self.slot_groups(&names) {
            for batch in group.chunks(EXTEND_BATCH) {
                let mut invocation = scripts::extend_many().prepare_invoke();
                for &i in batch {
                    let (_, owner, _) = renewals[i];
                    invocation
                        .key(names[i].as_str())
                        .arg(owner.to_hex())
                        .arg(ttls[i]);
                }
                let (replies, confirmed): (Vec<i64>, _) =
                    self.invoke(&names[batch[0]], invocation).await?;
                if let Confirmation::Short(acked) = confirmed {
                    return Err(self.short_of_replicas("the renewals", acked));
                }
                if replies.len() != batch.len() {
                    return Err(LockError::backend(
                        self.backend,
                        format!(
                            "extend script answered {} results for {} leases",
                            replies.len(),
                            batch.len()
                        ),
                    ));
                }
                for (&i, reply) in batch.iter().zip(replies) {
                    results[i] = Ownership::from_reply(reply);
                }
            }
        }
        Ok(results)
    }

    /// Raises `key`'s fencing counter to at least `token`, never lowering it
    /// ([`scripts::RAISE_SRC`]); `true` if it was raised. Cancel safety:
    /// dropped, it may or may not have run; running it again is harmless.
    pub async fn raise_raw(&self, key: &Key, token: FencingToken) -> Result<bool, LockError> {
        self.raise_kind_raw(key, leasehold_core::LockKind::Exclusive, token)
            .await
    }
}

/// What the scripts tell of a holder: its owner prefix, remaining TTL and
/// fencing token.
pub(crate) fn holder_info(prefix: String, pttl: i64, counter: i64) -> LockInfo {
    let mut info = LockInfo::new(
        (counter > 0).then_some(FencingToken(counter as u64)),
        (pttl >= 0).then(|| Duration::from_millis(pttl as u64)),
    );
    info.owner_hint = (!prefix.is_empty()).then_some(prefix);
    info
}

/// `ttl` in whole milliseconds, rounded up; below 1 ms or above one year
/// ([`MAX_TTL_MS`]) is [`LockError::InvalidTtl`], checked by
/// [`Capabilities::check_ttl`](leasehold_core::Capabilities::check_ttl) so
/// every backend words it the same. Never panics, whatever the duration.
pub fn ttl_millis(backend: &'static str, ttl: Duration) -> Result<u64, LockError> {
    leasehold_core::Capabilities::new()
        .min_ttl(Duration::from_millis(1))
        .check_ttl(backend, ttl)?;
    Ok(ttl.as_nanos().div_ceil(1_000_000) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_round_up_to_whole_milliseconds_within_bounds() {
        assert_eq!(ttl_millis("t", Duration::from_micros(1500)).unwrap(), 2);
        assert_eq!(ttl_millis("t", Duration::from_secs(3)).unwrap(), 3000);
        assert!(matches!(
            ttl_millis("t", Duration::from_micros(999)),
            Err(LockError::InvalidTtl { .. })
        ));
        assert!(matches!(
            ttl_millis("t", Duration::MAX),
            Err(LockError::InvalidTtl { .. })
        ));
        let year = leasehold_core::config::MAX_DURATION;
        assert_eq!(ttl_millis("t", year).unwrap(), MAX_TTL_MS);
        assert!(matches!(
            ttl_millis("t", year + Duration::from_millis(1)),
            Err(LockError::InvalidTtl { .. })
        ));
    }
}
