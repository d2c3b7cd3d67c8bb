//! How long to wait for a held key and how to pace the attempts: a policy
//! object, apart from the loops that use it (tower's retry split).
//!
//! Named for what it governs — waiting for a key someone else holds — so it
//! is not mistaken for the per-call store timeout. Two different clocks:
//! - the policy's `deadline` bounds the whole wait; when it passes with the
//!   key still held, the caller gets [`LockError::WaitTimedOut`];
//! - the backend's `timeout` bounds each store call; a call that runs past it
//!   is [`LockError::Unavailable`]. A waiting loop tries again after an
//!   `Unavailable` within the deadline, and if the deadline passes while the
//!   store is still failing the caller gets that `Unavailable`, never a
//!   `WaitTimedOut` that would blame another holder.

use std::time::Duration;

use backon::BackoffBuilder;
use rand::Rng;
use tokio::time::Instant;

use crate::clock::instant_after;
use crate::error::LockError;

/// Exponential backoff with full jitter between `min_delay` and `max_delay`,
/// bounded by an overall `deadline` (how long `acquire` waits in all).
/// Was `RetryPolicy` before 0.2 (the alias is deprecated).
///
/// Each operation takes a fresh [`WaitPolicy::schedule`]. The n-th delay is
/// drawn uniformly from `[min_delay, min(max_delay, min_delay * 2^n)]`
/// ("full jitter"), so competing clients spread out instead of retrying in
/// lock step.
///
/// ```
/// use leasehold_core::WaitPolicy;
/// use std::time::Duration;
/// let policy = WaitPolicy::new(Duration::from_secs(5))
///     .with_delays(Duration::from_millis(5), Duration::from_millis(200));
/// for delay in policy.schedule().take(20) {
///     assert!(delay >= Duration::from_millis(5) && delay <= Duration::from_millis(200));
/// }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaitPolicy {
    /// The smallest delay between attempts.
    pub min_delay: Duration,
    /// The largest delay between attempts.
    pub max_delay: Duration,
    /// How long an operation may keep trying in all.
    pub deadline: Duration,
}

/// The old name of [`WaitPolicy`].
#[deprecated(
    since = "0.2.0",
    note = "renamed `WaitPolicy`: it sets how long and how to wait"
)]
pub type RetryPolicy = WaitPolicy;

impl Default for WaitPolicy {
    /// 10 ms to 500 ms between attempts, 60 s overall: twice the default
    /// 30 s TTL, so a waiter behind a holder that crashed just after taking
    /// the key still gets it when the TTL frees it (with a 30 s wait it gave
    /// up at the very moment the key came free).
    fn default() -> Self {
        WaitPolicy {
            min_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(500),
            deadline: Duration::from_secs(60),
        }
    }
}

impl WaitPolicy {
    /// The default delays with the given overall deadline.
    pub fn new(deadline: Duration) -> Self {
        WaitPolicy {
            deadline,
            ..Self::default()
        }
    }

    /// One attempt, no waiting.
    pub fn no_wait() -> Self {
        Self::new(Duration::ZERO)
    }

    /// Sets the delay bounds (`max` is raised to `min` if smaller).
    pub fn with_delays(mut self, min: Duration, max: Duration) -> Self {
        self.min_delay = min;
        self.max_delay = max.max(min);
        self
    }

    /// Sets the overall deadline.
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// This policy with its pauses capped at `poll` (a backend's shared
    /// `poll` option), so a waiter re-checks at least that often when no
    /// notification comes; `None` leaves it as it is.
    ///
    /// ```
    /// use leasehold_core::WaitPolicy;
    /// use std::time::Duration;
    /// let capped = WaitPolicy::default().polling_at(Some(Duration::from_millis(50)));
    /// assert_eq!(capped.max_delay, Duration::from_millis(50));
    /// assert_eq!(WaitPolicy::default().polling_at(None), WaitPolicy::default());
    /// ```
    pub fn polling_at(&self, poll: Option<Duration>) -> Self {
        match poll {
            Some(poll) => self
                .clone()
                .with_delays(self.min_delay.min(poll), self.max_delay.min(poll)),
            None => self.clone(),
        }
    }

    /// A fresh, endless schedule of jittered delays.
    pub fn schedule(&self) -> Schedule {
        let exponential = backon::ExponentialBuilder::default()
            .with_min_delay(self.min_delay.max(Duration::from_micros(1)))
            .with_max_delay(self.max_delay)
            .with_factor(2.0)
            .without_max_times()
            .build();
        Schedule {
            exponential,
            min_delay: self.min_delay,
        }
    }
}

