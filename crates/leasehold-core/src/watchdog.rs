//! The renewal engine: one task per [`Locker`](crate::Locker) and tokio
//! runtime keeps every guard's next renewal on one agenda, renews due leases
//! together, listens to the stores' session signals, and declares a lease
//! lost, with its reason, the moment it can no longer be trusted. Guards talk
//! to it only through a [`Watch`].

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backend::LockBackend;
use crate::clock::instant_after;
use crate::error::LockError;
use crate::lease::{Lease, LostReason};
use crate::metrics;

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
        lease: Lease,
        ttl: Duration,
        auto_extend: bool,
    ) -> Watch {
        let entry = Arc::new(Watched {
            id: NEXT_WATCH_ID.fetch_add(1, Ordering::Relaxed),
            backend: backend.name(),
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
    backend: &'static str,
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
        tracing::warn!(backend = self.backend, key = %self.lease().key(), reason = reason.as_str(), why, "lease lost");
        metrics::lost(self.backend, reason);
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

/// When a lease renewed (or granted) by `now` is next due: a third of its
/// TTL on, but never later than halfway to the end of its validity, and early
/// enough that a renewal as slow as the last one (`latency`, twice over)
/// still lands before validity ends. A slow store gets renewed back to back
/// rather than lost.
fn next_renewal(lease: &Lease, now: Instant, latency: Duration) -> Instant {
    let left = lease.valid_until().saturating_duration_since(now);
    let by = (lease.ttl() / 3)
        .min(left / 2)
        .min(left.saturating_sub(latency.saturating_mul(2)));
    instant_after(now, by)
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

type SessionWatch = Pin<Box<dyn Future<Output = Arc<Watched>> + Send>>;

/// One task per locker and runtime keeps every guard's next renewal in one
/// agenda and renews the due ones together, so ten thousand guards cost one
/// timer, not ten thousand. It also listens to the store's session signals,
/// so a session that ends marks its guards lost at once.
async fn run_watchdog(
    backend: Arc<dyn LockBackend>,
    mut commands: Inbox,
    sender: mpsc::WeakUnboundedSender<Command>,
) {
    let mut agenda = Agenda::default();
    let mut sessions: FuturesUnordered<SessionWatch> = FuturesUnordered::new();
    loop {
        let next_due = agenda.next_due();
        let command = tokio::select! {
            command = commands.0.recv() => match command {
                Some(command) => command,
                None => return,
            },
            Some(entry) = sessions.next(), if !sessions.is_empty() => {
                entry.check();
                if entry.is_done() {
                    agenda.forget(entry.id);
                }
                continue;
            }
            () = sleep_until_or_forever(next_due) => {
                // Batch everything due within a few ms to share round trips.
                let due = agenda.take_due(Instant::now() + Duration::from_millis(5));
                if let Some(sender) = sender.upgrade() {
                    tokio::spawn(renew(backend.clone(), InFlight::new(due), sender));
                } else {
                    drop(InFlight::new(due));
                }
                continue;
            }
        };
        match command {
            Command::Watch(entry) => {
                if let Some(signal) = entry.lease().loss_signal().cloned() {
                    let watched = entry.clone();
                    sessions.push(Box::pin(async move {
                        tokio::select! {
                            () = signal.cancelled() => {}
                            () = watched.finished.cancelled() => {}
                            () = watched.lost.cancelled() => {}
                        }
                        watched
                    }));
                }
                agenda.schedule(entry.first_due(), entry);
            }
            Command::Due(entry, at) => {
                if !entry.is_done() {
                    agenda.schedule(at, entry);
                }
            }
            Command::Forget(id) => agenda.forget(id),
            Command::Count(reply) => {
                let _ = reply.send(agenda.len());
            }
            Command::Release(id, lease) => {
                agenda.forget(id);
                let backend = backend.clone();
                tokio::spawn(async move {
                    if let Err(error) = backend.release(&lease).await {
                        tracing::debug!(%error, key = %lease.key(), "background release of a dropped guard failed");
                    }
                });
            }
        }
    }
}

/// The watchdog's command queue. A watchdog task can be dropped before it
/// ever ran (its runtime shut down first); the leases still queued for it
/// are then lost, like those on its agenda.
struct Inbox(mpsc::UnboundedReceiver<Command>);

impl Drop for Inbox {
    fn drop(&mut self) {
        self.0.close();
        while let Ok(command) = self.0.try_recv() {
            if let Command::Watch(entry) | Command::Due(entry, _) = command {
                entry.mark_lost(
                    LostReason::RenewalFailed,
                    "the tokio runtime that was to renew it shut down",
                );
            }
        }
    }
}

/// The watchdog's timetable: entries by due time, and each entry's due time
/// by id so a released guard's entry can be dropped at once.
#[derive(Default)]
struct Agenda {
    by_due: BTreeMap<(Instant, u64), Arc<Watched>>,
    due_of: HashMap<u64, Instant>,
}

impl Agenda {
    fn schedule(&mut self, at: Instant, entry: Arc<Watched>) {
        if let Some(previous) = self.due_of.insert(entry.id, at) {
            self.by_due.remove(&(previous, entry.id));
        }
        self.by_due.insert((at, entry.id), entry);
    }

    fn forget(&mut self, id: u64) {
        if let Some(at) = self.due_of.remove(&id) {
            self.by_due.remove(&(at, id));
        }
    }

    fn next_due(&self) -> Option<Instant> {
        self.by_due.keys().next().map(|(at, _)| *at)
    }

    /// Removes and returns the live entries due before `horizon`.
    fn take_due(&mut self, horizon: Instant) -> Vec<Arc<Watched>> {
        let later = self.by_due.split_off(&(horizon, u64::MAX));
        let due = std::mem::replace(&mut self.by_due, later);
        due.into_values()
            .filter(|entry| {
                self.due_of.remove(&entry.id);
                !entry.is_done()
            })
            .collect()
    }

    fn len(&self) -> usize {
        self.by_due.len()
    }
}

impl Drop for Agenda {
    /// The watchdog task is going away with leases still scheduled: its
    /// runtime shut down. Nobody renews them now, so they are lost, not
    /// silently left to expire.
    fn drop(&mut self) {
        for entry in self.by_due.values() {
            entry.mark_lost(
                LostReason::RenewalFailed,
                "the tokio runtime that renewed it shut down",
            );
        }
    }
}

/// Leases taken off the agenda for one renewal round. Until the round has
/// settled each of them (back on the agenda, or lost), dropping it (a panic in
/// the backend, a runtime shutting down) marks the rest lost: no guard is ever
/// left unrenewed and unreported.
struct InFlight {
    entries: Vec<Arc<Watched>>,
}

impl InFlight {
    fn new(entries: Vec<Arc<Watched>>) -> Self {
        InFlight { entries }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        for entry in &self.entries {
            entry.mark_lost(
                LostReason::RenewalFailed,
                "the renewal task ended before it finished (a panic in the backend, or the runtime shut down)",
            );
        }
    }
}

async fn sleep_until_or_forever(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

type Renewal =
    Pin<Box<dyn Future<Output = (Vec<Arc<Watched>>, Vec<Result<Lease, LockError>>)> + Send>>;

async fn renew(
    backend: Arc<dyn LockBackend>,
    mut round: InFlight,
    sender: mpsc::UnboundedSender<Command>,
) {
    let name = backend.name();
    let now = Instant::now();
    let (to_extend, checks): (Vec<_>, Vec<_>) = std::mem::take(&mut round.entries)
        .into_iter()
        .partition(|entry| entry.auto_extend);
    for entry in checks {
        if now >= entry.lease().valid_until() {
            entry.mark_lost(LostReason::Expired, "validity ended (auto-extend is off)");
        } else {
            let _ = sender.send(Command::Due(entry.clone(), entry.lease().valid_until()));
        }
    }
    if to_extend.is_empty() {
        return;
    }
    round.entries = to_extend.clone();
    // A store that renews many leases in one call gets one batch; any other
    // gets one call per lease, all at once, each settled as it answers.
    let sent_at = Instant::now();
    let mut calls: FuturesUnordered<Renewal> = FuturesUnordered::new();
    if backend.capabilities().batch_extend {
        let backend = backend.clone();
        let entries = to_extend.clone();
        let name = backend.name();
        calls.push(Box::pin(async move {
            let renewals: Vec<(Lease, Duration)> =
                entries.iter().map(|e| (e.lease(), e.ttl)).collect();
            let results = match backend.extend_many(&renewals).await {
                Ok(results) => results,
                // The whole call failed: each lease gets the cause, as
                // transient or final as it was.
                Err(error) => entries
                    .iter()
                    .map(|_| {
                        Err(if error.is_retryable() {
                            LockError::unavailable(name, error.to_string())
                        } else {
                            LockError::backend(name, error.to_string())
                        })
                    })
                    .collect(),
            };
            (entries, results)
        }));
    } else {
        for entry in &to_extend {
            let backend = backend.clone();
            let entry = entry.clone();
            calls.push(Box::pin(async move {
                let result = backend.extend(&entry.lease(), entry.ttl).await;
                (vec![entry], vec![result])
            }));
        }
    }
    // A renewal stuck on a slow store must not delay the loss signal past
    // validity: watch the deadlines while the calls run.
    let mut deadlines: Vec<(Instant, Arc<Watched>)> = to_extend
        .iter()
        .map(|entry| (entry.lease().valid_until(), entry.clone()))
        .collect();
    deadlines.sort_by_key(|(at, _)| *at);
    let mut deadlines = deadlines.into_iter().peekable();
    while !calls.is_empty() {
        let next_deadline = deadlines.peek().map(|(at, _)| *at);
        tokio::select! {
            Some((entries, results)) = calls.next() => {
                settle(name, &entries, results, sent_at, &sender);
            }
            () = sleep_until_or_forever(next_deadline) => {
                if let Some((_, entry)) = deadlines.next() {
                    // Settled entries carry their renewed validity by now.
                    entry.check();
                }
            }
        }
    }
    round.entries.clear();
}

/// Applies one renewal call's answers: renewed leases go back on the agenda,
/// refusals are losses, and transient errors retry before validity ends. A
/// backend that returned fewer results than leases left the rest unanswered:
/// they count as [`LockError::Unavailable`].
fn settle(
    name: &'static str,
    entries: &[Arc<Watched>],
    results: Vec<Result<Lease, LockError>>,
    sent_at: Instant,
    sender: &mpsc::UnboundedSender<Command>,
) {
    let answered = results.len();
    let mut results = results.into_iter();
    let now = Instant::now();
    let latency = now.saturating_duration_since(sent_at);
    for entry in entries {
        let result = results.next().unwrap_or_else(|| {
            Err(LockError::unavailable(
                name,
                format!(
                    "extend_many answered {answered} of {} renewals",
                    entries.len()
                ),
            ))
        });
        if entry.is_done() {
            continue;
        }
        let outcome = match result {
            Ok(lease) => {
                let next = next_renewal(&lease, now, latency);
                *entry.lease.lock().unwrap_or_else(|e| e.into_inner()) = lease;
                let _ = sender.send(Command::Due(entry.clone(), next));
                "extended"
            }
            Err(error) if error.is_retryable() => {
                let valid_until = entry.lease().valid_until();
                if now >= valid_until {
                    entry.mark_lost(
                        LostReason::RenewalFailed,
                        "renewals failed until validity ended",
                    );
                } else {
                    // Try again soon, and once more right at the end of validity.
                    let retry = instant_after(now, (entry.ttl / 10).max(Duration::from_millis(10)))
                        .min(valid_until);
                    let _ = sender.send(Command::Due(entry.clone(), retry));
                }
                error.kind()
            }
            Err(error) => {
                entry.mark_lost(LostReason::TakenOver, &error.to_string());
                error.kind()
            }
        };
        metrics::extended(name, outcome);
    }
}
