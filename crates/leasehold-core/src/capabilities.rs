//! What a backend can promise.

use std::time::Duration;

use crate::clock::MAX_DURATION;
use crate::error::LockError;
use crate::kind::LockKind;

/// How far fencing tokens can be trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fencing {
    /// Tokens of one key strictly increase across every acquisition.
    Strict,
    /// Tokens usually increase but can go backwards in documented cases (for
    /// example a Redlock node restarting without persistence).
    BestEffort,
    /// Tokens carry no order.
    None,
}

/// What ends a lease when its holder stops renewing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    /// A per-lease time to live, renewed by `extend`.
    Ttl,
    /// The holder's session with the store (a connection, an etcd lease shared
    /// by a client, a ZooKeeper session).
    Session,
}

/// How a waiter learns that a key was released.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Waiting {
    /// The store notifies waiters (pub/sub, watches, LISTEN/NOTIFY); polling is
    /// only the fallback for a lost notification.
    Notified,
    /// Waiters poll with backoff.
    Polled,
}

/// Whether waiters get the lock in arrival order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fairness {
    /// First come, first served.
    Fifo,
    /// No order among waiters.
    None,
}

/// What a backend can promise; callers and the conformance suite pick their
/// behaviour and cases by it, never by backend name.
///
/// ```
/// use leasehold_core::{Capabilities, Fencing, Waiting};
/// use std::time::Duration;
/// let caps = Capabilities::new()
///     .fencing(Fencing::Strict)
///     .waiting(Waiting::Notified)
///     .min_ttl(Duration::from_millis(10));
/// assert_eq!(caps.fencing, Fencing::Strict);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// Fencing token guarantee.
    pub fencing: Fencing,
    /// Whether fencing tokens keep increasing across a store restart.
    pub durable_fencing: bool,
    /// What ends a lease.
    pub expiry: Expiry,
    /// How waiters are woken.
    pub waiting: Waiting,
    /// Waiter order.
    pub fairness: Fairness,
    /// The smallest TTL the backend accepts.
    pub min_ttl: Duration,
    /// TTLs are rounded up to a multiple of this.
    pub ttl_granularity: Duration,
    /// Several keys can be taken atomically in one round trip.
    pub atomic_multi_key: bool,
    /// `inspect` and `Contended` can tell about the holder.
    pub holder_info: bool,
    /// `extend_many` renews many leases in one store call. The watchdog then
    /// renews due leases in one batch; otherwise it calls `extend` for each
    /// lease concurrently, so one slow renewal never delays the others.
    pub batch_extend: bool,
    /// Reader–writer locks ([`LockKind::Read`](crate::LockKind::Read),
    /// [`LockKind::Write`](crate::LockKind::Write)); without them those
    /// kinds give [`LockError::Unsupported`].
    pub rw_locks: bool,
    /// Counting semaphores ([`LockKind::Permit`](crate::LockKind::Permit));
    /// without them that kind gives [`LockError::Unsupported`].
    pub semaphores: bool,
}

impl Capabilities {
    /// TTL-based, strict fencing, polled, unfair, 1 ms TTLs: the starting point
    /// for a backend's own description.
    pub const fn new() -> Self {
        Capabilities {
            fencing: Fencing::Strict,
            durable_fencing: false,
            expiry: Expiry::Ttl,
            waiting: Waiting::Polled,
            fairness: Fairness::None,
            min_ttl: Duration::from_millis(1),
            ttl_granularity: Duration::from_millis(1),
            atomic_multi_key: false,
            holder_info: false,
            batch_extend: false,
            rw_locks: false,
            semaphores: false,
        }
    }

