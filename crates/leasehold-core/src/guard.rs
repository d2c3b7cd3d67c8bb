//! [`LockGuard`] and [`MultiGuard`]: what a held lock looks like to its
//! holder. A guard knows its backend, its lease's [`Watch`] and the TTL
//! policy that learns from its hold time; it holds no `Locker`.

use std::future::Future;
use std::sync::Arc;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::backend::LockBackend;
use crate::error::LockError;
use crate::held::Holding;
use crate::key::Key;
use crate::kind::LockKind;
use crate::lease::{Lease, LostReason};
use crate::metrics;
use crate::token::FencingToken;
use crate::ttl::TtlPolicy;
use crate::watchdog::Watch;

/// A held lock. It extends itself in the background (at a third of the TTL,
/// on one shared scheduler per [`Locker`](crate::Locker) and runtime), and
/// [`LockGuard::lost`] completes when the lease is lost: renewals failed until
/// validity ran out, the store ended the session, or someone else holds the
/// key now ([`LockGuard::lost_reason`] says which).
///
/// Call [`LockGuard::release`] to learn the store's answer. Dropping a guard
/// never blocks: it releases in the background and counts
/// `leasehold_release_total{outcome="dropped"}`.
#[derive(Debug)]
#[must_use = "dropping a guard releases the lock at once (in the background)"]
pub struct LockGuard {
    backend: Arc<dyn LockBackend>,
    meter: metrics::Meter,
    /// Learns hold times (adaptive TTL).
    ttl_policy: TtlPolicy,
    watch: Watch,
    acquired_at: Instant,
    released: bool,
    /// The key's place in its locker's held keys, given up with the guard.
    _holding: Holding,
}

impl LockGuard {
    pub(crate) fn new(
        backend: Arc<dyn LockBackend>,
        meter: metrics::Meter,
        ttl_policy: TtlPolicy,
        watch: Watch,
        holding: Holding,
    ) -> Self {
        meter.guard_opened();
        LockGuard {
            backend,
            meter,
            ttl_policy,
            watch,
            acquired_at: Instant::now(),
            released: false,
            _holding: holding,
        }
    }

    /// The key.
    pub fn key(&self) -> Key {
        self.watch.lease().key().clone()
    }

    /// What it holds: the mutex, a read or write side, a permit.
    pub fn kind(&self) -> LockKind {
        self.watch.lease().kind()
    }

    /// The fencing token: pass it to the protected resource.
    pub fn fencing_token(&self) -> FencingToken {
        self.watch.lease().fencing_token()
    }

    /// The end of validity on this process's monotonic clock, as of the last
    /// successful extension.
    pub fn valid_until(&self) -> Instant {
        self.watch.lease().valid_until()
    }

    /// A copy of the current lease.
    pub fn lease(&self) -> Lease {
        self.watch.lease()
    }

    /// Whether the lease is known to be lost: the watchdog declared it, the
    /// store signalled the end of its session, or its validity has passed
    /// (checked here on the spot, so the answer holds even when no watchdog
    /// could run).
    pub fn is_lost(&self) -> bool {
        self.watch.is_lost()
    }

    /// Why the lease was lost, once it is.
    pub fn lost_reason(&self) -> Option<LostReason> {
        self.watch.lost_reason()
    }

    /// Completes when the lease is lost, or when the guard is released or
    /// dropped (the work it protects must stop then too). Stop the protected
    /// work when it does. It needs no watchdog: a store's session signal and
    /// the lease's own end of validity complete it directly.
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        self.watch.ended()
    }

    /// A token cancelled when the lease is lost (for `tokio_util`-style
    /// cancellation of the protected work). It is a child of the guard's own
    /// loss token: no task is spawned per call. A store's session signal
    /// cancels it as it fires, with no task in between; the loss is counted
    /// (`leasehold_lost_total`) and logged when the guard is next asked
    /// ([`is_lost`](Self::is_lost), [`lost`](Self::lost), release, drop) or
    /// at its next renewal round, whichever comes first.
    pub fn lost_token(&self) -> CancellationToken {
        self.watch.lost_token()
    }

    /// Renews the lease for `ttl` from now, for holders that turned
    /// auto-extension off (with it on, the watchdog does this). A refusal
    /// (`Lost`, `NotHeld`) marks the guard lost; a transient error
    /// (`Unavailable`) leaves its validity as it was.
    ///
    /// ```
    /// use leasehold_core::{LockOptions, Locker, MemoryBackend};
    /// use std::time::Duration;
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), leasehold_core::LockError> {
    /// let locker = Locker::new(MemoryBackend::new());
    /// let manual = LockOptions::new().ttl(Duration::from_secs(10)).auto_extend(false);
    /// let guard = locker.try_lock_with("batch:7", &manual).await?;
    /// let before = guard.valid_until();
    /// guard.extend(Duration::from_secs(60)).await?;
    /// assert!(guard.valid_until() > before);
    /// # guard.release().await }
    /// ```
    pub async fn extend(&self, ttl: std::time::Duration) -> Result<(), LockError> {
        self.watch.extend(&self.backend, ttl).await
    }

    pub(crate) fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// Releases the lock and returns the store's answer (`NotHeld` when it
    /// had already expired or been taken over).
    pub async fn release(mut self) -> Result<(), LockError> {
        self.released = true;
        self.watch.finish();
        let lease = self.watch.lease();
        let name = self.backend.name();
        let result = self
            .backend
            .release(&lease)
            .instrument(
                tracing::debug_span!("leasehold.release", backend = name, key = %lease.key()),
            )
            .await;
        let outcome = match &result {
            Ok(()) => "released",
            Err(error) => error.kind(),
        };
        self.meter.released(outcome);
        self.close(&lease);
        result
    }

    fn close(&self, lease: &Lease) {
        let held = self.acquired_at.elapsed();
        self.meter.guard_closed(held);
        self.ttl_policy.record(lease.key(), held);
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let lease = self.watch.lease();
        self.meter.released("dropped");
        self.close(&lease);
        // Never blocks: the watchdog releases it in the background.
        self.watch.finish_and_release(&self.backend);
    }
}

/// Several locks taken by [`Locker::lock_all`](crate::Locker::lock_all), in canonical order.
#[derive(Debug)]
#[must_use = "dropping a multi-guard releases every lock at once (in the background)"]
pub struct MultiGuard {
    guards: Vec<LockGuard>,
}

impl MultiGuard {
    pub(crate) fn new(guards: Vec<LockGuard>) -> Self {
        MultiGuard { guards }
    }

    /// The guards, in acquisition (canonical) order.
    pub fn guards(&self) -> &[LockGuard] {
        &self.guards
    }

    /// The fencing token of each key, in canonical order.
    pub fn fencing_tokens(&self) -> Vec<(Key, FencingToken)> {
        self.guards
            .iter()
            .map(|g| (g.key(), g.fencing_token()))
            .collect()
    }

    /// Completes when any of the leases is lost; like
    /// [`LockGuard::lost`], it owns what it needs, so it can move into a
    /// spawned task.
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        let losses: Vec<_> = self.guards.iter().map(|g| Box::pin(g.lost())).collect();
        async move {
            if losses.is_empty() {
                return std::future::pending().await;
            }
            futures_util::future::select_all(losses).await;
        }
    }

    /// Releases every lock in reverse order; returns the first error, after
    /// trying them all.
    pub async fn release(self) -> Result<(), LockError> {
        let mut first_error = None;
        for guard in self.guards.into_iter().rev() {
            if let Err(error) = guard.release().await {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}
