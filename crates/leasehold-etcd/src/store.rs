//! The etcd plumbing under the queue: the client, the session leases (one per
//! TTL class, see [`Session`]) and their keep-alives, and bounded
//! transactions.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, PutOptions, Txn, TxnResponse};
use leasehold_core::{Capabilities, Drift, LockError, SharedClock, with_timeout};
use tokio::time::Instant;

use crate::NAME;
use crate::config::EtcdConfig;
use crate::error::map;
use crate::reaper::MarkerLease;
use crate::session::{Renewal, Session};

/// A connected etcd client and this backend's sessions.
pub(crate) struct Store {
    pub(crate) client: Client,
    /// The configuration it was made from.
    pub(crate) config: EtcdConfig,
    /// The holder label, the value of every queue entry this backend writes.
    pub(crate) holder: String,
    /// The namespace, ending with `/` (see [`EtcdConfig::namespace`]).
    pub(crate) namespace: String,
    /// The bound on each store call.
    pub(crate) timeout: Duration,
    /// The fallback poll of queued waiters.
    pub(crate) poll: Duration,
    pub(crate) drift: Drift,
    clock: SharedClock,
    /// The smallest TTL etcd grants, in whole seconds (probed at connect).
    pub(crate) min_ttl_secs: u64,
    /// One session per TTL class (whole seconds).
    sessions: Mutex<HashMap<u64, Arc<Session>>>,
    /// The short lease retirement markers live on.
    pub(crate) markers: Arc<MarkerLease>,
    pub(crate) wakes: WakeCounters,
}

/// How often queued waiters woke, by cause (read as
/// [`WakeCounts`](crate::WakeCounts)).
#[derive(Debug, Default)]
pub(crate) struct WakeCounters {
    pub(crate) watch: AtomicU64,
    pub(crate) poll: AtomicU64,
    pub(crate) recheck: AtomicU64,
}

impl Store {
    /// Connects a client to `config`'s endpoints (TLS and user as it says).
    pub(crate) async fn connect(config: EtcdConfig) -> Result<Self, LockError> {
        let timeout = config.timeout_value();
        let mut connect = etcd_client::ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_keep_alive(Duration::from_secs(10), timeout);
        if let Some((name, password)) = &config.user {
            connect = connect.with_user(name.clone(), password.expose().to_owned());
        }
        let endpoints = tls_endpoints(&config, &mut connect)?;
        let client = with_timeout(NAME, timeout, async {
            Client::connect(endpoints, Some(connect)).await.map_err(map)
        })
        .await?;
        Self::from_client(client, config).await
    }

    /// Wraps a client. Probes etcd's minimum lease TTL once (a grant and a
    /// revoke), so a store that does not answer fails here with
    /// `Unavailable`.
    pub(crate) async fn from_client(client: Client, config: EtcdConfig) -> Result<Self, LockError> {
        let timeout = config.timeout_value();
        let mut lease = client.lease_client();
        let min_ttl_secs = with_timeout(NAME, timeout, async move {
            let granted = lease.grant(1, None).await.map_err(map)?;
            let _ = lease.revoke(granted.id()).await;
            Ok(granted.ttl().max(1) as u64)
        })
        .await?;
        Ok(Store {
            client,
            namespace: config.namespace_str(),
            timeout,
            poll: config.poll_value(),
            drift: config.drift_value(),
            clock: config.clock.clone(),
            holder: config.shared.holder_or_default(),
            config,
            min_ttl_secs,
            sessions: Mutex::new(HashMap::new()),
            markers: Arc::new(MarkerLease::new(timeout)),
            wakes: WakeCounters::default(),
        })
    }

    pub(crate) fn now(&self) -> Instant {
        self.clock.now()
    }

