//! # leasehold-redis
//!
//! The Redis backend for [leasehold](leasehold_core): leases are Redis keys
//! with a `PX` TTL, taken and given back by Lua scripts, on one server, on
//! the master a set of Redis Sentinels names, or on a Redis Cluster.
//!
//! - **acquire**: one script does `SET lock owner NX PX ttl` and, only if that
//!   succeeded, `INCR` of the key's fencing counter; the counter key is never
//!   deleted, so fencing tokens strictly increase across releases and
//!   expiries. A held key answers with the holder's remaining TTL, fencing
//!   token and owner prefix ([`LockError::Contended`](leasehold_core::LockError::Contended) carries them).
//! - **release**: compare-and-delete plus `PUBLISH` on the namespace's release
//!   channel, one script; **extend**: compare-and-`PEXPIRE`; the guard's
//!   watchdog renews many leases with one script call.
//! - **group commit**: acquisitions and releases that a backend's tasks ask
//!   for while two script calls are already on the wire go together in the
//!   next call (one per hash slot on a cluster), each caller getting its
//!   own answer; a lone caller waits for nobody. The server runs each step
//!   as the one-key scripts do, in the order asked (`scripts::BATCH_SRC`).
//! - **waiting**: one shared pub/sub connection wakes waiters when a key is
//!   released (on a cluster: the key's shard channel, see below); polling
//!   with backoff stays the fallback, so a lost notification costs latency,
//!   never a hang.
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
//! ## Modes and what each promises
//! | URL | server | fencing ([`Capabilities::fencing`](leasehold_core::Capabilities::fencing)) |
//! |---|---|---|
//! | `redis://`, `rediss://`, `redis+unix://` | one server at a fixed address | `Strict` while the server keeps its data (durable across restarts only with AOF `appendfsync always`) |
//! | `redis+sentinel://s1,s2,s3/master` | the master the sentinels name, followed across failovers | `BestEffort`: a failover promotes an asynchronous replica, which may lack the latest grants (a held lock vanishes, a token is issued twice) |
//! | the same with `min_replicas=N` | as above; each grant and renewal counts only once `WAIT` saw N replicas take it | `Strict` when N is at least the number of replicas the master had at connect (every replica, so whichever is promoted, has every grant), else `BestEffort` |
//! | `redis+cluster://n1:p1,n2:p2,n3:p3` | a Redis Cluster: each lock on the master of its key's hash slot | `BestEffort`: a shard fails over to an asynchronous replica, as under Sentinel |
//! | the same with `min_replicas=N` | as above; each grant and renewal counts only once `WAIT` on the key's own master saw N of its replicas take it | `Strict` when N is at least the most replicas any master had at connect, else `BestEffort` |
//!
//! `redis+sentinel://` and `redis+cluster://` take `tls=true` (with the
//! `ca`, `cert` and `key` options of `rediss://`) for TLS to every sentinel,
//! master and cluster node (see [`RedisConfig`]).
//!
//! **Cluster** ([`ClusterTarget`]): the client's cluster connection routes
//! every script to the master of its key's slot and follows `MOVED`/`ASK`
//! and the cluster's own failovers. A lock's keys share one hash tag, so
//! every script touches one slot; batched calls (`extend_many`, the holder
//! reads of `inspect` and `list`) are split per slot; `list` runs `SCAN` on
//! every master ([`RedisNode::masters`], one cursor per master).
//! Release notifications use sharded pub/sub (Redis 7): each key has its
//! own shard channel in its own slot ([`KeyLayout::shard_channel`]); the
//! release scripts `SPUBLISH` on it, and a waiter's backend `SSUBSCRIBE`s
//! it on the key's master while the key has waiters, so a release reaches
//! that shard only instead of crossing the cluster bus to every node. A
//! resharding (the old master drops the subscription with a server-sent
//! `sunsubscribe`) or a lost node connection (a failover) makes the backend
//! subscribe again where the slot is now and wake the key's waiters, which
//! then try once more; polls with backoff cover any gap
//! ([`RedisBackend::shard_notifications`] counts the messages heard).
//!
//! **Replica rule on a cluster**: the script and its `WAIT` go in one
//! pipeline routed to the master of the key's slot, so the `WAIT` counts
//! that master's replicas. Fencing is `Strict` when `min_replicas` is at
//! least the most replicas any master had at connect (whichever replica
//! the cluster promotes had every grant and renewal of its shard), else
//! `BestEffort`. Not covered: a replica added or migrated to a shard later
//! and promoted before it synced, a replica restarted without its data,
//! and a resharding that a failover interrupts (the slot's keys are moved
//! by `MIGRATE`, which is not confirmed by `WAIT`).

