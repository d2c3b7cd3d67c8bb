//! `EtcdBackend`: the `LockBackend` on etcd v3.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, GetOptions, KeyValue, PutOptions, SortOrder, SortTarget, Txn,
    TxnOp, TxnOpResponse, TxnResponse,
};
use leasehold_core::{
    Capabilities, Expiry, Fairness, Fencing, FencingToken, Key, Lease, LockBackend, LockError,
    LockInfo, OwnerToken, RetryPolicy, Waiting, with_timeout,
};
use tokio::time::Instant;

use crate::NAME;
use crate::keys::LockKeys;
use crate::options::EtcdOptions;
use crate::reaper::{MarkerLease, Reaper, marker_put};
use crate::session::{Renewal, Session};

/// etcd's default `--max-txn-ops`: renewal checks are sent in chunks of it.
const MAX_TXN_OPS: usize = 128;

/// What [`Lease::handle`] holds for an etcd lease.
#[derive(Debug)]
pub(crate) struct Held {
    pub session: Arc<Session>,
    pub entry: Vec<u8>,
    pub create_revision: i64,
    /// A txn that could have put the entry went unanswered: a late copy
    /// could revive it after the release, so the release retires it.
    pub uncertain: bool,
}

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

#[derive(Debug, Default)]
pub(crate) struct WakeCounters {
    pub(crate) watch: AtomicU64,
    pub(crate) poll: AtomicU64,
    pub(crate) recheck: AtomicU64,
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
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) client: Client,
    pub(crate) options: EtcdOptions,
    /// The smallest TTL etcd grants, in whole seconds (probed at connect).
    min_ttl_secs: u64,
    sessions: Mutex<HashMap<u64, Arc<Session>>>,
    /// The short lease retirement markers live on.
    pub(crate) markers: Arc<MarkerLease>,
    pub(crate) wakes: WakeCounters,
}

impl fmt::Debug for EtcdBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdBackend")
            .field("namespace", &self.inner.options.namespace)
            .field("operation_timeout", &self.inner.options.operation_timeout)
            .field("min_ttl_secs", &self.inner.min_ttl_secs)
            .finish_non_exhaustive()
    }
}

/// Maps an etcd client error: transport trouble and etcd's transient answers
/// are `Unavailable`, the rest `Backend`.
pub(crate) fn store_error(error: etcd_client::Error) -> LockError {
    use etcd_client::Error as E;
    match &error {
        E::TransportError(_) | E::IoError(_) | E::EndpointError(_) => {
            LockError::unavailable(NAME, error)
        }
        E::GRpcStatus(status) if transient(status.code()) => LockError::unavailable(NAME, error),
        E::WatchError(_) | E::LeaseKeepAliveError(_) => LockError::unavailable(NAME, error),
        _ => LockError::backend(NAME, error),
    }
}

/// gRPC codes worth retrying: Cancelled (1), Unknown (2), DeadlineExceeded
/// (4), ResourceExhausted (8), Aborted (10), Unavailable (14). etcd answers
/// "no leader" and "leader changed" with Unavailable.
fn transient<C: Into<i32>>(code: C) -> bool {
    matches!(code.into(), 1 | 2 | 4 | 8 | 10 | 14)
}

pub(crate) fn lease_not_found(error: &etcd_client::Error) -> bool {
    matches!(error, etcd_client::Error::GRpcStatus(status) if status.message().contains("lease not found"))
}

/// The key that lives as long as the session lease `id`:
/// `namespace + NUL + "session/" + id in hex`. Keys have no control
/// characters, so it lies in no lock's range and is no retirement marker.
pub(crate) fn session_key(namespace: &str, id: i64) -> Vec<u8> {
    let mut key = namespace.as_bytes().to_vec();
    key.extend_from_slice(format!("\0session/{id:016x}").as_bytes());
    key
}

pub(crate) fn revision(response: &TxnResponse) -> i64 {
    response.header().map_or(0, |h| h.revision())
}

pub(crate) fn first_kv(response: Option<&TxnOpResponse>) -> Option<KeyValue> {
    match response? {
        TxnOpResponse::Get(get) => get.kvs().first().cloned(),
        _ => None,
    }
}

