//! The one error type of every operation.

use std::time::Duration;

use crate::key::KeyRule;
use crate::lease::LockInfo;

/// A boxed source error, kept so callers see the store's own cause.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a lock operation failed.
///
/// Every variant names the key (where there is one) and the backend, and keeps
/// the store's source error, so a log line at 3 AM says what failed where.
/// [`LockError::is_retryable`] tells transient failures from final ones.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// `try_acquire` found the key held by someone else. `holder` is what the
    /// store could tell about the holder (it may be `None`).
    #[error("{backend}: lock {key:?} is held by another owner")]
    Contended {
        /// Backend name.
        backend: &'static str,
        /// The key.
        key: String,
        /// The holder, where the store can tell.
        holder: Option<Box<LockInfo>>,
    },
    /// `acquire` gave up waiting for a key that stayed held: the
    /// [`WaitPolicy`](crate::WaitPolicy) deadline passed. Not a store
    /// failure: a store call that runs past the backend's `timeout` is
    /// [`LockError::Unavailable`].
    #[error("{backend}: gave up waiting for lock {key:?} after {waited:?}")]
    WaitTimedOut {
        /// Backend name.
        backend: &'static str,
        /// The key.
        key: String,
        /// How long the caller waited.
        waited: Duration,
    },
    /// The lease is no longer ours: it expired, was taken over, or the session
    /// that carried it ended. Work protected by it must stop.
    #[error("{backend}: lease on {key:?} was lost: {reason}")]
    Lost {
        /// Backend name.
        backend: &'static str,
        /// The key.
        key: String,
        /// What the backend saw.
        reason: String,
    },
    /// Release or extend of a lease that this owner does not hold (released
    /// already, or never held).
    #[error("{backend}: lock {key:?} is not held by this owner")]
    NotHeld {
        /// Backend name.
        backend: &'static str,
        /// The key.
        key: String,
    },
    /// This [`Locker`](crate::Locker) already holds the key through one of
    /// its live guards. Locks are not re-entrant: asking again would only
    /// wait out the deadline behind itself, so it fails at once.
    #[error(
        "{backend}: lock {key:?} is already held by a live guard of this locker (locks are not re-entrant)"
    )]
    AlreadyHeld {
        /// Backend name.
        backend: &'static str,
        /// The key.
        key: String,
    },
    /// Under [`LockOrder::Strict`](crate::LockOrder::Strict): the calling task
    /// holds `held` and asked for `key`, whose key classes another task took
    /// the other way round; two such tasks can deadlock. Refused before the
    /// store was asked. Not retryable: the code's lock order must change.
    #[error(
        "{backend}: taking {key:?} while holding {held:?} inverts the lock order learned earlier ({learned})"
    )]
    OrderInversion {
        /// Backend name.
        backend: &'static str,
        /// The key asked for.
        key: String,
        /// The key held that inverts the order.
        held: String,
        /// The order learned and where, and this acquisition's site.
        learned: String,
    },
    /// The key broke one of the key rules.
    #[error("invalid lock key: {0}")]
    InvalidKey(#[from] KeyRule),
    /// The TTL is outside what the backend supports.
    #[error("{backend}: invalid ttl {ttl:?}: {reason}")]
    InvalidTtl {
        /// Backend name.
        backend: &'static str,
        /// The TTL asked for.
        ttl: Duration,
        /// Which bound it broke.
        reason: String,
    },
    /// Bad configuration: a URL, an option name or value.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The store did not answer within the operation timeout, or refused the
    /// connection. Retryable.
    #[error("{backend}: store unavailable: {source}")]
    Unavailable {
        /// Backend name.
        backend: &'static str,
        /// The cause.
        #[source]
        source: BoxError,
    },
    /// The backend cannot grant this kind of lock (see
    /// [`Capabilities::rw_locks`](crate::Capabilities::rw_locks) and
    /// [`Capabilities::semaphores`](crate::Capabilities::semaphores)).
    #[error("{backend}: {what} not supported by this backend")]
    Unsupported {
        /// Backend name.
        backend: &'static str,
        /// What was asked for (`"reader-writer locks"`, `"semaphores"`).
        what: &'static str,
    },
    /// Anything else the store reported.
    #[error("{backend}: {source}")]
    Backend {
        /// Backend name.
        backend: &'static str,
        /// Whether trying again may succeed (throttling, a transient fault).
        retryable: bool,
        /// The cause.
        #[source]
        source: BoxError,
    },
}

