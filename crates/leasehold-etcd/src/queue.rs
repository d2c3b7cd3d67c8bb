//! Waiting in a lock's queue: enqueue in one transaction, watch only the
//! predecessor's deletion, re-read and confirm the lease before claiming the
//! lock.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use leasehold_core::{Key, Lease, LockError, OwnerToken, RetryPolicy, with_timeout};
use tokio::time::Instant;

use crate::NAME;
use crate::backend::{EtcdBackend, first_kv, head, lease_not_found, newest, revision, store_error};
use crate::keys::LockKeys;
use crate::reaper::Reaper;
use crate::session::{Renewal, Session};

/// The result of reading the queue around our own entry.
struct Position {
    /// Our entry exists (attached to our session).
    present: bool,
    /// The entry just before ours, if any.
    predecessor: Option<Vec<u8>>,
    /// The revision the read was served at.
    revision: i64,
}

impl EtcdBackend {
    /// Reads our entry and its predecessor in one round trip.
    async fn position(
        &self,
        keys: &LockKeys,
        entry: &[u8],
        session: &Session,
        my_revision: i64,
    ) -> Result<Position, LockError> {
        let response = self
            .txn(Txn::new().and_then([
                TxnOp::get(entry.to_vec(), Some(GetOptions::new().with_keys_only())),
                TxnOp::get(
                    keys.prefix.clone(),
                    Some(newest(keys, Some(my_revision - 1))),
                ),
            ]))
            .await
            .map_err(store_error)?;
        let responses = response.op_responses();
        let own = first_kv(responses.first());
        Ok(Position {
            present: own
                .is_some_and(|kv| kv.create_revision() == my_revision && kv.lease() == session.id),
            predecessor: first_kv(responses.get(1)).map(|kv| kv.key().to_vec()),
            revision: revision(&response),
        })
    }

    /// Writes a fresh queue entry (one transaction, retried idempotently
    /// while time is left). `None`: start over (the session died).
    async fn enqueue(
        &self,
        keys: &LockKeys,
        secs: u64,
        deadline: Instant,
        backoff: &mut Backoff<'_>,
    ) -> Result<Option<Queued>, LockError> {
        let session = match self.session(secs).await {
            Ok(session) => session,
            Err(error) if error.is_retryable() && Instant::now() < deadline => {
                backoff.sleep(deadline).await;
                return Ok(None);
            }
            Err(error) => return Err(error),
        };
        let owner = OwnerToken::generate();
        let entry = keys.entry(&owner);
        let mut reaper = Reaper::arm(
            &self.inner.client,
            self.timeout(),
            &self.inner.markers,
            entry.clone(),
            session.clone(),
        );
        let put = TxnOp::put(
            entry.clone(),
            "",
            Some(PutOptions::new().with_lease(session.id)),
        );
        // Then: the head and the newest entry *before* our put, then the put.
        // Else (a retry whose first reply was lost): our entry and the head.
        let enqueue = Txn::new()
            .when([
                Compare::create_revision(entry.clone(), CompareOp::Equal, 0),
                LockKeys::not_retired(&entry),
            ])
            .and_then([
                TxnOp::get(keys.prefix.clone(), Some(head(keys))),
                TxnOp::get(keys.prefix.clone(), Some(newest(keys, None))),
                put,
            ])
            .or_else([
                TxnOp::get(entry.clone(), Some(GetOptions::new().with_keys_only())),
                TxnOp::get(keys.prefix.clone(), Some(head(keys))),
            ]);
        let stale = session.older_than(session.ttl / 3, self.now());
        let (mut enqueued, renewal) =
            tokio::join!(self.txn(enqueue.clone()), self.renew_if(&session, stale));
        let response = loop {
            match enqueued {
                Ok(response) => {
                    reaper.answered();
                    break response;
                }
                Err(error) if lease_not_found(&error) => {
                    session.end("etcd refused its lease");
                    return Ok(None);
                }
                Err(error) => {
                    reaper.answer_lost();
                    let error = store_error(error);
                    if !error.is_retryable() || Instant::now() >= deadline {
                        return Err(error); // The reaper deletes whatever was written.
                    }
                    backoff.sleep(deadline).await;
                    enqueued = self.txn(enqueue.clone()).await;
                }
            }
        };
        if matches!(renewal, Ok(Renewal::Gone)) {
            return Ok(None);
        }
        let responses = response.op_responses();
        let read_at = revision(&response);
        let (my_revision, predecessor) = if response.succeeded() {
            let predecessor = first_kv(responses.first())
                .and_then(|_| first_kv(responses.get(1)))
                .map(|kv| kv.key().to_vec());
            (read_at, predecessor)
        } else {
            match first_kv(responses.first()) {
                Some(own) if own.lease() == session.id => {
                    let head_revision = first_kv(responses.get(1)).map(|kv| kv.create_revision());
                    if head_revision == Some(own.create_revision()) {
                        (own.create_revision(), None)
                    } else {
                        // Somewhere in the queue: an empty predecessor makes
                        // the waiter read its real one first.
                        (own.create_revision(), Some(Vec::new()))
                    }
                }
                _ => return Ok(None),
            }
        };
        Ok(Some(Queued {
            session,
            owner,
            entry,
            my_revision,
            predecessor,
            read_at,
            reaper,
        }))
    }

