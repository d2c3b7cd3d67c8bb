//! The client plumbing: one Redis server behind an auto-reconnecting
//! connection, spoken to through the [`scripts`]. The seam a multi-node
//! algorithm (Redlock) reuses.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use leasehold_core::config::default_holder;
use leasehold_core::{FencingToken, Key, LockError, LockInfo, OwnerToken, with_timeout};
use redis::RedisError;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::error::map;
use crate::keys::KeyLayout;
use crate::safety::Persistence;
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
    fn from_reply(reply: i64) -> Self {
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
#[derive(Clone)]
pub struct RedisNode {
    conn: ConnectionManager,
    client: redis::Client,
    layout: Arc<KeyLayout>,
    timeout: Duration,
    backend: &'static str,
    holder: Arc<str>,
}

impl std::fmt::Debug for RedisNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let addr = &self.client.get_connection_info().addr();
        f.debug_struct("RedisNode")
            .field("addr", addr)
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
        Self::connect_named(client, layout, timeout, crate::NAME).await
    }

    /// [`RedisNode::connect`], with the backend name its errors carry (so
    /// Redlock's errors say `redlock`).
    pub async fn connect_named(
        client: redis::Client,
        layout: KeyLayout,
        timeout: Duration,
        backend: &'static str,
    ) -> Result<Self, LockError> {
        let conn = with_timeout(backend, timeout, async {
            ConnectionManager::new_with_config(client.clone(), manager_config(timeout))
                .await
                .map_err(|e| map(backend, e))
        })
        .await?;
        Ok(Self::from_parts(conn, client, layout, timeout, backend))
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
        Ok(Self::from_parts(conn, client, layout, timeout, backend))
    }

    fn from_parts(
        conn: ConnectionManager,
        client: redis::Client,
        layout: KeyLayout,
        timeout: Duration,
        backend: &'static str,
    ) -> Self {
        RedisNode {
            conn,
            client,
            layout: Arc::new(layout),
            timeout,
            backend,
            holder: default_holder().into(),
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

    /// The client it was made from (for extra connections, e.g. pub/sub).
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// The multiplexed connection, for commands of your own.
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Runs `call` under the node's timeout with a fresh connection handle.
    pub(crate) async fn call<T, F, Fut>(&self, call: F) -> Result<T, LockError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let backend = self.backend;
        let conn = self.conn.clone();
        with_timeout(backend, self.timeout, async move {
            call(conn).await.map_err(|e| map(backend, e))
        })
        .await
    }

    /// One acquire script: `SET NX PX` of `owner` (with the server's time
    /// and the node's [holder label](RedisNode::with_holder)) plus the
    /// fencing counter's `INCR`. Records nothing about time: take the sent
    /// instant before.
    ///
    /// Not cancel safe on its own: dropped (or timed out) after the script
    /// was sent, the key may be taken for `owner` until its TTL. Callers that
    /// may drop it give the key back with [`RedisNode::release_raw`] for the
    /// same owner, on this node (the connection keeps the order, so the
    /// delete runs after the acquire), as `RedisBackend` and Redlock do.
    pub async fn try_acquire_raw(
        &self,
        key: &Key,
        owner: &OwnerToken,
        ttl: Duration,
    ) -> Result<AcquireOutcome, LockError> {
        let ttl_ms = ttl_millis(self.backend, ttl)?;
        let (lock, fence) = (self.layout.lock_key(key), self.layout.fence_key(key));
        let (owner, holder) = (owner.to_hex(), self.holder.clone());
        let (won, counter, pttl, prefix): (i64, i64, i64, String) = self
            .call(|mut conn| async move {
                scripts::acquire()
                    .key(lock)
                    .key(fence)
                    .arg(owner)
                    .arg(ttl_ms)
                    .arg(&*holder)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        let token = FencingToken(counter.max(0) as u64);
        Ok(if won == 1 {
            AcquireOutcome::Acquired(token)
        } else {
            AcquireOutcome::Held(holder_info(prefix, pttl, counter))
        })
    }

    /// Compare-and-delete plus `PUBLISH` on the namespace's release channel.
    /// Cancel safety: dropped, it may or may not have run; running it again
    /// is harmless (`Free` the second time).
    pub async fn release_raw(&self, key: &Key, owner: &OwnerToken) -> Result<Ownership, LockError> {
        let lock = self.layout.lock_key(key);
        let (owner, channel) = (owner.to_hex(), self.layout.channel());
        let reply: i64 = self
            .call(|mut conn| async move {
                scripts::release()
                    .key(lock)
                    .arg(owner)
                    .arg(channel)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        Ok(Ownership::from_reply(reply))
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
        let lock = self.layout.lock_key(key);
        let owner = owner.to_hex();
        let reply: i64 = self
            .call(|mut conn| async move {
                scripts::extend()
                    .key(lock)
                    .arg(owner)
                    .arg(ttl_ms)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
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
        let mut results = Vec::with_capacity(renewals.len());
        for (batch, ttls) in renewals.chunks(EXTEND_BATCH).zip(ttls.chunks(EXTEND_BATCH)) {
            let mut invocation = scripts::extend_many().prepare_invoke();
            for ((key, owner, _), ttl_ms) in batch.iter().zip(ttls) {
                invocation
                    .key(self.layout.lock_key(key))
                    .arg(owner.to_hex())
                    .arg(*ttl_ms);
            }
            let replies: Vec<i64> = self
                .call(|mut conn| async move { invocation.invoke_async(&mut conn).await })
                .await?;
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
            results.extend(replies.into_iter().map(Ownership::from_reply));
        }
        Ok(results)
    }

    /// Raises `key`'s fencing counter to at least `token`, never lowering it
    /// ([`scripts::RAISE_SRC`]); `true` if it was raised. Cancel safety:
    /// dropped, it may or may not have run; running it again is harmless.
    pub async fn raise_raw(&self, key: &Key, token: FencingToken) -> Result<bool, LockError> {
        let fence = self.layout.fence_key(key);
        let raised: i64 = self
            .call(|mut conn| async move {
                scripts::raise()
                    .key(fence)
                    .arg(token.get())
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        Ok(raised == 1)
    }

    /// Asks the server about persistence and eviction with `CONFIG GET`. A
    /// refused or failed `CONFIG` yields unknown fields (so: not durable, and
    /// [`SafetyFinding::Unverified`](crate::SafetyFinding::Unverified)), never an error. Read-only; cancel safe.
    pub async fn persistence(&self) -> Persistence {
        let config: Result<HashMap<String, String>, LockError> = self
            .call(|mut conn| async move {
                redis::cmd("CONFIG")
                    .arg("GET")
                    .arg("appendonly")
                    .arg("appendfsync")
                    .arg("maxmemory-policy")
                    .arg("maxmemory")
                    .query_async(&mut conn)
                    .await
            })
            .await;
        match config {
            Ok(config) => Persistence {
                appendonly: config.get("appendonly").map(|v| v == "yes"),
                appendfsync: config.get("appendfsync").cloned(),
                maxmemory_policy: config.get("maxmemory-policy").cloned(),
                maxmemory: config.get("maxmemory").and_then(|v| v.parse().ok()),
            },
            Err(error) => {
                tracing::debug!(%error, "CONFIG GET refused; fencing counted as not durable");
                Persistence::default()
            }
        }
    }
}

/// The connection's own timeouts match the per-call one; reconnects back off
/// up to 1 s and are retried on every later call.
fn manager_config(timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(1))
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
