//! # leasehold-redlock
//!
//! Redlock for [leasehold](leasehold_core): one lock over N independent Redis
//! servers (N odd; 3 or 5 typical), built from the single-server scripts of
//! [`leasehold_redis`] through its [`RedisNode`] seam.
//!
//! - **acquire** sends the acquire script (`SET NX PX` + the key's counter
//!   `INCR`) to all N servers *at once* with the same owner token, each call
//!   bounded by its own per-node timeout (`ttl × 0.05`, at least 10 ms, at most
//!   the per-call timeout), so a hung server costs that timeout, not the lease.
//!   It succeeds when a quorum (N/2+1) acquired and validity is left:
//!   `valid_until = sent + ttl − drift` (drift = `ttl × factor + fixed`),
//!   counted from the instant the requests were *sent*, must still be ahead
//!   of now. Otherwise it deletes its key again (compare-and-delete) on every
//!   server that acquired or did not answer (a timed-out server may have set
//!   it), in parallel, before returning the error.
//! - **extend** needs a quorum of compare-and-`PEXPIRE`s and validity
//!   recomputed from the extend's send instant. A failed extend does *not*
//!   release: the lease stays valid until its old `valid_until`, and deleting
//!   it early could hand the key to someone else while we still act on it
//!   (redsync PR #150). It is [`LockError::Lost`] when a majority says the key
//!   is not ours, [`LockError::Unavailable`] when too many servers did not
//!   answer to tell.
//! - **release** compare-and-deletes on every server in parallel: `Ok` when a
//!   majority confirms, `NotHeld` when none held it, `Lost` when only a
//!   minority still did.
//! - **errors** list every server's answer ([`QuorumReport`]): a key taken on
//!   a majority is [`LockError::Contended`] (the report is the holder's
//!   `metadata`); too few servers reachable is [`LockError::Unavailable`]
//!   (the report is its source). Neither is [`LockError::Timeout`], which only
//!   `acquire` gives when its wait runs out.
//!
//! ```no_run
//! use leasehold_core::Locker;
//! use leasehold_redlock::RedlockBackend;
//! # #[tokio::main] async fn main() -> Result<(), leasehold_core::LockError> {
//! let backend = RedlockBackend::connect(
//!     "redlock://:secret@10.0.0.1:6379,10.0.0.2:6379,10.0.0.3:6379?namespace=billing&timeout=1s",
//! )
//! .await?;
//! let locker = Locker::new(backend);
//! let guard = locker.lock("invoice:2024-17").await?;
//! // Act only before guard.valid_until(); stop when guard.lost() fires.
//! guard.release().await?;
//! # Ok(()) }
//! ```
//!
//! ## Guarantees and their limits
//! - Mutual exclusion holds while a majority of servers keep their data and
//!   the holder acts before [`Lease::valid_until`]. A server that restarts
//!   *without persistence* forgets the locks it held: restart it only after
//!   the longest TTL in use has passed (Redlock's "delayed restart"), or run
//!   every server with AOF and `appendfsync always`.
//! - A holder paused (GC, SIGSTOP, a frozen VM) past `valid_until` may still
//!   act when it wakes; only fencing at the protected resource stops it, and
//!   Redlock's fencing is best effort (next point). A paused *server* is a
//!   server that does not answer: with a quorum of the others everything
//!   works; a lease whose extends cannot reach a quorum ends at its
//!   `valid_until` (the guard's `lost()` fires then), while its keys on the
//!   paused server linger until their TTL after it wakes.
//! - **Fencing is [`Fencing::BestEffort`].** A lease's token is the largest
//!   counter among the servers that granted it. Every server that answered
//!   with a lower counter is raised to that token before `try_acquire`
//!   returns (one more parallel round trip, only when counters disagree), so
//!   any later quorum, which overlaps this one, counts past it (the test
//!   `fencing_tokens_keep_increasing_when_the_quorum_changes` shows 1, 2, 3,
//!   4, 5 across three different quorums, and 1, 2, 3, 4, 2 without the
//!   raise). Tokens can still go backwards when (a) a server restarts without
//!   persistence (its counters restart at 0) and a later quorum is made mostly
//!   of such servers, or (b) a different quorum grants the next lease while
//!   a raise did not reach a majority (a server timed out on it), or a server
//!   was unreachable while the higher counters were handed out and later
//!   forms a quorum with others that lag too. For strictly increasing tokens
//!   use a single Redis with `appendonly yes` + `appendfsync always`
//!   (`leasehold-redis`, `Strict`), or etcd, ZooKeeper or Postgres.
//! - **Waiting is [`Waiting::Polled`]**: `acquire` retries with the caller's
//!   [`RetryPolicy`](leasehold_core::RetryPolicy), whose full jitter spreads
//!   competing clients so they do not split the vote forever; a failed attempt
//!   gives its partial keys back at once, so the next attempt finds them free.
//!   (Release notifications would need a subscription per server and a
//!   quorum of them; not done.)
//! - Run every server with `maxmemory-policy noeviction`: under any other
//!   policy a server short of memory may evict a held lock key (it carries a
//!   TTL), and a majority of such servers hands the lock to a second client.
//!   Each server's policy is read at connect (`CONFIG GET`) and any other is
//!   logged with `tracing::warn!`.
//! - Cancellation: every operation may be dropped at any await point.
//!   `try_acquire` (and so `acquire` and `Locker::lock`) runs each attempt on
//!   its own task: a quorum granted after the caller stopped waiting, or
//!   granted and never read, is released at once, not left to block the key
//!   until its TTL. A dropped `extend` may still renew our own keys; a
//!   dropped `release` may leave some servers' keys until their TTL.
//! - Every call is bounded: each server by the per-node timeout, connects by
//!   the per-call timeout (default 2 s). A server that is down at connect is
//!   connected later in the background; connecting fails only when fewer
//!   than a quorum answer.
#![warn(missing_docs)]