//! **Sentinel** ([`SentinelTarget`]): the sentinels are asked for the master
//! at connect; a call that fails as a failover would (no connection, a
//! timeout, `READONLY` from a demoted master, a write too few replicas
//! confirmed) makes the backend ask them again, and later calls go to the
//! master they name ([`RedisNode::master_switches`]), never to the old
//! address before the sentinels answered: a killed master restarted
//! without persistence is an empty master there until the sentinels demote
//! it, and calls that reached it would find no lock and grant held keys
//! anew. While the sentinels cannot be asked, calls are `Unavailable`.
//! Calls during the failover are
//! [`LockError::Unavailable`](leasehold_core::LockError::Unavailable); held
//! leases survive it when their TTL outlasts it and the promoted replica
//! has them. A lease the promoted replica lacks is reported to its holder
//! at its next renewal (`Lost`, and the guard's `lost()` fires) or release
//! (`NotHeld`), never kept silently. Measured in `tests/failover.rs`.
//!
//! **Replica rule** (`min_replicas=N&replica_timeout=500ms`, any scheme but
//! `redis+unix`; [`ReplicaRule`]): the script and a `WAIT N timeout` go in
//! one pipeline on one connection; fewer than N confirmations undo a grant
//! (compare-and-delete) and fail it with `Unavailable`, and fail a renewal
//! the same way (the lease is not extended). The price: every grant waits
//! for a replica round trip, and with N equal to all replicas a single
//! replica down stops all grants (after a failover that kills the old
//! master, until it rejoins as a replica). Asynchronous replication still
//! loses a grant that a replica took in memory and then lost in a restart
//! without persistence.
//!
//! ## TLS
//! `rediss://host:port?ca=/etc/redis/ca.pem` trusts a private CA instead of
//! the built-in web roots; `&cert=client.pem&key=client.key` adds a client
//! certificate for servers that require one (`tls-auth-clients yes`). The
//! files are PEM, read when the URL is parsed ([`TlsFiles`]); a missing or
//! unreadable one, a certificate without its key, or these options on a
//! plain `redis://` URL is a [`LockError::Config`](leasehold_core::LockError::Config) naming the option. The
//! server's name is checked against its certificate (`#insecure` turns that
//! off, for tests only). Errors and `Debug` show the files' paths, never
//! their contents or the password. rustls, no OpenSSL.
//!
//! `redis+sentinel://…?tls=true` and `redis+cluster://…?tls=true` use TLS
//! to every server of the topology (sentinels, the masters they name,
//! every cluster node), with one set of the same `ca`/`cert`/`key`
//! options; an option rather than a `rediss+…` scheme, so URLs keep the
//! scheme table of the `leasehold` facade. The files without `tls=true`
//! are a `Config` error there too. Each server's name as the client
//! reaches it (a sentinel's as given in the URL, a master's or a node's as
//! the topology announces it, often an IP address) must be in its
//! certificate.
//!
//! ## Reader–writer locks and semaphores
//! [`LockKind::Read`](leasehold_core::LockKind::Read),
//! [`LockKind::Write`](leasehold_core::LockKind::Write) and
//! [`LockKind::Permit`](leasehold_core::LockKind::Permit) on every topology
//! above ([`Capabilities::rw_locks`](leasehold_core::Capabilities::rw_locks)
//! and [`semaphores`](leasehold_core::Capabilities::semaphores) say yes).
//! Each is its own lock, apart from the mutex of the same key: its own
//! Redis names under the key's hash tag ([`KeyLayout::shared_key`]), so
//! every script touches one cluster slot.
//! - **state**: readers and permits are members of a sorted set scored by
//!   their expiry in the server's milliseconds (`TIME` inside the script,
//!   never a client clock); the writer is a key with a `PX` TTL; writers
//!   that *wait* are members of a third sorted set. Every script first
//!   drops the expired members, and each set expires with its last member
//!   (`PEXPIREAT`), so a crashed holder frees its grant after its TTL and
//!   nothing is left behind.
//! - **grants** ([`scripts::RW_ACQUIRE_SRC`], [`scripts::SEM_ACQUIRE_SRC`]):
//!   a writer when no writer and no reader holds; a reader when no writer
//!   holds or waits; a permit while fewer than `permits` hold. Each grant
//!   `INCR`s the lock's own fencing counter (`rw:fence`, `sem:fence`: never
//!   deleted, durable like the mutex's), so a writer's token exceeds every
//!   earlier grant, a reader's every earlier writer's, and permits strictly
//!   increase. The replica rule (`min_replicas`) applies to grants and
//!   renewals as it does to the mutex's.
//! - **writer preference**: a writer in `acquire_kind` registers in the
//!   waiting set with its first refused attempt (scored `now + ttl`,
//!   refreshed every third of the TTL while it waits), which refuses new
//!   readers; a grant removes it, and so does the end of the wait however
//!   it ends (a dropped call withdraws it in the background), else it
//!   expires within the TTL. A single `try_acquire_kind` never registers.
//!   Writers among themselves are not ordered.
//! - **release** publishes on the namespace's channel with the key's lock
//!   name, so waiters of every kind on the key wake; **extend** re-scores an
//!   unexpired member (never revives an expired one); acquisitions run on
//!   their own task ([`cancel_safe`](leasehold_core::cancel_safe)), so a
//!   dropped call never strands a grant.
//! - `inspect`, `list` and `force_release` see mutexes only; readers,
//!   writers and permits are neither listed nor evicted by them.
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
//!   `try_acquire` (and so `acquire` and `Locker::lock`) sends a lone
//!   attempt from the caller's own future, with no task in between; a grant
//!   whose caller stopped waiting (dropped while its call was out, or
//!   granted and never read) is given back at once, behind the grant on the
//!   same connection, instead of blocking the key until its TTL. A dropped `extend` may still renew our own key; a
//!   dropped `release` may or may not have deleted it (release again, or let
//!   it expire).
//! - Keys: every legal [`Key`](leasehold_core::Key) works and two keys never share a lock (see
//!   [`KeyLayout`]). Both Redis keys of a lock share a cluster hash slot.
//! - Not provided here: fair (FIFO) hand-off.
#![warn(missing_docs)]

mod admin;
mod backend;
mod batch;
mod cluster;
pub mod config;
mod conn;
mod error;
mod keys;
mod lease;
mod link;
mod notify;
mod replicas;
mod replication;
mod safety;
pub mod scripts;
mod sentinel;
mod sharded;
mod shared;
mod store;
mod tls;

pub use admin::{MAX_SCAN_COUNT, ScanCursor, ScanState};
pub use backend::{RedisBackend, Topology};
pub use cluster::ClusterTarget;
pub use config::{DEFAULT_NAMESPACE, DEFAULT_TIMEOUT, RedisConfig};
pub use conn::NodeConnection;
pub use error::map as map_error;
pub use keys::KeyLayout;
pub use replicas::ReplicaRule;
pub use safety::{Persistence, SafetyFinding};
pub use sentinel::{DEFAULT_SENTINEL_PORT, SentinelTarget};
pub use shared::{WaitingStep, extend_split};
pub use store::{AcquireOutcome, MAX_TTL_MS, Ownership, RedisNode, ttl_millis};
pub use tls::{TLS_OPTIONS, TlsFiles, tls_certificates, tls_client};

/// The backend's name in errors, spans and metrics.
pub const NAME: &str = "redis";
