//! What an acquisition shares its key with: the mutex, either side of a
//! reader–writer lock, or a permit of a counting semaphore.

use std::fmt;

/// The kind of grant an acquisition asks for
/// ([`LockBackend::try_acquire_kind`](crate::LockBackend::try_acquire_kind)),
/// and the kind a [`Lease`](crate::Lease) was granted as.
///
/// A key names a different lock in each family: the mutex `"a"`, the
/// reader–writer lock `"a"` and the semaphore `"a"` are three independent
/// locks (a backend keeps them apart in the store).
///
/// # Semantics
/// - [`Exclusive`](LockKind::Exclusive): the mutex, one holder.
/// - [`Read`](LockKind::Read) and [`Write`](LockKind::Write): many readers
///   together or one writer. Writers are not starved: while a writer *waits*
///   (`acquire_kind`, not a single `try_acquire_kind`), new readers are
///   refused, and readers already holding finish. No upgrade (a reader asking
///   to write while it reads would wait for itself).
/// - [`Permit`](LockKind::Permit): one of `permits` permits; at most
///   `permits` valid holders at any instant. Everyone using one semaphore must
///   agree on `permits`: each attempt is judged against its own count.
///
/// # Fencing
/// Every grant of a reader–writer lock or a semaphore takes the next value
/// of one counter per key, so a writer's token exceeds every earlier grant
/// on the key (readers' included), a reader's exceeds every earlier writer's,
/// and a semaphore's permits strictly increase. A resource that accepts a
/// write only with the newest writer's token, and a read only at or after
/// it, stays consistent with a paused holder.
///
/// ```
/// use leasehold_core::LockKind;
/// assert_eq!(LockKind::Permit { permits: 3 }.to_string(), "permit of 3");
/// assert!(LockKind::permit(0).is_none());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LockKind {
    /// The mutex.
    Exclusive,
    /// A reader of a reader–writer lock.
    Read,
    /// The writer of a reader–writer lock.
    Write,
    /// One permit of a semaphore of `permits`.
    Permit {
        /// How many holders the semaphore admits at once (at least 1).
        permits: u32,
    },
}

impl LockKind {
    /// A permit of a semaphore of `permits`; `None` for zero permits
    /// (nobody could ever hold it: [`Locker::semaphore`](crate::Locker::semaphore)
    /// and [`Capabilities::check_kind`](crate::Capabilities::check_kind)
    /// make that a `LockError::Config`).
    pub fn permit(permits: u32) -> Option<Self> {
        (permits > 0).then_some(LockKind::Permit { permits })
    }

    /// The error for a semaphore of zero permits.
    pub(crate) const ZERO_PERMITS: &str = "a semaphore needs at least one permit";

    /// The `kind` label of the acquisition metrics: `mutex`, `read`,
    /// `write`, `permit`.
    pub fn as_str(self) -> &'static str {
        match self {
            LockKind::Exclusive => "mutex",
            LockKind::Read => "read",
            LockKind::Write => "write",
            LockKind::Permit { .. } => "permit",
        }
    }

    /// The family of locks the grant belongs to: the mutex, the reader–writer
    /// lock or the semaphore of its key.
    pub(crate) fn family(self) -> LockFamily {
        match self {
            LockKind::Exclusive => LockFamily::Mutex,
            LockKind::Read | LockKind::Write => LockFamily::Rw,
            LockKind::Permit { .. } => LockFamily::Semaphore,
        }
    }

    /// Whether this is one side of a reader–writer lock.
    pub fn is_rw(self) -> bool {
        matches!(self, LockKind::Read | LockKind::Write)
    }

    /// The permit count of a semaphore grant.
    pub fn permits(self) -> Option<u32> {
        match self {
            LockKind::Permit { permits } => Some(permits),
            _ => None,
        }
    }
}

impl fmt::Display for LockKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockKind::Permit { permits } => write!(f, "permit of {permits}"),
            kind => f.write_str(kind.as_str()),
        }
    }
}

/// The three independent locks one key names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum LockFamily {
    Mutex,
    Rw,
    Semaphore,
}
