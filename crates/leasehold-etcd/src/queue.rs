//! The FIFO queue algorithm: one transaction to try or to enqueue, a watch on
//! the predecessor's deletion to wait, a re-read and a keep-alive confirming
//! the lease before claiming the lock (etcd's `concurrency/mutex.go`, with a
//! session per TTL class and retirement of entries whose txn went
//! unanswered).
//!
//! Waiting for one's turn once queued (the watch, the polls, the keep-alives
//! and the re-reads) is in `queue/wait.rs`.

mod wait;

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Compare, CompareOp, GetOptions, KeyValue, PutOptions, Txn, TxnOp, TxnOpResponse, TxnResponse,
};
use leasehold_core::{
    Attempts, FencingToken, Key, Lease, LockError, LockInfo, OwnerToken, WaitPolicy,
};
use tokio::time::Instant;

use crate::NAME;
use crate::error::{lease_not_found, map};
use crate::keys::LockKeys;
use crate::reaper::Reaper;
use crate::session::{Renewal, Session};
use crate::store::Store;

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

pub(crate) fn revision(response: &TxnResponse) -> i64 {
    response.header().map_or(0, |h| h.revision())
}

pub(crate) fn first_kv(response: Option<&TxnOpResponse>) -> Option<KeyValue> {
    match response? {
        TxnOpResponse::Get(get) => get.kvs().first().cloned(),
        _ => None,
    }
}

