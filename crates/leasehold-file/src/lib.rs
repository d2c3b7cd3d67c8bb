//! # leasehold-file
//!
//! File backend of [leasehold](leasehold_core): locks shared by the
//! processes of **one host** through a directory of the local file system,
//! with nothing to run (`file:///var/lock/myapp`). For cron jobs, command
//! line tools and single-node deployments that run several processes; the
//! in-memory backend serves only one process.
//!
//! ```no_run
//! use leasehold_core::Locker;
//! use leasehold_file::FileBackend;
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), leasehold_core::LockError> {
//! let backend = FileBackend::connect("file:///var/lock/myapp?namespace=billing").await?;
//! let locker = Locker::new(backend);
//! let guard = locker.lock("nightly-report").await?;
//! // Hand guard.fencing_token() to the resource you protect.
//! guard.release().await?;
//! # Ok(()) }
//! ```
//!
//! ## How a key is held
//! Each key has three kinds of files in the directory (named by
//! [`file_stem`]): a guard file, a state file and one alive file per
//! acquisition.
//! - **Every step is a read-modify-write under the key's guard lock** (an
//!   exclusive `flock`, held for the microseconds of one step and never
//!   while waiting): read the state file, decide, write the new state to a
//!   temporary file, fsync it and rename it over the state file. A reader or
//!   a crash sees the old state or the new one, never a torn one.
//! - **The state records** the key, its fencing counter, and the holder: its
//!   owner token (128 random bits, the only proof of ownership), its
//!   deadline on the host's monotonic clock (`CLOCK_MONOTONIC`, the clock
//!   tokio's `Instant` reads in every process, with the boot id so a
//!   deadline never outlives a reboot), its label and its grant time.
//! - **The holder keeps an exclusive `flock` on its alive file**
//!   (`<stem>.<owner>.alive`) for as long as it holds the lease; the open
//!   file lives in the lease (shared by its clones) until release. The
//!   holder keeps no lock on the guard or the state between calls.
//! - A recorded holder holds the key while **both** hold: its deadline has
//!   not passed, and its alive file is still locked (a contender probes it
//!   with a non-blocking shared `flock`; any failure but a granted probe
//!   counts as alive).
//!
//! Why two mechanisms: an `flock` alone would free a dead holder's key at
//! once but could never take a key from a live holder that hangs (the OS
//! keeps its lock), and a deadline alone would keep a killed holder's key
//! for its whole TTL. Together:
//! - **a SIGKILLed holder's key frees at once**: the OS drops its alive
//!   lock when the process dies, and the next attempt takes the key (the
//!   conformance suite measures this);
//! - **a live holder that stops renewing loses the key at its deadline**
//!   (`Expiry::Ttl`), whatever its process does;
//! - **two holders are never both valid**: a grant is written only under
//!   the guard, after the previous holder's deadline passed (the holder's
//!   `valid_until` is measured from before its request, on the same clock,
//!   minus drift, so it ended first) or after its process let go of its
//!   alive lock (it died, or dropped the lease, and holds nothing);
//! - **a lease dropped without release frees its key** (its alive file
//!   closes), like a closed session.
//!
//! ## Reader–writer locks and semaphores
//! The reader–writer lock and the semaphore of a key are locks of their own,
//! apart from its mutex: each has its own files, with the stem `rw.` or `sem.`
//! followed by [`file_stem`] (`rw.k-jobs.state`, `sem.k-jobs.state`, their
//! guard and alive files), and its own counter. Their state records, besides
//! the key and the counter:
//! - **the holders** (sharers): kind (`read`, `write`, `permit-<N>`), fencing
//!   token, and the mutex holder's record (owner, monotonic deadline with the
//!   boot id, label, grant time), each with its own alive file. A sharer
//!   counts while both its deadline holds and its alive file is locked, the
//!   mutex's rule: a SIGKILLed reader, writer or permit holder frees its place
//!   at once, a hung one at its deadline. Dead entries are dropped at the
//!   next write.
//! - **the waiting writers** of a reader–writer lock: owner and deadline (the
//!   writer's `ttl` ahead, refreshed while it waits), and an alive file of its
//!   own. While one counts, new readers are refused (writers are not starved);
//!   single attempts (`try_acquire_kind`) never record one. A wait that ends
//!   by a grant removes its entry in the grant's own write; one that ends
//!   otherwise (deadline, error, a dropped call, a killed process) closes its
//!   alive file at once, so its entry stops counting then, and the entry is
//!   removed in the background.
//!
//! A reader is granted when no writer holds or waits, a writer when nobody
//! holds, a permit of `N` while fewer than `N` hold (each attempt judged by
//! its own `N`). Every grant takes the next value of the state's counter and
//! is written durably (as the mutex's), so a writer's token exceeds every
//! earlier grant of the key's reader–writer lock, a reader's exceeds every
//! earlier writer's, and permits strictly increase. `extend` and `release`
//! take leases of every kind. `inspect`, `list` and `force_release` see
//! mutexes only: the reader–writer locks and semaphores of the directory are
//! not listed, inspected or evicted.
//!
//! The mutex's state file keeps its first format exactly (what this version
//! writes for a mutex is what the first version wrote, and the first
//! version's files parse), so processes of both versions may share a
//! directory; the new families' lines (`sharer`, `waiter`) appear only in
//! their own files, which the first version never opens.
//!
//! ## Fencing
//! `Fencing::Strict` and durable: the counter lives in the key's state file,
//! which is never deleted; every grant and every force release fsyncs the
//! new state and the directory before answering, so a token survives
//! process crashes and power loss. A state file that does not parse is an
//! error, never a fresh start at 0.
//!
//! ## Keys and namespaces
//! [`file_stem`] encodes a key into a file name injectively (`%xx` for every
//! byte outside `[a-z0-9_-]`, uppercase included, so a case-insensitive file
//! system cannot merge keys); a key whose encoding is longer than 180 bytes
//! gets the SHA-256 of the key instead (two keys whose digests collided
//! would share one lock: false contention, never lost exclusion). A
//! `namespace` is a subdirectory `ns.<encoded namespace>`.
//!
//! ## Waiting
//! Polled (`Waiting::Polled`): a waiter re-tries at most every `poll`
//! (default 50 ms). A release by any backend of the same process wakes that
//! process's waiters at once.
//!
//! ## Limits, plainly
//! - **Local file systems only.** NFS, SMB/CIFS and other network or
//!   distributed file systems are out of scope: their `flock` may be
//!   emulated, per client, or absent, rename and fsync semantics differ, and
//!   the monotonic deadlines of two hosts mean nothing to each other. The
//!   URL refuses a host name for that reason; a network mount given as a
//!   path is not detected.
//! - Every process must see the same `CLOCK_MONOTONIC`: processes in
//!   different Linux time namespaces (a container with a time offset) must
//!   not share a directory.
//! - A process that `fork`s without `exec` while holding a lease shares its
//!   alive lock with the child (the files are opened close-on-exec, so an
//!   `exec` drops it).
//! - A paused holder (SIGSTOP, a VM pause) past its `valid_until` may still
//!   act; only fencing tokens stop its late writes.
//! - Unix only (`flock`; Linux for the boot id).
//!
//! ## Operations
//! - `list` reads the directory's names once per page (no lock taken) and
//!   the state files in key order; the cursor is the last key shown.
//! - `force_release` clears the holder and advances the counter durably, so
//!   the evicted holder's renewal is `Lost` and the next token is above the
//!   evicted one; it removes the evicted alive file.
//!
//! Configuration ([`FileConfig`]): the shared options (`namespace`,
//! `timeout`, `poll`, `holder`, `drift_factor`, `drift_fixed`), the locker's
//! (`ttl`, `wait`, ...), and `create` (default true). `timeout` (default
//! 5 s) bounds each call, including the wait for a key's guard lock.
#![warn(missing_docs)]

mod admin;
mod backend;
mod config;
mod error;
mod keys;
mod lease;
mod shared;
mod store;

pub use backend::FileBackend;
pub use config::{DEFAULT_POLL, DEFAULT_TIMEOUT, FileConfig, MIN_TTL};
pub use keys::file_stem;
