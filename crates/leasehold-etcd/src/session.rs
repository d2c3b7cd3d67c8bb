//! Session leases: one etcd lease per backend and TTL, shared by every lock
//! (and queued waiter) of that TTL.
//!
//! Nothing renews a session on its own: `extend`/`extend_many` (the guard's
//! watchdog), a waiter that is still queued, and an acquisition that finds the
//! session older than a third of its TTL send the keep-alives. One keep-alive
//! renews every lock on the session. A session that nobody renews within its
//! TTL ends: its monitor cancels [`Session::ended`], which is every lease's
//! loss signal, and etcd deletes its keys. The monitor also watches the
//! session's own key (written on the session lease when it is granted), so a
//! lease revoked or expired on the store's side ends the session at once.

use std::sync::Mutex;
use std::time::Duration;

use etcd_client::Client;
use leasehold_core::{LockError, with_timeout};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::NAME;

/// One etcd lease shared by locks of one TTL.
#[derive(Debug)]
pub(crate) struct Session {
    pub id: i64,
    /// The TTL etcd granted (whole seconds, at least its minimum).
    pub ttl: Duration,
    /// When the last successful grant or keep-alive was *sent*: the lease
    /// lives at least until `renewed_at + ttl`.
    renewed_at: Mutex<Instant>,
    /// Cancelled when the session is known or presumed dead.
    pub ended: CancellationToken,
    /// Coalesces concurrent keep-alives.
    refreshing: tokio::sync::Mutex<()>,
}

/// What a keep-alive found.
#[derive(Debug)]
pub(crate) enum Renewal {
    /// Renewed; the request was sent at this instant.
    Alive(Instant),
    /// etcd no longer knows the lease: every key on it is gone.
    Gone,
}

impl Session {
    pub fn new(id: i64, ttl: Duration, granted_at: Instant) -> Self {
        Session {
            id,
            ttl,
            renewed_at: Mutex::new(granted_at),
            ended: CancellationToken::new(),
            refreshing: tokio::sync::Mutex::new(()),
        }
    }

