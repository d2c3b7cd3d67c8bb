//! The renewal engine: one task per [`Locker`](crate::Locker) and tokio
//! runtime keeps every guard's next renewal on one agenda, renews due leases
//! together, listens to the stores' session signals, and declares a lease
//! lost, with its reason, the moment it can no longer be trusted. Guards talk
//! to it only through a [`Watch`].
//!
//! Here: the guards' side ([`Watchdogs`], [`Watch`]), the watched lease
//! ([`Watched`]) and the commands between them; `run` is the watchdog task
//! with its agenda, `renew` one renewal round.

mod renew;
mod run;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backend::LockBackend;
use crate::error::LockError;
use crate::lease::{Lease, LostReason};
use crate::metrics;
use renew::next_renewal;
use run::{Inbox, run_watchdog};

/// The watchdogs of one locker, one per tokio runtime it was used on.
///
/// One per runtime, not per locker: a `Locker` kept in a `static` or built
/// in a setup `block_on` and then used from another runtime would otherwise
/// send its guards to a task that no longer runs (or is never polled), and
/// they would expire silently.
#[derive(Debug, Default)]
pub(crate) struct Watchdogs {
    per_runtime: Mutex<Vec<(tokio::runtime::Id, mpsc::UnboundedSender<Command>)>>,
}

static NEXT_WATCH_ID: AtomicU64 = AtomicU64::new(0);

impl Watchdogs {
    /// Puts `lease` under watch on the current runtime's watchdog (started
    /// if there is none, or if the one there stopped).
    pub(crate) fn watch(
        &self,
        backend: &Arc<dyn LockBackend>,
        meter: &metrics::Meter,
        lease: Lease,
        ttl: Duration,
        auto_extend: bool,
    ) -> Watch {
        let entry = Arc::new(Watched {
            id: NEXT_WATCH_ID.fetch_add(1, Ordering::Relaxed),
            meter: meter.clone(),
            lease: Mutex::new(lease),
            ttl,
            lost: CancellationToken::new(),
            reason: OnceLock::new(),
            finished: CancellationToken::new(),
            auto_extend,
        });
        let sender = self.current(backend);
        if sender.send(Command::Watch(entry.clone())).is_err() {
            // No task can renew it or notice its end: never hand out a guard
            // that silently expires.
            entry.mark_lost(
                LostReason::RenewalFailed,
                "no watchdog could be started to renew it",
            );
        }
        Watch { entry, sender }
    }

    /// How many leases the current runtime's watchdog has scheduled.
    pub(crate) async fn scheduled(&self, backend: &Arc<dyn LockBackend>) -> usize {
        let (reply, answer) = tokio::sync::oneshot::channel();
        if self.current(backend).send(Command::Count(reply)).is_err() {
            return 0;
        }
        answer.await.unwrap_or(0)
    }

    fn current(&self, backend: &Arc<dyn LockBackend>) -> mpsc::UnboundedSender<Command> {
        let runtime = tokio::runtime::Handle::current();
        let mut watchdogs = self.per_runtime.lock().unwrap_or_else(|e| e.into_inner());
        watchdogs.retain(|(_, sender)| !sender.is_closed());
        if let Some((_, sender)) = watchdogs.iter().find(|(id, _)| *id == runtime.id()) {
            return sender.clone();
        }
        let (sender, receiver) = mpsc::unbounded_channel();
        runtime.spawn(run_watchdog(
            backend.clone(),
            Inbox(receiver),
            sender.downgrade(),
        ));
        watchdogs.push((runtime.id(), sender.clone()));
        sender
    }
}

/// A guard's handle on its watched lease.
#[derive(Debug)]
pub(crate) struct Watch {
    entry: Arc<Watched>,
    sender: mpsc::UnboundedSender<Command>,
}

impl Watch {
    /// The lease as of its last renewal.
    pub(crate) fn lease(&self) -> Lease {
        self.entry.lease()
    }

    /// Whether the lease is lost (checking its session signal and validity
    /// on the spot).
    pub(crate) fn is_lost(&self) -> bool {
        self.entry.check();
        self.entry.lost.is_cancelled()
    }

    /// Why the lease was lost, once it is.
    pub(crate) fn lost_reason(&self) -> Option<LostReason> {
        self.entry.check();
        self.entry.reason.get().copied()
    }

    /// A child of the loss token: cancelled when the lease is lost.
    pub(crate) fn lost_token(&self) -> CancellationToken {
        self.entry.lost.child_token()
    }

