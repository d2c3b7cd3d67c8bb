//! # leasehold-redis
//!
//! A single-instance Redis backend for [leasehold](leasehold_core): leases are
//! Redis keys with a `PX` TTL, taken and given back by Lua scripts.
//!
//! - **acquire**: one script does `SET lock owner NX PX ttl` and, only if that
//!   succeeded, `INCR` of the key's fencing counter; the counter key is never
//!   deleted, so fencing tokens strictly increase across releases and
//!   expiries. A held key answers with the holder's remaining TTL, fencing
//!   token and owner prefix ([`LockError::Contended`](leasehold_core::LockError::Contended) carries them).
//! - **release**: compare-and-delete plus `PUBLISH` on the namespace's release
//!   channel, one script; **extend**: compare-and-`PEXPIRE`; the guard's
//!   watchdog renews many leases with one script call.
//! - **waiting**: one shared pub/sub connection wakes waiters when a key is
//!   released; polling with backoff stays the fallback, so a lost
//!   notification costs latency, never a hang.
//!
//! ```no_run
//! use leasehold_core::{Locker, config::BackendConfig};
//! use leasehold_redis::{RedisBackend, RedisConfig};
//! use std::time::Duration;
//! # #[tokio::main] async fn main() -> Result<(), leasehold_core::LockError> {
//! // Or `RedisBackend::connect(url)`, with every option in the URL.
//! let config = RedisConfig::from_url("redis://:secret@127.0.0.1:6379/0?namespace=billing")?
//!     .timeout(Duration::from_secs(1));
//! let backend = RedisBackend::connect_with(config).await?;
//! let locker = Locker::new(backend);
//! let guard = locker.lock("invoice:2024-17").await?;
//! // Pass guard.fencing_token() to the resource; it rejects lower tokens.
//! guard.release().await?;
//! # Ok(()) }
//! ```
//!
//! ## Operations
//! - **list** ([`LockBackend::list`](leasehold_core::LockBackend::list)):
//!   one `SCAN` step per page (`MATCH` over the namespace's lock keys under
//!   the prefix, glob characters escaped; `COUNT` the page size, at most
//!   [`MAX_SCAN_COUNT`]), never `KEYS`; the holders found are read in one
//!   script call, and expired ones left out. The page cursor is the `SCAN`
//!   cursor ([`ScanCursor`]); `SCAN` may show a key twice.
//! - **force release** ([`LockBackend::force_release`](leasehold_core::LockBackend::force_release)):
//!   one script deletes the lock whoever holds it, `INCR`s the fencing
//!   counter past the evicted token, publishes the release (waiters wake)
//!   and writes the reason to the server's log. The evicted holder's next
//!   renewal is `Lost`; its owner token can never match again.
//! - **holder**: the lock key's value is `<owner token> <grant time in ms,
//!   server clock> <holder label>` (the `holder` option), so `inspect` and
//!   `list` show the label and the grant time; only the first 8 hex digits
//!   of the owner token are ever shown. Ownership checks compare the owner
//!   token alone, and a bare owner token (an older version's lock) still
//!   counts as its owner's.
//! - Not possible: counting waiters (they poll or listen on pub/sub, the
//!   server does not know them), and a listing that is a snapshot (a key
//!   taken or released during it may be missed or shown once more).
//!
//! ## Guarantees and their limits
//! - Mutual exclusion holds while the one Redis server keeps its data and the
//!   holder acts before [`Lease::valid_until`](leasehold_core::Lease::valid_until), which counts from the instant
//!   the script was sent, minus the drift allowance. A holder paused past it
//!   may still act; its late writes are stopped only by fencing tokens.
//! - Fencing tokens are `Strict` while the server keeps its data. They survive
//!   a restart only with AOF fsynced on every write (`appendonly yes`,
//!   `appendfsync always`): the backend checks that with `CONFIG GET` at
//!   connect and reports it as [`Capabilities::durable_fencing`](leasehold_core::Capabilities::durable_fencing) (a server that
//!   refuses `CONFIG` counts as not durable). A failover to an asynchronous
//!   replica can make tokens go backwards.
//! - **Run the server with `maxmemory-policy noeviction`** (Redis's
//!   default). Every other policy breaks mutual exclusion once memory runs
//!   out: a lock key carries a TTL, so `volatile-*` policies evict it *while
//!   it is held* and another client acquires the same lock (the test
//!   `volatile_ttl_eviction_takes_a_held_lock_and_the_backend_warns` shows
//!   it), and `allkeys-*` policies evict lock keys and fencing counters too.
//!   Under `noeviction` a full server refuses new acquisitions (an error)
//!   instead. The backend reads the policy with `CONFIG GET` at connect,
//!   logs a `tracing::warn!` for any other policy (even with `maxmemory` 0,
//!   where it only waits for a limit to be set), and reports it in
//!   [`RedisBackend::safety_findings`]; [`RedisBackend::check_safety`] asks
//!   again at run time.
//! - Every call is bounded by the per-call timeout (default 2 s): a dead or
//!   paused server is [`LockError::Unavailable`](leasehold_core::LockError::Unavailable) within it. An acquire whose
//!   answer timed out may still have taken the key; the backend then releases
//!   it in the background, best effort, else it frees itself after its TTL.
//! - Cancellation: every operation may be dropped at any await point.
//!   `try_acquire` (and so `acquire` and `Locker::lock`) runs each attempt
//!   on its own task: a lease granted after the caller stopped waiting, or
//!   granted and never read, is released at once instead of blocking the key
//!   until its TTL. A dropped `extend` may still renew our own key; a
//!   dropped `release` may or may not have deleted it (release again, or let
//!   it expire).
//! - Keys: every legal [`Key`](leasehold_core::Key) works and two keys never share a lock (see
//!   [`KeyLayout`]). Both Redis keys of a lock share a cluster hash slot.
//! - Not provided here: Sentinel and Cluster connections, and fair (FIFO)
//!   hand-off.
#![warn(missing_docs)]

mod admin;
mod backend;
pub mod config;
mod error;
mod keys;
mod lease;
mod notify;
mod safety;
pub mod scripts;
mod store;

pub use admin::{MAX_SCAN_COUNT, ScanCursor, ScanState};
pub use backend::RedisBackend;
pub use config::{DEFAULT_NAMESPACE, DEFAULT_TIMEOUT, RedisConfig};
pub use error::map as map_error;
pub use keys::KeyLayout;
pub use safety::{Persistence, SafetyFinding};
pub use store::{AcquireOutcome, MAX_TTL_MS, Ownership, RedisNode, ttl_millis};

/// The backend's name in errors, spans and metrics.
pub const NAME: &str = "redis";
