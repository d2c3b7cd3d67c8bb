//! At-most-once scheduled jobs (ShedLock's `@SchedulerLock`): every node of
//! a cluster fires the same schedule, and one run executes on one node.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::LockError;
use crate::key::IntoKey;
use crate::lock_options::LockOptions;
use crate::locker::Locker;
use crate::token::FencingToken;

/// What [`Locker::run_at_most_once`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Ran<T> {
    /// This node ran the job, holding the given fencing token.
    Ran(FencingToken, T),
    /// Another node holds the job's lock (it runs or ran this run): skipped.
    Skipped,
}

impl Locker {
    /// Runs `job` unless another node holds the job `name`'s lock, with
    /// ShedLock's meaning: across every node firing the same schedule, a run
    /// executes at most once.
    ///
    /// - The lock is held for **at most** `at_most_for` (its TTL; it is not
    ///   extended): a hung job's lock ends then, and the job itself is
    ///   cancelled at that moment (its future is dropped) with
    ///   [`LockError::Lost`], so it never goes on unprotected.
    /// - The lock is held for **at least** `at_least_for` from the moment
    ///   this node learned it holds it (so a slow grant never shortens the
    ///   hold), even when the job finishes sooner, so a node whose clock (or
    ///   scheduler) fires a little late does not run the same run again.
    ///   The hold goes on in a background task that releases the lock at
    ///   `start + at_least_for` — on every store, session stores included,
    ///   where a lock left alone would live as long as the session. The call
    ///   returns as soon as the job has finished; no guard is leaked (if the
    ///   process dies meanwhile, the store frees the lock after its TTL or
    ///   session).
    ///
    /// `at_least_for` must not exceed `at_most_for` (a [`LockError::Config`]
    /// otherwise). A held lock is [`Ran::Skipped`]; other errors (a store
    /// that is down) are returned and the job does not run.
    ///
    /// ```
    /// use leasehold_core::{Locker, MemoryBackend, Ran};
    /// use std::time::Duration;
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), leasehold_core::LockError> {
    /// let locker = Locker::new(MemoryBackend::new());
    /// let (most, least) = (Duration::from_secs(60), Duration::from_secs(5));
    /// let first = locker.run_at_most_once("job:nightly-report", most, least, |token| async move {
    ///     format!("report written with token {token}")
    /// }).await?;
    /// assert!(matches!(first, Ran::Ran(..)));
    /// // Fired again within `at_least_for` (another node, or a late tick): skipped.
    /// let again = locker.run_at_most_once("job:nightly-report", most, least, |_| async {}).await?;
    /// assert_eq!(again, Ran::Skipped);
    /// # Ok(()) }
    /// ```
    pub async fn run_at_most_once<F, Fut, T>(
        &self,
        name: impl IntoKey,
        at_most_for: Duration,
        at_least_for: Duration,
        job: F,
    ) -> Result<Ran<T>, LockError>
    where
        F: FnOnce(FencingToken) -> Fut,
        Fut: Future<Output = T>,
    {
        if at_least_for > at_most_for {
            return Err(LockError::Config(format!(
                "run_at_most_once: at_least_for ({at_least_for:?}) exceeds at_most_for ({at_most_for:?})"
            )));
        }
        let options = LockOptions::new().ttl(at_most_for).auto_extend(false);
        let guard = match self.try_lock_with(name, &options).await {
            Ok(guard) => guard,
            Err(LockError::Contended { .. } | LockError::AlreadyHeld { .. }) => {
                return Ok(Ran::Skipped);
            }
            Err(error) => return Err(error),
        };
        let granted = Instant::now();
        let token = guard.fencing_token();
        let output = tokio::select! {
            output = job(token) => output,
            () = guard.lost() => {
                return Err(LockError::lost(
                    guard.backend_name(),
                    guard.key().as_str(),
                    format!("the job ran past at_most_for ({at_most_for:?}) and was cancelled"),
                ));
            }
        };
        let hold_until = granted + at_least_for;
        if Instant::now() >= hold_until {
            if let Err(error) = guard.release().await {
                tracing::warn!(%error, "releasing a scheduled job's lock failed; it expires at at_most_for");
            }
        } else {
            // Holds the lock to `at_least_for` without delaying the caller.
            tokio::spawn(async move {
                tokio::time::sleep_until(hold_until).await;
                let _ = guard.release().await;
            });
        }
        Ok(Ran::Ran(token, output))
    }
}
