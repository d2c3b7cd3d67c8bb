//! The metrics of DESIGN §2 and §7, one named function each, so a name or
//! label is written once. Every metric of a [`Locker`](crate::Locker) carries
//! `backend` (the store) and `locker` (the name given to
//! [`LockerBuilder::name`](crate::LockerBuilder::name), `"default"`
//! otherwise), so two applications in one process are told apart:
//!
//! | metric | kind | labels | what |
//! | --- | --- | --- | --- |
//! | `leasehold_acquire_total` | counter | `kind`, `outcome` | acquisition attempts (or waits) by lock kind (`mutex`, `read`, `write`, `permit`) and how they ended: `acquired`, `contended`, `wait_timed_out`, ... |
//! | `leasehold_acquire_seconds` | histogram | `kind`, `outcome` | time to that end, waiting included |
//! | `leasehold_held` | gauge | | guards alive now |
//! | `leasehold_hold_seconds` | histogram | | how long a guard lived (released or dropped) |
//! | `leasehold_waiters` | gauge | | callers waiting for a held key now |
//! | `leasehold_extend_total` | counter | `outcome` | renewals (the watchdog's and `LockGuard::extend`) by outcome |
//! | `leasehold_extend_seconds` | histogram | `outcome` | how long a renewal took the store: the leading indicator of loss |
//! | `leasehold_renewal_margin_seconds` | histogram | | validity left when a successful renewal landed; a margin below the renewal latency means the next slow renewal loses the lease |
//! | `leasehold_lost_total` | counter | `reason` | leases lost: `renewal_failed`, `taken_over`, `session_ended`, `expired` |
//! | `leasehold_release_total` | counter | `outcome` | releases: `released`, `dropped` (background), or the error kind |
//! | `leasehold_order_inversions_total` | counter | | acquisitions that took two key classes in the order opposite to one learned earlier: a deadlock waiting to happen (see `LockOrder`) |
//!
//! Two more have `backend` only, as they belong to no locker:
//! `leasehold_force_release_total{evicted}` (operator evictions through
//! [`Admin`](crate::Admin)) and `leasehold_circuit_open` (a
//! [`CircuitBreaker`](crate::CircuitBreaker)'s state, 1 while open).
//!
//! Every metric has HELP text and a unit, given to the installed recorder the
//! first time a `Locker` (or `Admin`, or breaker) is built under it. The
//! histograms are in seconds; a Prometheus exporter must render them with
//! buckets (not as summaries) for the shipped alert rules and dashboard
//! (`ops/`), as `examples/examples/metrics_exporter.rs` does.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use metrics::{SharedString, Unit};

use crate::kind::LockKind;
use crate::lease::LostReason;

/// The labels every metric of one locker carries.
#[derive(Clone, Debug)]
pub(crate) struct Meter {
    backend: &'static str,
    locker: Arc<str>,
}

impl Meter {
    pub(crate) fn new(backend: &'static str, locker: Arc<str>) -> Self {
        Meter { backend, locker }
    }

    pub(crate) fn backend(&self) -> &'static str {
        self.backend
    }

    fn locker(&self) -> SharedString {
        SharedString::from(self.locker.clone())
    }

    /// One acquisition attempt (or wait) of `kind` ended with `outcome`
    /// after `elapsed`.
    pub(crate) fn acquired(&self, kind: LockKind, outcome: &'static str, elapsed: Duration) {
        let kind = kind.as_str();
        metrics::counter!("leasehold_acquire_total", "backend" => self.backend, "locker" => self.locker(), "kind" => kind, "outcome" => outcome)
            .increment(1);
        metrics::histogram!("leasehold_acquire_seconds", "backend" => self.backend, "locker" => self.locker(), "kind" => kind, "outcome" => outcome)
            .record(elapsed);
    }

    /// A release (or a dropped guard's background release) ended with `outcome`.
    pub(crate) fn released(&self, outcome: &'static str) {
        metrics::counter!("leasehold_release_total", "backend" => self.backend, "locker" => self.locker(), "outcome" => outcome)
            .increment(1);
    }

    /// A guard was handed out.
    pub(crate) fn guard_opened(&self) {
        metrics::gauge!("leasehold_held", "backend" => self.backend, "locker" => self.locker())
            .increment(1.0);
    }

    /// A guard ended (released or dropped) after holding for `held`.
    pub(crate) fn guard_closed(&self, held: Duration) {
        metrics::histogram!("leasehold_hold_seconds", "backend" => self.backend, "locker" => self.locker())
            .record(held);
        metrics::gauge!("leasehold_held", "backend" => self.backend, "locker" => self.locker())
            .decrement(1.0);
    }

    /// A renewal ended with `outcome` after `latency`; a successful one
    /// landed with `margin` of the old validity left.
    pub(crate) fn extended(
        &self,
        outcome: &'static str,
        latency: Duration,
        margin: Option<Duration>,
    ) {
        metrics::counter!("leasehold_extend_total", "backend" => self.backend, "locker" => self.locker(), "outcome" => outcome)
            .increment(1);
        metrics::histogram!("leasehold_extend_seconds", "backend" => self.backend, "locker" => self.locker(), "outcome" => outcome)
            .record(latency);
        if let Some(margin) = margin {
            metrics::histogram!("leasehold_renewal_margin_seconds", "backend" => self.backend, "locker" => self.locker())
                .record(margin);
        }
    }

    /// A task asked for a key in an order that inverts a learned one.
    pub(crate) fn order_inversion(&self) {
        metrics::counter!("leasehold_order_inversions_total", "backend" => self.backend, "locker" => self.locker())
            .increment(1);
    }

    /// A guard's lease was lost.
    pub(crate) fn lost(&self, reason: LostReason) {
        metrics::counter!("leasehold_lost_total", "backend" => self.backend, "locker" => self.locker(), "reason" => reason.as_str())
            .increment(1);
    }
}