    /// Queues, waits for the predecessors to go, re-checks, and returns the
    /// lease; the queue entry is removed on every way out but success.
    pub(crate) async fn queue_and_wait(
        &self,
        key: &Key,
        secs: u64,
        wait: &RetryPolicy,
    ) -> Result<Lease, LockError> {
        let keys = LockKeys::new(&self.inner.options.namespace, key);
        let started = Instant::now();
        let deadline = later(started, wait.deadline);
        let mut backoff = Backoff::new(wait);
        let mut first = true;
        loop {
            // One attempt always happens, however short the wait.
            if !first && Instant::now() >= deadline {
                return Err(self.timed_out(key, started));
            }
            first = false;
            let Some(mut queued) = self.enqueue(&keys, secs, deadline, &mut backoff).await? else {
                continue;
            };
            if queued.predecessor.is_none() {
                let renewed_at = queued.session.renewed_at();
                return Ok(queued.into_lease(self, key, renewed_at));
            }
            match self
                .wait_turn(key, &keys, &mut queued, started, deadline, &mut backoff)
                .await?
            {
                Some(renewed_at) => return Ok(queued.into_lease(self, key, renewed_at)),
                None => continue,
            }
        }
    }

    fn timed_out(&self, key: &Key, started: Instant) -> LockError {
        LockError::Timeout {
            backend: NAME,
            key: key.as_str().to_owned(),
            waited: started.elapsed(),
        }
    }

