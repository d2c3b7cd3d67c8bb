//! # leasehold-zookeeper
//!
//! The ZooKeeper backend of leasehold: a FIFO lock queue per key made of
//! ephemeral sequential nodes, reader–writer locks and counting semaphores
//! on the same recipe, fencing tokens from zxids (the holder node's
//! `czxid`), and the ZooKeeper session as the lease's life.
//!
//! ```no_run
//! use leasehold_core::Locker;
//! use leasehold_zookeeper::ZkBackend;
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), leasehold_core::LockError> {
//! let backend = ZkBackend::connect("zk://127.0.0.1:2181/my-app?session_timeout=10s").await?;
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
//! ## Reader–writer locks and semaphores
//! [`LockKind::Read`](leasehold_core::LockKind::Read)/[`Write`](leasehold_core::LockKind::Write)
//! and [`LockKind::Permit`](leasehold_core::LockKind::Permit) (`shared.rs`):
//! - Each is a container node of its own, `{namespace}/{encoded key}.rw` or
//!   `….sem` (the key encoding never makes a `.`), holding ephemeral
//!   sequential nodes `{owner}-read-{seq}`, `{owner}-write-{seq}` or
//!   `{owner}-lease-{seq}` in the key's TTL-class session. The mutex, the
//!   reader–writer lock and the semaphore of one key are three independent
//!   locks; `inspect`, `list` and `force_release` see mutexes only.
//! - Curator's `InterProcessReadWriteLock` rules by sequence: a reader holds
//!   once no writer node ranks before it, a writer once no node does, a
//!   permit of `N` once fewer than `N` do (Curator's
//!   `InterProcessSemaphoreV2` without its leak: lease nodes are ephemeral,
//!   so a crashed session frees them). A waiting writer's node is its
//!   registration: later readers rank behind it (writer preference), and a
//!   single reader attempt while it waits is refused.
//! - A single attempt queues and deletes its node again unless it may hold
//!   (as `try_acquire`); a waiter that times out deletes its node, a dropped
//!   one has it removed by the reaper (which finds nodes of every kind by
//!   the owner token in their name), and the session takes it at the latest.
//! - Waiters list the parent's children with a watch and decide again when
//!   a child joins or leaves (or the re-check timer runs out).
//! - Fencing: a reader's or writer's token is its node's czxid (a writer's
//!   node is newer than every node granted before it, a reader's newer than
//!   every writer's granted before it). A permit's token is its czxid when
//!   the listing made with its create lets it hold, else the mzxid of a
//!   `setData` on its node once a later listing does: waiters can notice
//!   their turn out of order, the zxids of their grants cannot. All are
//!   zxids: strictly increasing and durable like the mutex's.
//!
//! ## Fencing
//! The fencing token is the holder node's `czxid`, the ZooKeeper transaction id
//! of its creation: ensemble-wide, strictly increasing, persisted in the
//! transaction log, so tokens keep increasing across releases, crashes, session
//! expiry, container removal and server restarts ([`Fencing::Strict`],
//! durable). A later holder always queued later, so its czxid is larger.
//!
//! ## Expiry, TTL and loss
//! Expiry is the session ([`Expiry::Session`]), and the TTL picks the
//! session: the backend keeps one session per *TTL class*, made on first use
//! and shared by every lease of that class, kept alive by the client's pings.
//! A class is the TTL rounded up to whole seconds, raised to the server's
//! minimum session timeout and capped at its maximum (`minSessionTimeout`
//! and `maxSessionTimeout`, 2 × and 20 × tickTime by default: 4 s to 40 s
//! with tickTime 2 s), so a backend has at most one session per second in
//! that range. A crashed or partitioned holder keeps its lock until the
//! server expires its session: within its TTL, plus the slack below, after
//! the server last heard from it (measured, `tests/edges.rs`: TTL 2 s, taken
//! over 2.6 s after the holder's link was cut, where one 10 s session per
//! backend freed it after 10 s). The slack: the rounding up to whole seconds,
//! up to one tickTime (the server expires sessions in tick-sized buckets),
//! and the waiter's own wake-up.
//!
//! What remains of ZooKeeper's bounds, decided and documented:
//! - A TTL below the server's minimum session timeout is *raised* to it (as
//!   etcd raises TTLs below its minimum): the lease's `ttl()` says so, and
//!   [`Capabilities::min_ttl`](leasehold_core::Capabilities::min_ttl) is that
//!   minimum, probed at connect by asking for a 250 ms session (if the probe
//!   gets no answer, 4 s, ZooKeeper's default, is assumed).
//! - A TTL above the server's maximum gets the maximum: the key frees sooner
//!   after a crash, and the lease's validity is capped at it (below).
//! - Zero, and more than one year, are `InvalidTtl`.
//! - [`ZkBackend::from_client`] has its caller's one session for every TTL.
//! - [`ZkConfig::session_timeout`] is now only the session of calls that
//!   hold no lock (`inspect`, [`ZkBackend::client`]).
//!
//! The TTL sets the lease's *validity* on the holder's clock: `min(ttl,
//! session timeout)` from when the acquiring (or extending) request was
//! sent, less drift. It is capped at the session timeout because after
//! that long without a successful round trip the server may already have
//! expired the session and handed the lock on. `extend` checks that our node
//! still exists and belongs to our session (one round trip; `extend_many`
//! renews all of a session's leases in one multi-read) and renews validity.
//! A TTL does not make a lock free sooner while its holder lives: a holder
//! that stops extending but keeps its process (and session) alive keeps the
//! lock until release.
//!
//! Connection trouble is reported, not hidden: a disconnect (Curator's
//! SUSPENDED) is logged, extends fail with `Unavailable`, and the guard counts
//! the lease lost once its validity passes without a successful extend. A
//! reconnect within the session keeps the lease. Session expiry (LOST) cancels
//! every lease's [`Lease::loss_signal`] at once; the next call opens a new
//! session (unless the backend was built [`ZkBackend::from_client`]).
//!
//! ## Cancel safety
//! Every future of this backend may be dropped at any await point without
//! leaving a contender behind: `acquire` and `try_acquire` arm a cleanup
//! before their create is sent, which, if the future is dropped before it
//! returns a lease, lists the key's children and deletes every node carrying
//! the acquisition's owner token from a background task, retrying (50 ms
//! doubling to 5 s) until that works or the session ends (it once gave up
//! at the first error or after 30 s, leaving an orphan that blocked the key
//! for the session's life). A `release` whose answer does not come is
//! finished the same way; dropped, it leaves the node to the lease, which can
//! be released again. `extend`, `extend_many` and `inspect` write nothing
//! (`tests/edges.rs`: `an_acquire_dropped_while_queued_leaves_no_contender_node`,
//! `an_abandoned_contender_is_removed_even_when_the_first_delete_is_lost`).
//! [`session_of`] and [`node_path`] expose a lease's session and node for
//! tooling and tests (the conformance suite's session ender).
//!
//! ## Operations
//! - Every contender node's data is the backend's holder label (the `holder`
//!   option, by default `"<host> pid <pid>"`): `inspect`, contention errors
//!   and listings show the head's label as
//!   [`LockInfo::metadata`](leasehold_core::LockInfo::metadata), with its
//!   czxid (the token), owner hint, `ctime` (the server's clock) as
//!   `acquired_at`, and the contenders behind it as `waiters`. The remaining
//!   validity is the holder's session's, which only the holder knows.
//! - `list` lists the namespace's key nodes, decodes their names (keys are
//!   escaped, never hashed, so every name gives its key back), keeps those
//!   under the prefix and after the cursor (the last key of the previous page)
//!   in key order, `limit` of them, and reads their queues and then their
//!   heads in one multi-read each. ZooKeeper cannot page a node's children:
//!   the namespace's listing is one answer, bounded by the server's
//!   `jute.maxbuffer` (1 MB by default, some 10,000 keys of 100 bytes); past
//!   that, split locks over several namespaces.
//! - `force_release` deletes the head contender, checked against the version
//!   read with it, from a session of its own (any session whose identity
//!   the key node's ACL admits may delete another's ephemeral node: with
//!   digest credentials, the same user and password; see below). The next contender's watch fires and it holds
//!   the lock with its own, higher czxid; with nobody queued, the next
//!   acquisition's node has a newer one. The evicted holder's next extend
//!   finds its node gone and is `Lost`, so its guard's `lost()` fires at its
//!   next renewal; the lease's loss signal (its session's) does not fire, as
//!   the session lives on for its other locks and the backend watches
//!   sessions, not its own nodes. If the head leaves by itself before the
//!   delete, the call evicts nobody and says `None`.
//!
//! ## Authentication and ACLs
//! `zk://user:password@h1:p1,h2:p2/namespace` (or [`ZkConfig::digest_auth`])
//! authenticates every session of the backend with ZooKeeper's `digest`
//! scheme, and every node the backend creates (the namespace path, the key
//! nodes, the contender nodes) gets the ACL *creator: all, world: read*
//! (ZooKeeper's `CREATOR_ALL_ACL` plus `READ_ACL_UNSAFE`). ZooKeeper checks a
//! delete against the parent's ACL, so only sessions authenticated as the
//! same user with the same password can delete a holder's node or queue
//! under the key; any other client of the ensemble (unauthenticated, another
//! user, a wrong password) gets `NoAuth`, while tools can still read and list
//! (`tests/acl.rs`).
//!
//! | part | meaning |
//! |---|---|
//! | `user:password@` | digest identity of every session (percent-encode `/`, `?`, `%`); nodes are creator-only |
//! | no user information | nodes open to all (`OPEN_ACL_UNSAFE`), as before |
//!
//! - All processes of one application use the same identity: they contend
//!   with each other as before. A second application with another identity
//!   needs its own namespace (it cannot create key nodes under a namespace
//!   node the first one created).
//! - `force_release` (and `leasehold release --force`) needs the same
//!   identity as the holders (the application's user and password), or a
//!   ZooKeeper super user (`zookeeper.DigestAuthenticationProvider.superDigest`,
//!   which bypasses ACLs; not exercised by the tests here);
//!   with another identity it fails with a `Backend` error saying `NoAuth`
//!   and evicts nobody.
//! - The ACL is set when a node is created. Nodes made earlier without
//!   credentials stay open: a key node goes once its queue is empty (it is a
//!   container), but a namespace node made open stays open; a namespace node
//!   made by an authenticated backend refuses backends without credentials
//!   (`NoAuth`).
//! - [`ZkBackend::from_client`] uses the caller's client as it is: set its
//!   authentication yourself ([`Connector::with_auth`](zookeeper_client::Connector::with_auth))
//!   when the config carries credentials.
//! - The password is a [`Secret`](leasehold_core::config::Secret): `Debug`
//!   prints `***`, and no error or log line contains it.
//! - Over mutual TLS ZooKeeper also authenticates every session as its
//!   client certificate (the `x509` scheme, identity the certificate's
//!   subject), and the creator ACL admits every identity of the creating
//!   session: a lock node then also belongs to whoever presents the same
//!   certificate, credentials or not (`tests/tls.rs` reads the ACL: the
//!   digest user and the `x509` identity). Give applications that must not
//!   delete each other's nodes their own certificates as well as their own
//!   digest identities.
//!
//! ## TLS
//! `zks://` connects with TLS (this crate's `tls` feature, leasehold's
//! `zookeeper-tls`; rustls, no OpenSSL) to ZooKeeper's TLS client port
//! (`secureClientPort`, served by `NettyServerCnxnFactory`), with options
//! (or [`ZkConfig::ca`] and [`ZkConfig::client_cert`]):
//!
//! | option | meaning |
//! |---|---|
//! | `ca` | PEM file of the CA certificates to trust; required (`zookeeper-client` has no built-in roots, and ensembles run on private CAs) |
//! | `cert` | PEM file of the client certificate chain, for `ssl.clientAuth=need` (mutual TLS); needs `key` |
//! | `key` | PEM file of that certificate's private key; needs `cert` |
//!
//! ```text
//! zks://zk1.internal:2281,zk2.internal:2281/apps/billing?ca=/etc/zk/ca.pem&cert=/etc/app/client.pem&key=/etc/app/client.key
//! zks://app:secret@10.0.0.5:2281?ca=/etc/zk/ca.pem
//! ```
//!
//! Each host is checked against the server's certificate (a name needs a
//! DNS SAN, an address an IP SAN); a host that cannot be one (`tcp://…`, a
//! name with a space) is a `Config` error before anything is dialled. Files
//! are read at connect: a missing or unreadable one, one without a PEM block,
//! `zks://` without `ca`, TLS files with `zk://` and `zks://` in a build
//! without the feature are `Config` errors naming the option (and path),
//! never the files' contents. A refused handshake (another CA, a certificate
//! for another name, a server that requires a client certificate) looks to
//! the client like a server that never answers: `Unavailable` after the
//! `timeout`, its message pointing at those causes. Digest authentication and
//! the creator-only ACLs work over TLS as without it (`tests/tls.rs`; the
//! conformance suite over mutual TLS is `tests/conformance_tls.rs`).
//!
//! **Crypto provider.** `zookeeper-client`'s TLS turns on rustls's default
//! `aws-lc-rs` provider (built from C with `cc`; no cmake) next to the
//! `ring` one the other backends use; with two compiled in, rustls has no
//! process default. So before it builds a TLS client this crate installs
//! rustls's `ring` provider as the process default when none is installed
//! ([`leasehold_core::tls::install_default_crypto_provider`], which the Redis
//! backend calls too). If your application installs its own provider first,
//! leasehold uses yours.

//! ## Limits
//! - Every store call is bounded by the `timeout` option; a paused
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

mod admin;
mod backend;
mod config;
mod error;
mod path;
mod queue;
mod reaper;
mod shared;
mod store;
mod tls;

pub use backend::{WakeCounts, ZkBackend};
pub use config::ZkConfig;
pub use zookeeper_client;

/// The backend's name in errors, spans and metrics.
pub const NAME: &str = "zookeeper";

/// The ZooKeeper session that carries `lease` (its id and password), or
/// `None` for a lease this backend did not make. For tooling and tests: a
/// client that connects with this session
/// ([`Connector::with_session`](zookeeper_client::Connector::with_session))
/// and then closes it ends the session on the server at once, which deletes
/// the lease's node and fires the loss signal of every lease in that session
/// (all of the backend's leases of the same TTL class). Treat it as the
/// secret it is: it lets its bearer act as the holder.
pub fn session_of(lease: &leasehold_core::Lease) -> Option<zookeeper_client::SessionInfo> {
    lease
        .handle::<backend::Held>()
        .map(|held| held.session.client.session().clone())
}

/// The path of `lease`'s contender node (the holder's node while the lease
/// is held), or `None` for a lease this backend did not make. For tooling and
/// tests.
pub fn node_path(lease: &leasehold_core::Lease) -> Option<&str> {
    lease
        .handle::<backend::Held>()
        .map(|held| held.path.as_str())
}

/// The key a key node's name (its last path segment) stands for, or `None`
/// if this backend did not make that name. For tooling that walks the tree.
///
/// ```
/// assert_eq!(leasehold_zookeeper::decode_segment("a%2Fb%20c").as_deref(), Some("a/b c"));
/// ```
pub fn decode_segment(segment: &str) -> Option<String> {
    path::decode_key(segment)
}