fn queue_range(keys: &LockKeys) -> GetOptions {
    GetOptions::new()
        .with_range(keys.range_end())
        .with_keys_only()
}

/// The queue head: the entry with the lowest create revision.
pub(crate) fn head(keys: &LockKeys) -> GetOptions {
    queue_range(keys)
        .with_sort(SortTarget::Create, SortOrder::Ascend)
        .with_limit(1)
}

/// The newest entry created at or before `max_revision` (the predecessor of
/// an entry created at `max_revision + 1`).
pub(crate) fn newest(keys: &LockKeys, max_revision: Option<i64>) -> GetOptions {
    let options = queue_range(keys)
        .with_sort(SortTarget::Create, SortOrder::Descend)
        .with_limit(1);
    match max_revision {
        Some(max) => options.with_max_create_revision(max),
        None => options,
    }
}

impl EtcdBackend {
    /// Connects by URL: `etcd://[user:password@]h1:p1,h2:p2[?namespace=..&timeout=..&poll=..]`,
    /// `etcds://` for TLS (the `tls` feature). `timeout` bounds every store
    /// call (default 5 s); `poll` is the fallback poll of queued waiters;
    /// `drift_factor` and `drift_fixed` set the drift allowance. Durations
    /// take a unit (`250ms`, `2s`, `1m`; a bare number is an error), an
    /// unknown option is a `Config` error naming the closest known one, and
    /// no error shows the password (percent-encode `/ ? @ ,` in it).
    pub async fn connect(url: &str) -> Result<Self, LockError> {
        Self::connect_with(url, EtcdOptions::new()).await
    }

    /// Connects by URL; options given in the URL override `options`.
    pub async fn connect_with(url: &str, mut options: EtcdOptions) -> Result<Self, LockError> {
        let parsed = crate::options::parse_url(url)?;
        if let Some(namespace) = parsed.namespace {
            options = options.namespace(namespace);
        }
        if let Some(timeout) = parsed.timeout {
            options = options.operation_timeout(timeout);
        }
        if let Some(poll) = parsed.poll {
            options = options.poll_interval(poll);
        }
        if let Some((name, password)) = parsed.user {
            options.user = Some((name, password));
        }
        if parsed.drift_factor.is_some() || parsed.drift_fixed.is_some() {
            let drift = options.drift;
            options = options.drift(leasehold_core::Drift {
                factor: parsed.drift_factor.unwrap_or(drift.factor),
                fixed: parsed.drift_fixed.unwrap_or(drift.fixed),
            });
        }
        if parsed.tls {
            options = options.tls(true);
        }
        Self::connect_endpoints(&parsed.endpoints, options).await
    }

    /// Connects to `endpoints` (`http://host:port` or `host:port`).
    pub async fn connect_endpoints(
        endpoints: &[String],
        options: EtcdOptions,
    ) -> Result<Self, LockError> {
        let mut connect = etcd_client::ConnectOptions::new()
            .with_connect_timeout(options.operation_timeout)
            .with_keep_alive(Duration::from_secs(10), options.operation_timeout);
        if let Some((name, password)) = &options.user {
            connect = connect.with_user(name.clone(), password.expose().to_owned());
        }
        let endpoints = tls_endpoints(endpoints, &options, &mut connect)?;
        let client = with_timeout(NAME, options.operation_timeout, async {
            Client::connect(endpoints, Some(connect))
                .await
                .map_err(store_error)
        })
        .await?;
        Self::from_client(client, options).await
    }

    /// Wraps an existing client. Probes etcd's minimum lease TTL once (a
    /// grant and a revoke), so a store that does not answer fails here with
    /// `Unavailable`.
    pub async fn from_client(client: Client, options: EtcdOptions) -> Result<Self, LockError> {
        let timeout = options.operation_timeout;
        let mut lease = client.lease_client();
        let min_ttl_secs = with_timeout(NAME, timeout, async move {
            let granted = lease.grant(1, None).await.map_err(store_error)?;
            let _ = lease.revoke(granted.id()).await;
            Ok(granted.ttl().max(1) as u64)
        })
        .await?;
        Ok(EtcdBackend {
            inner: Arc::new(Inner {
                client,
                options,
                min_ttl_secs,
                sessions: Mutex::new(HashMap::new()),
                markers: Arc::new(MarkerLease::new(timeout)),
                wakes: WakeCounters::default(),
            }),
        })
    }

