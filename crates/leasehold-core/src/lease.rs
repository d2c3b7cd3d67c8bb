//! What a successful acquisition returns, and what `inspect` reports.

use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::clock::Drift;
use crate::key::Key;
use crate::kind::LockKind;
use crate::token::{FencingToken, OwnerToken};

/// A held lock: key, owner token, fencing token and validity.
///
/// `valid_until` is on the client's monotonic clock, computed from the instant
/// the acquiring (or extending) request was *sent*, minus the drift allowance:
/// the holder may act as owner only before it. A backend that needs more state
/// (a pinned connection, a node path, a lease id) keeps it in the type-erased
/// [`Lease::handle`]; a backend whose store can end the lease by itself (a
/// session) cancels [`Lease::loss_signal`].
#[derive(Clone)]
pub struct Lease {
    backend: &'static str,
    key: Key,
    owner: OwnerToken,
    fencing_token: FencingToken,
    ttl: Duration,
    valid_until: Instant,
    kind: LockKind,
    handle: Option<Arc<dyn Any + Send + Sync>>,
    loss_signal: Option<CancellationToken>,
}

impl Lease {
    /// A lease of `ttl` whose request was sent at `sent_at`; validity is
    /// `sent_at + ttl - drift.allowance(ttl)`.
    pub fn new(
        backend: &'static str,
        key: Key,
        owner: OwnerToken,
        fencing_token: FencingToken,
        sent_at: Instant,
        ttl: Duration,
        drift: Drift,
    ) -> Self {
        Lease {
            backend,
            key,
            owner,
            fencing_token,
            ttl,
            valid_until: drift.valid_until(sent_at, ttl),
            kind: LockKind::Exclusive,
            handle: None,
            loss_signal: None,
        }
    }

    /// Marks the lease as granted as `kind` (a new lease is
    /// [`LockKind::Exclusive`]); `extend` and `release` read it back with
    /// [`Lease::kind`].
    pub fn with_kind(mut self, kind: LockKind) -> Self {
        self.kind = kind;
        self
    }

    /// Attaches backend state.
    pub fn with_handle(mut self, handle: Arc<dyn Any + Send + Sync>) -> Self {
        self.handle = Some(handle);
        self
    }

    /// Attaches a signal the backend cancels when the store ends the lease.
    pub fn with_loss_signal(mut self, signal: CancellationToken) -> Self {
        self.loss_signal = Some(signal);
        self
    }

    /// The same lease renewed: new TTL, validity from `sent_at`.
    pub fn renewed(&self, sent_at: Instant, ttl: Duration, drift: Drift) -> Self {
        let mut lease = self.clone();
        lease.ttl = ttl;
        lease.valid_until = drift.valid_until(sent_at, ttl);
        lease
    }

    /// The backend that granted it.
    pub fn backend(&self) -> &'static str {
        self.backend
    }
    /// The key.
    pub fn key(&self) -> &Key {
        &self.key
    }
    /// The owner token (the proof of ownership; never log it in full).
    pub fn owner(&self) -> &OwnerToken {
        &self.owner
    }
    /// What it was granted as: the mutex, a reader, the writer, a permit.
    pub fn kind(&self) -> LockKind {
        self.kind
    }
    /// The fencing token of this acquisition.
    pub fn fencing_token(&self) -> FencingToken {
        self.fencing_token
    }
    /// The TTL last granted.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }
    /// The end of validity on the client's monotonic clock.
    pub fn valid_until(&self) -> Instant {
        self.valid_until
    }
    /// Whether the lease is still valid at `now`.
    pub fn is_valid_at(&self, now: Instant) -> bool {
        now < self.valid_until
    }
    /// The backend's state, downcast to its type.
    pub fn handle<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.handle.as_deref()?.downcast_ref()
    }
    /// The backend's loss signal, if it has one.
    pub fn loss_signal(&self) -> Option<&CancellationToken> {
        self.loss_signal.as_ref()
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("backend", &self.backend)
            .field("key", &self.key)
            .field("kind", &self.kind)
            .field("owner", &self.owner)
            .field("fencing_token", &self.fencing_token)
            .field("ttl", &self.ttl)
            .field(
                "valid_for",
                &self.valid_until.saturating_duration_since(Instant::now()),
            )
            .finish_non_exhaustive()
    }
}

/// Why a guard's lease was lost ([`LockGuard::lost_reason`](crate::LockGuard::lost_reason)),
/// also the `reason` label of `leasehold_lost_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LostReason {
    /// Validity ran out without a renewal: auto-extend is off, or the process
    /// was paused past the lease's end.
    Expired,
    /// The store refused a renewal: the lease is gone there, or another
    /// owner holds the key.
    TakenOver,
    /// The store ended the session that carried the lease (a closed
    /// connection, an expired etcd lease or ZooKeeper session).
    SessionEnded,
    /// Renewals failed (errors, timeouts, a stopped runtime) until validity
    /// ran out.
    RenewalFailed,
    /// An operator force-released the key.
    ForceReleased,
}

impl LostReason {
    /// The label value: `expired`, `taken_over`, `session_ended`,
    /// `renewal_failed`, `force_released`.
    pub fn as_str(self) -> &'static str {
        match self {
            LostReason::Expired => "expired",
            LostReason::TakenOver => "taken_over",
            LostReason::SessionEnded => "session_ended",
            LostReason::RenewalFailed => "renewal_failed",
            LostReason::ForceReleased => "force_released",
        }
    }
}

impl fmt::Display for LostReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the store can tell about a key's holder, for tooling and for
/// `Contended` errors. Every field is optional: stores differ in what they
/// know.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockInfo {
    /// The holder's fencing token.
    pub fencing_token: Option<FencingToken>,
    /// Time left on the holder's lease, by the store's clock.
    pub remaining: Option<Duration>,
    /// The first 8 hex digits of the holder's owner token.
    pub owner_hint: Option<String>,
    /// The holder label stored with the lease (the backend's `holder`
    /// option: `"<host> pid <pid>"` by default, or an application's own
    /// label), untrusted. Never the owner token.
    pub metadata: Option<String>,
    /// When the holder took the key, by the store's clock where it has one.
    pub acquired_at: Option<SystemTime>,
    /// How many clients wait for the key, where the store can tell (queue
    /// stores: etcd, ZooKeeper).
    pub waiters: Option<u32>,
}

impl LockInfo {
    /// Info with a fencing token and remaining time.
    pub fn new(fencing_token: Option<FencingToken>, remaining: Option<Duration>) -> Self {
        LockInfo {
            fencing_token,
            remaining,
            owner_hint: None,
            metadata: None,
            acquired_at: None,
            waiters: None,
        }
    }

    /// Sets the owner hint from a full token (keeps only 8 hex digits).
    pub fn with_owner(mut self, owner: &OwnerToken) -> Self {
        self.owner_hint = Some(owner.short());
        self
    }

    /// Sets the holder label.
    pub fn with_metadata(mut self, metadata: Option<String>) -> Self {
        self.metadata = metadata;
        self
    }

    /// Sets when the holder took the key.
    pub fn with_acquired_at(mut self, acquired_at: Option<SystemTime>) -> Self {
        self.acquired_at = acquired_at;
        self
    }

    /// Sets how many clients wait for the key.
    pub fn with_waiters(mut self, waiters: Option<u32>) -> Self {
        self.waiters = waiters;
        self
    }
}
