//! Reader–writer locks and counting semaphores on one server: each grant
//! is an owner token in a sorted set scored by its expiry (server
//! milliseconds), or the writer's key with a `PX` TTL, beside the lock's own
//! fencing counter; a waiting writer is a scored entry that keeps new
//! readers out until it is granted, withdraws, or expires. Every step is
//! one script ([`crate::scripts`]) on the key's hash slot.

use std::future::Future;
use std::time::Duration;

use futures_util::future::join_all;
use leasehold_core::{
    FencingToken, Key, Lease, LockBackend, LockError, LockInfo, LockKind, OwnerToken, WaitPolicy,
    cancel_safe, wait_for_grant,
};

use crate::NAME;
use crate::lease::{Leases, renewal};
use crate::replicas::Confirmation;
use crate::scripts;
use crate::store::{AcquireOutcome, Ownership, RedisNode, ttl_millis};

/// The shortest pause between refreshes of a waiting writer's
/// registration (a registration of a shorter TTL may lapse between them,
/// which only lets a reader in first).
const MIN_REFRESH: Duration = Duration::from_millis(10);

/// What to do with a waiting writer's registration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitingStep {
    /// Push its expiry to `ttl` from the server's now, if it is still there.
    Refresh(Duration),
    /// Remove it and publish a release, so the readers it held back retry.
    Withdraw,
}

impl RedisNode {
    /// Where a grant of `kind` lives: its Redis name and shape (`string`:
    /// the writer's key, `set`: a member of a sorted set).
    fn place(&self, key: &Key, kind: LockKind) -> Result<(String, &'static str), LockError> {
        let layout = self.layout();
        match kind {
            LockKind::Write => Ok((layout.shared_key(key, "rw:writer"), "string")),
            LockKind::Read => Ok((layout.shared_key(key, "rw:readers"), "set")),
            LockKind::Permit { .. } => Ok((layout.shared_key(key, "sem:holders"), "set")),
            _ => Err(self.not_shared(kind)),
        }
    }

    /// The error of a mutex passed where a shared grant belongs (a bug in
    /// the caller, reported, never a panic).
    fn not_shared(&self, kind: LockKind) -> LockError {
        LockError::backend(
            self.backend,
            format!("{kind} is not a reader-writer or semaphore grant"),
        )
    }

    /// One attempt at a reader, writer or permit grant of `key` for `owner`
    /// ([`scripts::RW_ACQUIRE_SRC`], [`scripts::SEM_ACQUIRE_SRC`]); a
    /// refused attempt that names a `waiter` registers that waiting writer
    /// (it keeps new readers out until it withdraws or its registration
    /// expires, `ttl` from the server's now). Under the replica rule a
    /// grant too few replicas confirmed is undone and fails with
    /// [`LockError::Unavailable`]. Not cancel safe on its own, like
    /// [`RedisNode::try_acquire_raw`]: give a grant back with
    /// [`RedisNode::release_shared_raw`].
    pub async fn try_acquire_shared_raw(
        &self,
        key: &Key,
        kind: LockKind,
        owner: &OwnerToken,
        ttl: Duration,
        waiter: Option<&OwnerToken>,
    ) -> Result<AcquireOutcome, LockError> {
        let ttl_ms = ttl_millis(self.backend, ttl)?;
        let layout = self.layout();
        let invocation = match kind {
            LockKind::Read | LockKind::Write => {
                let side = if kind == LockKind::Write {
                    "write"
                } else {
                    "read"
                };
                let mut invocation = scripts::rw_acquire().prepare_invoke();
                invocation
                    .key(layout.shared_key(key, "rw:writer"))
                    .key(layout.shared_key(key, "rw:readers"))
                    .key(layout.shared_key(key, "rw:waiting"))
                    .key(layout.shared_key(key, "rw:fence"))
                    .arg(side)
                    .arg(owner.to_hex())
                    .arg(ttl_ms)
                    .arg(waiter.map(OwnerToken::to_hex).unwrap_or_default());
                invocation
            }
            LockKind::Permit { permits } => {
                let mut invocation = scripts::sem_acquire().prepare_invoke();
                invocation
                    .key(layout.shared_key(key, "sem:holders"))
                    .key(layout.shared_key(key, "sem:fence"))
                    .arg(owner.to_hex())
                    .arg(ttl_ms)
                    .arg(permits);
                invocation
            }
            _ => return Err(self.not_shared(kind)),
        };
        let (reply, confirmed): (Vec<i64>, _) =
            self.invoke(&self.layout().tag(key), invocation).await?;
        let (won, value) = match reply[..] {
            [won, value, ..] => (won, value),
            _ => return Err(LockError::backend(self.backend, "malformed acquire reply")),
        };
        if won != 1 {
            // The newest grant's token: the writer's while a writer holds.
            let newest = reply.get(2).copied().unwrap_or(0);
            let left = (value >= 0).then(|| Duration::from_millis(value as u64));
            let token = (newest > 0).then_some(FencingToken(newest as u64));
            return Ok(AcquireOutcome::Held(LockInfo::new(token, left)));
        }
        if let Confirmation::Short(acked) = confirmed {
            // Too few replicas have it: undo it (the counter stays raised).
            let _ = self.release_shared_raw(key, kind, owner).await;
            return Err(self.short_of_replicas("the grant", acked));
        }
        Ok(AcquireOutcome::Acquired(FencingToken(value.max(0) as u64)))
    }