    /// The etcd client (for tooling and tests).
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// The etcd key prefix under which `key`'s queue lives (`namespace +
    /// key with % and / percent-encoded + "/"`), for tooling: the entry with
    /// the lowest create revision under it holds the lock.
    pub fn lock_prefix(&self, key: &Key) -> Vec<u8> {
        LockKeys::new(&self.inner.options.namespace, key).prefix
    }

    /// The smallest TTL etcd grants here; smaller TTLs are rounded up to it.
    pub fn min_ttl(&self) -> Duration {
        Duration::from_secs(self.inner.min_ttl_secs)
    }

    /// How often this backend's queued waiters woke, by cause. A healthy
    /// store wakes waiters by `watch`; `poll` counts only lost or late events.
    pub fn wake_counts(&self) -> WakeCounts {
        let w = &self.inner.wakes;
        WakeCounts {
            watch: w.watch.load(Ordering::Relaxed),
            poll: w.poll.load(Ordering::Relaxed),
            recheck: w.recheck.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn now(&self) -> Instant {
        self.inner.options.clock.now()
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.inner.options.operation_timeout
    }

    /// The TTL etcd will give a lock asked for `ttl`: whole seconds, rounded
    /// up, at least etcd's minimum. Zero and more than one year
    /// ([`MAX_DURATION`](leasehold_core::config::MAX_DURATION)) are
    /// `InvalidTtl`; a TTL between zero and etcd's minimum is raised to it
    /// (the lease reports the TTL granted), which is why the capabilities'
    /// `min_ttl` is etcd's minimum and not a limit on what may be asked.
    fn ttl_secs(&self, ttl: Duration) -> Result<u64, LockError> {
        if ttl.is_zero() {
            return Err(LockError::InvalidTtl {
                backend: NAME,
                ttl,
                reason: "must be greater than zero".into(),
            });
        }
        Capabilities::new()
            .min_ttl(Duration::from_nanos(1))
            .check_ttl(NAME, ttl)?;
        let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        Ok(secs.max(self.inner.min_ttl_secs))
    }

    /// A live session of `secs`, granting one if needed. The session is
    /// discarded once less than a third of its TTL is known to remain.
    pub(crate) async fn session(&self, secs: u64) -> Result<Arc<Session>, LockError> {
        let now = self.now();
        {
            let sessions = self.sessions();
            if let Some(session) = sessions.get(&secs)
                && !session.is_ended()
                && !session.older_than(session.ttl * 2 / 3, now)
            {
                return Ok(session.clone());
            }
        }
        let sent_at = self.now();
        let mut lease = self.inner.client.lease_client();
        let granted = with_timeout(NAME, self.timeout(), async move {
            lease.grant(secs as i64, None).await.map_err(store_error)
        })
        .await?;
        let ttl = Duration::from_secs(granted.ttl().max(1) as u64);
        let session = Arc::new(Session::new(granted.id(), ttl, sent_at));
        // The session key: its deletion tells the monitor the lease is gone.
        // Best effort: without it, keep-alives and the TTL end the session.
        let key = session_key(&self.inner.options.namespace, granted.id());
        let mut kv = self.inner.client.kv_client();
        let put = {
            let key = key.clone();
            let options = PutOptions::new().with_lease(granted.id());
            with_timeout(NAME, self.timeout(), async move {
                kv.put(key, "", Some(options)).await.map_err(store_error)
            })
            .await
        };
        let watch = match put {
            Ok(put) => Some((key, put.header().map_or(0, |h| h.revision()))),
            Err(error) => {
                tracing::debug!(%error, "writing the etcd session key failed");
                None
            }
        };
        session.spawn_monitor(&self.inner.client, watch);
        let mut sessions = self.sessions();
        match sessions.get(&secs) {
            // Someone granted one meanwhile: use theirs, ours expires unused.
            Some(existing) if !existing.is_ended() && existing.renewed_at() >= sent_at => {
                Ok(existing.clone())
            }
            _ => {
                sessions.insert(secs, session.clone());
                Ok(session)
            }
        }
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Session>>> {
        self.inner
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Sends a keep-alive of `session` if `needed`, else reports its last
    /// renewal.
    pub(crate) async fn renew_if(
        &self,
        session: &Session,
        needed: bool,
    ) -> Result<Renewal, LockError> {
        if !needed {
            return Ok(if session.is_ended() {
                Renewal::Gone
            } else {
                Renewal::Alive(session.renewed_at())
            });
        }
        let clock = self.inner.options.clock.clone();
        session
            .keep_alive(
                &self.inner.client,
                self.timeout(),
                move || clock.now(),
                Duration::ZERO,
            )
            .await
    }

    pub(crate) async fn txn(&self, txn: Txn) -> Result<TxnResponse, etcd_client::Error> {
        let mut kv = self.inner.client.kv_client();
        match tokio::time::timeout(self.timeout(), kv.txn(txn)).await {
            Ok(result) => result,
            Err(_) => Err(etcd_client::Error::IoError(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "no answer within the operation timeout of {:?}",
                    self.timeout()
                ),
            ))),
        }
    }

    /// The lease for `held`, valid from `renewed_at` for its session's TTL.
    pub(crate) fn lease_from(
        &self,
        key: &Key,
        owner: OwnerToken,
        held: Held,
        renewed_at: Instant,
    ) -> Lease {
        let (ttl, ended) = (held.session.ttl, held.session.ended.clone());
        Lease::new(
            NAME,
            key.clone(),
            owner,
            FencingToken(held.create_revision as u64),
            renewed_at,
            ttl,
            self.inner.options.drift,
        )
        .with_handle(Arc::new(held))
        .with_loss_signal(ended)
    }

    /// What the store knows about the holder entry `holder` (best effort: the
    /// remaining TTL needs one more call).
    pub(crate) async fn holder_info(&self, keys: &LockKeys, holder: &KeyValue) -> LockInfo {
        let mut info = LockInfo::new(Some(FencingToken(holder.create_revision() as u64)), None);
        if let Some(owner) = keys.owner_of(holder.key()) {
            info = info.with_owner(&owner);
        }
        let mut lease = self.inner.client.lease_client();
        let id = holder.lease();
        let remaining = with_timeout(NAME, self.timeout(), async move {
            lease.time_to_live(id, None).await.map_err(store_error)
        })
        .await;
        if let Ok(response) = remaining
            && response.ttl() >= 0
        {
            info.remaining = Some(Duration::from_secs(response.ttl() as u64));
        }
        info
    }

    /// Each entry's (create revision, lease), or `None` where it is gone.
    async fn read_entries(&self, held: &[&Held]) -> Result<Vec<Option<(i64, i64)>>, LockError> {
        let ops: Vec<TxnOp> = held
            .iter()
            .map(|h| TxnOp::get(h.entry.clone(), Some(GetOptions::new().with_keys_only())))
            .collect();
        let response = self
            .txn(Txn::new().and_then(ops))
            .await
            .map_err(store_error)?;
        Ok(response
            .op_responses()
            .into_iter()
            .map(|r| first_kv(Some(&r)).map(|kv| (kv.create_revision(), kv.lease())))
            .collect())
    }
}

fn tls_endpoints(
    endpoints: &[String],
    options: &EtcdOptions,
    connect: &mut etcd_client::ConnectOptions,
) -> Result<Vec<String>, LockError> {
    #[cfg(feature = "tls")]
    if options.tls {
        *connect = std::mem::take(connect).with_tls(etcd_client::TlsOptions::new());
        return Ok(endpoints
            .iter()
            .map(|e| {
                if e.starts_with("http://") {
                    e.replacen("http://", "https://", 1)
                } else {
                    e.clone()
                }
            })
            .collect());
    }
    #[cfg(not(feature = "tls"))]
    if options.tls || endpoints.iter().any(|e| e.starts_with("https://")) {
        let _ = connect;
        return Err(LockError::Config(
            "TLS needs leasehold-etcd's `tls` cargo feature".into(),
        ));
    }
    Ok(endpoints.to_vec())
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
    }

    /// One txn that writes our entry only if the lock's queue is empty.
    /// Cancel safe: dropped before it returns, the entry (if the txn was
    /// applied) is deleted, or retired if the txn's answer never came, from a
    /// background task.
    async fn try_acquire(&self, key: &Key, ttl: Duration) -> Result<Lease, LockError> {
        let secs = self.ttl_secs(ttl)?;
        let keys = LockKeys::new(&self.inner.options.namespace, key);
        for _ in 0..2 {
            let session = self.session(secs).await?;
            let owner = OwnerToken::generate();
            let entry = keys.entry(&owner);
            // Only an empty queue is free: no write at all under contention.
            let attempt = Txn::new()
                .when([
                    Compare::create_revision(keys.prefix.clone(), CompareOp::Equal, 0)
                        .with_range(keys.range_end()),
                    LockKeys::not_retired(&entry),
                ])
                .and_then([TxnOp::put(
                    entry.clone(),
                    "",
                    Some(PutOptions::new().with_lease(session.id)),
                )])
                .or_else([TxnOp::get(keys.prefix.clone(), Some(head(&keys)))]);
            let mut reaper = Reaper::arm(
                &self.inner.client,
                self.timeout(),
                &self.inner.markers,
                entry.clone(),
                session.clone(),
            );
            let stale = session.older_than(session.ttl / 3, self.now());
            let (response, renewal) =
                tokio::join!(self.txn(attempt), self.renew_if(&session, stale));
            let response = match response {
                Ok(response) => {
                    reaper.answered();
                    response
                }
                Err(error) if lease_not_found(&error) => {
                    reaper.disarm();
                    session.end("etcd refused its lease");
                    continue;
                }
                // The txn may still be applied: the reaper retires the entry.
                Err(error) => return Err(store_error(error)),
            };
            if !response.succeeded() {
                reaper.disarm();
                let holder = first_kv(response.op_responses().first());
                let info = match &holder {
                    Some(kv) => Some(self.holder_info(&keys, kv).await),
                    None => None,
                };
                return Err(LockError::contended(NAME, key.as_str(), info));
            }
            match renewal {
                Ok(Renewal::Gone) => continue,
                Ok(Renewal::Alive(_)) | Err(_) => {}
            }
            reaper.disarm();
            let renewed_at = session.renewed_at();
            let held = Held {
                session,
                entry,
                create_revision: revision(&response),
                uncertain: false,
            };
            return Ok(self.lease_from(key, owner, held, renewed_at));
        }
        Err(LockError::unavailable(
            NAME,
            "etcd kept refusing freshly granted session leases",
        ))
    }

    /// Queues and waits (watch on the predecessor) until the lock is ours or
    /// `wait.deadline` passes; one attempt always happens, and a zero wait is
    /// `try_acquire` reported as `Timeout` when the key is held. Cancel safe:
    /// a dropped waiter's entry is deleted from a background task, so the key
    /// frees as soon as the holder releases (not when the TTL runs out).
    async fn acquire(
        &self,
        key: &Key,
        ttl: Duration,
        wait: &RetryPolicy,
    ) -> Result<Lease, LockError> {
        let secs = self.ttl_secs(ttl)?;
        if wait.deadline.is_zero() {
            // One attempt and no waiting: the same as `try_acquire` (no write
            // when the key is held), reported as the timeout it is.
            return match self.try_acquire(key, ttl).await {
                Err(LockError::Contended { key, .. }) => Err(LockError::Timeout {
                    backend: NAME,
                    key,
                    waited: Duration::ZERO,
                }),
                other => other,
            };
        }
        self.queue_and_wait(key, secs, wait).await
    }

    /// A keep-alive of the lease's session and a read of its entry. Writes
    /// nothing: cancel safe.
    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<Lease, LockError> {
        self.extend_many(&[(lease.clone(), ttl)])
            .await
            .pop()
            .unwrap_or_else(|| Err(LockError::backend(NAME, "no renewal result")))
    }

    /// One keep-alive per session renews every lock on it; one transaction
    /// (per 128 locks) confirms every lock's entry still exists. Writes
    /// nothing: cancel safe.
    async fn extend_many(&self, renewals: &[(Lease, Duration)]) -> Vec<Result<Lease, LockError>> {
        let held: Vec<Option<&Held>> = renewals.iter().map(|(l, _)| l.handle::<Held>()).collect();
        let mut sessions: Vec<Arc<Session>> = Vec::new();
        for h in held.iter().flatten() {
            if !sessions.iter().any(|s| Arc::ptr_eq(s, &h.session)) {
                sessions.push(h.session.clone());
            }
        }
        let entries: Vec<&Held> = held.iter().flatten().copied().collect();
        let keep_alives =
            futures_util::future::join_all(sessions.iter().map(|s| self.renew_if(s, true)));
        let checks = futures_util::future::join_all(
            entries
                .chunks(MAX_TXN_OPS)
                .map(|chunk| self.read_entries(chunk)),
        );
        let (keep_alives, checks) = tokio::join!(keep_alives, checks);
        let mut found = entries
            .chunks(MAX_TXN_OPS)
            .zip(checks)
            .flat_map(|(chunk, result)| match result {
                Ok(kvs) => kvs.into_iter().map(Ok).collect::<Vec<_>>(),
                Err(error) => chunk.iter().map(|_| Err(error.to_string())).collect(),
            });
        renewals
            .iter()
            .zip(held)
            .map(|((lease, ttl), held)| {
                let key = lease.key().as_str();
                self.ttl_secs(*ttl)?;
                let Some(held) = held else {
                    return Err(LockError::not_held(NAME, key));
                };
                let found = found.next().expect("one check per held entry");
                let index = sessions
                    .iter()
                    .position(|s| Arc::ptr_eq(s, &held.session))
                    .expect("every session was collected");
                let renewed_at = match &keep_alives[index] {
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
                        Ok(lease.renewed(renewed_at, held.session.ttl, self.inner.options.drift))
                    }
                    Ok(_) => Err(LockError::lost(
                        NAME,
                        key,
                        "the lock's etcd key was deleted",
                    )),
                }
            })
            .collect()
    }

