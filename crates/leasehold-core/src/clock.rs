//! The clock seam: every backend and the guard read time through it, so tests
//! can inject skew and pauses deterministically.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

/// Monotonic now, wall time and sleep.
///
/// The monotonic clock is the only one trusted for a holder's own view of its
/// lease. Wall time is only ever metadata (or, for stores that keep absolute
/// times, the store's own clock decides).
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// Monotonic now.
    fn now(&self) -> Instant;
    /// Wall-clock now.
    fn wall(&self) -> SystemTime;
    /// Sleeps for `duration` of this clock's time.
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        Box::pin(tokio::time::sleep(duration))
    }
}

/// A shared clock.
pub type SharedClock = Arc<dyn Clock>;

/// The process clock (tokio's `Instant`, so `tokio::time::pause` drives it in
/// tests).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
    fn wall(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// The default shared clock.
pub fn system_clock() -> SharedClock {
    Arc::new(SystemClock)
}

/// A clock for fault injection: the system clock plus a monotonic jump (what a
/// process sees after being paused: time moved on without it) and a wall-clock
/// skew (a host whose clock is wrong).
///
/// ```
/// use leasehold_core::{Clock, TestClock};
/// use std::time::Duration;
/// let clock = TestClock::new();
/// let before = clock.now();
/// clock.jump(Duration::from_secs(30));
/// assert!(clock.now() >= before + Duration::from_secs(30));
/// ```
#[derive(Debug, Default)]
pub struct TestClock {
    jumped_nanos: AtomicU64,
    wall_skew_nanos: AtomicI64,
}

impl TestClock {
    /// A clock that agrees with the system clock until told otherwise.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves monotonic time forward by `by`, as if the process had been paused.
    pub fn jump(&self, by: Duration) {
        self.jumped_nanos
            .fetch_add(by.as_nanos() as u64, Ordering::SeqCst);
    }

    /// Sets the wall-clock skew (positive: ahead of the system clock).
    pub fn set_wall_skew(&self, skew_nanos: i64) {
        self.wall_skew_nanos.store(skew_nanos, Ordering::SeqCst);
    }
}

impl Clock for TestClock {
    fn now(&self) -> Instant {
        Instant::now() + Duration::from_nanos(self.jumped_nanos.load(Ordering::SeqCst))
    }
    fn wall(&self) -> SystemTime {
        let skew = self.wall_skew_nanos.load(Ordering::SeqCst);
        let now = SystemTime::now();
        if skew >= 0 {
            now + Duration::from_nanos(skew as u64)
        } else {
            now - Duration::from_nanos(skew.unsigned_abs())
        }
    }
}

/// The clock drift allowance subtracted from a lease's validity:
/// `ttl * factor + fixed` (Redlock's formula; defaults 1% + 2 ms).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Drift {
    /// Proportional part.
    pub factor: f64,
    /// Fixed part.
    pub fixed: Duration,
}

impl Default for Drift {
    fn default() -> Self {
        Drift {
            factor: 0.01,
            fixed: Duration::from_millis(2),
        }
    }
}

impl Drift {
    /// The allowance for `ttl`, never more than `ttl` itself.
    pub fn allowance(&self, ttl: Duration) -> Duration {
        ttl.mul_f64(self.factor.max(0.0))
            .saturating_add(self.fixed)
            .min(ttl)
    }

    /// The end of validity of a lease of `ttl` whose request was sent at
    /// `sent_at`.
    pub fn valid_until(&self, sent_at: Instant, ttl: Duration) -> Instant {
        sent_at + (ttl - self.allowance(ttl))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_allowance_is_factor_plus_fixed_and_capped_by_ttl() {
        let drift = Drift {
            factor: 0.01,
            fixed: Duration::from_millis(2),
        };
        assert_eq!(
            drift.allowance(Duration::from_secs(10)),
            Duration::from_millis(102)
        );
        assert_eq!(
            drift.allowance(Duration::from_millis(1)),
            Duration::from_millis(1)
        );
    }

    #[test]
    fn test_clock_skews_wall_time_both_ways() {
        let clock = TestClock::new();
        clock.set_wall_skew(-60_000_000_000);
        assert!(clock.wall() < SystemTime::now() - Duration::from_secs(59));
        clock.set_wall_skew(60_000_000_000);
        assert!(clock.wall() > SystemTime::now() + Duration::from_secs(59));
    }
}