    pub fn renewed_at(&self) -> Instant {
        *self.renewed_at.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record_renewal(&self, sent_at: Instant) {
        let mut renewed = self.renewed_at.lock().unwrap_or_else(|e| e.into_inner());
        if sent_at > *renewed {
            *renewed = sent_at;
        }
    }

    /// The earliest instant etcd may expire the lease, on our clock.
    pub fn expires_no_earlier_than(&self) -> Instant {
        leasehold_core::instant_after(self.renewed_at(), self.ttl)
    }

    pub fn is_ended(&self) -> bool {
        self.ended.is_cancelled()
    }

    pub fn end(&self, why: &str) {
        if !self.ended.is_cancelled() {
            tracing::debug!(lease = self.id, why, "etcd session ended");
            self.ended.cancel();
        }
    }

    /// Whether the last renewal is older than `age` at `now`.
    pub fn older_than(&self, age: Duration, now: Instant) -> bool {
        now.saturating_duration_since(self.renewed_at()) >= age
    }

    /// Sends one keep-alive, unless another caller renewed the session within
    /// `fresh` (then that renewal is reused).
    pub async fn keep_alive(
        &self,
        client: &Client,
        timeout: Duration,
        now: impl Fn() -> Instant,
        fresh: Duration,
    ) -> Result<Renewal, LockError> {
        if self.is_ended() {
            return Ok(Renewal::Gone);
        }
        let _turn = self.refreshing.lock().await;
        if !self.older_than(fresh, now()) {
            return Ok(Renewal::Alive(self.renewed_at()));
        }
        let sent_at = now();
        let mut lease = client.lease_client();
        let id = self.id;
        let result = with_timeout(NAME, timeout, async move {
            match lease.keep_alive(id).await {
                Ok(_) => Ok(Renewal::Alive(sent_at)),
                // The client turns a TTL of 0 (unknown lease) into this error.
                Err(etcd_client::Error::LeaseKeepAliveError(_)) => Ok(Renewal::Gone),
                Err(error) => Err(crate::error::map(error)),
            }
        })
        .await?;
        match result {
            Renewal::Alive(at) => self.record_renewal(at),
            Renewal::Gone => self.end("etcd says the lease is gone"),
        }
        Ok(result)
    }

    /// Ends the session when nobody renewed it within its TTL (etcd expires
    /// it then, deleting its keys), or as soon as etcd deletes its *session
    /// key* (`watch`: the key and the revision it was written at), which
    /// happens when the lease is revoked (an operator, a test's session
    /// ender) or expires: every lease on the session learns at once, not at
    /// the next keep-alive. One task and one watch per session, never per
    /// lock; the task ends with the session, or at its next check once the
    /// backend dropped the session. A broken watch is re-made (from the
    /// revision it was written at, so no deletion is missed) after a second;
    /// meanwhile keep-alives and the TTL still end the session.
    pub fn spawn_monitor(
        self: &std::sync::Arc<Self>,
        client: &Client,
        watch: Option<(Vec<u8>, i64)>,
    ) {
        let session = std::sync::Arc::downgrade(self);
        let ended = self.ended.clone();
        let client = client.clone();
        let mut watch = watch;
        tokio::spawn(async move {
            let mut stream: Option<etcd_client::WatchStream> = None;
            let mut retry_at = Instant::now();
            loop {
                if stream.is_none()
                    && let Some((key, revision)) = &watch
                    && Instant::now() >= retry_at
                {
                    let options = etcd_client::WatchOptions::new()
                        .with_start_revision(revision + 1)
                        .with_filters([etcd_client::WatchFilterType::NoPut]);
                    let mut watcher = client.watch_client();
                    let made = tokio::time::timeout(
                        Duration::from_secs(5),
                        watcher.watch(key.clone(), Some(options)),
                    )
                    .await;
                    match made {
                        Ok(Ok(made)) => stream = Some(made),
                        _ => {
                            retry_at = leasehold_core::instant_after(
                                Instant::now(),
                                Duration::from_secs(1),
                            )
                        }
                    }
                }
                let Some(mut until) = session.upgrade().map(|s| s.expires_no_earlier_than()) else {
                    return;
                };
                if stream.is_none() && watch.is_some() {
                    until = until.min(retry_at);
                }
                let deleted = async {
                    match stream.as_mut() {
                        Some(stream) => stream.message().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = ended.cancelled() => return,
                    () = tokio::time::sleep_until(until) => {}
                    message = deleted => match message {
                        Ok(Some(response)) if response
                            .events()
                            .iter()
                            .any(|e| e.event_type() == etcd_client::EventType::Delete) =>
                        {
                            if let Some(s) = session.upgrade() {
                                s.end("etcd deleted its session key: the lease was revoked or expired");
                            }
                            return;
                        }
                        Ok(Some(response)) if !response.canceled() => {}
                        Ok(Some(response)) if response.compact_revision() > 0 => {
                            // Compacted past the key's revision: a deletion in
                            // between is no longer in the history. Read the
                            // key instead, and watch on from that read.
                            stream = None;
                            if let Some((key, revision)) = watch.as_mut() {
                                let mut kv = client.kv_client();
                                let read = tokio::time::timeout(
                                    Duration::from_secs(5),
                                    kv.get(key.clone(), Some(etcd_client::GetOptions::new().with_count_only())),
                                )
                                .await;
                                match read {
                                    Ok(Ok(read)) if read.count() == 0 => {
                                        if let Some(s) = session.upgrade() {
                                            s.end("its etcd session key is gone: the lease was revoked or expired");
                                        }
                                        return;
                                    }
                                    Ok(Ok(read)) => {
                                        *revision = read.header().map_or(*revision, |h| h.revision());
                                    }
                                    _ => retry_at = leasehold_core::instant_after(Instant::now(), Duration::from_secs(1)),
                                }
                            }
                        }
                        _ => {
                            stream = None; // Broken or cancelled: made again soon.
                            retry_at = leasehold_core::instant_after(Instant::now(), Duration::from_secs(1));
                        }
                    },
                }
                match session.upgrade() {
                    Some(s) if Instant::now() >= s.expires_no_earlier_than() => {
                        s.end("not renewed within its TTL");
                        return;
                    }
                    Some(_) => continue,
                    None => return,
                }
            }
        });
    }
}