mod report;
mod slot;
mod url;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use futures_util::future::join_all;
use futures_util::stream::FuturesUnordered;
use leasehold_core::config;
use leasehold_core::{
    Capabilities, Drift, Fairness, Fencing, FencingToken, Key, Lease, LockBackend, LockError,
    LockInfo, OwnerToken, SharedClock, Waiting, cancel_safe, system_clock,
};
use leasehold_redis::{KeyLayout, Ownership, RedisNode, SafetyFinding, map_error};
use tokio::time::Instant;

pub use report::{NodeOutcome, QuorumReport};

use slot::Slot;

/// The backend's name in errors, spans and metrics.
pub const NAME: &str = "redlock";

/// The default per-call timeout (connects, `inspect`, and the ceiling of the
/// per-node timeout).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// The default per-node timeout as a fraction of the TTL (redsync's 0.05).
pub const DEFAULT_NODE_TIMEOUT_FACTOR: f64 = 0.05;

/// The default floor of the per-node timeout.
pub const DEFAULT_MIN_NODE_TIMEOUT: Duration = Duration::from_millis(10);

/// The smallest TTL accepted: below it the drift allowance and per-node
/// timeouts leave no validity worth having.
pub const MIN_TTL: Duration = Duration::from_millis(10);

/// The URL options `redlock://` knows (see [`RedlockBuilder::connect`]).
pub const OPTIONS: &[&str] = &[
    "namespace",
    "timeout",
    "node_timeout_factor",
    "min_node_timeout",
    "drift_factor",
    "drift_fixed",
    "tls",
];

/// The default namespace (the same as `leasehold-redis`'s, so both see the
/// same key layout).
pub const DEFAULT_NAMESPACE: &str = leasehold_redis::DEFAULT_NAMESPACE;

/// Raises a fencing counter to at least `ARGV[1]`; never lowers it.
const RAISE_SRC: &str = r#"
local current = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if current < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1])
  return 1
end
return 0
"#;

fn raise_script() -> &'static redis::Script {
    static SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(RAISE_SRC));
    &SCRIPT
}

/// Options for a [`RedlockBackend`]; made by [`RedlockBackend::builder`].
#[derive(Debug, Clone)]
pub struct RedlockBuilder {
    namespace: String,
    timeout: Duration,
    node_timeout_factor: f64,
    min_node_timeout: Duration,
    drift: Drift,
    clock: SharedClock,
}

impl Default for RedlockBuilder {
    fn default() -> Self {
        RedlockBuilder {
            namespace: DEFAULT_NAMESPACE.to_owned(),
            timeout: DEFAULT_TIMEOUT,
            node_timeout_factor: DEFAULT_NODE_TIMEOUT_FACTOR,
            min_node_timeout: DEFAULT_MIN_NODE_TIMEOUT,
            drift: Drift::default(),
            clock: system_clock(),
        }
    }
}

impl RedlockBuilder {
    /// The prefix that keeps one application's locks apart from another's on
    /// shared servers (default `"leasehold"`; URL option `namespace`).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// The per-call timeout (default 2 s; URL option `timeout`): bounds
    /// connects and `inspect`, and caps the per-node timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Each server's share of an acquire, extend or release: `ttl × factor`
    /// (default 0.05; URL option `node_timeout_factor`), clamped to
    /// [`RedlockBuilder::min_node_timeout`] and the per-call timeout.
    pub fn node_timeout_factor(mut self, factor: f64) -> Self {
        self.node_timeout_factor = factor;
        self
    }

    /// The floor of the per-node timeout (default 10 ms; URL option
    /// `min_node_timeout`).
    pub fn min_node_timeout(mut self, floor: Duration) -> Self {
        self.min_node_timeout = floor;
        self
    }

    /// The clock drift allowance subtracted from every lease's validity
    /// (default 1 % + 2 ms; URL options `drift_factor`, `drift_fixed`).
    pub fn drift(mut self, drift: Drift) -> Self {
        self.drift = drift;
        self
    }

