//! [`Link`]: how a [`RedisNode`](crate::RedisNode) reaches its server. A
//! direct link is one auto-reconnecting connection to one address; a
//! Sentinel link asks the sentinels where the master is, connects there,
//! and asks again when a call fails in a way a failover explains (no
//! connection, a timeout, `READONLY` from a demoted master, a write too few
//! replicas confirmed), replacing the connection once the sentinels name
//! another master. A cluster link is the client's cluster connection, which
//! routes by slot and follows the cluster's own failovers.
//!
//! After such a failure a Sentinel link trusts its address again only once
//! the sentinels have named a master: every call first waits for a look-up
//! that began after the failure ([`SentinelLink::settle`]). The connection
//! reconnects to the address it had, and a killed master restarted without
//! persistence comes back there as an *empty master* until the sentinels
//! demote it (seconds): a call that reached it would find no lock (a
//! holder's release answered `NotHeld`) and, without `min_replicas`, grant
//! keys other clients hold on the new master, with a counter started over.
//! So while the sentinels cannot be asked, calls are `Unavailable` rather
//! than sent to an address nobody vouched for.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use leasehold_core::{LockError, with_timeout};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::SentinelClient;

use crate::conn::NodeConnection;
use crate::error::{map, refuses_credentials};

/// How a node reaches its server; cheap to clone (clones share it).
#[derive(Clone)]
pub(crate) enum Link {
    /// One server at a fixed address.
    Direct {
        conn: ConnectionManager,
        client: Arc<redis::Client>,
    },
    /// The master a set of sentinels names.
    Sentinel(Arc<SentinelLink>),
    /// A Redis Cluster; `seed` is a client of its first seed node (the
    /// release subscription: classic pub/sub reaches every node).
    Cluster {
        conn: redis::cluster_async::ClusterConnection,
        seed: Arc<redis::Client>,
    },
}

impl Link {
    /// A link to one server at a fixed address.
    pub(crate) fn direct(conn: ConnectionManager, client: redis::Client) -> Self {
        Link::Direct {
            conn,
            client: Arc::new(client),
        }
    }

    /// The connection calls go through now.
    pub(crate) fn conn(&self) -> NodeConnection {
        match self {
            Link::Direct { conn, .. } => NodeConnection::Single(conn.clone()),
            Link::Sentinel(link) => NodeConnection::Single(link.current().conn),
            Link::Cluster { conn, .. } => NodeConnection::Cluster(conn.clone()),
        }
    }

    /// The client of the server calls go to now (for extra connections,
    /// e.g. pub/sub).
    pub(crate) fn client(&self) -> redis::Client {
        match self {
            Link::Direct { client, .. } => redis::Client::clone(client),
            Link::Sentinel(link) => link.current().client,
            Link::Cluster { seed, .. } => redis::Client::clone(seed),
        }
    }

    /// The address calls go to now (`host:port`).
    pub(crate) fn addr(&self) -> String {
        self.client().get_connection_info().addr().to_string()
    }

    /// Told that a call failed with `error`: a Sentinel link looks the
    /// master up again in the background when a failover could explain it.
    pub(crate) fn failed(&self, error: &LockError) {
        let Link::Sentinel(link) = self else {
            return;
        };
        let failover_like = match error {
            LockError::Unavailable { .. } => true,
            LockError::Backend { retryable, .. } => *retryable,
            _ => false,
        };
        if failover_like {
            link.failures.fetch_add(1, Ordering::AcqRel);
            // Look up now rather than at the next call, so the switch is
            // made even if no call comes; skipped while a look-up is in
            // flight (it, or the next call's, answers this failure).
            let link = link.clone();
            tokio::spawn(async move {
                if let Ok(mut sentinels) = link.sentinels.try_lock()
                    && !link.trusted()
                {
                    let _ = link.look_up(&mut sentinels).await;
                }
            });
        }
    }

    /// Waits until the link may be used: for a Sentinel link that saw a
    /// failover-like failure, until the sentinels have named the master
    /// since ([`SentinelLink::settle`]).
    pub(crate) async fn settle(&self) -> Result<(), LockError> {
        match self {
            // Boxed as `dyn`: the look-up's future is deep (proving it
            // `Send` inside every caller's future overflows the compiler's
            // query depth), and rare.
            Link::Sentinel(link) if !link.trusted() => {
                let look_up: futures_util::future::BoxFuture<'_, _> = Box::pin(link.settle());
                look_up.await
            }
            Link::Sentinel(_) | Link::Direct { .. } | Link::Cluster { .. } => Ok(()),
        }
    }
}

/// The connection's own timeouts match the per-call one; reconnects back off
/// up to 1 s and are retried on every later call.
pub(crate) fn manager_config(timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(1))
}

/// A Sentinel link's master connection: [`manager_config`], and with
/// RESP3 a push sender that counts each drop of the connection as a
/// failover-like failure. A RESP3 connection reconnects by itself as soon
/// as it drops, with no failing call to tell the link, so it could land on
/// a restarted old master unasked; a RESP2 one reconnects only after a call
/// failed on the dropped connection, which [`Link::failed`] counts.
fn master_config(
    client: &redis::Client,
    timeout: Duration,
    failures: &Arc<AtomicU64>,
) -> ConnectionManagerConfig {
    let config = manager_config(timeout);
    let protocol = client.get_connection_info().redis_settings().protocol();
    if !protocol.supports_resp3() {
        return config;
    }
    let failures = failures.clone();
    config.set_push_sender(move |push: redis::PushInfo| {
        if push.kind == redis::PushKind::Disconnection {
            failures.fetch_add(1, Ordering::AcqRel);
        }
        Ok::<(), std::convert::Infallible>(())
    })
}

