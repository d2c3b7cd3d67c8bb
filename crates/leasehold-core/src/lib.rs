//! # leasehold-core
//!
//! The backend-agnostic contract of leasehold, a family of distributed lock
//! (lease) crates: [`LockBackend`] (acquire, extend, release, inspect, with
//! fencing tokens) and everything that does not depend on the store —
//! [`Locker`] and its self-extending [`LockGuard`]s with loss notification,
//! ordered multi-lock ([`Locker::lock_all`]), fenced reader–writer locks
//! ([`Locker::rw_lock`]) and semaphores ([`Locker::semaphore`]),
//! [`WaitPolicy`], [`TtlPolicy`]
//! (fixed or adaptive), [`Layer`]s, and [`MemoryBackend`], a complete
//! in-process implementation.
//!
//! ```
//! use leasehold_core::{Locker, MemoryBackend};
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), leasehold_core::LockError> {
//! let locker = Locker::new(MemoryBackend::new());
//! let guard = locker.lock("stock:sku-42").await?;
//! // Hand the fencing token to the resource you protect; it rejects lower ones.
//! let token = guard.fencing_token();
//! tokio::select! {
//!     () = guard.lost() => eprintln!("lost the lock; stop working"),
//!     () = async { /* the protected work */ } => {}
//! }
//! guard.release().await?;
//! # let _ = token; Ok(()) }
//! ```
//!
//! ## Guarantees and their limits
//! - Mutual exclusion holds while a holder acts before its lease's
//!   [`Lease::valid_until`] (measured from the instant the request was sent,
//!   minus a drift allowance). A holder paused past it may still act: only
//!   fencing tokens stop its late writes, which is why every lease has one.
//! - Metrics use the names `leasehold_acquire_total{backend,outcome}`,
//!   `leasehold_acquire_seconds`, `leasehold_hold_seconds`, `leasehold_held`,
//!   `leasehold_extend_total{outcome}`, `leasehold_lost_total`,
//!   `leasehold_release_total{outcome}`, `leasehold_waiters` and
//!   `leasehold_order_inversions_total`.
#![warn(missing_docs)]

mod admin;
mod backend;
mod breaker;
mod capabilities;
mod clock;
pub mod config;
mod election;
mod error;
mod feed;
mod guard;
mod held;
mod key;
mod kind;
pub mod known;
mod layer;
mod lease;
mod listing;
mod lock_options;
mod lockdep;
mod locker;
mod memory;
mod metrics;
#[cfg(feature = "sqlx")]
pub mod relay;
mod rw;
mod schedule;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod tls;
mod token;
mod ttl;
mod wait;
pub mod waits;
mod watchdog;

pub use admin::{Admin, Evicted};
pub use async_trait::async_trait;
pub use backend::{
    LockBackend, PassOn, ReleaseHub, ReleaseListener, Wake, cancel_safe, extend_each,
    wait_for_grant, wait_for_lock, wait_for_lock_with, with_timeout,
};
pub use breaker::{CircuitBreaker, CircuitBreakerLayer};
pub use capabilities::{Capabilities, Expiry, Fairness, Fencing, Waiting};
pub use clock::{Clock, Drift, SharedClock, SystemClock, TestClock, instant_after, system_clock};
pub use election::{Election, Leader, Leadership};
pub use error::{BoxError, LockError};
pub use feed::{ReleaseFeed, ReleaseSource, ReleaseStream};
pub use guard::{LockGuard, MultiGuard};
pub use key::IntoKey;
pub use key::{Key, KeyRule, MAX_KEY_BYTES};
pub use kind::LockKind;
pub use layer::{Layer, Timeout, TimeoutLayer, Traced, TracingLayer};
pub use lease::{Lease, LockInfo, LostReason};
pub use listing::{HeldLock, ListPage, ListQuery};
pub use lock_options::LockOptions;
pub use lockdep::{LockOrder, MAX_CLASSES, MAX_ORDERS};
pub use locker::{Locker, LockerBuilder};
pub use memory::MemoryBackend;
pub use rw::{RwLock, Semaphore};
pub use schedule::Ran;
pub use token::{FencingToken, OwnerToken};
pub use tokio_util::sync::CancellationToken;
pub use ttl::{AdaptiveConfig, AdaptiveTtl, BUCKETS, TtlPolicy};
#[allow(deprecated)]
pub use wait::RetryPolicy;
pub use wait::{Attempts, Schedule, WaitPolicy};
