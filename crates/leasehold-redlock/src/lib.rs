//! # leasehold-redlock
//!
//! Redlock for [leasehold](leasehold_core): one lock over N independent Redis
//! servers (N odd; 3 or 5 typical), built from the single-server scripts of
//! [`leasehold_redis`] through its [`RedisNode`](leasehold_redis::RedisNode) seam.
//!
//! - **acquire** sends the acquire script (`SET NX PX` + the key's counter
//!   `INCR`) to all N servers *at once* with the same owner token, each call
//!   bounded by its own per-node timeout (`ttl × 0.05`, at least 10 ms, at most
//!   the per-call timeout), so a hung server costs that timeout, not the lease.
//!   It succeeds when a quorum (N/2+1) acquired and validity is left:
//!   `valid_until = sent + ttl − drift` (drift = `ttl × factor + fixed`),
//!   counted from the instant the requests were *sent*, must still be ahead
//!   of now. Otherwise it deletes its key again (compare-and-delete) on every
//!   server that acquired or did not answer (a timed-out server may have set
//!   it), in parallel, before returning the error.
//! - **extend** needs a quorum of compare-and-`PEXPIRE`s and validity
//!   recomputed from the extend's send instant. A failed extend does *not*
//!   release: the lease stays valid until its old `valid_until`, and deleting
//!   it early could hand the key to someone else while we still act on it
//!   (redsync PR #150). It is [`LockError::Lost`](leasehold_core::LockError::Lost) when a majority says the key
//!   is not ours, [`LockError::Unavailable`](leasehold_core::LockError::Unavailable) when too many servers did not
//!   answer to tell.
//! - **release** compare-and-deletes on every server in parallel: `Ok` when a
//!   majority confirms, `NotHeld` when none held it or this lease was already
//!   released (it returns on a majority, so a second release may still find
//!   the first one's last deletes landing), `Lost` when only a minority
//!   still did.
//! - **kinds**: readers and writers take the same steps over the
//!   reader–writer scripts (below); `list`, `inspect` and `force_release`
//!   see mutexes only.
//! - **errors** list every server's answer ([`QuorumReport`]): a key taken on
//!   a majority is [`LockError::Contended`](leasehold_core::LockError::Contended) (the report is the holder's
//!   `metadata`); too few servers reachable is [`LockError::Unavailable`](leasehold_core::LockError::Unavailable)
//!   (the report is its source). Neither is [`LockError::WaitTimedOut`](leasehold_core::LockError::WaitTimedOut), which only
//!   `acquire` gives when its wait runs out.
//!
//! ```no_run
//! use leasehold_core::Locker;
//! use leasehold_redlock::RedlockBackend;
//! # #[tokio::main] async fn main() -> Result<(), leasehold_core::LockError> {
//! let backend = RedlockBackend::connect(
//!     "redlock://:secret@10.0.0.1:6379,10.0.0.2:6379,10.0.0.3:6379?namespace=billing&timeout=1s",
//! )
//! .await?;
//! let locker = Locker::new(backend);
//! let guard = locker.lock("invoice:2024-17").await?;
//! // Act only before guard.valid_until(); stop when guard.lost() fires.
//! guard.release().await?;
//! # Ok(()) }
//! ```
//!
//! ## Reader–writer locks, and why no semaphores
//! - **Reader–writer locks** ([`Capabilities::rw_locks`](leasehold_core::Capabilities::rw_locks)):
//!   each server keeps the single-server reader–writer state of
//!   [`leasehold_redis`] (readers and waiting writers in sorted sets scored
//!   by the server's `TIME`, the writer under a `PX` TTL, the lock's own
//!   fencing counter), and a grant needs a majority, exactly as the mutex
//!   does (same owner token everywhere, per-node timeouts, validity from
//!   the send instant, partial grants given back, token the majority's
//!   largest counter with lagging servers raised). Sound for exclusion
//!   because any two majorities share a server, and that server refuses a
//!   writer while it counts a reader or writer, and a reader while it
//!   counts a writer; readers share freely. Fencing is `BestEffort` for the
//!   same reasons as the mutex's. A writer in `acquire_kind` registers as
//!   waiting on the servers that refuse it (those then refuse new
//!   readers), refreshes that every third of its TTL and withdraws from
//!   every server when its wait ends; a registration a server missed
//!   expires within the TTL. Writer preference then holds where the
//!   registrations reach a majority; otherwise it costs only fairness,
//!   never exclusion.
//! - **Semaphores are [`LockError::Unsupported`](leasehold_core::LockError::Unsupported)**
//!   ([`Capabilities::semaphores`](leasehold_core::Capabilities::semaphores)
//!   is false). A majority of independent per-server counts does not bound
//!   the holders: with N servers each admitting P holders and every holder
//!   on N/2+1 of them, up to P·N/(N/2+1) holders (almost 2P) fit. Three
//!   servers and P = 2: holders on {1,2}, {2,3} and {1,3} fill every
//!   server to 2 and all three hold. Bounding them needs each holder on more
//!   than P·N/(P+1) servers (all N as P grows), which gives up the
//!   fault tolerance Redlock exists for; use a single Redis
//!   (`leasehold-redis`, Sentinel or Cluster) for semaphores.
//!
//! ## Operations
//! - **list** ([`LockBackend::list`](leasehold_core::LockBackend::list)):
//!   each page runs one `SCAN` step on every server at once (never `KEYS`),
//!   then reads the keys found on every server (one script call each). A key
//!   is listed when a majority of servers agree on its owner, as `inspect`
//!   decides, with the highest token and the least time left among them; a
//!   key held on several servers is shown once, by the lowest-numbered
//!   server's scan. The cursor holds every server's `SCAN` cursor
//!   ([`ScanCursor`](leasehold_redis::ScanCursor)). A server that fails
//!   during a listing is left out for the rest of it (its keys are found
//!   on the others); when more than N − quorum have failed, the page is
//!   [`LockError::Unavailable`](leasehold_core::LockError::Unavailable). A
//!   key held on too few reachable servers to tell is left out.
//! - **force release** ([`LockBackend::force_release`](leasehold_core::LockBackend::force_release)):
//!   the single-server script on every server at once (delete, counter
//!   `INCR`, release published, reason in each server's log), then every
//!   server whose counter lags the highest evicted token is raised to it.
//!   `Ok` when a majority answered; the evicted holder is the owner most
//!   servers named, with the highest token reported.
//! - **holder**: stored in each server's lock value beside the owner token
//!   (see [`leasehold_redis::scripts`]), with each server's grant time.
//! - Not possible: counting waiters (no server knows of them), and a listing that is a
//!   snapshot (a key taken or released during it may be missed or shown
//!   once more; so may one whose servers fail mid-listing).
//!
//! ## Guarantees and their limits
//! - Mutual exclusion holds while a majority of servers keep their data and
//!   the holder acts before [`Lease::valid_until`](leasehold_core::Lease::valid_until). A server that restarts
//!   *without persistence* forgets the locks it held: restart it only after
//!   the longest TTL in use has passed (Redlock's "delayed restart"), or run
//!   every server with AOF and `appendfsync always`.
//! - A holder paused (GC, SIGSTOP, a frozen VM) past `valid_until` may still
//!   act when it wakes; only fencing at the protected resource stops it, and
//!   Redlock's fencing is best effort (next point). A paused *server* is a
//!   server that does not answer: with a quorum of the others everything
//!   works; a lease whose extends cannot reach a quorum ends at its
//!   `valid_until` (the guard's `lost()` fires then), while its keys on the
//!   paused server linger until their TTL after it wakes.
//! - **Fencing is [`Fencing::BestEffort`](leasehold_core::Fencing::BestEffort).** A lease's token is the largest
//!   counter among the servers that granted it. Every server that answered
//!   with a lower counter is raised to that token before `try_acquire`
//!   returns (one more parallel round trip, only when counters disagree), so
//!   any later quorum, which overlaps this one, counts past it (the test
//!   `fencing_tokens_keep_increasing_when_the_quorum_changes` shows 1, 2, 3,
//!   4, 5 across three different quorums, and 1, 2, 3, 4, 2 without the
//!   raise). Tokens can still go backwards when (a) a server restarts without
//!   persistence (its counters restart at 0) and a later quorum is made mostly
//!   of such servers, or (b) a different quorum grants the next lease while
//!   a raise did not reach a majority (a server timed out on it), or a server
//!   was unreachable while the higher counters were handed out and later
//!   forms a quorum with others that lag too. For strictly increasing tokens
//!   use a single Redis with `appendonly yes` + `appendfsync always`
//!   (`leasehold-redis`, `Strict`), or etcd, ZooKeeper or Postgres.
//! - **Waiting is [`Waiting::Notified`](leasehold_core::Waiting::Notified)**
//!   (option `notifications`, default on; off, it is `Polled`): every
//!   server's release script `PUBLISH`es the released key. The backend
//!   keeps one pub/sub connection to every server, made when the first
//!   waiter waits, counts the servers that announced each release, and
//!   wakes one waiter of the key when the quorum-th has: a majority is free
//!   then, and waking one per server's message would have several waiters
//!   split the vote. A server left out of the subscription (down) is tried
//!   again every 10 s; signals are a hint. Between signals `acquire`
//!   retries with the caller's [`WaitPolicy`](leasehold_core::WaitPolicy),
//!   whose full jitter spreads competing clients so they do not split the
//!   vote forever; a failed attempt gives its partial keys back at once, so
//!   the next attempt finds them free.
//! - Run every server with `maxmemory-policy noeviction`: under any other
//!   policy a server short of memory may evict a held lock key (it carries a
//!   TTL), and a majority of such servers hands the lock to a second client.
//!   Each server's policy is read at connect (`CONFIG GET`) and any other is
//!   logged with `tracing::warn!`.
//! - Cancellation: every operation may be dropped at any await point.
//!   `try_acquire` (and so `acquire` and `Locker::lock`) runs each attempt on
//!   its own task: a quorum granted after the caller stopped waiting, or
//!   granted and never read, is released at once, not left to block the key
//!   until its TTL. A dropped `extend` may still renew our own keys; a
//!   dropped `release` may leave some servers' keys until their TTL.
//! - Every call is bounded: each server by the per-node timeout, connects by
//!   the per-call timeout (default 2 s). A server that is down at connect is
//!   connected later in the background; connecting fails only when fewer
//!   than a quorum answer.
#![warn(missing_docs)]

mod admin;
mod backend;
pub mod config;
mod error;
mod notify;
mod quorum;
mod shared;
mod store;

use std::time::Duration;

pub use backend::RedlockBackend;
pub use config::{
    DEFAULT_MIN_NODE_TIMEOUT, DEFAULT_NAMESPACE, DEFAULT_NODE_TIMEOUT_FACTOR, DEFAULT_TIMEOUT,
    RedlockConfig,
};
pub use error::{NodeOutcome, QuorumReport};

/// The backend's name in errors, spans and metrics.
pub const NAME: &str = "redlock";

/// The smallest TTL accepted: below it the drift allowance and per-node
/// timeouts leave no validity worth having.
pub const MIN_TTL: Duration = Duration::from_millis(10);