/// The master in use: its client and connection.
#[derive(Clone)]
pub(crate) struct Master {
    client: redis::Client,
    conn: ConnectionManager,
}

/// A master found through sentinels, followed across failovers.
pub(crate) struct SentinelLink {
    sentinels: tokio::sync::Mutex<SentinelClient>,
    current: RwLock<Master>,
    switches: AtomicU64,
    /// Failover-like failures of calls (and, with RESP3, the master
    /// connection's drops: [`master_config`]), counted.
    failures: Arc<AtomicU64>,
    /// How many of [`SentinelLink::failures`] a successful look-up began
    /// after: the link is trusted while the two are equal.
    settled: AtomicU64,
    timeout: Duration,
    backend: &'static str,
}

impl SentinelLink {
    /// Asks `sentinels` for the master (each sentinel in turn; the master
    /// must answer `ROLE` as a master) and connects to it, within
    /// `timeout`.
    pub(crate) async fn connect(
        mut sentinels: SentinelClient,
        timeout: Duration,
        backend: &'static str,
    ) -> Result<Arc<Self>, LockError> {
        let failures = Arc::new(AtomicU64::new(0));
        let master = with_timeout(backend, timeout, async {
            let client = sentinels
                .async_get_client()
                .await
                .map_err(|e| map(backend, e))?;
            let config = master_config(&client, timeout, &failures);
            let conn = ConnectionManager::new_with_config(client.clone(), config)
                .await
                .map_err(|e| map(backend, e))?;
            Ok(Master { client, conn })
        })
        .await?;
        tracing::debug!(master = %master.client.get_connection_info().addr(), "redis sentinel: master found");
        Ok(Arc::new(SentinelLink {
            sentinels: tokio::sync::Mutex::new(sentinels),
            current: RwLock::new(master),
            switches: AtomicU64::new(0),
            failures,
            settled: AtomicU64::new(0),
            timeout,
            backend,
        }))
    }

    fn current(&self) -> Master {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// How many times the link moved to another master.
    pub(crate) fn switches(&self) -> u64 {
        self.switches.load(Ordering::Relaxed)
    }

    /// Asks the sentinels where the master is now (after any look-up in
    /// flight) and moves to it if it moved; `true` if the link switched.
    /// Bounded by the per-call timeout.
    pub(crate) async fn refresh(&self) -> Result<bool, LockError> {
        let mut sentinels = self.sentinels.lock().await;
        self.look_up(&mut sentinels).await
    }

    /// Returns at once while no failover-like failure is unanswered;
    /// after one, waits for the look-up in flight (one at a time) or makes
    /// one, and fails as it fails (the sentinels did not answer, or the
    /// master they named does not answer as a master). Not rate-limited:
    /// a call that would otherwise go to an unvouched address needs an
    /// answer of its own.
    pub(crate) async fn settle(&self) -> Result<(), LockError> {
        if self.trusted() {
            return Ok(());
        }
        let mut sentinels = self.sentinels.lock().await;
        if self.trusted() {
            return Ok(());
        }
        self.look_up(&mut sentinels).await.map(|_| ())
    }

    fn trusted(&self) -> bool {
        self.settled.load(Ordering::Acquire) >= self.failures.load(Ordering::Acquire)
    }

    /// One look-up (the caller holds the sentinels): moves to the master
    /// the sentinels name if it moved, `true` if it did; on success, every
    /// failure counted before it began is answered.
    async fn look_up(&self, sentinels: &mut SentinelClient) -> Result<bool, LockError> {
        let began_after = self.failures.load(Ordering::Acquire);
        let backend = self.backend;
        // Whatever the sentinels answer short of a master (none named
        // mid-failover, the named one not answering as a master), it is
        // the store being unavailable for now, never a refusal: a renewal
        // told otherwise would give its lease up as taken over. Only
        // credentials stay final.
        let client = with_timeout(backend, self.timeout, async {
            sentinels.async_get_client().await.map_err(|e| {
                if refuses_credentials(&e) {
                    map(backend, e)
                } else {
                    LockError::unavailable(
                        backend,
                        format!("the sentinels named no master that answers as one: {e}"),
                    )
                }
            })
        })
        .await?;
        let addr = client.get_connection_info().addr().to_string();
        let old = self.current();
        if old.client.get_connection_info().addr().to_string() == addr {
            self.settled.fetch_max(began_after, Ordering::AcqRel);
            return Ok(false);
        }
        let conn = ConnectionManager::new_lazy_with_config(
            client.clone(),
            master_config(&client, self.timeout, &self.failures),
        )
        .map_err(|e| map(backend, e))?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Master { client, conn };
        self.settled.fetch_max(began_after, Ordering::AcqRel);
        self.switches.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            from = %old.client.get_connection_info().addr(),
            to = %addr,
            "redis sentinel: the master moved (failover); calls go to the new master"
        );
        Ok(true)
    }
}
