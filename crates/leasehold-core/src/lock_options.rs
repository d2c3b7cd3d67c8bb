//! Per-call options: one call's TTL, wait and auto-extension, without a
//! second [`Locker`](crate::Locker) (and a second watchdog) to change one.

use std::time::Duration;

/// Options for one [`Locker::lock_with`](crate::Locker::lock_with),
/// [`try_lock_with`](crate::Locker::try_lock_with) or
/// [`lock_all_with`](crate::Locker::lock_all_with) call; what is not set comes
/// from the locker (its TTL policy, its wait policy, its auto-extend).
///
/// There is no per-call holder label: the label identifies the process and
/// is set once per backend (`holder=` in the URL), since the store records it
/// at acquisition through the backend's configuration.
///
/// ```
/// use leasehold_core::{LockOptions, Locker, MemoryBackend};
/// use std::time::Duration;
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), leasehold_core::LockError> {
/// let locker = Locker::new(MemoryBackend::new());
/// let report = LockOptions::new()
///     .ttl(Duration::from_secs(120))
///     .wait(Duration::from_secs(5));
/// let guard = locker.lock_with("reports:monthly", &report).await?;
/// assert_eq!(guard.lease().ttl(), Duration::from_secs(120));
/// guard.release().await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockOptions {
    /// The lease's TTL (default: the locker's TTL policy for the key).
    pub ttl: Option<Duration>,
    /// How long to wait for a held key (default: the locker's wait policy's
    /// deadline; its backoff delays are kept). Ignored by `try_lock_with`.
    pub wait: Option<Duration>,
    /// Whether the guard extends itself (default: the locker's setting).
    pub auto_extend: Option<bool>,
}

impl LockOptions {
    /// Everything from the locker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the TTL.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Sets how long to wait.
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = Some(wait);
        self
    }

    /// Sets whether the guard extends itself.
    pub fn auto_extend(mut self, enabled: bool) -> Self {
        self.auto_extend = Some(enabled);
        self
    }
}
