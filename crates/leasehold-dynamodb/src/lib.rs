//! # leasehold-dynamodb
//!
//! A [`LockBackend`](leasehold_core::LockBackend) on Amazon DynamoDB:
//! mutexes, fenced reader–writer locks and counting semaphores, one item per
//! lock, and every acquisition, extension and release a single conditional
//! `UpdateItem`.
//!
//! ```no_run
//! use leasehold_core::Locker;
//! use leasehold_dynamodb::DynamoDbBackend;
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), leasehold_core::LockError> {
//! // Region and credentials from the AWS configuration chain; create the
//! // table (on-demand billing) if it does not exist yet.
//! let backend = DynamoDbBackend::connect("dynamodb://locks?create_table=true").await?;
//! let locker = Locker::new(backend);
//! let guard = locker.lock("reports:daily").await?;
//! println!("fencing token {}", guard.fencing_token());
//! guard.release().await?;
//! # Ok(()) }
//! ```
//!
//! ## The item
//! The partition key (attribute `pk`, a string; another name with
//! [`DynamoDbConfig::partition_key`]) is `namespace#key`: the namespace may
//! not contain `#`, so any legal key maps to its own item. Other attributes:
//! `owner` (the holder's owner token), `lease_ms` (its lease duration),
//! `rvn` (record version number: 128 random bits, new on every write),
//! `fence` (the fencing counter) and `holder` (the shared `holder` option,
//! default `"<host> pid <pid>"`: shown by `inspect` and `list`, never
//! trusted). Release removes `owner`, `lease_ms`, `holder` and
//! `acquired_ms` but keeps the item, so `fence` never resets: fencing is
//! `Strict`, and durable as DynamoDB's data is.
//!
//! `acquired_ms` holds when the holder took the key by *its own* wall clock
//! (DynamoDB has no clock to ask): shown as `acquired_at`, never used.
//!
//! ## Operations
//! - `list`: the table's only key is the partition key, so a prefix cannot
//!   be queried: a listing is a strongly consistent `Scan`, one page per
//!   call (`Limit` = the page size, counted in items *read*, so pages may be
//!   short or empty), filtered to the namespace's held items under the
//!   prefix; the cursor is the partition key the page stopped after. Its
//!   cost grows with the whole table (free keys and other namespaces
//!   included). Each lock is shown with its token, owner hint, `holder`
//!   label, `acquired_at` and the time left as this backend estimates it.
//!   An item counts as expired, and is hidden, only once this backend has
//!   seen its record version unchanged for a whole lease (the listing is
//!   such an observation, as a waiter's attempt is): a dead holder's key is
//!   shown by a process's first listing, and hidden by one a lease
//!   duration later. An unreadable item is skipped with a warning.
//! - `force_release`: one conditional `UpdateItem` (on the item being held)
//!   that removes the holder, bumps `fence` and writes a new RVN, returning
//!   the old item (`ALL_OLD`): the holder's next `extend` is `Lost` (its
//!   guard learns it at that renewal) and the next grant's token is two
//!   above the evicted one. No waiter is woken (DynamoDB signals nothing;
//!   waiters poll). The reason is only logged (at `DEBUG`). A call that
//!   timed out may or may not have evicted: inspect before retrying, since a
//!   retry evicts whoever holds the key then.
//!
//! ## Expiry without trusting clocks
//! No client's wall clock decides anything. A client that finds a key held
//! remembers the item's RVN and the instant it saw it on its own monotonic
//! clock ([`Clock`](leasehold_core::Clock)); only when it sees the *same*
//! RVN again a whole lease duration later does it take the lock over, with a
//! write conditional on that RVN being unchanged. A live holder's `extend`
//! rewrites the RVN, so it is never taken over, however wrong anyone's wall
//! clock is. The trade-offs:
//! - a dead holder's lock frees one lease duration after a waiter first sees
//!   it, not when the holder's lease would have ended;
//! - `try_acquire` on a dead holder's key keeps returning `Contended` until
//!   this backend's observation of it is one lease duration old (the
//!   observations live in the backend, bounded in number, so use one backend
//!   per process rather than one per call);
//! - a holder paused longer than its lease may be taken over and then wake
//!   up believing it holds the lock until it checks `valid_until` or its
//!   next `extend` says `Lost`: fencing tokens stop its late writes.
//!
//! ## Reader–writer locks and semaphores
//! [`Capabilities`](leasehold_core::Capabilities) says yes (`rw_locks`,
//! `semaphores`). Each lock is one more item, apart from the mutex item of
//! the same key (its partition key starts with a control character, so
//! `inspect`, `list` and `force_release`, which see mutexes only, never meet
//! it): a reader–writer lock's item has a `readers` map (owner token →
//! entry), a `writer` entry and a `waiting` map of waiting writers; a
//! semaphore's a `holders` map; both a `fence` counter that every grant
//! bumps, so a writer's token exceeds every earlier grant's, a reader's every
//! earlier writer's, and permits strictly increase. An entry holds its lease
//! and its own version, rewritten by each renewal.
//!
//! Every grant is one conditional `UpdateItem` whose condition is the
//! admission rule alone: a reader while no `writer` exists and `waiting` is
//! empty; a writer while no `writer` exists and `readers` is empty; a permit
//! while `size(holders)` is below the permits asked for. Renewals and
//! releases change only their own entry, conditioned on it being theirs.
//! So grants never lose a race to an unrelated write, and a refusal is real:
//! the refused attempt gets the item back, judges each entry as the mutex's
//! holder is judged (expired only once this client has seen its version
//! unchanged for its whole lease), removes the expired ones in one write
//! conditioned on their versions, and asks again; with nothing expired it is
//! `Contended`, and a waiting call polls (pauses capped at a third of the
//! TTL and the `poll` option).
//!
//! A waiting writer is not starved by a stream of readers: `acquire_kind`
//! for a writer writes a registration into `waiting` before its first
//! attempt (rewritten every third of its TTL while it waits), which refuses
//! new readers; the grant removes it, and a wait that ends without one
//! withdraws it (a dropped call on a spawned task); one a crashed waiter
//! left is judged expired like a dead holder. A writer taken with
//! `try_acquire_kind` does not register, and may go ahead of waiting writers
//! (they block readers, not writers). A grant whose answer timed out is
//! given back in the background, as a mutex's is.
//!
//! ## Cancellation
//! Every operation may be dropped at any await point. `try_acquire` (and so
//! `acquire` and `Locker::lock`) runs each attempt on its own task through
//! [`cancel_safe`](leasehold_core::cancel_safe): a lease granted after the caller stopped waiting is
//! released at once, never left to block the key until it expires. A
//! dropped `extend` may still renew our own lease; a dropped `release` may
//! or may not have deleted it (release again, or let it expire).
//!
//! ## Limits
//! Every call is bounded by the operation timeout (default 5 s; SDK retries
//! are off): a paused or unreachable endpoint yields `Unavailable`, and the
//! backend recovers when it returns. Throttling and transient service faults
//! are retryable `Backend` errors. A call that timed out may still have been
//! applied by the store (a request stuck in a paused server's socket is
//! processed when it resumes): an acquisition whose answer timed out is
//! given back in the background (a compare-and-release by its owner token,
//! retried with backoff for up to one lease duration); one that failed to
//! reach the endpoint at all is not chased. A store that loses its data (an
//! in-memory stand-in restarted) loses the table and the counters with it:
//! configure it with `durable=false` so the capability says fencing is not
//! durable.
//!
//! ## Configuration
//! [`DynamoDbBackend::connect`] takes a `dynamodb://` URL (options in
//! [`DynamoDbConfig::from_url`]); [`DynamoDbBackend::connect_with`] a
//! [`DynamoDbConfig`] built in code; [`DynamoDbBackend::connect_with_client`]
//! wraps an SDK client you already have.
//!
//! ## TLS
//! Endpoints are reached over HTTPS with rustls (on `ring`; no OpenSSL),
//! trusting the system's root certificates. A private endpoint (a VPC
//! endpoint behind a corporate proxy, an on-premises DynamoDB-compatible
//! store) whose certificate a private CA signed needs option `ca=<path>`
//! ([`DynamoDbConfig::ca`]): a PEM bundle of CA certificates trusted
//! besides the system's roots, for the DynamoDB calls and the AWS
//! configuration chain's own. The file is read and checked when the URL is
//! parsed: missing, unreadable, or without a usable certificate, it is a
//! `LockError::Config` naming the option and the path; so is `ca` with a
//! plain `http://` endpoint, and with a client given to
//! [`DynamoDbBackend::connect_with_client`] that brings its own HTTP client
//! (give that client the CA instead). An endpoint whose certificate no
//! trusted CA signed, or that names another host, refuses the handshake:
//! `LockError::Unavailable`.
//!
//! ## Layout
//! `config.rs` ([`DynamoDbConfig`]), `backend.rs` (the thin
//! [`LockBackend`](leasehold_core::LockBackend) impl), `lease.rs` (the
//! conditional-update algorithm and RVN observation; `lease/admin.rs` the
//! listing and the forced release; `lease/shared.rs` the reader–writer
//! locks and semaphores), `item.rs` (the mutex item's
//! attributes), `store.rs` (the SDK client, the table), `error.rs` (SDK
//! errors to [`LockError`](leasehold_core::LockError)).
#![warn(missing_docs)]

mod backend;
mod config;
mod error;
mod item;
mod lease;
mod store;

pub use backend::DynamoDbBackend;
pub use config::{
    DEFAULT_NAMESPACE, DEFAULT_OBSERVATION_CAPACITY, DEFAULT_OPERATION_TIMEOUT,
    DEFAULT_PARTITION_KEY, DynamoDbConfig, MAX_NAMESPACE_BYTES,
};
pub use leasehold_core::config::BackendConfig;