/// The queue algorithm, run against the store.
impl Store {
    /// One txn that writes our entry only if the lock's queue is empty.
    /// Cancel safe: dropped before it returns, the entry (if the txn was
    /// applied) is deleted, or retired if the txn's answer never came, from a
    /// background task.
    pub(crate) async fn try_lock(&self, key: &Key, ttl: Duration) -> Result<Lease, LockError> {
        let secs = self.ttl_secs(ttl)?;
        let keys = LockKeys::new(&self.namespace, key);
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
                    self.holder.as_str(),
                    Some(PutOptions::new().with_lease(session.id)),
                )])
                .or_else([TxnOp::get(keys.prefix.clone(), Some(keys.holder()))]);
            let mut reaper = Reaper::arm(
                &self.client,
                self.timeout,
                &self.markers,
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
                Err(error) => return Err(map(error)),
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
    /// `try_acquire` reported as `WaitTimedOut` when the key is held. Cancel safe:
    /// a dropped waiter's entry is deleted from a background task, so the key
    /// frees as soon as the holder releases (not when the TTL runs out).
    pub(crate) async fn lock(
        &self,
        key: &Key,
        ttl: Duration,
        wait: &WaitPolicy,
    ) -> Result<Lease, LockError> {
        let secs = self.ttl_secs(ttl)?;
        if wait.deadline.is_zero() {
            // One attempt and no waiting: the same as `try_acquire` (no write
            // when the key is held), reported as the timeout it is.
            return zero_wait(self.try_lock(key, ttl).await);
        }
        self.queue_and_wait(key, secs, wait).await
    }

    /// Queues, waits for the predecessors to go, re-checks, and returns the
    /// lease; the queue entry is removed on every way out but success.
    pub(crate) async fn queue_and_wait(
        &self,
        key: &Key,
        secs: u64,
        wait: &WaitPolicy,
    ) -> Result<Lease, LockError> {
        let keys = LockKeys::new(&self.namespace, key);
        let mut attempts = Attempts::new(wait);
        let mut first = true;
        loop {
            // One attempt always happens, however short the wait.
            if !first && attempts.remaining().is_zero() {
                return Err(timed_out(key, &attempts));
            }
            first = false;
            let Some(mut queued) = self.enqueue(&keys, secs, &mut attempts).await? else {
                continue;
            };
            if queued.predecessor.is_none() {
                let renewed_at = queued.session.renewed_at();
                return Ok(queued.into_lease(self, key, renewed_at));
            }
            match self
                .wait_turn(key, &keys, &mut queued, &mut attempts)
                .await?
            {
                Some(renewed_at) => return Ok(queued.into_lease(self, key, renewed_at)),
                None => continue,
            }
        }
    }

    /// Writes a fresh queue entry (one transaction, retried idempotently
    /// while time is left). `None`: start over (the session died).
    async fn enqueue(
        &self,
        keys: &LockKeys,
        secs: u64,
        attempts: &mut Attempts,
    ) -> Result<Option<Queued>, LockError> {
        let session = match self.session(secs).await {
            Ok(session) => session,
            Err(error) if error.is_retryable() && attempts.remaining() > Duration::ZERO => {
                pause(attempts).await;
                return Ok(None);
            }
            Err(error) => return Err(error),
        };
        let owner = OwnerToken::generate();
        let entry = keys.entry(&owner);
        let mut reaper = Reaper::arm(
            &self.client,
            self.timeout,
            &self.markers,
            entry.clone(),
            session.clone(),
        );
        let put = TxnOp::put(
            entry.clone(),
            self.holder.as_str(),
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
                TxnOp::get(keys.prefix.clone(), Some(keys.head())),
                TxnOp::get(keys.prefix.clone(), Some(keys.newest(None))),
                put,
            ])
            .or_else([
                TxnOp::get(entry.clone(), Some(GetOptions::new().with_keys_only())),
                TxnOp::get(keys.prefix.clone(), Some(keys.head())),
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
                    let error = map(error);
                    if !error.is_retryable() || attempts.remaining().is_zero() {
                        return Err(error); // The reaper deletes whatever was written.
                    }
                    pause(attempts).await;
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

    /// The lease for `held`, valid from `renewed_at` for its session's TTL.
    pub(crate) fn lease_from(
        &self,
        key: &Key,
        owner: OwnerToken,
        held: Held,
        renewed_at: Instant,
    ) -> Lease {
        let token = held.create_revision;
        self.lease_with(key, owner, held, token, renewed_at)
    }

    /// The lease for `held` with fencing token `token`.
    pub(crate) fn lease_with(
        &self,
        key: &Key,
        owner: OwnerToken,
        held: Held,
        token: i64,
        renewed_at: Instant,
    ) -> Lease {
        let (ttl, ended) = (held.session.ttl, held.session.ended.clone());
        Lease::new(
            NAME,
            key.clone(),
            owner,
            FencingToken(token as u64),
            renewed_at,
            ttl,
            self.drift,
        )
        .with_handle(Arc::new(held))
        .with_loss_signal(ended)
    }

    /// What the store knows about the holder entry `holder` (best effort: the
    /// remaining TTL needs one more call).
    pub(crate) async fn holder_info(&self, keys: &LockKeys, holder: &KeyValue) -> LockInfo {
        describe(keys, holder, self.remaining(holder.lease()).await)
    }
}

/// The holder entry `holder` (read with its value) as a [`LockInfo`]: its
/// create revision as token, its owner's hint, its value as the holder label
/// (none for an entry written before labels were stored), and `remaining`.
pub(crate) fn describe(
    keys: &LockKeys,
    holder: &KeyValue,
    remaining: Option<Duration>,
) -> LockInfo {
    let mut info = LockInfo::new(
        Some(FencingToken(holder.create_revision() as u64)),
        remaining,
    );
    if let Some(owner) = keys.owner_of(holder.key()) {
        info = info.with_owner(&owner);
    }
    let label =
        (!holder.value().is_empty()).then(|| String::from_utf8_lossy(holder.value()).into_owned());
    info.with_metadata(label)
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
    fn into_lease(mut self, store: &Store, key: &Key, renewed_at: Instant) -> Lease {
        let uncertain = self.reaper.uncertain();
        self.reaper.disarm();
        let held = Held {
            session: self.session,
            entry: self.entry,
            create_revision: self.my_revision,
            uncertain,
        };
        store.lease_from(key, self.owner, held, renewed_at)
    }
}

/// The answer of an acquisition with a zero wait, made as one attempt:
/// contention is the timeout it is.
pub(crate) fn zero_wait(attempt: Result<Lease, LockError>) -> Result<Lease, LockError> {
    match attempt {
        Err(LockError::Contended { key, .. }) => Err(LockError::WaitTimedOut {
            backend: NAME,
            key,
            waited: Duration::ZERO,
        }),
        other => other,
    }
}

/// Waits the next backoff delay of `attempts` (store errors while
/// waiting), never past its deadline.
pub(crate) async fn pause(attempts: &mut Attempts) {
    if let Some(delay) = attempts.next_delay(None) {
        tokio::time::sleep(delay).await;
    }
}

/// The `WaitTimedOut` of a waiter that gave up.
pub(crate) fn timed_out(key: &Key, attempts: &Attempts) -> LockError {
    attempts.give_up(LockError::contended(NAME, key.as_str(), None))
}
