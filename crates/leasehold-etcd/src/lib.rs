//! # leasehold-etcd
//!
//! The etcd v3 backend of leasehold: FIFO-fair locks, reader–writer locks
//! and counting semaphores with watch-driven handoff and etcd revisions as
//! strict, durable fencing tokens. Works with etcd 3.4 and 3.5+.
//!
//! ```no_run
//! use leasehold_core::Locker;
//! use leasehold_etcd::EtcdBackend;
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), leasehold_core::LockError> {
//! let backend = EtcdBackend::connect("etcd://127.0.0.1:2379?namespace=billing%2F").await?;
//! let locker = Locker::new(backend);
//! let guard = locker.lock("invoice:2024-001").await?;
//! // Hand guard.fencing_token() to the resource you protect.
//! guard.release().await?;
//! # Ok(()) }
//! ```
//!
//! ## How it works
//! - A lock is the set of keys under `namespace + encoded key + "/"` (the key
//!   with `%` and `/` percent-encoded; the namespace always ends with `/`, one
//!   is appended if missing, so two different (namespace, key) pairs never
//!   share a queue). Each acquisition writes one entry
//!   `prefix + owner token`: one transaction `create_revision(entry) == 0 →
//!   put(entry, lease)` that also reads the queue head and the entry before
//!   its own, so an uncontended acquisition is one round trip and a retry
//!   after a lost reply is idempotent.
//! - The entry with the lowest create revision holds the lock; the others
//!   queue in create-revision order (FIFO). Each waiter watches only its
//!   predecessor's deletion (no thundering herd), from the revision after its
//!   read (so the watch is served at once, not by etcd 3.4's 100 ms catch-up
//!   loop). After any wake-up it re-reads its own entry and sends a
//!   keep-alive, and reports success only when both confirm the lease lives
//!   (etcd#9921, etcd#11456). A fallback poll (default 1 s) bounds what a lost
//!   event can cost. [`EtcdBackend::wake_counts`] says how waiters woke.
//!   Measured (`tests/etcd.rs`, `handoff_wakes_the_waiter_through_its_watch`,
//!   etcd 3.4 in a container on loopback): the waiter holds the lock a median
//!   0.8–2 raw round trips after the holder's release returns; the release
//!   itself, a durable write, dominates the whole handoff (7–13 round trips).
//! - `try_acquire` writes only when the queue is empty (a compare on the whole
//!   prefix range), so contention costs no write and no delete; it reports the
//!   holder's fencing token, remaining TTL and owner hint.
//! - Fencing token = the holder entry's create revision: strictly increasing
//!   per key (etcd revisions never repeat) and durable across restarts while
//!   the data directory survives.
//! - Release is a compare-and-delete on the entry's create revision. A waiter
//!   that times out deletes its entry; one whose `acquire` future is dropped
//!   deletes it from a background task (as does a release whose reply was
//!   lost), retrying until the store answers.
//! - An entry whose txn may still be on its way (the call timed out against
//!   a paused or slow store: its answer never came) is *retired*, not just
//!   deleted: one txn writes its retirement marker (`namespace + encoded key +
//!   NUL + owner token`, outside every lock's range) and deletes it, and every
//!   acquisition txn requires its marker absent. A late copy of the txn then
//!   fails instead of reviving an entry that the shared session would keep
//!   alive, a lock nobody holds (`tests/etcd.rs`,
//!   `acquisitions_timed_out_by_a_paused_store_leave_no_entry`). Markers are
//!   written only then (a waiter that times out or is dropped knows its entry
//!   exists and just deletes it), and on a short lease of their own (at
//!   least 60 s, and 10 operation timeouts), not the session's, so they never
//!   pile up on a long-lived process (`tests/edges.rs`,
//!   `waiters_that_time_out_leave_no_retirement_markers_behind`).
//!
//! ## Reader–writer locks and semaphores
//! [`LockKind::Read`](leasehold_core::LockKind::Read)/[`Write`](leasehold_core::LockKind::Write)
//! and [`LockKind::Permit`](leasehold_core::LockKind::Permit) (`shared.rs`):
//! - Each is a set of entries under a prefix of its own,
//!   `namespace + encoded key + "\x01rw/"` (readers `…r<owner>`, writers
//!   `…w<owner>`) or `"\x01sem/"` (`…<owner>`), on the same session leases as
//!   the mutex's entries. The mutex, the reader–writer lock and the semaphore
//!   of one key are three independent locks, and `inspect`, `list` and
//!   `force_release` see mutexes only (the control character keeps these
//!   entries out of every mutex's range and name).
//! - Entries rank by create revision: a reader holds once no older *writer*
//!   entry is left, a writer once no older entry at all is left, a permit of
//!   `N` once fewer than `N` older entries are left (etcd's
//!   `recipes/rwmutex.go`; no peer ships an etcd semaphore). A waiting
//!   writer's entry is its registration: later readers rank behind it and
//!   wait, and a single reader attempt is refused while any writer entry
//!   exists (writer preference). It goes when the wait ends: at the deadline
//!   (deleted), when the call is dropped (the reaper), at the latest with its
//!   session lease, within the TTL.
//! - A single attempt leaves nothing behind: a reader or writer puts its entry
//!   in one txn only when no blocking entry exists; a permit puts its entry
//!   and counts the older ones in one txn, and deletes it at once when the
//!   semaphore is full.
//! - Waiters watch the deletions in the range that can block them (a
//!   reader: the lock's writers; otherwise the whole lock) from the revision
//!   after their read, re-read their rank at each one (the fallback poll
//!   still applies), and confirm their session lease before claiming.
//! - Fencing: a reader's or writer's token is its entry's create revision
//!   (as the mutex's; a writer's entry is newer than every entry granted
//!   before it, a reader's newer than every writer's granted before it). A
//!   permit's token is the revision of the txn that granted it: its put, or
//!   for a waiter a compare-and-put of its own entry once it may hold, so
//!   permits strictly increase in the order they are granted even when
//!   waiters notice their turn out of order. Tokens of one key's three locks
//!   come from etcd's one revision counter: strictly increasing and durable.
//! - `extend` and `release` work on every kind as on the mutex (keep-alive and
//!   a read of the entry; compare-and-delete).
//!
//! ## Cancel safety
//! Every future of this backend may be dropped at any await point without
//! leaving a lock behind: `acquire` and `try_acquire` arm a reaper before
//! their first write, which deletes (or retires) the entry from a background
//! task if the future is dropped before it returns a lease, retrying until
//! the store answers or the session ends; a dropped `release` leaves its
//! entry to the session (the caller still holds the lease and may release it
//! again); `extend`, `extend_many` and `inspect` write nothing. A lease is
//! only ever handed over by returning it, so no grant is stranded between
//! the store and a caller who left (`tests/edges.rs`,
//! `an_acquire_dropped_while_queued_leaves_no_entry`; conformance
//! `dropped_acquisition_leaves_the_key_free`).
//!
//! ## Leases: one session lease per TTL, renewed by keep-alives
//! Measured on one machine in one run (`examples/lease_model.rs`): a lease
//! per acquisition (grant + acquire txn + revoke) took p50 5.0–5.7 ms against
//! 3.1–3.6 ms for acquire txn + delete on a shared lease (a range get: 0.4 ms).
//! So entries are attached to a *session lease* shared by this backend's locks
//! of the same TTL ([`Expiry::Session`](leasehold_core::Expiry::Session)):
//! - The TTL asked for becomes the session lease's TTL, rounded **up** to whole
//!   seconds and to etcd's minimum (probed at connect, 2 s with etcd's default
//!   timings; see [`Capabilities`](leasehold_core::Capabilities) `min_ttl` and
//!   `ttl_granularity`). [`Lease::ttl`](leasehold_core::Lease::ttl) and
//!   `valid_until` report what etcd granted, never what was asked.
//! - `extend` is a keep-alive of the session plus a read confirming the entry;
//!   `extend_many` (the guard's watchdog) sends one keep-alive per session for
//!   all its locks and one read per 128 locks. etcd cannot change a lease's
//!   TTL, so extend renews for the session's TTL.
//! - Nothing renews in the background: keep-alives come from extends, from
//!   queued waiters (every third of the TTL) and from acquisitions. A session
//!   nobody renews within its TTL ends: etcd deletes all its entries, and
//!   every lease on it is told at once through its
//!   [`loss_signal`](leasehold_core::Lease::loss_signal).
//! - Each session writes one *session key* on its lease
//!   (`namespace + NUL + "session/" + lease id`) and watches it: when the
//!   lease is revoked or expires on the store's side, etcd deletes the key and
//!   the loss signal of every lease on the session fires within a round trip,
//!   not at the next keep-alive (`tests/edges.rs`,
//!   `revoking_the_session_lease_fires_the_loss_signal_without_waiting_for_a_keep_alive`;
//!   [`lease_id`] for tooling). One watch per session, never per lock.
//! - TTLs: zero and more than one year are `InvalidTtl`; a TTL below etcd's
//!   minimum is raised to it.
//! - The limit of sharing: a lock lives as long as its session. A holder that
//!   stops renewing one lock while the same backend keeps extending another
//!   lock of the same TTL keeps both; a killed or partitioned process loses
//!   all of them one TTL after its last keep-alive.
//!
//! ## Operations
//! - Every queue entry's value is the backend's holder label (the `holder`
//!   option, by default `"<host> pid <pid>"`): `inspect`, contention errors
//!   and listings show the head entry's label as
//!   [`LockInfo::metadata`](leasehold_core::LockInfo::metadata), with its
//!   create revision (the token), owner hint, the session lease's remaining
//!   TTL and the number of entries queued behind it as `waiters`. The owner
//!   token stays in the entry's name, as before; etcd keeps no time of
//!   creation, so `acquired_at` is unknown.
//! - `list` is a keys-only range read of at most `limit` queue entries under
//!   the namespace and the encoded prefix (the encoding is prefix free, so the
//!   prefix is a range), grouped by lock, then one txn per 64 locks reading
//!   each one's head and queue length. The cursor is the etcd key to go on
//!   from (hex), past the last lock's whole queue; retirement markers and
//!   session keys in the range only make a page shorter. Locks come in the
//!   order of their encoded names, not of the keys' bytes.
//! - `force_release` deletes the head entry in a txn that checks its create
//!   revision (an entry that still exists is still first) and writes its
//!   retirement marker, so a late copy of the txn that queued it cannot
//!   revive it. The next entry in the queue holds the lock at once (its
//!   watch fires) with its own, higher create revision; with nobody queued,
//!   the next acquisition writes a newer entry. The evicted holder's next
//!   extend finds its entry gone and is `Lost`, so its guard's `lost()`
//!   fires at its next renewal; the lease's loss signal (its session's) does
//!   not fire, as the session lives on for its other locks. Not possible:
//!   evicting a holder it did not read (if the head leaves by itself first,
//!   the call evicts nobody and says `None`), and knowing whether a force
//!   release whose answer was lost was applied (call `inspect` before
//!   another).
//!
//! ## Guarantees and limits
//! - Mutual exclusion holds while a holder acts before its lease's
//!   `valid_until` (from the *send* time of the last grant or keep-alive, minus
//!   drift). A holder paused past it may still act; fencing tokens stop its
//!   late writes.
//! - Every store call is bounded by the operation timeout (default 5 s): a
//!   dead or paused store gives [`LockError::Unavailable`](leasehold_core::LockError::Unavailable)
//!   in bounded time. A leader change surfaces as a few `Unavailable`s; etcd
//!   extends leases across elections, so none is lost early.
//! - Namespaces must not be prefixes of each other (`app/` and `app/x/`):
//!   they could then block each other, though never share a lock.
//!
//! ## TLS and authentication
//! `etcds://` connects with TLS (rustls with ring; the `tls` feature, which
//! leasehold's `etcd` feature turns on). Options, through the one URL grammar
//! or [`EtcdConfig::ca`] and [`EtcdConfig::client_cert`]:
//!
//! | option | meaning |
//! |---|---|
//! | `ca` | PEM file of the CA certificates to trust instead of the built-in web roots (Mozilla's) |
//! | `cert` | PEM file of the client certificate chain, for etcd's `--client-cert-auth` (mutual TLS); needs `key` |
//! | `key` | PEM file of that certificate's private key; needs `cert` |
//!
//! ```text
//! etcds://10.0.0.5:2379,10.0.0.6:2379?ca=/etc/etcd/ca.pem&cert=/etc/app/client.pem&key=/etc/app/client.key
//! etcds://app:secret@etcd.internal:2379?ca=/etc/etcd/ca.pem
//! ```
//!
//! The server's certificate must name the host as the URL writes it (an IP
//! address needs an IP SAN). TLS files with `etcd://` are a
//! [`LockError::Config`](leasehold_core::LockError::Config), never a
//! plaintext connection; a missing or unreadable file, or one without a PEM
//! block, is a `Config` error naming the option and its path (never the
//! contents), read at connect. User and password (`etcds://user:password@..`,
//! etcd's `auth enable`) work with TLS as without it; with mutual TLS and no
//! password, etcd takes the certificate's common name as the user. The
//! password is never in an error, a log line or `Debug`.
//! Tested against etcd 3.4 in a container with certificates made at test time
//! (`tests/tls.rs`; the conformance suite over mutual TLS is
//! `tests/conformance_tls.rs`).
//!
//! ## Building
//! `etcd-client` compiles etcd's protobufs at build time: it needs `protoc`
//! and the well-known protos, from Debian's `protobuf-compiler` and
//! `libprotobuf-dev` (the project's `scripts/setup.sh` installs both). TLS
//! (`etcds://`, `https://` endpoints) needs this crate's `tls` feature; without
//! it such a URL is a `Config` error naming the feature.
#![warn(missing_docs)]

mod admin;
mod backend;
mod config;
mod error;
mod keys;
mod queue;
mod reaper;
mod session;
mod shared;
mod store;
mod tls;

pub use backend::{EtcdBackend, WakeCounts, lease_id};
pub use config::{DEFAULT_NAMESPACE, EtcdConfig};

/// The backend's name in errors, spans and metrics.
pub(crate) const NAME: &str = "etcd";
