//! `EtcdBackend`: the thin [`LockBackend`] over the queue (`queue.rs`)
//! and the store (`store.rs`).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};
use leasehold_core::config::BackendConfig;
use leasehold_core::{
    Capabilities, Expiry, Fairness, Fencing, Key, Lease, ListPage, ListQuery, LockBackend,
    LockError, LockInfo, LockKind, ReleaseListener, WaitPolicy, Waiting,
};

use crate::NAME;
use crate::config::EtcdConfig;
use crate::error::map;
use crate::keys::LockKeys;
use crate::queue::{Held, first_kv};
use crate::reaper::{Reaper, marker_put};
use crate::session::{Renewal, Session};
use crate::store::Store;

/// etcd's default `--max-txn-ops`: renewal checks are sent in chunks of it.
const MAX_TXN_OPS: usize = 128;

/// How often queued waiters woke up, by cause (see
/// [`EtcdBackend::wake_counts`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WakeCounts {
    /// The watch on the predecessor's key delivered its deletion.
    pub watch: u64,
    /// The fallback poll timer fired (a lost or slow watch event).
    pub poll: u64,
    /// A re-read without an event: the watch was created after the store had
    /// moved on, it was cancelled or broke, or the waiter's session ended.
    pub recheck: u64,
}

/// Locks on etcd v3: FIFO queues by create revision, watch-driven handoff,
/// the holder key's create revision as fencing token.
///
/// Each acquisition writes one key `namespace + encoded key + "/" + owner
/// token`, attached to a *session lease* shared by this backend's locks of
/// the same TTL; the key with the lowest create revision under the lock's
/// prefix holds the lock, and each waiter watches only the key just before
/// its own. See the crate docs for the guarantees and their limits.
#[derive(Clone)]
pub struct EtcdBackend {
    pub(crate) store: Arc<Store>,
}

impl fmt::Debug for EtcdBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdBackend")
            .field("namespace", &self.store.namespace)
            .field("timeout", &self.store.timeout)
            .field("min_ttl_secs", &self.store.min_ttl_secs)
            .finish_non_exhaustive()
    }
}

/// The id of the etcd lease (the session) that keeps `lease`'s queue entry
/// alive, or `None` for a lease this backend did not make. For tooling and
/// tests: revoking that etcd lease (`etcdctl lease revoke <id as hex>`, or
/// `Client::lease_client().revoke(id)`) ends the session, deletes every entry
/// on it, and fires the loss signal of every lease on it within a round trip
/// (the session key's watch), at the latest when the session's TTL runs out.
/// It is shared by the backend's locks of the same TTL: revoking it ends them
/// all.
pub fn lease_id(lease: &Lease) -> Option<i64> {
    lease.handle::<Held>().map(|held| held.session.id)
}

impl EtcdBackend {
    /// Connects by URL (see [`EtcdConfig::from_url`](BackendConfig::from_url)
    /// for the options): `etcd://[user:password@]h1:p1,h2:p2[?namespace=..&timeout=..&poll=..]`,
    /// `etcds://..?ca=..&cert=..&key=..` for TLS (the `tls` feature; the
    /// files are read here). No error shows the password (percent-encode
    /// `/ ? @ ,` in it).
    pub async fn connect(url: &str) -> Result<Self, LockError> {
        Self::connect_with(EtcdConfig::from_url(url)?).await
    }

    /// Connects with `config`. Probes etcd's minimum lease TTL once (a grant
    /// and a revoke), so a store that does not answer fails here with
    /// `Unavailable`.
    pub async fn connect_with(config: EtcdConfig) -> Result<Self, LockError> {
        Ok(EtcdBackend {
            store: Arc::new(Store::connect(config).await?),
        })
    }

    /// Wraps an existing client; of `config`, everything but the endpoints,
    /// the user and TLS applies.
    pub async fn from_client(client: Client, config: EtcdConfig) -> Result<Self, LockError> {
        Ok(EtcdBackend {
            store: Arc::new(Store::from_client(client, config).await?),
        })
    }

    /// The etcd client (for tooling and tests).
    pub fn client(&self) -> &Client {
        &self.store.client
    }

    /// The configuration this backend was made from.
    pub fn config(&self) -> &EtcdConfig {
        &self.store.config
    }

    /// The etcd key prefix under which `key`'s queue lives (`namespace +
    /// key with % and / percent-encoded + "/"`), for tooling: the entry with
    /// the lowest create revision under it holds the lock.
    pub fn lock_prefix(&self, key: &Key) -> Vec<u8> {
        LockKeys::new(&self.store.namespace, key).prefix
    }

    /// The smallest TTL etcd grants here; smaller TTLs are rounded up to it.
    pub fn min_ttl(&self) -> Duration {
        Duration::from_secs(self.store.min_ttl_secs)
    }

