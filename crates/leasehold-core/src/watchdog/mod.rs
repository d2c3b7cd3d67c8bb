//! The renewal engine: one task per [`Locker`](crate::Locker) and tokio
//! runtime keeps every guard's next renewal on one agenda, renews due leases
//! together, and declares a lease lost, with its reason, the moment it can no
//! longer be trusted. Guards talk to it only through a [`Watch`].
//!
//! Guards put their leases on the agenda and take them off themselves,
//! under a lock, and wake the task only when a lease falls due before its
//! timer: a lock taken and released between two renewal rounds never wakes
//! it. (When each guard woke it twice, a `Locker`'s lock+unlock from a task
//! put this process's threads on a CPU 6.9–7.3 times against the backend's
//! own 5.6–5.8: `redis_lock_cost`'s thread runs. Now both are 5.8.) A
//! store's session signal reaches the guard with no task in between: the
//! guard's loss token is the signal's child.
//!
//! Here: the guards' side ([`Watchdogs`], [`Watch`]) and the watched lease
//! ([`Watched`]); `run` is the watchdog task with its agenda, `renew` one
//! renewal round.

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
use run::{Inbox, Timetable, run_watchdog};

/// The watchdogs of one locker, one per tokio runtime it was used on.
///
/// One per runtime, not per locker: a `Locker` kept in a `static` or built
/// in a setup `block_on` and then used from another runtime would otherwise
/// send its guards to a task that no longer runs (or is never polled), and
/// they would expire silently.
#[derive(Debug, Default)]
pub(crate) struct Watchdogs {
    per_runtime: Mutex<Vec<(tokio::runtime::Id, Watchdog)>>,
}

/// One watchdog task as its guards see it: the agenda they write to, and
/// the queue of dropped guards' leases it releases.
#[derive(Debug, Clone)]
struct Watchdog {
    timetable: Arc<Timetable>,
    releases: mpsc::UnboundedSender<Lease>,
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
        // The store's session signal cancels the loss token by itself.
        let lost = match lease.loss_signal() {
            Some(signal) => signal.child_token(),
            None => CancellationToken::new(),
        };
        let entry = Arc::new(Watched {
            id: NEXT_WATCH_ID.fetch_add(1, Ordering::Relaxed),
            meter: meter.clone(),
            lease: Mutex::new(lease),
            ttl,
            lost,
            reason: OnceLock::new(),
            finished: CancellationToken::new(),
            auto_extend,
        });
        let watchdog = self.current(backend);
        // A closed timetable marks it lost: never hand out a guard that
        // silently expires.
        watchdog
            .timetable
            .schedule(entry.first_due(), entry.clone());
        Watch { entry, watchdog }
    }

    /// How many live leases the current runtime's watchdog has scheduled.
    pub(crate) fn scheduled(&self) -> usize {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return 0;
        };
        let watchdogs = self.per_runtime.lock().unwrap_or_else(|e| e.into_inner());
        watchdogs
            .iter()
            .find(|(id, _)| *id == runtime.id())
            .map_or(0, |(_, watchdog)| watchdog.timetable.live())
    }

    fn current(&self, backend: &Arc<dyn LockBackend>) -> Watchdog {
        let runtime = tokio::runtime::Handle::current();
        let mut watchdogs = self.per_runtime.lock().unwrap_or_else(|e| e.into_inner());
        watchdogs.retain(|(_, watchdog)| !watchdog.releases.is_closed());
        if let Some((_, watchdog)) = watchdogs.iter().find(|(id, _)| *id == runtime.id()) {
            return watchdog.clone();
        }
        let timetable = Arc::new(Timetable::default());
        let (releases, receiver) = mpsc::unbounded_channel();
        runtime.spawn(run_watchdog(
            backend.clone(),
            Inbox::new(receiver, timetable.clone()),
        ));
        let watchdog = Watchdog {
            timetable,
            releases,
        };
        watchdogs.push((runtime.id(), watchdog.clone()));
        watchdog
    }
}

/// A guard's handle on its watched lease.
#[derive(Debug)]
pub(crate) struct Watch {
    entry: Arc<Watched>,
    watchdog: Watchdog,
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
                    self.watchdog
                        .timetable
                        .schedule(self.entry.first_due(), self.entry.clone());
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

    /// The guard is releasing: stop renewing now. A loss that happened
    /// while it was held (a session signal nobody asked about yet) is
    /// counted first; `mark_lost` names its reason.
    pub(crate) fn finish(&self) {
        if self.entry.lost.is_cancelled() {
            self.entry
                .mark_lost(LostReason::SessionEnded, SESSION_ENDED);
        }
        self.entry.finished.cancel();
        self.watchdog.timetable.forget(self.entry.id);
    }

    /// The guard was dropped: stop renewing and release in the background,
    /// on the watchdog's runtime, or on the current one if that is gone.
    /// With no runtime at all the lease expires on its own.
    pub(crate) fn finish_and_release(&self, backend: &Arc<dyn LockBackend>) {
        self.finish();
        if let Err(mpsc::error::SendError(lease)) = self.watchdog.releases.send(self.entry.lease())
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
    /// Cancelled once, when the lease is declared lost, or by the store's
    /// session signal (its parent) with no reason recorded yet.
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
        if self.finished.is_cancelled() {
            return;
        }
        // Cancelled with no reason recorded: the session signal did it.
        let (reason, why) = if self.lost.is_cancelled() {
            (LostReason::SessionEnded, SESSION_ENDED)
        } else {
            (reason, why)
        };
        if self.reason.set(reason).is_err() {
            return;
        }
        tracing::warn!(backend = self.meter.backend(), key = %self.lease().key(), reason = reason.as_str(), why, "lease lost");
        self.meter.lost(reason);
        self.lost.cancel();
    }

    /// Declares (and counts) the loss that the lease itself shows: the
    /// store's session signal fired, or validity has passed.
    fn check(&self) {
        if self.finished.is_cancelled() || self.reason.get().is_some() {
            return;
        }
        let lease = self.lease();
        if self.lost.is_cancelled()
            || lease
                .loss_signal()
                .is_some_and(CancellationToken::is_cancelled)
        {
            self.mark_lost(LostReason::SessionEnded, SESSION_ENDED);
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

/// Why a lease whose session signal fired is lost.
const SESSION_ENDED: &str = "the store ended the session";

/// Sleeps until `at`, or for ever when nothing is due; the task's loop and
/// its renewal rounds both wait on it.
async fn sleep_until_or_forever(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