    /// Waits until `queued` heads the queue. `Some(renewed_at)`: it does and
    /// its lease is confirmed alive; `None`: its entry or session is gone,
    /// start over.
    async fn wait_turn(
        &self,
        key: &Key,
        keys: &LockKeys,
        queued: &mut Queued,
        started: Instant,
        deadline: Instant,
        backoff: &mut Backoff<'_>,
    ) -> Result<Option<Instant>, LockError> {
        let session = queued.session.clone();
        let mut watch: Option<etcd_client::WatchStream> = None;
        let mut watching: Option<Vec<u8>> = None;
        loop {
            if Instant::now() >= deadline {
                let reaper = std::mem::replace(
                    &mut queued.reaper,
                    Reaper::none(&self.inner.client, &self.inner.markers),
                );
                reaper.delete_now().await;
                return Err(self.timed_out(key, started));
            }
            let cause = match queued.predecessor.clone() {
                // Confirm again (an unknown predecessor, or a failed read).
                None => {
                    backoff.sleep(deadline).await;
                    Wake::Recheck
                }
                Some(pred) if pred.is_empty() => Wake::Recheck,
                Some(pred) => {
                    let mut created_late = false;
                    if watch.is_none() || watching.as_ref() != Some(&pred) {
                        watch = None;
                        watching = None;
                        match self.watch_deletion(&pred, queued.read_at).await {
                            Ok(Some((stream, late))) => {
                                watch = Some(stream);
                                watching = Some(pred.clone());
                                created_late = late;
                            }
                            Ok(None) => {}
                            Err(error) if error.is_retryable() => {
                                tracing::debug!(%error, "creating the predecessor watch failed");
                                backoff.sleep(deadline).await;
                            }
                            Err(error) => return Err(error),
                        }
                    }
                    match watch.as_mut() {
                        Some(stream) if !created_late => {
                            let keep_alive_at = later(
                                Instant::now(),
                                later(session.renewed_at(), session.ttl / 3)
                                    .saturating_duration_since(self.now()),
                            );
                            tokio::select! {
                                message = stream.message() => match message {
                                    Ok(Some(response)) if has_delete(&response) => Wake::Watch,
                                    Ok(Some(response)) if !response.canceled() => Wake::Nothing,
                                    _ => {
                                        watch = None; // Cancelled (compaction) or broken.
                                        Wake::Recheck
                                    }
                                },
                                () = tokio::time::sleep(jitter(self.inner.options.poll_interval)) => Wake::Poll,
                                () = tokio::time::sleep_until(keep_alive_at) => Wake::KeepAlive,
                                () = tokio::time::sleep_until(deadline) => continue,
                                () = session.ended.cancelled() => return Ok(None),
                            }
                        }
                        _ => Wake::Recheck,
                    }
                }
            };
            let counter = match cause {
                Wake::Nothing => continue,
                Wake::KeepAlive => {
                    match self.renew_if(&session, true).await {
                        Ok(Renewal::Gone) => return Ok(None),
                        Ok(Renewal::Alive(_)) => {}
                        Err(error) => {
                            tracing::debug!(%error, "keep-alive while queued failed");
                            backoff.sleep(deadline).await;
                        }
                    }
                    continue;
                }
                Wake::Watch => &self.inner.wakes.watch,
                Wake::Poll => &self.inner.wakes.poll,
                Wake::Recheck => &self.inner.wakes.recheck,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            // Re-read our entry and predecessor, and confirm the lease lives
            // (etcd#9921, etcd#11456: never report a lock whose lease expired
            // while its owner waited).
            let (position, renewal) = tokio::join!(
                self.position(keys, &queued.entry, &session, queued.my_revision),
                self.renew_if(&session, true)
            );
            let position = match position {
                Ok(position) => position,
                Err(error) if error.is_retryable() => {
                    tracing::debug!(%error, "re-reading the queue failed");
                    watch = None;
                    queued.predecessor = None;
                    continue;
                }
                Err(error) => return Err(error),
            };
            if matches!(renewal, Ok(Renewal::Gone)) || !position.present {
                return Ok(None);
            }
            queued.read_at = position.revision;
            match (position.predecessor, renewal) {
                (Some(pred), _) => queued.predecessor = Some(pred),
                (None, Ok(Renewal::Alive(renewed_at))) => return Ok(Some(renewed_at)),
                (None, Ok(Renewal::Gone)) => return Ok(None),
                (None, Err(error)) => {
                    tracing::debug!(%error, "confirming the session at the queue head failed");
                    queued.predecessor = None;
                }
            }
        }
    }

    /// Watches `pred` for its deletion from `read_at + 1`: starting after the
    /// read means a deletion cannot slip in between, and etcd serves the watch
    /// from its synced group (from an older revision etcd 3.4 serves it from a
    /// 100 ms catch-up loop). The flag says the store had moved past `read_at`
    /// when the watch was made (a deletion in between may arrive late), so the
    /// caller re-reads at once.
    async fn watch_deletion(
        &self,
        pred: &[u8],
        read_at: i64,
    ) -> Result<Option<(etcd_client::WatchStream, bool)>, LockError> {
        let mut client = self.inner.client.watch_client();
        let options = etcd_client::WatchOptions::new()
            .with_start_revision(read_at + 1)
            .with_filters([etcd_client::WatchFilterType::NoPut]);
        let target = pred.to_vec();
        with_timeout(NAME, self.timeout(), async move {
            let mut stream = client
                .watch(target, Some(options))
                .await
                .map_err(store_error)?;
            let Some(first) = stream.message().await.map_err(store_error)? else {
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

fn has_delete(response: &etcd_client::WatchResponse) -> bool {
    response
        .events()
        .iter()
        .any(|e| e.event_type() == etcd_client::EventType::Delete)
}

/// An entry in a lock's queue, not yet at its head.
struct Queued {
    session: Arc<Session>,
    owner: OwnerToken,
    entry: Vec<u8>,
    my_revision: i64,
    /// The entry just before ours; `Some(empty)`: unknown yet, read it;
    /// `None`: none seen, confirm.
    predecessor: Option<Vec<u8>>,
    /// The revision of the last read of the queue.
    read_at: i64,
    reaper: Reaper,
}

impl Queued {
    fn into_lease(mut self, backend: &EtcdBackend, key: &Key, renewed_at: Instant) -> Lease {
        let uncertain = self.reaper.uncertain();
        self.reaper.disarm();
        let held = crate::backend::Held {
            session: self.session,
            entry: self.entry,
            create_revision: self.my_revision,
            uncertain,
        };
        backend.lease_from(key, self.owner, held, renewed_at)
    }
}

/// The retry policy's jittered delays, for store errors while waiting.
struct Backoff<'a> {
    delays: leasehold_core::Schedule,
    policy: &'a RetryPolicy,
}

impl<'a> Backoff<'a> {
    fn new(policy: &'a RetryPolicy) -> Self {
        Backoff {
            delays: policy.schedule(),
            policy,
        }
    }

    async fn sleep(&mut self, deadline: Instant) {
        let delay = self.delays.next().unwrap_or(self.policy.max_delay);
        tokio::time::sleep(delay.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wake {
    Watch,
    Poll,
    Recheck,
    KeepAlive,
    Nothing,
}

/// `interval` ± 20 %.
fn jitter(interval: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    interval.mul_f64(0.8 + f64::from(nanos % 1000) / 2500.0)
}

/// `at + duration`, saturating one year later for an out-of-range sum (a
/// wait of `Duration::MAX` means "no deadline", never a panic).
pub(crate) fn later(at: Instant, duration: Duration) -> Instant {
    at.checked_add(duration)
        .or_else(|| at.checked_add(leasehold_core::config::MAX_DURATION))
        .unwrap_or(at)
}