    /// Renews a reader, writer or permit to `ttl` from the server's now
    /// ([`scripts::SHARED_EXTEND_SRC`]); an expired grant is never revived.
    /// Under the replica rule a renewal too few replicas confirmed fails
    /// with [`LockError::Unavailable`]. Cancel safety: dropped, it may
    /// still run, which only keeps `owner`'s own grant longer.
    pub async fn extend_shared_raw(
        &self,
        key: &Key,
        kind: LockKind,
        owner: &OwnerToken,
        ttl: Duration,
    ) -> Result<Ownership, LockError> {
        let ttl_ms = ttl_millis(self.backend, ttl)?;
        let (name, shape) = self.place(key, kind)?;
        let mut invocation = scripts::shared_extend().prepare_invoke();
        invocation
            .key(name)
            .arg(owner.to_hex())
            .arg(ttl_ms)
            .arg(shape);
        let (reply, confirmed): (i64, _) = self.invoke(&self.layout().tag(key), invocation).await?;
        if let Confirmation::Short(acked) = confirmed {
            return Err(self.short_of_replicas("the renewal", acked));
        }
        Ok(Ownership::from_reply(reply))
    }

    /// Gives a reader, writer or permit back and publishes the release on
    /// the namespace's channel under the key's lock name, which every
    /// waiter of the key (of any kind) listens for. Cancel safety: dropped,
    /// it may or may not have run; running it again is harmless.
    pub async fn release_shared_raw(
        &self,
        key: &Key,
        kind: LockKind,
        owner: &OwnerToken,
    ) -> Result<Ownership, LockError> {
        let (name, shape) = self.place(key, kind)?;
        let (owner, channel, lock) = (
            owner.to_hex(),
            self.release_channel(key),
            self.layout().lock_key(key),
        );
        let reply: i64 = self
            .call(|mut conn| async move {
                scripts::shared_release()
                    .key(name)
                    .arg(owner)
                    .arg(shape)
                    .arg(channel)
                    .arg(lock)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        Ok(Ownership::from_reply(reply))
    }

    /// Refreshes or withdraws the registration of a writer waiting for
    /// `key` ([`scripts::RW_WAITING_SRC`]); `true` when it was there. A
    /// refresh never re-creates a registration that was withdrawn or
    /// expired. Cancel safety: dropped, it may or may not have run.
    pub async fn waiting_writer_raw(
        &self,
        key: &Key,
        waiter: &OwnerToken,
        step: WaitingStep,
    ) -> Result<bool, LockError> {
        let waiting = self.layout().shared_key(key, "rw:waiting");
        let mut invocation = scripts::rw_waiting().prepare_invoke();
        invocation.key(waiting).arg(waiter.to_hex());
        match step {
            WaitingStep::Refresh(ttl) => {
                invocation
                    .arg("refresh")
                    .arg(ttl_millis(self.backend, ttl)?);
            }
            WaitingStep::Withdraw => {
                invocation
                    .arg("withdraw")
                    .arg(self.release_channel(key))
                    .arg(self.layout().lock_key(key));
            }
        }
        let reply: i64 = self
            .call(|mut conn| async move { invocation.invoke_async(&mut conn).await })
            .await?;
        Ok(reply == 1)
    }
}

/// The steps of every [`LockKind`] through one call each, for an algorithm
/// over several nodes (Redlock) that treats the kinds alike: the mutex
/// goes to the mutex scripts, the others to the reader–writer and
/// semaphore scripts above.
impl RedisNode {
    /// [`RedisNode::try_acquire_raw`] for the mutex, else
    /// [`RedisNode::try_acquire_shared_raw`].
    pub async fn acquire_kind_raw(
        &self,
        key: &Key,
        kind: LockKind,
        owner: &OwnerToken,
        ttl: Duration,
        waiter: Option<&OwnerToken>,
    ) -> Result<AcquireOutcome, LockError> {
        match kind {
            LockKind::Exclusive => self.try_acquire_raw(key, owner, ttl).await,
            kind => {
                self.try_acquire_shared_raw(key, kind, owner, ttl, waiter)
                    .await
            }
        }
    }

    /// [`RedisNode::extend_raw`] for the mutex, else
    /// [`RedisNode::extend_shared_raw`].
    pub async fn extend_kind_raw(
        &self,
        key: &Key,
        kind: LockKind,
        owner: &OwnerToken,
        ttl: Duration,
    ) -> Result<Ownership, LockError> {
        match kind {
            LockKind::Exclusive => self.extend_raw(key, owner, ttl).await,
            kind => self.extend_shared_raw(key, kind, owner, ttl).await,
        }
    }

    /// [`RedisNode::release_raw`] for the mutex, else
    /// [`RedisNode::release_shared_raw`].
    pub async fn release_kind_raw(
        &self,
        key: &Key,
        kind: LockKind,
        owner: &OwnerToken,
    ) -> Result<Ownership, LockError> {
        match kind {
            LockKind::Exclusive => self.release_raw(key, owner).await,
            kind => self.release_shared_raw(key, kind, owner).await,
        }
    }

    /// Raises the fencing counter of `kind`'s lock on `key` (the mutex's,
    /// the reader–writer lock's or the semaphore's) to at least `token`,
    /// never lowering it ([`scripts::RAISE_SRC`]); `true` if it was raised.
    /// Cancel safety: dropped, it may or may not have run; running it again
    /// is harmless.
    pub async fn raise_kind_raw(
        &self,
        key: &Key,
        kind: LockKind,
        token: FencingToken,
    ) -> Result<bool, LockError> {
        let fence = match kind {
            LockKind::Exclusive => self.layout().fence_key(key),
            LockKind::Read | LockKind::Write => self.layout().shared_key(key, "rw:fence"),
            _ => self.layout().shared_key(key, "sem:fence"),
        };
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
}

impl Leases {
    /// One attempt at a reader, writer or permit grant (registering
    /// `waiter` as a waiting writer when refused).
    async fn attempt_shared(
        &self,
        key: &Key,
        kind: LockKind,
        ttl: Duration,
        waiter: Option<OwnerToken>,
    ) -> Result<Lease, LockError> {
        let owner = OwnerToken::generate();
        let sent_at = self.clock.now();
        let outcome = self
            .node
            .try_acquire_shared_raw(key, kind, &owner, ttl, waiter.as_ref())
            .await;
        match outcome {
            Ok(AcquireOutcome::Acquired(token)) => {
                tracing::debug!(%key, %kind, owner = %owner.short(), %token, "redis grant");
                Ok(
                    Lease::new(NAME, key.clone(), owner, token, sent_at, ttl, self.drift)
                        .with_kind(kind),
                )
            }
            Ok(AcquireOutcome::Held(holder)) => {
                Err(LockError::contended(NAME, key.as_str(), Some(holder)))
            }
            Err(error) => {
                if matches!(error, LockError::Unavailable { .. }) {
                    // The script may have run although its answer was lost:
                    // give it back (same connection, so after the acquire).
                    let (node, key) = (self.node.clone(), key.clone());
                    tokio::spawn(async move {
                        let _ = node.release_shared_raw(&key, kind, &owner).await;
                    });
                }
                Err(error)
            }
        }
    }

    /// [`Leases::attempt_shared`] run to its end on its own task
    /// ([`cancel_safe`]): a grant that arrives after the caller left is
    /// released at once.
    pub(crate) async fn try_shared(
        &self,
        key: &Key,
        kind: LockKind,
        ttl: Duration,
        waiter: Option<OwnerToken>,
    ) -> Result<Lease, LockError> {
        ttl_millis(NAME, ttl)?;
        let (leases, releaser, key) = (self.clone(), self.clone(), key.clone());
        cancel_safe(
            NAME,
            async move { leases.attempt_shared(&key, kind, ttl, waiter).await },
            move |lease| async move { releaser.release_shared(&lease).await },
        )
        .await
    }

    /// Waits for the writer's side of `key`, registered as a waiting writer
    /// from its first refused attempt (new readers are refused), the
    /// registration refreshed every third of `ttl` and withdrawn when the
    /// wait ends however it ends (a dropped call included: the withdrawal is
    /// spawned), or at the latest when it expires.
    pub(crate) async fn wait_to_write<B: LockBackend + ?Sized>(
        &self,
        backend: &B,
        key: &Key,
        ttl: Duration,
        wait: &WaitPolicy,
    ) -> Result<Lease, LockError> {
        ttl_millis(NAME, ttl)?;
        let waiter = OwnerToken::generate();
        let _registered = WaitingWriter {
            node: self.node.clone(),
            key: key.clone(),
            waiter,
        };
        let every = (ttl / 3).max(MIN_REFRESH);
        let refresh = async {
            loop {
                tokio::time::sleep(every).await;
                let step = WaitingStep::Refresh(ttl);
                if let Err(error) = self.node.waiting_writer_raw(key, &waiter, step).await {
                    tracing::debug!(%key, %error, "could not refresh a waiting writer");
                }
            }
        };
        let grant = wait_for_grant(backend, key, wait, || {
            self.try_shared(key, LockKind::Write, ttl, Some(waiter))
        });
        tokio::select! {
            result = grant => result,
            () = refresh => Err(LockError::backend(NAME, "a waiting writer's refresh loop ended")),
        }
    }

    /// Renews a reader, writer or permit, validity from the send instant.
    pub(crate) async fn extend_shared(
        &self,
        lease: &Lease,
        ttl: Duration,
    ) -> Result<Lease, LockError> {
        let sent_at = self.clock.now();
        let found = self
            .node
            .extend_shared_raw(lease.key(), lease.kind(), lease.owner(), ttl)
            .await?;
        renewal(lease, found, sent_at, ttl, self.drift)
    }

    /// Gives a reader, writer or permit back.
    pub(crate) async fn release_shared(&self, lease: &Lease) -> Result<(), LockError> {
        let found = self
            .node
            .release_shared_raw(lease.key(), lease.kind(), lease.owner())
            .await?;
        match found {
            Ownership::Ours => Ok(()),
            Ownership::Free | Ownership::Other => {
                Err(LockError::not_held(NAME, lease.key().as_str()))
            }
        }
    }

    /// Renews leases of every kind ([`extend_split`]): the mutexes in
    /// script batches ([`Leases::extend_many`]), the others each with its
    /// own call, all at once.
    pub(crate) async fn extend_any(
        &self,
        renewals: &[(Lease, Duration)],
    ) -> Result<Vec<Result<Lease, LockError>>, LockError> {
        extend_split(
            renewals,
            |batch| async move { self.extend_many(&batch).await },
            |lease, ttl| self.extend_shared(lease, ttl),
        )
        .await
    }
}

/// Renews leases of every kind for a backend whose batch renews mutexes
/// only: the mutex leases with one `batch` call (its failure fails the whole
/// call), every other lease with its own `one` call, all at the same time.
/// Results in input order. Redlock uses it too.
pub async fn extend_split<'a, B, BF, O, OF>(
    renewals: &'a [(Lease, Duration)],
    batch: B,
    one: O,
) -> Result<Vec<Result<Lease, LockError>>, LockError>
where
    B: FnOnce(Vec<(Lease, Duration)>) -> BF,
    BF: Future<Output = Result<Vec<Result<Lease, LockError>>, LockError>>,
    O: Fn(&'a Lease, Duration) -> OF,
    OF: Future<Output = Result<Lease, LockError>>,
{
    let (mutexes, shared): (Vec<usize>, Vec<usize>) =
        (0..renewals.len()).partition(|&i| renewals[i].0.kind() == LockKind::Exclusive);
    let batched: Vec<(Lease, Duration)> = mutexes.iter().map(|&i| renewals[i].clone()).collect();
    let each = shared.iter().map(|&i| one(&renewals[i].0, renewals[i].1));
    let (batched, each) = tokio::join!(batch(batched), join_all(each));
    let mut results: Vec<Option<Result<Lease, LockError>>> =
        renewals.iter().map(|_| None).collect();
    for (i, result) in mutexes.into_iter().zip(batched?) {
        results[i] = Some(result);
    }
    for (i, result) in shared.into_iter().zip(each) {
        results[i] = Some(result);
    }
    Ok(results
        .into_iter()
        .map(|result| {
            result.unwrap_or_else(|| Err(LockError::backend(NAME, "a renewal got no result")))
        })
        .collect())
}

/// A writer's registration while it waits; dropping it withdraws the
/// registration in the background (a dropped wait included), which wakes
/// the readers it held back.
struct WaitingWriter {
    node: RedisNode,
    key: Key,
    waiter: OwnerToken,
}

impl Drop for WaitingWriter {
    fn drop(&mut self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (node, key, waiter) = (self.node.clone(), self.key.clone(), self.waiter);
        runtime.spawn(async move {
            let step = WaitingStep::Withdraw;
            if let Err(error) = node.waiting_writer_raw(&key, &waiter, step).await {
                tracing::debug!(%key, %error, "could not withdraw a waiting writer; it expires with its ttl");
            }
        });
    }
}