    /// Sets [`Capabilities::fencing`].
    pub const fn fencing(mut self, fencing: Fencing) -> Self {
        self.fencing = fencing;
        self
    }
    /// Sets [`Capabilities::durable_fencing`].
    pub const fn durable_fencing(mut self, durable: bool) -> Self {
        self.durable_fencing = durable;
        self
    }
    /// Sets [`Capabilities::expiry`].
    pub const fn expiry(mut self, expiry: Expiry) -> Self {
        self.expiry = expiry;
        self
    }
    /// Sets [`Capabilities::waiting`].
    pub const fn waiting(mut self, waiting: Waiting) -> Self {
        self.waiting = waiting;
        self
    }
    /// Sets [`Capabilities::fairness`].
    pub const fn fairness(mut self, fairness: Fairness) -> Self {
        self.fairness = fairness;
        self
    }
    /// Sets [`Capabilities::min_ttl`].
    pub const fn min_ttl(mut self, min_ttl: Duration) -> Self {
        self.min_ttl = min_ttl;
        self
    }
    /// Sets [`Capabilities::ttl_granularity`].
    pub const fn ttl_granularity(mut self, granularity: Duration) -> Self {
        self.ttl_granularity = granularity;
        self
    }
    /// Sets [`Capabilities::atomic_multi_key`].
    pub const fn atomic_multi_key(mut self, atomic: bool) -> Self {
        self.atomic_multi_key = atomic;
        self
    }
    /// Sets [`Capabilities::holder_info`].
    pub const fn holder_info(mut self, holder_info: bool) -> Self {
        self.holder_info = holder_info;
        self
    }

    /// Sets [`Capabilities::batch_extend`].
    pub const fn batch_extend(mut self, batch: bool) -> Self {
        self.batch_extend = batch;
        self
    }

    /// Sets [`Capabilities::rw_locks`].
    pub const fn rw_locks(mut self, rw_locks: bool) -> Self {
        self.rw_locks = rw_locks;
        self
    }

    /// Sets [`Capabilities::semaphores`].
    pub const fn semaphores(mut self, semaphores: bool) -> Self {
        self.semaphores = semaphores;
        self
    }

    /// Checks that the backend can grant `kind`: the mutex always, the
    /// others by [`Capabilities::rw_locks`] and
    /// [`Capabilities::semaphores`]; otherwise [`LockError::Unsupported`].
    ///
    /// ```
    /// use leasehold_core::{Capabilities, LockError, LockKind};
    /// let caps = Capabilities::new().rw_locks(true);
    /// assert!(caps.check_kind("demo", LockKind::Read).is_ok());
    /// assert!(matches!(
    ///     caps.check_kind("demo", LockKind::Permit { permits: 2 }),
    ///     Err(LockError::Unsupported { .. })
    /// ));
    /// ```
    pub fn check_kind(&self, backend: &'static str, kind: LockKind) -> Result<(), LockError> {
        let (supported, what) = match kind {
            LockKind::Exclusive => (true, "mutexes"),
            LockKind::Read | LockKind::Write => (self.rw_locks, "reader-writer locks"),
            LockKind::Permit { permits } => {
                if LockKind::permit(permits).is_none() {
                    return Err(LockError::Config(LockKind::ZERO_PERMITS.into()));
                }
                (self.semaphores, "semaphores")
            }
        };
        if supported {
            Ok(())
        } else {
            Err(LockError::Unsupported { backend, what })
        }
    }

    /// Checks a TTL against [`Capabilities::min_ttl`] and the library-wide
    /// maximum ([`MAX_DURATION`], one year): outside them is
    /// [`LockError::InvalidTtl`] naming the bound, so no backend multiplies or
    /// adds an absurd duration.
    ///
    /// ```
    /// use leasehold_core::{Capabilities, LockError};
    /// use std::time::Duration;
    /// let caps = Capabilities::new().min_ttl(Duration::from_secs(1));
    /// assert!(caps.check_ttl("demo", Duration::from_secs(5)).is_ok());
    /// assert!(matches!(caps.check_ttl("demo", Duration::from_millis(5)), Err(LockError::InvalidTtl { .. })));
    /// assert!(matches!(caps.check_ttl("demo", Duration::MAX), Err(LockError::InvalidTtl { .. })));
    /// ```
    pub fn check_ttl(&self, backend: &'static str, ttl: Duration) -> Result<(), LockError> {
        let reason = if ttl < self.min_ttl {
            format!("must be at least {:?}", self.min_ttl)
        } else if ttl > MAX_DURATION {
            "must be at most one year".to_owned()
        } else {
            return Ok(());
        };
        Err(LockError::InvalidTtl {
            backend,
            ttl,
            reason,
        })
    }
}

impl Default for Capabilities {
    fn default() -> Self {
        Self::new()
    }
}
