//! Leader election over any backend: the leader is the holder of the
//! election's lock, and its fencing token comes with the leadership.
//!
//! Fair (first come, first served) on stores whose locks queue their
//! waiters (etcd, ZooKeeper), notified or polled elsewhere, as the backend's
//! [`Capabilities`](crate::Capabilities) say.
//!
//! The leader is known by the holder label its backend stores (`holder=` in
//! the URL: `"<host> pid <pid>"` by default): candidates that should be told
//! apart by more than their process set their own label. There is no
//! separate leader *value* to proclaim: the contract has no per-lease value
//! to carry it, and a value kept beside the lock could disagree with it.

use std::future::Future;
use std::time::Duration;

use futures_util::Stream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::LockError;
use crate::guard::LockGuard;
use crate::key::{IntoKey, Key};
use crate::lock_options::LockOptions;
use crate::locker::Locker;
use crate::token::FencingToken;

/// An election named by a key, over a [`Locker`].
///
/// ```
/// use leasehold_core::{Election, Locker, MemoryBackend};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), leasehold_core::LockError> {
/// let election = Election::new(Locker::new(MemoryBackend::new()), "scheduler-leader")?;
/// let outcome = election.lead(|token, cancelled| async move {
///     // Lead until done or until leadership is about to lapse.
///     tokio::select! {
///         () = cancelled.cancelled() => "stepped down",
///         () = async {} => "did the leader's work",
///     }
/// }).await?;
/// assert_eq!(outcome, "did the leader's work");
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Election {
    locker: Locker,
    key: Key,
}

/// Who leads now, as the store tells it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leader {
    /// The leadership's fencing token.
    pub token: Option<FencingToken>,
    /// The leader's holder label.
    pub holder: Option<String>,
}

/// Leadership won by [`Election::campaign`]: a held lock under another name.
#[derive(Debug)]
#[must_use = "dropping the leadership resigns at once (in the background)"]
pub struct Leadership {
    guard: LockGuard,
}

impl Leadership {
    /// The fencing token: hand it to every resource the leader writes.
    pub fn fencing_token(&self) -> FencingToken {
        self.guard.fencing_token()
    }

    /// Completes when leadership is lost (renewals failed, the session
    /// ended, someone took the lock).
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        self.guard.lost()
    }

    /// Whether leadership is known to be lost.
    pub fn is_lost(&self) -> bool {
        self.guard.is_lost()
    }

    /// The end of validity, as of the last renewal.
    pub fn valid_until(&self) -> Instant {
        self.guard.valid_until()
    }

    /// Steps down: releases the lock so the next candidate leads.
    pub async fn resign(self) -> Result<(), LockError> {
        self.guard.release().await
    }
}

impl Election {
    /// The election `name` (a lock key) among the candidates using
    /// `locker`'s store. The locker's TTL and auto-extension apply to the
    /// leadership.
    pub fn new(locker: Locker, name: impl IntoKey) -> Result<Self, LockError> {
        Ok(Election {
            locker,
            key: name.into_key()?,
        })
    }

    /// The election's key.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// Waits (up to `wait`) until this candidate leads.
    pub async fn campaign(&self, wait: Duration) -> Result<Leadership, LockError> {
        let guard = self
            .locker
            .lock_with(&self.key, &LockOptions::new().wait(wait))
            .await?;
        Ok(Leadership { guard })
    }

    /// The current leader, if any.
    pub async fn leader(&self) -> Result<Option<Leader>, LockError> {
        Ok(self
            .locker
            .backend()
            .inspect(&self.key)
            .await?
            .map(|info| Leader {
                token: info.fencing_token,
                holder: info.metadata,
            }))
    }

    /// Leader changes, looked up every `every`: the current leader first,
    /// then each change (a new token, or no leader). A change shorter than
    /// `every` may be seen only through the one after it; tokens seen still
    /// increase. Errors are yielded and the watch goes on.
    pub fn observe(
        &self,
        every: Duration,
    ) -> impl Stream<Item = Result<Option<Leader>, LockError>> + Send + 'static {
        let election = self.clone();
        futures_util::stream::unfold(
            (election, None::<Option<Option<FencingToken>>>),
            move |(election, last)| async move {
                loop {
                    if last.is_some() {
                        tokio::time::sleep(every).await;
                    }
                    match election.leader().await {
                        Ok(now) => {
                            let token = now.as_ref().map(|l| l.token);
                            if last != Some(token) {
                                return Some((Ok(now), (election, Some(token))));
                            }
                        }
                        Err(error) => return Some((Err(error), (election, last))),
                    }
                    if last.is_none() {
                        tokio::time::sleep(every).await;
                    }
                }
            },
        )
    }

    /// Campaigns (without a deadline), then runs `scope` with the fencing
    /// token and a token that is cancelled *before* leadership can lapse:
    /// when the lease is lost, and also when renewals have stopped landing
    /// and less than a fifth of the TTL is left, so the scope can stop while
    /// it still leads. The scope is dropped if it has not stopped when the
    /// lease is lost. Resigns when the scope returns.
    pub async fn lead<F, Fut, T>(&self, scope: F) -> Result<T, LockError>
    where
        F: FnOnce(FencingToken, CancellationToken) -> Fut,
        Fut: Future<Output = T>,
    {
        let leadership = self.campaign(crate::config::MAX_DURATION).await?;
        let cancelled = leadership.guard.lost_token();
        let margin = leadership.guard.lease().ttl() / 5;
        let scope = scope(leadership.fencing_token(), cancelled.clone());
        tokio::pin!(scope);
        // Cancels the scope when validity is about to end without a renewal.
        let lapsing = async {
            loop {
                let until = leadership.valid_until();
                tokio::time::sleep_until(until.checked_sub(margin).unwrap_or(until)).await;
                if leadership.valid_until() <= until {
                    cancelled.cancel();
                    return;
                }
            }
        };
        let lost = || {
            LockError::lost(
                leadership.guard.backend_name(),
                self.key.as_str(),
                "leadership was lost while the scope ran",
            )
        };
        let outcome = tokio::select! {
            output = &mut scope => Ok(output),
            () = leadership.lost() => Err(lost()),
            () = lapsing => tokio::select! {
                // Told to stop: it may still finish while it leads.
                output = &mut scope => Ok(output),
                () = leadership.lost() => Err(lost()),
            },
        };
        if let Err(error) = leadership.resign().await {
            tracing::warn!(%error, key = %self.key, "resigning failed; the leadership lease will run out");
        }
        outcome
    }
}
