//! # leasehold-zookeeper
//!
//! The ZooKeeper backend of leasehold: a FIFO lock queue per key made of
//! ephemeral sequential nodes, fencing tokens from the holder node's `czxid`,
//! and the ZooKeeper session as the lease's life.
//!
//! ```no_run
//! use leasehold_core::Locker;
//! use leasehold_zookeeper::ZkBackend;
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), leasehold_core::LockError> {
//! let backend = ZkBackend::connect_url("zk://127.0.0.1:2181/my-app?session_timeout=10s").await?;
//! let locker = Locker::new(backend);
//! let guard = locker.lock("invoices/2024 run").await?;
//! // czxid of our node: hand it to the protected resource, which rejects lower ones.
//! let token = guard.fencing_token();
//! tokio::select! {
//!     () = guard.lost() => eprintln!("session expired: stop working"),
//!     () = async { /* the protected work, fenced with `token` */ } => {}
//! }
//! guard.release().await?;
//! # Ok(()) }
//! ```
//!
//! ## The recipe
//! - A key is one node, `{namespace}/{encoded key}` (every legal key is
//!   escaped into one valid, distinct path segment; see [`decode_segment`]).
//!   It is a *container* node: the server removes it some time after its last
//!   contender left, and never while it has children, so a waiter is never
//!   left without a parent. The namespace node is persistent and stays.
//! - Acquiring creates an ephemeral sequential child named
//!   `{owner token}-lock-{sequence}`. The lowest sequence holds the lock.
//!   A create whose reply was lost (connection loss) is found again by the
//!   owner token in the name (ZOOKEEPER-1262, Curator's protected mode).
//!   The queue is listed in the same round trip: `zookeeper-client` orders
//!   requests when they are made and the server answers a session's requests
//!   in order, so a list made right after the create already shows the new
//!   node, and an uncontended acquisition costs one round trip.
//! - A waiter watches only its predecessor (no herd) and, whenever that watch
//!   fires or a re-check timer runs out, lists the queue again and decides
//!   anew: waiters get the lock in the order they queued ([`Fairness::Fifo`]).
//!   A waiter that times out, or whose future is dropped, deletes its node.
//! - `try_acquire` queues and, unless it is at the head, deletes its node
//!   again and reports the holder's czxid.
//! - `release` is an awaited delete of our own node: when it returns, the lock
//!   is free. Its node gone already (session ended, released twice) is
//!   `NotHeld`.
//!
//! ## Fencing
//! The fencing token is the holder node's `czxid`, the ZooKeeper transaction id
//! of its creation: ensemble-wide, strictly increasing, persisted in the
//! transaction log, so tokens keep increasing across releases, crashes, session
//! expiry, container removal and server restarts ([`Fencing::Strict`],
//! durable). A later holder always queued later, so its czxid is larger.
//!
//! ## Expiry, TTL and loss
//! Expiry is the session ([`Expiry::Session`]): one session per backend, kept
//! alive by the client's pings, independent of any TTL. A crashed or
//! partitioned holder keeps the lock until the server expires its session,
//! i.e. about the session timeout (negotiated at connect, clamped by the server
//! to 2–20 × tickTime) after it last heard from it.
//!
//! The TTL asked for sets the lease's *validity* on the holder's clock:
//! `min(ttl, session timeout)` from when the acquiring (or extending) request
//! was sent, less drift. It is capped at the session timeout because after
//! that long without a successful round trip the server may already have
//! expired the session and handed the lock on. `extend` checks that our node
//! still exists and belongs to our session (one round trip; `extend_many`
//! renews all of a session's leases in one multi-read) and renews validity.
//! TTLs below 50 ms are refused. A TTL does not make a lock free sooner: a
//! holder that stops extending but stays alive keeps the lock until release.
//!
//! Connection trouble is reported, not hidden: a disconnect (Curator's
//! SUSPENDED) is logged, extends fail with `Unavailable`, and the guard counts
//! the lease lost once its validity passes without a successful extend. A
//! reconnect within the session keeps the lease. Session expiry (LOST) cancels
//! every lease's [`Lease::loss_signal`] at once; the next call opens a new
//! session (unless the backend was built [`ZkBackend::from_client`]).
//!
//! ## Limits
//! - Every store call is bounded by [`ZkOptions::operation_timeout`]; a paused
//!   or unreachable ensemble gives `Unavailable`, never a hang.
//! - A holder paused longer than its validity may still act after its session
//!   expired; only fencing tokens stop its late writes.
//! - A create retried after a connection loss could, in theory, be applied
//!   twice (ZOOKEEPER-22); the duplicate is an extra contender of ours that
//!   goes when our session ends.
//! - Contender names carry the full owner token. In ZooKeeper the token is no
//!   proof of anything (ownership is the node's session), so this leaks
//!   nothing that listing the node does not already give.
//!
//! [`Fairness::Fifo`]: leasehold_core::Fairness::Fifo
//! [`Fencing::Strict`]: leasehold_core::Fencing::Strict
//! [`Expiry::Session`]: leasehold_core::Expiry::Session
//! [`Lease::loss_signal`]: leasehold_core::Lease::loss_signal
#![warn(missing_docs)]

mod backend;
mod options;
mod path;
mod session;

pub use backend::{WakeCounts, ZkBackend};
pub use options::ZkOptions;
pub use zookeeper_client;

/// The backend's name in errors, spans and metrics.
pub const NAME: &str = "zookeeper";

/// The key a key node's name (its last path segment) stands for, or `None`
/// if this backend did not make that name. For tooling that walks the tree.
///
/// ```
/// assert_eq!(leasehold_zookeeper::decode_segment("a%2Fb%20c").as_deref(), Some("a/b c"));
/// ```
pub fn decode_segment(segment: &str) -> Option<String> {
    path::decode_key(segment)
}