/// One waiting operation's clock: when it started, its deadline and its
/// backoff schedule. Every waiting loop in leasehold (the default
/// [`wait_for_lock`](crate::wait_for_lock), `lock_all`, the queue backends)
/// runs on one of these, so "how long and how to wait" is decided in one
/// place.
///
/// ```
/// use leasehold_core::{Attempts, WaitPolicy};
/// use std::time::Duration;
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// let mut attempts = Attempts::new(&WaitPolicy::new(Duration::from_millis(50)));
/// let mut tries = 1;
/// while let Some(delay) = attempts.next_delay(None) {
///     tokio::time::sleep(delay).await;
///     tries += 1;
/// }
/// assert!(tries >= 2 && attempts.waited() >= Duration::from_millis(50));
/// # }
/// ```
#[derive(Debug)]
pub struct Attempts {
    started: Instant,
    deadline: Instant,
    schedule: Schedule,
    max_delay: Duration,
}

impl Attempts {
    /// Starts the clock now. A deadline of `Duration::MAX` waits for ever.
    pub fn new(policy: &WaitPolicy) -> Self {
        let started = Instant::now();
        Attempts {
            started,
            deadline: instant_after(started, policy.deadline),
            schedule: policy.schedule(),
            max_delay: policy.max_delay,
        }
    }

    /// How long the operation has waited so far.
    pub fn waited(&self) -> Duration {
        self.started.elapsed()
    }

    /// The instant the operation gives up.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Time left before the deadline.
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// The pause before the next attempt: the next jittered delay, at most
    /// `cap` (for example the holder's remaining TTL, so a waiter never
    /// sleeps past an expiry it was told of) and never past the deadline.
    /// `None` once the deadline has passed: stop and [`Attempts::give_up`].
    pub fn next_delay(&mut self, cap: Option<Duration>) -> Option<Duration> {
        let remaining = self.deadline.checked_duration_since(Instant::now())?;
        if remaining.is_zero() {
            return None;
        }
        let delay = self.schedule.next().unwrap_or(self.max_delay);
        Some(delay.min(cap.unwrap_or(Duration::MAX)).min(remaining))
    }

    /// The error to return once the deadline has passed: contention becomes
    /// [`LockError::WaitTimedOut`] saying how long we waited; any other error is
    /// returned as it is.
    pub fn give_up(&self, last: LockError) -> LockError {
        match last {
            LockError::Contended { backend, key, .. } => LockError::WaitTimedOut {
                backend,
                key,
                waited: self.waited(),
            },
            other => other,
        }
    }
}

/// The delays of one operation; see [`WaitPolicy`].
#[derive(Debug)]
pub struct Schedule {
    exponential: backon::ExponentialBackoff,
    min_delay: Duration,
}

impl Iterator for Schedule {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        let cap = self.exponential.next()?.max(self.min_delay);
        Some(rand::rng().random_range(self.min_delay..=cap))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jittered_delays_stay_within_bounds_and_grow_towards_the_cap() {
        let policy = WaitPolicy::new(Duration::from_secs(1))
            .with_delays(Duration::from_millis(1), Duration::from_millis(64));
        let delays: Vec<Duration> = policy.schedule().take(2000).collect();
        assert!(
            delays
                .iter()
                .all(|d| *d >= Duration::from_millis(1) && *d <= Duration::from_millis(64))
        );
        // Early delays are capped low; late ones reach up to max_delay.
        assert!(
            delays[0] <= Duration::from_millis(2),
            "first delay {:?} above 2x min",
            delays[0]
        );
        let late_max = delays[1000..].iter().max().unwrap();
        assert!(
            *late_max > Duration::from_millis(48),
            "late delays never neared the cap: {late_max:?}"
        );
    }

    #[test]
    fn jitter_spreads_delays_rather_than_repeating_one_value() {
        let policy = WaitPolicy::new(Duration::from_secs(1))
            .with_delays(Duration::from_millis(1), Duration::from_millis(100));
        let late: std::collections::HashSet<Duration> =
            policy.schedule().skip(10).take(50).collect();
        assert!(
            late.len() > 10,
            "50 jittered delays took only {} values",
            late.len()
        );
    }

    #[test]
    fn a_fresh_schedule_starts_small_again() {
        let policy = WaitPolicy::default();
        let mut first = policy.schedule();
        for _ in 0..20 {
            first.next();
        }
        let restarted = policy.schedule().next().unwrap();
        assert!(
            restarted <= policy.min_delay * 2,
            "fresh schedule began at {restarted:?}"
        );
    }

    #[test]
    fn max_below_min_is_raised_to_min() {
        let policy =
            WaitPolicy::default().with_delays(Duration::from_millis(50), Duration::from_millis(1));
        assert_eq!(policy.max_delay, Duration::from_millis(50));
        assert!(
            policy
                .schedule()
                .take(10)
                .all(|d| d == Duration::from_millis(50))
        );
    }
}