    /// Completes when the lease is lost or the guard finished; owns what it
    /// needs.
    pub(crate) fn ended(&self) -> impl Future<Output = ()> + Send + 'static {
        let entry = self.entry.clone();
        async move { entry.ended().await }
    }

    /// The guard is releasing: stop renewing now.
    /// A renewal asked for by the holder ([`LockGuard::extend`](crate::LockGuard::extend)):
    /// a renewed lease replaces the watched one and is rescheduled; a refusal
    /// is a loss; a transient error changes nothing.
    pub(crate) async fn extend(
        &self,
        backend: &Arc<dyn LockBackend>,
        ttl: Duration,
    ) -> Result<(), LockError> {
        let lease = self.entry.lease();
        if self.is_lost() {
            return Err(LockError::lost(
                self.entry.meter.backend(),
                lease.key().as_str(),
                "the guard's lease is already lost",
            ));
        }
        let sent_at = Instant::now();
        let result = backend.extend(&lease, ttl).await;
        let landed = Instant::now();
        let latency = landed.saturating_duration_since(sent_at);
        match result {
            Ok(renewed) => {
                if !self.entry.is_done() {
                    *self.entry.lease.lock().unwrap_or_else(|e| e.into_inner()) = renewed;
                    let _ = self
                        .sender
                        .send(Command::Due(self.entry.clone(), self.entry.first_due()));
                }
                let margin = lease.valid_until().saturating_duration_since(landed);
                self.entry.meter.extended("extended", latency, Some(margin));
                Ok(())
            }
            Err(error) => {
                if !error.is_retryable() {
                    self.entry
                        .mark_lost(LostReason::TakenOver, &error.to_string());
                }
                self.entry.meter.extended(error.kind(), latency, None);
                Err(error)
            }
        }
    }

    pub(crate) fn finish(&self) {
        self.entry.finished.cancel();
        let _ = self.sender.send(Command::Forget(self.entry.id));
    }

    /// The guard was dropped: stop renewing and release in the background,
    /// on the watchdog's runtime, or on the current one if that is gone.
    /// With no runtime at all the lease expires on its own.
    pub(crate) fn finish_and_release(&self, backend: &Arc<dyn LockBackend>) {
        self.entry.finished.cancel();
        let lease = self.entry.lease();
        if let Err(mpsc::error::SendError(Command::Release(_, lease))) =
            self.sender.send(Command::Release(self.entry.id, lease))
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let backend = backend.clone();
            runtime.spawn(async move { backend.release(&lease).await });
        }
    }
}

#[derive(Debug)]
pub(crate) struct Watched {
    id: u64,
    /// The labels of the locker's metrics (`backend`, `locker`).
    meter: metrics::Meter,
    lease: Mutex<Lease>,
    ttl: Duration,
    /// Cancelled once, when the lease is declared lost.
    lost: CancellationToken,
    reason: OnceLock<LostReason>,
    /// Cancelled when the guard is released or dropped.
    finished: CancellationToken,
    auto_extend: bool,
}

impl Watched {
    fn lease(&self) -> Lease {
        self.lease.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn is_done(&self) -> bool {
        self.finished.is_cancelled() || self.lost.is_cancelled()
    }

    fn mark_lost(&self, reason: LostReason, why: &str) {
        if self.is_done() || self.reason.set(reason).is_err() {
            return;
        }
        tracing::warn!(backend = self.meter.backend(), key = %self.lease().key(), reason = reason.as_str(), why, "lease lost");
        self.meter.lost(reason);
        self.lost.cancel();
    }

    /// Declares the loss that the lease itself shows: the store's session
    /// signal fired, or validity has passed.
    fn check(&self) {
        if self.is_done() {
            return;
        }
        let lease = self.lease();
        if lease
            .loss_signal()
            .is_some_and(CancellationToken::is_cancelled)
        {
            self.mark_lost(LostReason::SessionEnded, "the store ended the session");
        } else if !lease.is_valid_at(Instant::now()) {
            let reason = if self.auto_extend {
                LostReason::RenewalFailed
            } else {
                LostReason::Expired
            };
            self.mark_lost(reason, "validity ended without a renewal");
        }
    }

    /// Completes when the lease is lost or the guard finished.
    async fn ended(&self) {
        loop {
            self.check();
            if self.is_done() {
                return;
            }
            let lease = self.lease();
            let session = async {
                match lease.loss_signal() {
                    Some(signal) => signal.cancelled().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = self.lost.cancelled() => {}
                () = self.finished.cancelled() => {}
                () = session => {}
                () = tokio::time::sleep_until(lease.valid_until()) => {}
            }
        }
    }

    /// When the first renewal is due: a third of the TTL after the lease was
    /// granted, and always before validity ends.
    fn first_due(&self) -> Instant {
        let lease = self.lease();
        if self.auto_extend {
            next_renewal(&lease, Instant::now(), Duration::ZERO)
        } else {
            lease.valid_until()
        }
    }
}

#[derive(Debug)]
enum Command {
    Watch(Arc<Watched>),
    Due(Arc<Watched>, Instant),
    /// The guard was released: drop its agenda entry now rather than when
    /// it falls due (at high lock rates those stale entries piled up).
    Forget(u64),
    /// A dropped guard: forget it and release in the background.
    Release(u64, Lease),
    Count(tokio::sync::oneshot::Sender<usize>),
}

/// Sleeps until `at`, or for ever when nothing is due; the task's loop and
/// its renewal rounds both wait on it.
async fn sleep_until_or_forever(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