    /// Compare-and-delete of our entry (with its retirement marker when the
    /// acquiring txn once went unanswered). A release whose answer is lost is
    /// finished by a background task. Cancel safe: dropped, the entry stays
    /// with the lease, which can be released again.
    async fn release(&self, lease: &Lease) -> Result<(), LockError> {
        let Some(held) = lease.handle::<Held>() else {
            return Err(LockError::not_held(NAME, lease.key().as_str()));
        };
        let reaper = || {
            let mut reaper = Reaper::arm(
                &self.inner.client,
                self.timeout(),
                &self.inner.markers,
                held.entry.clone(),
                held.session.clone(),
            );
            if !held.uncertain {
                reaper.answered(); // a late delete revives nothing
            }
            reaper
        };
        let mut ops = vec![TxnOp::delete(held.entry.clone(), None)];
        if held.uncertain {
            // A copy of the acquiring txn may still arrive: retire the entry.
            match self
                .inner
                .markers
                .get(&self.inner.client, self.timeout())
                .await
            {
                Ok(id) => ops.push(marker_put(&held.entry, id)),
                Err(error) => {
                    drop(reaper()); // retires it in the background
                    return Err(error);
                }
            }
        }
        let release = Txn::new()
            .when([Compare::create_revision(
                held.entry.clone(),
                CompareOp::Equal,
                held.create_revision,
            )])
            .and_then(ops);
        match self.txn(release).await {
            Ok(response) if response.succeeded() => Ok(()),
            Ok(_) => Err(LockError::not_held(NAME, lease.key().as_str())),
            Err(error) => {
                let error = store_error(error);
                if error.is_retryable() {
                    // The entry must go even if the caller gives up: a
                    // shared session would keep it alive.
                    drop(reaper());
                }
                Err(error)
            }
        }
    }

    /// Reads the queue head. Writes nothing: cancel safe.
    async fn inspect(&self, key: &Key) -> Result<Option<LockInfo>, LockError> {
        let keys = LockKeys::new(&self.inner.options.namespace, key);
        let mut kv = self.inner.client.kv_client();
        let prefix = keys.prefix.clone();
        let options = head(&keys);
        let response = with_timeout(NAME, self.timeout(), async move {
            kv.get(prefix, Some(options)).await.map_err(store_error)
        })
        .await?;
        match response.kvs().first() {
            Some(holder) => Ok(Some(self.holder_info(&keys, holder).await)),
            None => Ok(None),
        }
    }
}