    /// The monotonic clock leases are measured on (inject pauses in tests).
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// Connects by URL:
    /// `redlock://[user][:password@]h1:p1,h2:p2,h3:p3[/db][?options]`. The
    /// credentials and database apply to every server. Options ([`OPTIONS`]):
    /// `namespace`, `timeout`, `node_timeout_factor`, `min_node_timeout`,
    /// `drift_factor`, `drift_fixed` (durations as `250ms`, `2s`, `1m`: a
    /// bare number is an error, see [`config::duration`]), `tls=true`
    /// (`rediss://` to every server). An unknown option is a
    /// [`LockError::Config`] naming the closest known one: a typo never falls
    /// back to a default (`?namspace=billing` would share the default
    /// namespace). Errors never show the password.
    /// Cancel safe: a dropped connect takes no lock and leaves nothing behind.
    pub async fn connect(mut self, url: &str) -> Result<RedlockBackend, LockError> {
        let parsed = url::parse(url)?;
        for (name, value) in &parsed.options {
            self = self.option(name, value)?;
        }
        self.connect_urls(&parsed.nodes).await
    }

    fn option(mut self, name: &str, value: &str) -> Result<Self, LockError> {
        match name {
            "namespace" => self.namespace = value.to_owned(),
            "timeout" => self.timeout = config::duration(name, value)?,
            "node_timeout_factor" => self.node_timeout_factor = url::fraction(name, value)?,
            "min_node_timeout" => self.min_node_timeout = config::duration(name, value)?,
            "drift_factor" => self.drift.factor = url::fraction(name, value)?,
            "drift_fixed" => self.drift.fixed = config::duration(name, value)?,
            _ => return Err(config::unknown_option("redlock", name, OPTIONS)),
        }
        Ok(self)
    }

