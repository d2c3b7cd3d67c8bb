//! The metrics of DESIGN §2, one named function each, so a name or label is
//! written once: `leasehold_acquire_total{backend,outcome}`,
//! `leasehold_acquire_seconds`, `leasehold_hold_seconds`, `leasehold_held`,
//! `leasehold_extend_total{outcome}`, `leasehold_lost_total{reason}`,
//! `leasehold_release_total{outcome}`, `leasehold_waiters` and
//! `leasehold_force_release_total{evicted}`.

use std::time::Duration;

use crate::lease::LostReason;

/// One acquisition attempt (or wait) ended with `outcome` after `elapsed`.
pub(crate) fn acquired(backend: &'static str, outcome: &'static str, elapsed: Duration) {
    metrics::counter!("leasehold_acquire_total", "backend" => backend, "outcome" => outcome)
        .increment(1);
    metrics::histogram!("leasehold_acquire_seconds", "backend" => backend).record(elapsed);
}

/// A release (or a dropped guard's background release) ended with `outcome`.
pub(crate) fn released(backend: &'static str, outcome: &'static str) {
    metrics::counter!("leasehold_release_total", "backend" => backend, "outcome" => outcome)
        .increment(1);
}

/// A guard was handed out.
pub(crate) fn guard_opened(backend: &'static str) {
    metrics::gauge!("leasehold_held", "backend" => backend).increment(1.0);
}

/// A guard ended (released or dropped) after holding for `held`.
pub(crate) fn guard_closed(backend: &'static str, held: Duration) {
    metrics::histogram!("leasehold_hold_seconds", "backend" => backend).record(held);
    metrics::gauge!("leasehold_held", "backend" => backend).decrement(1.0);
}

/// A renewal ended with `outcome`.
pub(crate) fn extended(backend: &'static str, outcome: &'static str) {
    metrics::counter!("leasehold_extend_total", "backend" => backend, "outcome" => outcome)
        .increment(1);
}

/// A guard's lease was lost.
pub(crate) fn lost(backend: &'static str, reason: LostReason) {
    metrics::counter!("leasehold_lost_total", "backend" => backend, "reason" => reason.as_str())
        .increment(1);
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
pub(crate) struct Waiting(&'static str);

impl Waiting {
    pub(crate) fn start(backend: &'static str) -> Self {
        metrics::gauge!("leasehold_waiters", "backend" => backend).increment(1.0);
        Waiting(backend)
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        metrics::gauge!("leasehold_waiters", "backend" => self.0).decrement(1.0);
    }
}