    /// The TTL etcd will give a lock asked for `ttl`: whole seconds, rounded
    /// up, at least etcd's minimum. Zero and more than one year
    /// ([`MAX_DURATION`](leasehold_core::config::MAX_DURATION)) are
    /// `InvalidTtl`; a TTL between zero and etcd's minimum is raised to it
    /// (the lease reports the TTL granted), which is why the capabilities'
    /// `min_ttl` is etcd's minimum and not a limit on what may be asked.
    pub(crate) fn ttl_secs(&self, ttl: Duration) -> Result<u64, LockError> {
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
        Ok(secs.max(self.min_ttl_secs))
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
        let mut lease = self.client.lease_client();
        let granted = with_timeout(NAME, self.timeout, async move {
            lease.grant(secs as i64, None).await.map_err(map)
        })
        .await?;
        let ttl = Duration::from_secs(granted.ttl().max(1) as u64);
        let session = Arc::new(Session::new(granted.id(), ttl, sent_at));
        // The session key: its deletion tells the monitor the lease is gone.
        // Best effort: without it, keep-alives and the TTL end the session.
        let key = session_key(&self.namespace, granted.id());
        let mut kv = self.client.kv_client();
        let put = {
            let key = key.clone();
            let options = PutOptions::new().with_lease(granted.id());
            with_timeout(NAME, self.timeout, async move {
                kv.put(key, "", Some(options)).await.map_err(map)
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
        session.spawn_monitor(&self.client, watch);
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
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
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
        let clock = self.clock.clone();
        session
            .keep_alive(
                &self.client,
                self.timeout,
                move || clock.now(),
                Duration::ZERO,
            )
            .await
    }

    /// One txn under the operation timeout; the raw answer, for the callers
    /// that tell "lease not found" apart.
    pub(crate) async fn txn(&self, txn: Txn) -> Result<TxnResponse, etcd_client::Error> {
        let mut kv = self.client.kv_client();
        self.bounded(kv.txn(txn)).await
    }

    /// Deletes `key` under the operation timeout: how many keys went (0 or
    /// 1). Cheaper for etcd than a txn that compares first (about a tenth of
    /// the 64-task lock+unlock rate: `--bin etcd_queue_cost`).
    pub(crate) async fn delete(&self, key: Vec<u8>) -> Result<i64, etcd_client::Error> {
        let mut kv = self.client.kv_client();
        let deleted = self.bounded(kv.delete(key, None)).await?;
        Ok(deleted.deleted())
    }

    /// `call` under the operation timeout, a timeout being an I/O error.
    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, etcd_client::Error> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(etcd_client::Error::IoError(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "no answer within the operation timeout of {:?}",
                    self.timeout
                ),
            ))),
        }
    }

    /// The remaining TTL of the etcd lease `id`, if etcd tells within the
    /// operation timeout.
    pub(crate) async fn remaining(&self, id: i64) -> Option<Duration> {
        let mut lease = self.client.lease_client();
        let response = with_timeout(NAME, self.timeout, async move {
            lease.time_to_live(id, None).await.map_err(map)
        })
        .await
        .ok()?;
        (response.ttl() >= 0).then(|| Duration::from_secs(response.ttl() as u64))
    }

    /// Watches `pred` for its deletion from `read_at + 1`: starting after the
    /// read means a deletion cannot slip in between, and etcd serves the watch
    /// from its synced group (from an older revision etcd 3.4 serves it from a
    /// 100 ms catch-up loop). The flag says the store had moved past `read_at`
    /// when the watch was made (a deletion in between may arrive late), so the
    /// caller re-reads at once.
    pub(crate) async fn watch_deletion(
        &self,
        pred: &[u8],
        read_at: i64,
    ) -> Result<Option<(etcd_client::WatchStream, bool)>, LockError> {
        self.watch_deletions(pred, None, read_at).await
    }

    /// [`Store::watch_deletion`] of every key from `start` to `end`
    /// (exclusive) when `end` is given.
    pub(crate) async fn watch_deletions(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        read_at: i64,
    ) -> Result<Option<(etcd_client::WatchStream, bool)>, LockError> {
        let mut client = self.client.watch_client();
        let mut options = etcd_client::WatchOptions::new()
            .with_start_revision(read_at + 1)
            .with_filters([etcd_client::WatchFilterType::NoPut]);
        if let Some(end) = end {
            options = options.with_range(end.to_vec());
        }
        let target = start.to_vec();
        with_timeout(NAME, self.timeout, async move {
            let mut stream = client.watch(target, Some(options)).await.map_err(map)?;
            let Some(first) = stream.message().await.map_err(map)? else {
                return Ok(None);
            };
            let late = first.header().is_some_and(|h| h.revision() > read_at)
                || has_delete(&first)
                || first.canceled();
            Ok(Some((stream, late)))
        })
        .await
    }
}

/// Whether a watch response carries a deletion.
pub(crate) fn has_delete(response: &etcd_client::WatchResponse) -> bool {
    response
        .events()
        .iter()
        .any(|e| e.event_type() == etcd_client::EventType::Delete)
}

/// The key that lives as long as the session lease `id`:
/// `namespace + NUL + "session/" + id in hex`. Keys have no control
/// characters, so it lies in no lock's range and is no retirement marker.
fn session_key(namespace: &str, id: i64) -> Vec<u8> {
    let mut key = namespace.as_bytes().to_vec();
    key.extend_from_slice(format!("\0session/{id:016x}").as_bytes());
    key
}

/// The endpoints with `https://` when TLS is on, and the client's TLS
/// settings (the `ca`, `cert`, `key` files read) in `connect`. TLS asked for
/// in a build without the `tls` feature is a `Config` error naming it.
fn tls_endpoints(
    config: &EtcdConfig,
    connect: &mut etcd_client::ConnectOptions,
) -> Result<Vec<String>, LockError> {
    let endpoints = &config.endpoints;
    #[cfg(feature = "tls")]
    if config.tls || endpoints.iter().any(|e| e.starts_with("https://")) {
        let options = crate::tls::options(&config.tls_files)?;
        *connect = std::mem::take(connect).with_tls(options);
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
    if config.tls || endpoints.iter().any(|e| e.starts_with("https://")) {
        let _ = connect;
        return Err(LockError::Config(
            "TLS (etcds://, https:// endpoints, the ca/cert/key options) needs \
             leasehold-etcd's `tls` cargo feature (leasehold's `etcd` feature \
             turns it on)"
                .into(),
        ));
    }
    if !config.tls_files.is_empty() {
        return Err(LockError::Config(format!(
            "the etcd options {} need TLS: use etcds:// or EtcdConfig::tls(true)",
            config.tls_files.given()
        )));
    }
    Ok(endpoints.clone())
}