    /// Connects to one server per `redis://` / `rediss://` URL.
    /// Cancel safe: a dropped connect takes no lock and leaves nothing behind.
    pub async fn connect_urls(
        self,
        urls: impl IntoIterator<Item = impl AsRef<str>>,
    ) -> Result<RedlockBackend, LockError> {
        let clients = urls
            .into_iter()
            .map(|url| {
                let url = url.as_ref();
                redis::Client::open(url).map_err(|e| {
                    LockError::Config(format!("redis url {:?}: {e}", config::redact_url(url)))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.connect_clients(clients).await
    }

    /// Connects with existing clients, one per server (their credentials,
    /// database and TLS settings are used as they are). Returns once a quorum
    /// is connected; the rest connect in the background. Fewer than a quorum
    /// within the per-call timeout is [`LockError::Unavailable`].
    /// Cancel safe: a dropped connect takes no lock and leaves nothing behind.
    pub async fn connect_clients(
        self,
        clients: Vec<redis::Client>,
    ) -> Result<RedlockBackend, LockError> {
        if clients.is_empty() {
            return Err(LockError::Config(
                "redlock needs at least one server".into(),
            ));
        }
        if self.timeout.is_zero() {
            return Err(LockError::Config(
                "redlock timeout must be above zero".into(),
            ));
        }
        if !(0.0..1.0).contains(&self.node_timeout_factor) {
            return Err(LockError::Config(format!(
                "redlock node_timeout_factor {} must be from 0 up to 1",
                self.node_timeout_factor
            )));
        }
        let layout = KeyLayout::new(&self.namespace)?;
        let slots: Vec<Arc<Slot>> = clients
            .into_iter()
            .map(|client| Slot::new(client, layout.clone(), self.timeout))
            .collect();
        let mut seen = std::collections::HashSet::new();
        for slot in &slots {
            if !seen.insert(slot.addr.clone()) {
                return Err(LockError::Config(format!(
                    "redlock server {} is listed twice; the servers must be independent",
                    slot.addr
                )));
            }
        }
        if slots.len().is_multiple_of(2) {
            tracing::warn!(
                servers = slots.len(),
                "redlock over an even number of servers tolerates no more failures than one server fewer"
            );
        }
        let quorum = slots.len() / 2 + 1;
        let durable = connect_quorum(&slots, quorum, self.timeout).await?;
        Ok(RedlockBackend {
            inner: Arc::new(Inner {
                slots,
                quorum,
                timeout: self.timeout,
                node_timeout_factor: self.node_timeout_factor,
                min_node_timeout: self.min_node_timeout,
                drift: self.drift,
                clock: self.clock,
                durable,
            }),
        })
    }
}

/// Connects every slot at once and waits for a quorum (or for every attempt
/// to end). Returns whether every server is connected and keeps its counters
/// across a restart (AOF with fsync always).
async fn connect_quorum(
    slots: &[Arc<Slot>],
    quorum: usize,
    timeout: Duration,
) -> Result<bool, LockError> {
    let mut pending: FuturesUnordered<_> = slots
        .iter()
        .enumerate()
        .map(|(i, slot)| async move { (i, tokio::time::timeout(timeout, slot.get()).await) })
        .collect();
    let mut outcomes: Vec<Option<NodeOutcome>> = vec![None; slots.len()];
    let mut connected = 0;
    while let Some((i, result)) = pending.next().await {
        outcomes[i] = Some(match result {
            Ok(Ok(_)) => {
                connected += 1;
                NodeOutcome::Ours
            }
            Ok(Err(error)) => NodeOutcome::from_error(error),
            Err(_) => NodeOutcome::Unreachable(format!("no connection within {timeout:?}")),
        });
        if connected >= quorum {
            // Stragglers go on connecting in the background.
            break;
        }
    }
    if connected < quorum {
        let nodes = slots
            .iter()
            .zip(outcomes)
            .map(|(slot, outcome)| {
                let outcome = outcome.unwrap_or_else(|| NodeOutcome::Unreachable("pending".into()));
                let outcome = match outcome {
                    NodeOutcome::Ours => NodeOutcome::Free,
                    other => other,
                };
                (slot.addr.clone(), outcome)
            })
            .collect();
        return Err(LockError::unavailable(
            NAME,
            QuorumReport {
                step: "connect",
                key: String::new(),
                quorum,
                nodes,
                note: Some("fewer than a quorum of servers could be connected".into()),
            },
        ));
    }
    // Every connected server's configuration: durable counters, and the
    // eviction policy (any but `noeviction` can evict a held lock key, see
    // `leasehold_redis::SafetyFinding`), logged per server.
    let probes = join_all(slots.iter().map(|slot| async move {
        let node = slot.node()?;
        let persistence = tokio::time::timeout(timeout, node.persistence())
            .await
            .ok()?;
        for finding in persistence.safety_findings() {
            match finding {
                SafetyFinding::Unverified => tracing::info!(server = %slot.addr, "{finding}"),
                _ => tracing::warn!(server = %slot.addr, "{finding}"),
            }
        }
        Some(persistence.durable_fencing())
    }))
    .await;
    Ok(connected == slots.len() && probes.into_iter().all(|durable| durable == Some(true)))
}

/// Locks over N Redis servers (see the [crate docs](crate) for the algorithm
/// and its guarantees). Cheap to clone; clones share connections.
#[derive(Debug, Clone)]
pub struct RedlockBackend {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    slots: Vec<Arc<Slot>>,
    quorum: usize,
    timeout: Duration,
    node_timeout_factor: f64,
    min_node_timeout: Duration,
    drift: Drift,
    clock: SharedClock,
    durable: bool,
}

impl RedlockBackend {
    /// Options, starting from the defaults.
    pub fn builder() -> RedlockBuilder {
        RedlockBuilder::default()
    }

    /// Connects by URL (`redlock://h1:p1,h2:p2,h3:p3?…`, see
    /// [`RedlockBuilder::connect`]) with default options.
    /// Cancel safe: a dropped connect takes no lock and leaves nothing behind.
    pub async fn connect(url: &str) -> Result<Self, LockError> {
        Self::builder().connect(url).await
    }

    /// How many servers must agree: N/2+1.
    pub fn quorum(&self) -> usize {
        self.inner.quorum
    }

    /// The servers' `host:port`, in configuration order.
    pub fn servers(&self) -> Vec<String> {
        self.inner.slots.iter().map(|s| s.addr.clone()).collect()
    }

    /// The connected servers' nodes (`None`: not connected yet), for raw
    /// calls and tooling.
    pub fn nodes(&self) -> Vec<Option<RedisNode>> {
        self.inner.slots.iter().map(|s| s.node()).collect()
    }

    /// Each server's share of an operation on a lease of `ttl`:
    /// `ttl × factor`, clamped to the floor and the per-call timeout. Never
    /// panics: the factor is below 1 (checked at connect), so the product
    /// is at most `ttl`.
    pub fn node_timeout(&self, ttl: Duration) -> Duration {
        ttl.mul_f64(self.inner.node_timeout_factor)
            .max(self.inner.min_node_timeout)
            .min(self.inner.timeout)
    }

    /// At least [`MIN_TTL`], at most one year
    /// ([`MAX_DURATION`](leasehold_core::config::MAX_DURATION)), through
    /// [`Capabilities::check_ttl`]: the same bounds and message as every
    /// backend, and no `Instant + ttl` that could overflow.
    fn check_ttl(&self, ttl: Duration) -> Result<(), LockError> {
        self.capabilities().check_ttl(NAME, ttl)
    }

    /// Runs `op` on the servers `which` (indices) in parallel, each bounded by
    /// `per_node` (connecting included). Results come in `which`'s order.
    async fn fan_out<T, F, Fut>(
        &self,
        which: &[usize],
        per_node: Duration,
        op: F,
    ) -> Vec<Result<T, LockError>>
    where
        F: Fn(RedisNode) -> Fut,
        Fut: Future<Output = Result<T, LockError>>,
    {
        let op = &op;
        join_all(which.iter().map(|&i| {
            let slot = &self.inner.slots[i];
            async move {
                let call = async move { op(slot.get().await?).await };
                match tokio::time::timeout(per_node, call).await {
                    Ok(result) => result,
                    Err(_) => {
                        let state = if slot.node().is_some() {
                            ""
                        } else {
                            " (not connected)"
                        };
                        Err(LockError::unavailable(
                            NAME,
                            format!("no answer within {per_node:?}{state}"),
                        ))
                    }
                }
            }
        }))
        .await
    }

    fn all(&self) -> Vec<usize> {
        (0..self.inner.slots.len()).collect()
    }

    fn report(
        &self,
        step: &'static str,
        key: &Key,
        outcomes: Vec<NodeOutcome>,
        note: Option<String>,
    ) -> QuorumReport {
        QuorumReport {
            step,
            key: key.as_str().to_owned(),
            quorum: self.inner.quorum,
            nodes: self
                .inner
                .slots
                .iter()
                .map(|s| s.addr.clone())
                .zip(outcomes)
                .collect(),
            note,
        }
    }

    /// Raises the counters of the servers that answered below `token` (so a
    /// later, different quorum counts past it). Best effort within `per_node`.
    async fn raise_counters(
        &self,
        key: &Key,
        token: FencingToken,
        outcomes: &[NodeOutcome],
        per_node: Duration,
    ) {
        let lagging: Vec<usize> = outcomes
            .iter()
            .enumerate()
            .filter(|(_, outcome)| match outcome {
                NodeOutcome::Acquired(counter) => *counter < token,
                NodeOutcome::Held(info) => info.fencing_token.is_some_and(|c| c < token),
                _ => false,
            })
            .map(|(i, _)| i)
            .collect();
        if lagging.is_empty() {
            return;
        }
        let results = self
            .fan_out(&lagging, per_node, |node| async move {
                let mut conn = node.connection();
                raise_script()
                    .key(node.layout().fence_key(key))
                    .arg(token.get())
                    .invoke_async::<i64>(&mut conn)
                    .await
                    .map_err(|e| map_error(NAME, e))
            })
            .await;
        for (i, result) in lagging.iter().zip(results) {
            if let Err(error) = result {
                tracing::debug!(%key, server = %self.inner.slots[*i].addr, %error, "redlock counter raise failed");
            }
        }
    }

    /// Compare-and-deletes `owner`'s key on the servers `which`, in parallel.
    async fn release_on(
        &self,
        which: &[usize],
        key: &Key,
        owner: &OwnerToken,
        per_node: Duration,
    ) -> Vec<NodeOutcome> {
        self.fan_out(which, per_node, |node| async move {
            node.release_raw(key, owner).await
        })
        .await
        .into_iter()
        .map(NodeOutcome::from_ownership)
        .collect()
    }

    /// One acquisition attempt on every server (see the crate docs); the
    /// caller checked the TTL. Not cancel safe by itself: the trait's
    /// `try_acquire` runs it through [`cancel_safe`].
    async fn attempt(&self, key: &Key, ttl: Duration) -> Result<Lease, LockError> {
        let owner = OwnerToken::generate();
        let per_node = self.node_timeout(ttl);
        let all = self.all();
        let sent_at = self.inner.clock.now();
        let outcomes: Vec<NodeOutcome> = self
            .fan_out(&all, per_node, |node| async move {
                node.try_acquire_raw(key, &owner, ttl).await
            })
            .await
            .into_iter()
            .map(NodeOutcome::from_acquire)
            .collect();
        let quorum = self.inner.quorum;
        let acquired = outcomes
            .iter()
            .filter(|o| matches!(o, NodeOutcome::Acquired(_)))
            .count();
        let token = outcomes
            .iter()
            .filter_map(|o| match o {
                NodeOutcome::Acquired(counter) => Some(*counter),
                _ => None,
            })
            .max()
            .unwrap_or(FencingToken(0));
        let mut note = None;
        if acquired >= quorum {
            self.raise_counters(key, token, &outcomes, per_node).await;
            let lease = Lease::new(
                NAME,
                key.clone(),
                owner,
                token,
                sent_at,
                ttl,
                self.inner.drift,
            );
            let now = self.inner.clock.now();
            if lease.valid_until() > now {
                tracing::debug!(%key, owner = %owner.short(), %token, acquired, "redlock acquired");
                return Ok(lease);
            }
            note = Some(format!(
                "acquired on {acquired} servers, but only after {:?}: no validity left of a ttl of {ttl:?}",
                now - sent_at
            ));
        }
        // Give back what this attempt may hold: the servers that granted it
        // (awaited, so nothing is left locked on a server that answers) and
        // those that did not answer, which may have set the key (in the
        // background: they would only cost another timeout).
        let granted: Vec<usize> = indices(&outcomes, |o| matches!(o, NodeOutcome::Acquired(_)));
        let unknown: Vec<usize> = indices(&outcomes, NodeOutcome::is_unknown);
        if !unknown.is_empty() {
            let (this, key) = (self.clone(), key.clone());
            tokio::spawn(async move {
                let released = this.release_on(&unknown, &key, &owner, per_node).await;
                tracing::debug!(%key, owner = %owner.short(), ?released, "redlock gave back a failed attempt on silent servers");
            });
        }
        if !granted.is_empty() {
            let released = self.release_on(&granted, key, &owner, per_node).await;
            tracing::debug!(%key, owner = %owner.short(), acquired, ?released, "redlock attempt failed; gave back its keys");
        }
        let held = outcomes
            .iter()
            .filter(|o| matches!(o, NodeOutcome::Held(_)))
            .count();
        let answered = outcomes.iter().filter(|o| !o.is_unknown()).count();
        if note.is_none() && held >= quorum {
            let mut holder = holder_of(&outcomes);
            holder.metadata = Some(self.report("acquire", key, outcomes, None).to_string());
            return Err(LockError::contended(NAME, key.as_str(), Some(holder)));
        }
        if note.is_some() || answered < quorum {
            let note = note.or_else(|| Some("too few servers answered".into()));
            return Err(LockError::unavailable(
                NAME,
                self.report("acquire", key, outcomes, note),
            ));
        }
        // Enough servers answered, but the key is held on some of them and
        // not on a majority (a split vote, or a minority left-over): contention.
        let mut holder = holder_of(&outcomes);
        let note = Some("no owner has a majority".to_owned());
        holder.metadata = Some(self.report("acquire", key, outcomes, note).to_string());
        Err(LockError::contended(NAME, key.as_str(), Some(holder)))
    }

    /// The outcome of a renewal from every server's answer.
    fn renewal(
        &self,
        lease: &Lease,
        outcomes: Vec<NodeOutcome>,
        sent_at: Instant,
        ttl: Duration,
    ) -> Result<Lease, LockError> {
        let quorum = self.inner.quorum;
        let ours = outcomes.iter().filter(|o| **o == NodeOutcome::Ours).count();
        let not_ours = outcomes
            .iter()
            .filter(|o| matches!(o, NodeOutcome::Free | NodeOutcome::Other))
            .count();
        let key = lease.key();
        if ours >= quorum {
            let renewed = lease.renewed(sent_at, ttl, self.inner.drift);
            if renewed.valid_until() > self.inner.clock.now() {
                return Ok(renewed);
            }
            let note = format!(
                "renewed on a quorum, but only after {:?}: no validity left of a ttl of {ttl:?}",
                self.inner.clock.now() - sent_at
            );
            return Err(LockError::unavailable(
                NAME,
                self.report("extend", key, outcomes, Some(note)),
            ));
        }
        if not_ours >= quorum {
            let report = self.report("extend", key, outcomes, None);
            return Err(LockError::lost(
                NAME,
                key.as_str(),
                format!("the key is no longer ours on a majority of servers: {report}"),
            ));
        }
        Err(LockError::unavailable(
            NAME,
            self.report("extend", key, outcomes, None),
        ))
    }
}

/// The positions of the outcomes that match `pred`.
fn indices(outcomes: &[NodeOutcome], pred: impl Fn(&NodeOutcome) -> bool) -> Vec<usize> {
    (0..outcomes.len())
        .filter(|&i| pred(&outcomes[i]))
        .collect()
}

/// What the holders that answered `Held` have in common, for `Contended`.
fn holder_of(outcomes: &[NodeOutcome]) -> LockInfo {
    let mut owners: HashMap<&str, usize> = HashMap::new();
    let mut info = LockInfo::default();
    for outcome in outcomes {
        if let NodeOutcome::Held(held) = outcome {
            if let Some(owner) = &held.owner_hint {
                *owners.entry(owner).or_default() += 1;
            }
            info.fencing_token = info.fencing_token.max(held.fencing_token);
            info.remaining = match (info.remaining, held.remaining) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
    }
    info.owner_hint = owners
        .into_iter()
        .max_by_key(|(_, count)| *count)
        .map(|(owner, _)| owner.to_owned());
    info
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
            .waiting(Waiting::Polled)
            .fairness(Fairness::None)
            .min_ttl(MIN_TTL)
            .ttl_granularity(Duration::from_millis(1))
            .holder_info(true)
            .atomic_multi_key(false)
            .batch_extend(true)
    }

    /// One attempt, run to its end on its own task ([`cancel_safe`]): a
    /// caller that stops waiting (a dropped `lock()`, a `select!`, a
    /// timeout) leaves no key held, because a quorum granted after it left is
    /// released at once in the background. Servers that did not answer are
    /// sent a compare-and-delete too, on the same connection as the acquire,
    /// so a frozen server that runs the queued acquire when it wakes runs the
    /// delete right after it.
    async fn try_acquire(&self, key: &Key, ttl: Duration) -> Result<Lease, LockError> {
        self.check_ttl(ttl)?;
        let (this, key) = (self.clone(), key.clone());
        let releaser = self.clone();
        cancel_safe(
            NAME,
            async move { this.attempt(&key, ttl).await },
            move |lease| async move { releaser.release(&lease).await },
        )
        .await
    }

    /// Cancel safety: dropping it may leave the renewal applied on some
    /// servers; that only keeps our own key longer (until the new TTL), and
    /// the lease's `valid_until` is unchanged, so nothing is promised that
    /// the servers do not keep.
    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<Lease, LockError> {
        self.check_ttl(ttl)?;
        let per_node = self.node_timeout(ttl);
        let (key, owner) = (lease.key(), lease.owner());
        let sent_at = self.inner.clock.now();
        let outcomes = self
            .fan_out(&self.all(), per_node, |node| async move {
                node.extend_raw(key, owner, ttl).await
            })
            .await
            .into_iter()
            .map(NodeOutcome::from_ownership)
            .collect();
        self.renewal(lease, outcomes, sent_at, ttl)
    }

    /// One script call per server for the whole batch, all servers at
    /// once: a slow server costs the per-node timeout once, not once per
    /// lease. Cancel safety as [`LockBackend::extend`].
    async fn extend_many(&self, renewals: &[(Lease, Duration)]) -> Vec<Result<Lease, LockError>> {
        let mut results: Vec<Option<Result<Lease, LockError>>> = renewals
            .iter()
            .map(|(_, ttl)| self.check_ttl(*ttl).err().map(Err))
            .collect();
        let valid: Vec<usize> = (0..renewals.len())
            .filter(|&i| results[i].is_none())
            .collect();
        if !valid.is_empty() {
            let raw: Vec<_> = valid
                .iter()
                .map(|&i| (renewals[i].0.key(), renewals[i].0.owner(), renewals[i].1))
                .collect();
            let shortest = valid
                .iter()
                .map(|&i| renewals[i].1)
                .min()
                .unwrap_or(MIN_TTL);
            let per_node = self.node_timeout(shortest);
            let raw = &raw;
            let sent_at = self.inner.clock.now();
            let per_server: Vec<Result<Vec<Ownership>, NodeOutcome>> = self
                .fan_out(&self.all(), per_node, |node| async move {
                    node.extend_many_raw(raw).await
                })
                .await
                .into_iter()
                .map(|r| r.map_err(NodeOutcome::from_error))
                .collect();
            for (j, &i) in valid.iter().enumerate() {
                let outcomes = per_server
                    .iter()
                    .map(|server| match server {
                        Ok(found) => match found.get(j) {
                            Some(found) => NodeOutcome::from_ownership(Ok(*found)),
                            None => NodeOutcome::Failed("missing extend result".into()),
                        },
                        Err(outcome) => outcome.clone(),
                    })
                    .collect();
                let (lease, ttl) = &renewals[i];
                results[i] = Some(self.renewal(lease, outcomes, sent_at, *ttl));
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(LockError::backend(NAME, "no result"))))
            .collect()
    }

    /// Cancel safety: dropping it may leave the key deleted on some servers
    /// and not on others; what is left frees itself at its TTL, and a later
    /// `release` of the same lease finishes the job.
    async fn release(&self, lease: &Lease) -> Result<(), LockError> {
        let per_node = self.node_timeout(lease.ttl());
        let (key, owner) = (lease.key(), lease.owner());
        let outcomes = self.release_on(&self.all(), key, owner, per_node).await;
        let quorum = self.inner.quorum;
        let ours = outcomes.iter().filter(|o| **o == NodeOutcome::Ours).count();
        let unknown = outcomes.iter().filter(|o| o.is_unknown()).count();
        let not_ours = outcomes.len() - ours - unknown;
        if ours >= quorum {
            tracing::debug!(%key, owner = %owner.short(), ours, "redlock released");
            return Ok(());
        }
        if unknown == 0 || not_ours >= quorum {
            if ours == 0 {
                return Err(LockError::not_held(NAME, key.as_str()));
            }
            let report = self.report("release", key, outcomes, None);
            return Err(LockError::lost(
                NAME,
                key.as_str(),
                format!("the lease had lapsed on a majority of servers: {report}"),
            ));
        }
        Err(LockError::unavailable(
            NAME,
            self.report("release", key, outcomes, None),
        ))
    }

    /// Read-only; cancel safe.
    async fn inspect(&self, key: &Key) -> Result<Option<LockInfo>, LockError> {
        let answers = self
            .fan_out(&self.all(), self.inner.timeout, |node| async move {
                node.inspect_raw(key).await
            })
            .await;
        let outcomes: Vec<NodeOutcome> = answers
            .into_iter()
            .map(|answer| match answer {
                Ok(Some(info)) => NodeOutcome::Held(info),
                Ok(None) => NodeOutcome::Free,
                Err(error) => NodeOutcome::from_error(error),
            })
            .collect();
        let holder = holder_of(&outcomes);
        let top = holder.owner_hint.as_deref().map_or(0, |owner| {
            outcomes
                .iter()
                .filter(
                    |o| matches!(o, NodeOutcome::Held(i) if i.owner_hint.as_deref() == Some(owner)),
                )
                .count()
        });
        let unknown = outcomes.iter().filter(|o| o.is_unknown()).count();
        let quorum = self.inner.quorum;
        if top >= quorum {
            // Report only the majority holder's servers.
            let owner = holder.owner_hint.clone();
            let theirs: Vec<NodeOutcome> = outcomes
                .into_iter()
                .filter(|o| matches!(o, NodeOutcome::Held(i) if i.owner_hint == owner))
                .collect();
            return Ok(Some(holder_of(&theirs)));
        }
        if top + unknown < quorum {
            return Ok(None);
        }
        Err(LockError::unavailable(
            NAME,
            self.report("inspect", key, outcomes, None),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOSTS: &str = "127.0.0.1:1,127.0.0.1:2,127.0.0.1:3";

    /// Issue 11: `?namspace=billing` used to be refused only by luck of the
    /// option list; every misspelt option is refused naming the closest one,
    /// before any server is contacted.
    #[tokio::test]
    async fn a_misspelt_option_is_refused_naming_the_closest_known_one() {
        for (option, hint) in [
            ("namspace=billing", "namespace"),
            ("timout=1s", "timeout"),
            ("drift_fixd=2ms", "drift_fixed"),
            ("min_node_timeot=5ms", "min_node_timeout"),
        ] {
            let url = format!("redlock://{HOSTS}?{option}");
            match RedlockBackend::connect(&url).await {
                Err(LockError::Config(message)) => assert!(
                    message.contains(&format!("did you mean `{hint}`")),
                    "{url}: expected a hint for {hint}, got {message}"
                ),
                other => panic!("{url}: expected a Config error, got {other:?}"),
            }
        }
    }

    /// Durations take the one grammar: a unit is required, a year at most.
    #[tokio::test]
    async fn durations_need_a_unit() {
        for option in [
            "timeout=250",
            "min_node_timeout=10",
            "drift_fixed=2",
            "timeout=9000h",
        ] {
            let url = format!("redlock://{HOSTS}?{option}");
            let name = option.split('=').next().unwrap();
            match RedlockBackend::connect(&url).await {
                Err(LockError::Config(message)) => {
                    assert!(message.contains(name), "{url}: {message}")
                }
                other => panic!("{url}: expected a Config error, got {other:?}"),
            }
        }
        let builder = RedlockBackend::builder()
            .option("timeout", "250ms")
            .and_then(|b| b.option("drift_fixed", "3ms"))
            .and_then(|b| b.option("drift_factor", "0.02"))
            .expect("well-formed options");
        assert_eq!(builder.timeout, Duration::from_millis(250));
        assert_eq!(builder.drift.fixed, Duration::from_millis(3));
    }

    /// Issue 11: no error and no `Debug` output made from a URL shows its
    /// password, whether the URL is well formed or not.
    #[tokio::test]
    async fn no_error_or_debug_output_shows_the_password() {
        let secret = "S3nt1nel/+@pw";
        let encoded = "S3nt1nel%2F%2B%40pw";
        let urls = [
            format!("redlock://app:{encoded}@{HOSTS}?namspace=x"),
            format!("redlock://app:{encoded}@{HOSTS}/notadb"),
            format!("redlock://app:{secret}@{HOSTS}"),
            format!("redlock://app:{secret}@h1:1,,h2:2"),
            format!("redlock:/app:{secret}@{HOSTS}"),
            format!("redlock://app:{secret}@h1:notaport,h2:2,h3:3"),
            format!("redlock://app:{encoded}@127.0.0.1:1?timeout=10"),
            format!("redlock://app:{encoded}@127.0.0.1:1,127.0.0.1:1"),
        ];
        for url in &urls {
            let result = RedlockBackend::builder()
                .timeout(Duration::from_millis(200))
                .connect(url)
                .await;
            let shown = match &result {
                Ok(backend) => format!("{backend:?}"),
                Err(error) => format!("{error} {error:?}"),
            };
            for needle in [secret, encoded, "S3nt1nel"] {
                assert!(
                    !shown.contains(needle),
                    "{url} showed its password: {shown}"
                );
            }
        }
        let builder = RedlockBackend::builder().namespace("n");
        assert!(!format!("{builder:?}").contains("S3nt1nel"));
    }

    fn held(owner: &str, token: u64, left_ms: u64) -> NodeOutcome {
        let mut info = LockInfo::new(
            Some(FencingToken(token)),
            Some(Duration::from_millis(left_ms)),
        );
        info.owner_hint = Some(owner.into());
        NodeOutcome::Held(info)
    }

    #[test]
    fn the_majority_holder_is_reported_with_its_highest_token_and_least_time() {
        let info = holder_of(&[
            held("aaaa", 3, 900),
            NodeOutcome::Unreachable("x".into()),
            held("aaaa", 5, 700),
            held("bbbb", 9, 100),
        ]);
        assert_eq!(info.owner_hint.as_deref(), Some("aaaa"));
        assert_eq!(info.fencing_token, Some(FencingToken(9)));
        assert_eq!(info.remaining, Some(Duration::from_millis(100)));
    }

    #[test]
    fn a_report_names_every_server_and_its_answer() {
        let report = QuorumReport {
            step: "acquire",
            key: "k".into(),
            quorum: 2,
            nodes: vec![
                ("127.0.0.1:1".into(), NodeOutcome::Acquired(FencingToken(4))),
                ("127.0.0.1:2".into(), held("aaaa", 3, 1200)),
                (
                    "127.0.0.1:3".into(),
                    NodeOutcome::Unreachable("no answer within 25ms".into()),
                ),
            ],
            note: None,
        };
        assert_eq!(
            report.to_string(),
            "acquire of \"k\" needs 2 of 3 servers: 127.0.0.1:1 acquired (counter 4); \
             127.0.0.1:2 held by aaaa (token 3, 1200 ms left); \
             127.0.0.1:3 unreachable: no answer within 25ms"
        );
        assert_eq!(report.count(NodeOutcome::is_unknown), 1);
    }
}
