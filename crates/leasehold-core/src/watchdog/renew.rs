//! One renewal round: the due leases are extended (in one batch where the
//! store can), each answer settled, and the next renewal timed.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::time::Instant;

use crate::backend::LockBackend;
use crate::clock::instant_after;
use crate::error::LockError;
use crate::lease::{Lease, LostReason};
use crate::watchdog::run::Timetable;
use crate::watchdog::{Watched, sleep_until_or_forever};

/// Leases taken off the agenda for one renewal round. Until the round has
/// settled each of them (back on the agenda, or lost), dropping it (a panic in
/// the backend, a runtime shutting down) marks the rest lost: no guard is ever
/// left unrenewed and unreported.
pub(super) struct InFlight {
    entries: Vec<Arc<Watched>>,
}

impl InFlight {
    pub(super) fn new(entries: Vec<Arc<Watched>>) -> Self {
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

type Renewal =
    Pin<Box<dyn Future<Output = (Vec<Arc<Watched>>, Vec<Result<Lease, LockError>>)> + Send>>;

pub(super) async fn renew(
    backend: Arc<dyn LockBackend>,
    mut round: InFlight,
    timetable: Arc<Timetable>,
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
            timetable.schedule(entry.lease().valid_until(), entry.clone());
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
                settle(name, &entries, results, sent_at, &timetable);
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
    timetable: &Timetable,
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
        let mut margin = None;
        let outcome = match result {
            Ok(lease) => {
                margin = Some(entry.lease().valid_until().saturating_duration_since(now));
                let next = next_renewal(&lease, now, latency);
                *entry.lease.lock().unwrap_or_else(|e| e.into_inner()) = lease;
                timetable.schedule(next, entry.clone());
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
                    timetable.schedule(retry, entry.clone());
                }
                error.kind()
            }
            Err(error) => {
                entry.mark_lost(LostReason::TakenOver, &error.to_string());
                error.kind()
            }
        };
        entry.meter.extended(outcome, latency, margin);
    }
}

/// When a lease renewed (or granted) by `now` is next due: a third of its
/// TTL on, but never later than halfway to the end of its validity, and early
/// enough that a renewal as slow as the last one (`latency`, twice over)
/// still lands before validity ends. A slow store gets renewed back to back
/// rather than lost.
pub(super) fn next_renewal(lease: &Lease, now: Instant, latency: Duration) -> Instant {
    let left = lease.valid_until().saturating_duration_since(now);
    let by = (lease.ttl() / 3)
        .min(left / 2)
        .min(left.saturating_sub(latency.saturating_mul(2)));
    instant_after(now, by)
}