/// An operator forced a key free; `evicted` says whether someone held it.
pub(crate) fn force_released(backend: &'static str, evicted: bool) {
    let evicted = if evicted { "true" } else { "false" };
    metrics::counter!("leasehold_force_release_total", "backend" => backend, "evicted" => evicted)
        .increment(1);
}

/// A circuit breaker opened (`true`) or closed.
pub(crate) fn circuit(backend: &'static str, open: bool) {
    metrics::gauge!("leasehold_circuit_open", "backend" => backend).set(if open {
        1.0
    } else {
        0.0
    });
}

/// Counts a waiter in `leasehold_waiters` for as long as it lives.
pub(crate) struct Waiting(Meter);

impl Waiting {
    pub(crate) fn start(meter: &Meter) -> Self {
        metrics::gauge!("leasehold_waiters", "backend" => meter.backend, "locker" => meter.locker())
            .increment(1.0);
        Waiting(meter.clone())
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let meter = &self.0;
        metrics::gauge!("leasehold_waiters", "backend" => meter.backend, "locker" => meter.locker())
            .decrement(1.0);
    }
}

/// The address of the recorder last given the descriptions (0: none yet).
static DESCRIBED_TO: AtomicUsize = AtomicUsize::new(0);

/// Gives the HELP text and unit of every metric to the installed recorder,
/// once per recorder: one atomic load when it already has them, so it is
/// called from every constructor, and a recorder installed after the first
/// `Locker` still gets them.
pub(crate) fn describe() {
    let recorder =
        metrics::with_recorder(|recorder| std::ptr::from_ref(recorder).cast::<()>() as usize);
    if DESCRIBED_TO.swap(recorder, Ordering::Relaxed) == recorder {
        return;
    }
    metrics::describe_counter!(
        "leasehold_acquire_total",
        Unit::Count,
        "Lock acquisition attempts (or waits) by outcome: acquired, contended, wait_timed_out, unavailable, ..."
    );
    metrics::describe_histogram!(
        "leasehold_acquire_seconds",
        Unit::Seconds,
        "Time a lock acquisition took to its outcome, waiting for the key included."
    );
    metrics::describe_gauge!(
        "leasehold_held",
        Unit::Count,
        "Lock guards alive now (held locks) in this process."
    );
    metrics::describe_histogram!(
        "leasehold_hold_seconds",
        Unit::Seconds,
        "How long a lock was held, from acquisition to release or drop."
    );
    metrics::describe_gauge!(
        "leasehold_waiters",
        Unit::Count,
        "Callers waiting now for a key someone else holds."
    );
    metrics::describe_counter!(
        "leasehold_extend_total",
        Unit::Count,
        "Lease renewals by outcome: extended, or the error kind."
    );
    metrics::describe_histogram!(
        "leasehold_extend_seconds",
        Unit::Seconds,
        "Time the store took to answer a lease renewal; the leading indicator of lost leases."
    );
    metrics::describe_histogram!(
        "leasehold_renewal_margin_seconds",
        Unit::Seconds,
        "Validity the lease had left when a successful renewal landed; below the renewal latency, the next slow renewal loses the lease."
    );
    metrics::describe_counter!(
        "leasehold_lost_total",
        Unit::Count,
        "Leases lost while their guard lived, by reason: renewal_failed, taken_over, session_ended, expired."
    );
    metrics::describe_counter!(
        "leasehold_release_total",
        Unit::Count,
        "Lock releases by outcome: released, dropped (released in the background), or the error kind."
    );
    metrics::describe_counter!(
        "leasehold_force_release_total",
        Unit::Count,
        "Keys forced free by an operator (leasehold release --force, Admin::force_release); evicted says whether someone held the key."
    );
    metrics::describe_counter!(
        "leasehold_order_inversions_total",
        Unit::Count,
        "Waiting acquisitions that took two key classes in the order opposite to one learned earlier in this process: two such tasks can deadlock."
    );
    metrics::describe_gauge!(
        "leasehold_circuit_open",
        "1 while the backend's circuit breaker is open and fails lock calls fast, else 0."
    );
}