    /// How often this backend's queued waiters woke, by cause. A healthy
    /// store wakes waiters by `watch`; `poll` counts only lost or late events.
    pub fn wake_counts(&self) -> WakeCounts {
        let w = &self.store.wakes;
        WakeCounts {
            watch: w.watch.load(Ordering::Relaxed),
            poll: w.poll.load(Ordering::Relaxed),
            recheck: w.recheck.load(Ordering::Relaxed),
        }
    }

    /// Each entry's (create revision, lease), or `None` where it is gone.
    async fn read_entries(&self, held: &[&Held]) -> Result<Vec<Option<(i64, i64)>>, LockError> {
        let ops: Vec<TxnOp> = held
            .iter()
            .map(|h| TxnOp::get(h.entry.clone(), Some(GetOptions::new().with_keys_only())))
            .collect();
        let response = self
            .store
            .txn(Txn::new().and_then(ops))
            .await
            .map_err(map)?;
        Ok(response
            .op_responses()
            .into_iter()
            .map(|r| first_kv(Some(&r)).map(|kv| (kv.create_revision(), kv.lease())))
            .collect())
    }
}

#[async_trait]
impl LockBackend for EtcdBackend {
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
            .min_ttl(self.min_ttl())
            .ttl_granularity(Duration::from_secs(1))
            .atomic_multi_key(false)
            .holder_info(true)
            .batch_extend(true)
            .rw_locks(true)
            .semaphores(true)
    }

    /// One txn that writes our entry only if the lock's queue is empty (see
    /// `queue.rs`). Cancel safe.
    async fn try_acquire(&self, key: &Key, ttl: Duration) -> Result<Lease, LockError> {
        self.store.try_lock(key, ttl).await
    }

    /// Its own queue: waits on a watch of the predecessor (see
    /// `queue.rs`). Cancel safe.
    async fn acquire(
        &self,
        key: &Key,
        ttl: Duration,
        wait: &WaitPolicy,
    ) -> Result<Lease, LockError> {
        self.store.lock(key, ttl, wait).await
    }

    /// The mutex is `try_acquire`; readers, writers and permits put an
    /// entry ranked by create revision under the lock's own prefix (see
    /// `shared.rs`). Cancel safe.
    async fn try_acquire_kind(
        &self,
        key: &Key,
        kind: LockKind,
        ttl: Duration,
    ) -> Result<Lease, LockError> {
        self.capabilities().check_kind(self.name(), kind)?;
        match kind {
            LockKind::Exclusive => self.try_acquire(key, ttl).await,
            kind => self.store.try_share(key, kind, ttl).await,
        }
    }

    /// Waits on a watch of the entries that can block it (see `shared.rs`);
    /// a waiting writer's entry keeps later readers out. Cancel safe.
    async fn acquire_kind(
        &self,
        key: &Key,
        kind: LockKind,
        ttl: Duration,
        wait: &WaitPolicy,
    ) -> Result<Lease, LockError> {
        self.capabilities().check_kind(self.name(), kind)?;
        match kind {
            LockKind::Exclusive => self.acquire(key, ttl, wait).await,
            kind => self.store.share(key, kind, ttl, wait).await,
        }
    }

    /// A keep-alive of the lease's session and a read of its entry. Writes
    /// nothing: cancel safe.
    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<Lease, LockError> {
        self.extend_many(&[(lease.clone(), ttl)])
            .await?
            .pop()
            .unwrap_or_else(|| Err(LockError::backend(NAME, "no renewal result")))
    }

    /// One keep-alive per session renews every lock on it; one transaction
    /// (per 128 locks) confirms every lock's entry still exists. Writes
    /// nothing: cancel safe. When no read got through, the whole call fails.
    async fn extend_many(
        &self,
        renewals: &[(Lease, Duration)],
    ) -> Result<Vec<Result<Lease, LockError>>, LockError> {
        let held: Vec<Option<&Held>> = renewals.iter().map(|(l, _)| l.handle::<Held>()).collect();
        let mut sessions: Vec<Arc<Session>> = Vec::new();
        for h in held.iter().flatten() {
            if !sessions.iter().any(|s| Arc::ptr_eq(s, &h.session)) {
                sessions.push(h.session.clone());
            }
        }
        let entries: Vec<&Held> = held.iter().flatten().copied().collect();
        let keep_alives =
            futures_util::future::join_all(sessions.iter().map(|s| self.store.renew_if(s, true)));
        let checks = futures_util::future::join_all(
            entries
                .chunks(MAX_TXN_OPS)
                .map(|chunk| self.read_entries(chunk)),
        );
        let (keep_alives, mut checks) = tokio::join!(keep_alives, checks);
        if !checks.is_empty() && checks.iter().all(Result::is_err) {
            let error = checks.swap_remove(0).err();
            return Err(error.unwrap_or_else(|| LockError::backend(NAME, "no renewal read")));
        }
        let mut found = entries
            .chunks(MAX_TXN_OPS)
            .zip(checks)
            .flat_map(|(chunk, result)| match result {
                Ok(kvs) => kvs.into_iter().map(Ok).collect::<Vec<_>>(),
                Err(error) => chunk.iter().map(|_| Err(error.to_string())).collect(),
            });
        Ok(renewals
            .iter()
            .zip(held)
            .map(|((lease, ttl), held)| {
                let key = lease.key().as_str();
                self.store.ttl_secs(*ttl)?;
                let Some(held) = held else {
                    return Err(LockError::not_held(NAME, key));
                };
                let found = found
                    .next()
                    .ok_or_else(|| LockError::backend(NAME, "a renewal read went missing"))?;
                let keep_alive = sessions
                    .iter()
                    .position(|s| Arc::ptr_eq(s, &held.session))
                    .and_then(|index| keep_alives.get(index))
                    .ok_or_else(|| LockError::backend(NAME, "a session keep-alive went missing"))?;
                let renewed_at = match keep_alive {
                    Ok(Renewal::Alive(at)) => *at,
                    Ok(Renewal::Gone) => {
                        return Err(LockError::lost(
                            NAME,
                            key,
                            "the session lease expired; etcd deleted the lock",
                        ));
                    }
                    Err(error) => return Err(LockError::unavailable(NAME, error.to_string())),
                };
                match found {
                    Err(error) => Err(LockError::unavailable(NAME, error)),
                    Ok(Some((create_revision, lease_id)))
                        if create_revision == held.create_revision
                            && lease_id == held.session.id =>
                    {
                        // etcd cannot change a lease's TTL: the renewal lasts
                        // the session's TTL, and the lease says so.
                        Ok(lease.renewed(renewed_at, held.session.ttl, self.store.drift))
                    }
                    Ok(_) => Err(LockError::lost(
                        NAME,
                        key,
                        "the lock's etcd key was deleted",
                    )),
                }
            })
            .collect())
    }

    /// Deletes our entry: a plain delete that must find it, or, when a txn
    /// putting it once went unanswered, a compare-and-delete that also
    /// writes its retirement marker. A release whose answer is lost is
    /// finished by a background task. Cancel safe: dropped, the entry stays
    /// with the lease, which can be released again.
    async fn release(&self, lease: &Lease) -> Result<(), LockError> {
        let Some(held) = lease.handle::<Held>() else {
            return Err(LockError::not_held(NAME, lease.key().as_str()));
        };
        let reaper = || {
            let mut reaper = Reaper::arm(
                &self.store.client,
                self.store.timeout,
                &self.store.markers,
                held.entry.clone(),
                held.session.clone(),
            );
            if !held.uncertain {
                reaper.answered(); // a late delete revives nothing
            }
            reaper
        };
        let released = if held.uncertain {
            // A copy of the acquiring txn may still arrive: retire the entry
            // in the txn that deletes it.
            let marker = match self
                .store
                .markers
                .get(&self.store.client, self.store.timeout)
                .await
            {
                Ok(id) => marker_put(&held.entry, id),
                Err(error) => {
                    drop(reaper()); // retires it in the background
                    return Err(error);
                }
            };
            let release = Txn::new()
                .when([Compare::create_revision(
                    held.entry.clone(),
                    CompareOp::Equal,
                    held.create_revision,
                )])
                .and_then([TxnOp::delete(held.entry.clone(), None), marker]);
            self.store.txn(release).await.map(|r| r.succeeded())
        } else {
            // Every put of the entry was answered, and its name (the
            // acquisition's owner token) is written by nothing else: found,
            // it is still the one granted, so a plain delete is the
            // compare-and-delete, and cheaper for etcd.
            self.store.delete(held.entry.clone()).await.map(|n| n == 1)
        };
        match released {
            Ok(true) => Ok(()),
            Ok(false) => Err(LockError::not_held(NAME, lease.key().as_str())),
            Err(error) => {
                let error = map(error);
                if error.is_retryable() {
                    // The entry must go even if the caller gives up: a
                    // shared session would keep it alive.
                    drop(reaper());
                }
                Err(error)
            }
        }
    }

    /// Reads the queue head (with the holder label) and the queue's length.
    /// Writes nothing: cancel safe.
    async fn inspect(&self, key: &Key) -> Result<Option<LockInfo>, LockError> {
        let keys = LockKeys::new(&self.store.namespace, key);
        let head = self.store.heads(&[keys]).await?.pop().flatten();
        Ok(head.map(|head| head.info))
    }

    /// A range read of queue entries under the prefix, then each listed
    /// lock's head (see `admin.rs`). Writes nothing: cancel safe.
    async fn list(&self, query: &ListQuery) -> Result<ListPage, LockError> {
        self.store.list(query).await
    }

    /// Deletes (and retires) the head entry if it is still the head (see
    /// `admin.rs`). The next entry's owner, woken by its watch, holds the
    /// lock with a higher token. One txn: cancel safe.
    async fn force_release(&self, key: &Key, _reason: &str) -> Result<Option<LockInfo>, LockError> {
        self.store.force_release(key).await
    }

    /// None: waiters watch their predecessor's deletion themselves.
    fn release_listener(&self, _key: &Key) -> Option<ReleaseListener> {
        None
    }
}