impl LockError {
    /// Whether the same operation may succeed if tried again: contention, a
    /// timeout, an unavailable store, or a backend fault the store marks
    /// transient. `Lost`, `NotHeld` and invalid input are final.
    pub fn is_retryable(&self) -> bool {
        match self {
            LockError::Contended { .. }
            | LockError::WaitTimedOut { .. }
            | LockError::Unavailable { .. } => true,
            LockError::Backend { retryable, .. } => *retryable,
            _ => false,
        }
    }

    /// Shorthand for an [`LockError::Unavailable`] with a source.
    pub fn unavailable(backend: &'static str, source: impl Into<BoxError>) -> Self {
        LockError::Unavailable {
            backend,
            source: source.into(),
        }
    }

    /// Shorthand for a non-retryable [`LockError::Backend`].
    pub fn backend(backend: &'static str, source: impl Into<BoxError>) -> Self {
        LockError::Backend {
            backend,
            retryable: false,
            source: source.into(),
        }
    }

    /// Shorthand for [`LockError::Lost`].
    pub fn lost(backend: &'static str, key: &str, reason: impl Into<String>) -> Self {
        LockError::Lost {
            backend,
            key: key.to_owned(),
            reason: reason.into(),
        }
    }

    /// Shorthand for [`LockError::NotHeld`].
    pub fn not_held(backend: &'static str, key: &str) -> Self {
        LockError::NotHeld {
            backend,
            key: key.to_owned(),
        }
    }

    /// Shorthand for [`LockError::Contended`].
    pub fn contended(backend: &'static str, key: &str, holder: Option<LockInfo>) -> Self {
        LockError::Contended {
            backend,
            key: key.to_owned(),
            holder: holder.map(Box::new),
        }
    }

    /// A short label for metrics and spans: `contended`, `wait_timed_out`, `lost`, ...
    pub fn kind(&self) -> &'static str {
        match self {
            LockError::Contended { .. } => "contended",
            LockError::WaitTimedOut { .. } => "wait_timed_out",
            LockError::Lost { .. } => "lost",
            LockError::NotHeld { .. } => "not_held",
            LockError::AlreadyHeld { .. } => "already_held",
            LockError::OrderInversion { .. } => "order_inversion",
            LockError::InvalidKey(_) => "invalid_key",
            LockError::InvalidTtl { .. } => "invalid_ttl",
            LockError::Config(_) => "config",
            LockError::Unavailable { .. } => "unavailable",
            LockError::Unsupported { .. } => "unsupported",
            LockError::Backend { .. } => "backend",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_errors_are_retryable_and_final_ones_are_not() {
        assert!(LockError::unavailable("t", "down").is_retryable());
        assert!(LockError::contended("t", "k", None).is_retryable());
        assert!(!LockError::lost("t", "k", "expired").is_retryable());
        assert!(!LockError::not_held("t", "k").is_retryable());
        assert!(!LockError::from(KeyRule::Empty).is_retryable());
        assert!(!LockError::backend("t", "bad").is_retryable());
        let throttled = LockError::Backend {
            backend: "t",
            retryable: true,
            source: "slow down".into(),
        };
        assert!(throttled.is_retryable());
    }

    #[test]
    fn unavailable_keeps_its_source() {
        let err = LockError::unavailable("redis", std::io::Error::other("connection refused"));
        let source = std::error::Error::source(&err).expect("source kept");
        assert_eq!(source.to_string(), "connection refused");
        assert_eq!(
            err.to_string(),
            "redis: store unavailable: connection refused"
        );
    }
}
