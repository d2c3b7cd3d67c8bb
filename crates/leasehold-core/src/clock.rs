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
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        let _ = self
            .jumped_nanos
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |jumped| {
                Some(jumped.saturating_add(by))
            });
    }

    /// Sets the wall-clock skew (positive: ahead of the system clock).
    pub fn set_wall_skew(&self, skew_nanos: i64) {
        self.wall_skew_nanos.store(skew_nanos, Ordering::SeqCst);
    }
}

impl Clock for TestClock {
    fn now(&self) -> Instant {
        instant_after(
            Instant::now(),
            Duration::from_nanos(self.jumped_nanos.load(Ordering::SeqCst)),
        )
    }
    fn wall(&self) -> SystemTime {
        let skew = self.wall_skew_nanos.load(Ordering::SeqCst);
        let now = SystemTime::now();
        let by = Duration::from_nanos(skew.unsigned_abs());
        let skewed = if skew >= 0 {
            now.checked_add(by)
        } else {
            now.checked_sub(by)
        };
        skewed.unwrap_or(now)
    }
}

/// The longest TTL any backend accepts, and the longest duration a
/// configuration value may name (one year). Longer values are almost always a
/// unit mistake, and bounding them keeps every `Instant + Duration` in range.
/// (Also `leasehold_core::config::MAX_DURATION`.)
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// How far [`instant_after`] saturates: about thirty years, the horizon tokio
/// itself uses for "never".
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// `at + by`, saturating at about thirty years after `at` instead of
/// panicking: every deadline in leasehold is computed with it, so an extreme
/// wait or TTL (`Duration::MAX`) means "never" rather than a crash.
///
/// ```
/// use leasehold_core::instant_after;
/// use std::time::Duration;
/// use tokio::time::Instant;
/// let now = Instant::now();
/// assert!(instant_after(now, Duration::MAX) > now + Duration::from_secs(86_400 * 365));
/// assert_eq!(instant_after(now, Duration::from_secs(1)), now + Duration::from_secs(1));
/// ```
pub fn instant_after(at: Instant, by: Duration) -> Instant {
    at.checked_add(by.min(FAR_FUTURE))
        .or_else(|| at.checked_add(FAR_FUTURE))
        .unwrap_or(at)
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
    /// The allowance for `ttl`, never more than `ttl` itself. A factor that
    /// is negative or not a number counts as 0; one so large that the product
    /// overflows takes the whole TTL.
    pub fn allowance(&self, ttl: Duration) -> Duration {
        let factor = if self.factor.is_nan() {
            0.0
        } else {
            self.factor.max(0.0)
        };
        Duration::try_from_secs_f64(ttl.as_secs_f64() * factor)
            .unwrap_or(ttl)
            .saturating_add(self.fixed)
            .min(ttl)
    }

    /// The end of validity of a lease of `ttl` whose request was sent at
    /// `sent_at` (saturating far in the future rather than overflowing).
    pub fn valid_until(&self, sent_at: Instant, ttl: Duration) -> Instant {
        instant_after(sent_at, ttl - self.allowance(ttl))
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
