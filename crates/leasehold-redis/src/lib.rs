//! # leasehold-redis
//!
//! A single-instance Redis backend for [leasehold](leasehold_core): leases are
//! Redis keys with a `PX` TTL, taken and given back by Lua scripts.
//!
//! - **acquire**: one script does `SET lock owner NX PX ttl` and, only if that
//!   succeeded, `INCR` of the key's fencing counter; the counter key is never
//!   deleted, so fencing tokens strictly increase across releases and
//!   expiries. A held key answers with the holder's remaining TTL, fencing
//!   token and owner prefix ([`LockError::Contended`] carries them).
//! - **release**: compare-and-delete plus `PUBLISH` on the namespace's release
//!   channel, one script; **extend**: compare-and-`PEXPIRE`; the guard's
//!   watchdog renews many leases with one script call.
//! - **waiting**: one shared pub/sub connection wakes waiters when a key is
//!   released; polling with backoff stays the fallback, so a lost
//!   notification costs latency, never a hang.
//!
//! ```no_run
//! use leasehold_core::Locker;
//! use leasehold_redis::RedisBackend;
//! use std::time::Duration;
//! # #[tokio::main] async fn main() -> Result<(), leasehold_core::LockError> {
//! let backend = RedisBackend::builder()
//!     .namespace("billing")
//!     .timeout(Duration::from_secs(1))
//!     .connect("redis://:secret@127.0.0.1:6379/0")
//!     .await?;
//! let locker = Locker::new(backend);
//! let guard = locker.lock("invoice:2024-17").await?;
//! // Pass guard.fencing_token() to the resource; it rejects lower tokens.
//! guard.release().await?;
//! # Ok(()) }
//! ```
//!
//! ## Guarantees and their limits
//! - Mutual exclusion holds while the one Redis server keeps its data and the
//!   holder acts before [`Lease::valid_until`], which counts from the instant
//!   the script was sent, minus the drift allowance. A holder paused past it
//!   may still act; its late writes are stopped only by fencing tokens.
//! - Fencing tokens are `Strict` while the server keeps its data. They survive
//!   a restart only with AOF fsynced on every write (`appendonly yes`,
//!   `appendfsync always`): the backend checks that with `CONFIG GET` at
//!   connect and reports it as [`Capabilities::durable_fencing`] (a server that
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
//!   paused server is [`LockError::Unavailable`] within it. An acquire whose
//!   answer timed out may still have taken the key; the backend then releases
//!   it in the background, best effort, else it frees itself after its TTL.
//! - Cancellation: every operation may be dropped at any await point.
//!   `try_acquire` (and so `acquire` and `Locker::lock`) runs each attempt
//!   on its own task: a lease granted after the caller stopped waiting, or
//!   granted and never read, is released at once instead of blocking the key
//!   until its TTL. A dropped `extend` may still renew our own key; a
//!   dropped `release` may or may not have deleted it (release again, or let
//!   it expire).
//! - Keys: every legal [`Key`] works and two keys never share a lock (see
//!   [`KeyLayout`]). Both Redis keys of a lock share a cluster hash slot.
//! - Not provided here: Sentinel and Cluster connections, and fair (FIFO)
//!   hand-off.
#![warn(missing_docs)]

mod keys;
mod node;
mod notify;
pub mod scripts;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use leasehold_core::config;
use leasehold_core::{
    Capabilities, Drift, Fairness, Fencing, Key, Lease, LockBackend, LockError, LockInfo,
    OwnerToken, ReleaseListener, SharedClock, Waiting, cancel_safe, system_clock,
};

pub use keys::KeyLayout;
pub use node::{
    AcquireOutcome, MAX_TTL_MS, Ownership, Persistence, RedisNode, SafetyFinding, map_error,
    ttl_millis,
};

/// The backend's name in errors, spans and metrics.
pub const NAME: &str = "redis";

/// The default per-call timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// The default namespace.
pub const DEFAULT_NAMESPACE: &str = "leasehold";

/// The URL options `redis://` and `rediss://` know (see
/// [`RedisBuilder::connect`]); `protocol` is handed to the Redis client.
pub const OPTIONS: &[&str] = &[
    "namespace",
    "timeout",
    "drift_factor",
    "drift_fixed",
    "notifications",
    "protocol",
];

/// The URL options `redis+unix://` knows: [`OPTIONS`] and the client's
/// `db`, `user` and `pass`.
pub const UNIX_OPTIONS: &[&str] = &[
    "namespace",
    "timeout",
    "drift_factor",
    "drift_fixed",
    "notifications",
    "protocol",
    "db",
    "user",
    "pass",
];

/// `url` for errors: [`config::redact_url`], and the value of a unix
/// socket URL's `pass` option hidden too.
fn redact(url: &str) -> String {
    let shown = config::redact_url(url);
    match shown.split_once('?') {
        Some((base, query)) => {
            let pairs: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((name, _)) if name.eq_ignore_ascii_case("pass") => format!("{name}=***"),
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{base}?{}", pairs.join("&"))
        }
        None => shown,
    }
}

/// Options for a [`RedisBackend`]; made by [`RedisBackend::builder`].
#[derive(Debug, Clone)]
pub struct RedisBuilder {
    namespace: String,
    timeout: Duration,
    drift: Drift,
    clock: SharedClock,
    notifications: bool,
}

impl Default for RedisBuilder {
    fn default() -> Self {
        RedisBuilder {
            namespace: DEFAULT_NAMESPACE.to_owned(),
            timeout: DEFAULT_TIMEOUT,
            drift: Drift::default(),
            clock: system_clock(),
            notifications: true,
        }
    }
}

impl RedisBuilder {
    /// The prefix that keeps one application's locks apart from another's on
    /// a shared server (default `"leasehold"`).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// The per-call timeout (default 2 s): connect, each script call, each
    /// pub/sub step. A server that does not answer within it is
    /// [`LockError::Unavailable`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The clock drift allowance subtracted from every lease's validity.
    pub fn drift(mut self, drift: Drift) -> Self {
        self.drift = drift;
        self
    }

    /// The monotonic clock leases are measured on (inject pauses in tests).
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// Whether waiters are woken by pub/sub release messages (default on);
    /// off, they only poll and no pub/sub connection is made.
    pub fn notifications(mut self, enabled: bool) -> Self {
        self.notifications = enabled;
        self
    }

    /// Connects by URL: `redis://[user][:password@]host[:port][/db][?options]`,
    /// `rediss://` for TLS (`#insecure` accepts any certificate), or
    /// `redis+unix:///path/to/socket?db=1`.
    ///
    /// Options ([`OPTIONS`]; a value in the URL overrides the builder's):
    /// `namespace`, `timeout` (a duration such as `2s` or `500ms`: a bare
    /// number is an error, see [`config::duration`]), `drift_factor`,
    /// `drift_fixed`, `notifications` (`true`/`false`), and `protocol`
    /// (`resp2`/`resp3`, for the Redis client); for `redis+unix://` also the
    /// client's `db`, `user` and `pass`. An unknown option is a
    /// [`LockError::Config`] naming the closest known one: a typo never
    /// falls back to a default (`?namspace=billing` would share the default
    /// namespace with every other application). Errors never show the
    /// password, even for a malformed URL.
    /// Cancel safe: a dropped connect takes no lock and leaves nothing behind.
    pub async fn connect(self, url: &str) -> Result<RedisBackend, LockError> {
        let (builder, client_url) = self.apply_url(url)?;
        let client = redis::Client::open(client_url.as_str())
            .map_err(|e| LockError::Config(format!("redis url {:?}: {e}", redact(url))))?;
        builder.connect_client(client).await
    }

    /// Takes this backend's options out of `url`'s query; returns the URL
    /// the Redis client is given (the client's own options kept).
    fn apply_url(mut self, url: &str) -> Result<(Self, String), LockError> {
        let (rest, fragment) = match url.split_once('#') {
            Some((rest, fragment)) => (rest, Some(fragment)),
            None => (url, None),
        };
        let (base, query) = rest.split_once('?').unwrap_or((rest, ""));
        let scheme = base.split_once(':').map_or("redis", |(scheme, _)| scheme);
        let unix = matches!(scheme, "redis+unix" | "unix" | "valkey+unix");
        let known: &[&str] = if unix { UNIX_OPTIONS } else { OPTIONS };
        let mut passed = Vec::new();
        for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
            match name.as_ref() {
                "namespace" => self.namespace = value.into_owned(),
                "timeout" => self.timeout = config::duration(&name, &value)?,
                "drift_factor" => {
                    let factor: f64 = value.parse().map_err(|_| {
                        config::invalid(&name, &value, "expected a number like 0.01")
                    })?;
                    if !(0.0..1.0).contains(&factor) {
                        return Err(config::invalid(&name, &value, "must be in [0, 1)"));
                    }
                    self.drift.factor = factor;
                }
                "drift_fixed" => self.drift.fixed = config::duration(&name, &value)?,
                "notifications" => self.notifications = config::boolean(&name, &value)?,
                "protocol" => passed.push((name, value)),
                "db" | "user" | "pass" if unix => passed.push((name, value)),
                other => {
                    let scheme = if unix { "redis+unix" } else { scheme };
                    return Err(config::unknown_option(scheme, other, known));
                }
            }
        }
        let mut client_url = base.to_owned();
        if !passed.is_empty() {
            client_url.push('?');
            client_url.push_str(
                &url::form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(passed)
                    .finish(),
            );
        }
        if let Some(fragment) = fragment {
            client_url.push('#');
            client_url.push_str(fragment);
        }
        Ok((self, client_url))
    }

    /// Connects with an existing client (its connection info, credentials,
    /// database and TLS settings are used as they are).
    /// Cancel safe: a dropped connect takes no lock and leaves nothing behind.
    pub async fn connect_client(self, client: redis::Client) -> Result<RedisBackend, LockError> {
        if self.timeout.is_zero() || self.timeout > config::MAX_DURATION {
            return Err(LockError::Config(
                "redis timeout must be above zero and at most one year".into(),
            ));
        }
        let layout = KeyLayout::new(&self.namespace)?;
        let node = RedisNode::connect(client.clone(), layout.clone(), self.timeout).await?;
        let persistence = node.persistence().await;
        report_findings(&persistence, &client);
        let notifier = self
            .notifications
            .then(|| notify::Notifier::new(client, layout.channel(), self.timeout));
        Ok(RedisBackend {
            node,
            notifier: notifier.map(Arc::new),
            clock: self.clock,
            drift: self.drift,
            persistence,
        })
    }
}

/// Logs each safety finding of a server at connect: `warn!` for a setting
/// that breaks a guarantee, `info!` for one that could not be checked.
fn report_findings(persistence: &Persistence, client: &redis::Client) {
    let server = client.get_connection_info().addr().to_string();
    for finding in persistence.safety_findings() {
        match finding {
            SafetyFinding::Unverified => tracing::info!(%server, "{finding}"),
            _ => tracing::warn!(%server, "{finding}"),
        }
    }
}

/// Locks on one Redis server (see the [crate docs](crate) for the
/// mechanism and its guarantees). Cheap to clone; clones share connections.
#[derive(Debug, Clone)]
pub struct RedisBackend {
    node: RedisNode,
    notifier: Option<Arc<notify::Notifier>>,
    clock: SharedClock,
    drift: Drift,
    persistence: Persistence,
}

impl RedisBackend {
    /// Options, starting from the defaults.
    pub fn builder() -> RedisBuilder {
        RedisBuilder::default()
    }

    /// Connects by URL with default options.
    /// Cancel safe: a dropped connect takes no lock and leaves nothing behind.
    pub async fn connect(url: &str) -> Result<Self, LockError> {
        Self::builder().connect(url).await
    }

    /// Connects with an existing client and default options.
    /// Cancel safe: a dropped connect takes no lock and leaves nothing behind.
    pub async fn from_client(client: redis::Client) -> Result<Self, LockError> {
        Self::builder().connect_client(client).await
    }

    /// The server node (scripts, raw calls, the connection).
    pub fn node(&self) -> &RedisNode {
        &self.node
    }

    /// What `CONFIG GET` said about persistence and eviction at connect.
    pub fn persistence(&self) -> &Persistence {
        &self.persistence
    }

    /// The server's `maxmemory-policy` at connect (`None`: `CONFIG GET` was
    /// refused). Only `noeviction` is safe for locks.
    pub fn eviction_policy(&self) -> Option<&str> {
        self.persistence.maxmemory_policy.as_deref()
    }

    /// What was found at connect that breaks a guarantee (each was logged
    /// with `tracing::warn!` then): an eviction policy other than
    /// `noeviction`, or a configuration that could not be read. Empty:
    /// nothing found. The policy can change at run time (`CONFIG SET`):
    /// [`RedisBackend::check_safety`] asks again.
    pub fn safety_findings(&self) -> Vec<SafetyFinding> {
        self.persistence.safety_findings()
    }

    /// Asks the server again (`CONFIG GET`, bounded by the per-call timeout)
    /// and returns what breaks a guarantee now, for health checks. Logs
    /// nothing; the capabilities keep what was found at connect. Read-only;
    /// cancel safe.
    pub async fn check_safety(&self) -> Vec<SafetyFinding> {
        self.node.persistence().await.safety_findings()
    }

    /// Starts the release subscription now and waits until it is up (at most
    /// the per-call timeout). Optional: the first waiter starts it anyway, and
    /// waiters poll until it is up. Cancel safe: dropped, the subscription
    /// goes on being set up in the background.
    pub async fn subscribe_releases(&self) -> Result<(), LockError> {
        match &self.notifier {
            Some(notifier) => notifier.ready(NAME).await,
            None => Err(LockError::Config(
                "release notifications are off for this backend".into(),
            )),
        }
    }

    /// How many times the release subscription has been (re)established
    /// (0: not yet, or notifications are off). For tooling and tests.
    pub fn release_subscriptions(&self) -> u64 {
        self.notifier.as_ref().map_or(0, |n| n.subscriptions())
    }

    fn lease(
        &self,
        key: &Key,
        owner: OwnerToken,
        token: leasehold_core::FencingToken,
        sent_at: tokio::time::Instant,
        ttl: Duration,
    ) -> Lease {
        Lease::new(NAME, key.clone(), owner, token, sent_at, ttl, self.drift)
    }
}

#[async_trait]
impl LockBackend for RedisBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        let waiting = if self.notifier.is_some() {
            Waiting::Notified
        } else {
            Waiting::Polled
        };
        Capabilities::new()
            .fencing(Fencing::Strict)
            .durable_fencing(self.persistence.durable_fencing())
            .waiting(waiting)
            .fairness(Fairness::None)
            .min_ttl(Duration::from_millis(1))
            .ttl_granularity(Duration::from_millis(1))
            .holder_info(true)
            .atomic_multi_key(false)
            .batch_extend(true)
    }

    /// One attempt, run to its end on its own task ([`cancel_safe`]): a
    /// caller that stops waiting (a dropped `lock()`, a `select!`, a
    /// timeout) leaves no key held, because a grant that arrives after it
    /// left is released at once. An attempt whose answer timed out sends a
    /// compare-and-delete on the same connection, so a frozen server that
    /// runs the queued acquire when it wakes deletes the key right after.
    async fn try_acquire(&self, key: &Key, ttl: Duration) -> Result<Lease, LockError> {
        ttl_millis(NAME, ttl)?;
        let (this, key) = (self.clone(), key.clone());
        let releaser = self.clone();
        cancel_safe(
            NAME,
            async move { this.attempt(&key, ttl).await },
            move |lease| async move { releaser.release(&lease).await },
        )
        .await
    }

    /// Cancel safety: a dropped extend may still be applied; that only keeps
    /// our own key longer, and the lease we hold is unchanged.
    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<Lease, LockError> {
        self.extend_one(lease, ttl).await
    }

    /// Renews up to 256 leases per script call (one round trip for a typical
    /// watchdog batch). Cancel safety as [`LockBackend::extend`].
    async fn extend_many(&self, renewals: &[(Lease, Duration)]) -> Vec<Result<Lease, LockError>> {
        self.extend_batch(renewals).await
    }

    /// Cancel safety: a dropped release may or may not have deleted the key;
    /// it frees itself at its TTL, and releasing again finishes the job.
    async fn release(&self, lease: &Lease) -> Result<(), LockError> {
        self.release_one(lease).await
    }

    /// Read-only; cancel safe.
    async fn inspect(&self, key: &Key) -> Result<Option<LockInfo>, LockError> {
        self.node.inspect_raw(key).await
    }

    fn release_listener(&self, key: &Key) -> Option<ReleaseListener> {
        let notifier = self.notifier.as_ref()?;
        Some(notifier.listen(&self.node.layout().lock_key(key)))
    }
}

impl RedisBackend {
    /// One acquisition attempt; the trait's `try_acquire` runs it through
    /// [`cancel_safe`].
    async fn attempt(&self, key: &Key, ttl: Duration) -> Result<Lease, LockError> {
        let owner = OwnerToken::generate();
        let sent_at = self.clock.now();
        match self.node.try_acquire_raw(key, &owner, ttl).await {
            Ok(AcquireOutcome::Acquired(token)) => {
                tracing::debug!(%key, owner = %owner.short(), %token, "redis lock acquired");
                Ok(self.lease(key, owner, token, sent_at, ttl))
            }
            Ok(AcquireOutcome::Held(holder)) => {
                Err(LockError::contended(NAME, key.as_str(), Some(holder)))
            }
            Err(error) => {
                if matches!(error, LockError::Unavailable { .. }) {
                    // The script may have run although its answer was lost:
                    // give the key back rather than leave it held until TTL.
                    let (node, key) = (self.node.clone(), key.clone());
                    tokio::spawn(async move {
                        let _ = node.release_raw(&key, &owner).await;
                    });
                }
                Err(error)
            }
        }
    }

    async fn extend_one(&self, lease: &Lease, ttl: Duration) -> Result<Lease, LockError> {
        let sent_at = self.clock.now();
        let found = self
            .node
            .extend_raw(lease.key(), lease.owner(), ttl)
            .await?;
        renewal(lease, found, sent_at, ttl, self.drift)
    }

    async fn extend_batch(&self, renewals: &[(Lease, Duration)]) -> Vec<Result<Lease, LockError>> {
        // TTLs out of range fail alone; the rest go to the server in one call.
        let mut results: Vec<Option<Result<Lease, LockError>>> = renewals
            .iter()
            .map(|(_, ttl)| ttl_millis(NAME, *ttl).err().map(Err))
            .collect();
        let valid: Vec<usize> = (0..renewals.len())
            .filter(|&i| results[i].is_none())
            .collect();
        let raw: Vec<_> = valid
            .iter()
            .map(|&i| (renewals[i].0.key(), renewals[i].0.owner(), renewals[i].1))
            .collect();
        let sent_at = self.clock.now();
        match self.node.extend_many_raw(&raw).await {
            Ok(found) => {
                for (&i, found) in valid.iter().zip(found) {
                    let (lease, ttl) = &renewals[i];
                    results[i] = Some(renewal(lease, found, sent_at, *ttl, self.drift));
                }
            }
            Err(error) => {
                let shared = SharedError::split(error);
                for &i in &valid {
                    results[i] = Some(Err(shared.to_error()));
                }
            }
        }
        results
            .into_iter()
            .map(|result| result.unwrap_or_else(|| Err(LockError::backend(NAME, "no result"))))
            .collect()
    }

    async fn release_one(&self, lease: &Lease) -> Result<(), LockError> {
        match self.node.release_raw(lease.key(), lease.owner()).await? {
            Ownership::Ours => {
                tracing::debug!(key = %lease.key(), owner = %lease.owner().short(), "redis lock released");
                Ok(())
            }
            Ownership::Free | Ownership::Other => {
                Err(LockError::not_held(NAME, lease.key().as_str()))
            }
        }
    }
}

fn renewal(
    lease: &Lease,
    found: Ownership,
    sent_at: tokio::time::Instant,
    ttl: Duration,
    drift: Drift,
) -> Result<Lease, LockError> {
    let key = lease.key().as_str();
    match found {
        Ownership::Ours => Ok(lease.renewed(sent_at, ttl, drift)),
        Ownership::Free => Err(LockError::lost(
            NAME,
            key,
            "the lease expired or was released",
        )),
        Ownership::Other => Err(LockError::lost(NAME, key, "another owner holds the key")),
    }
}

/// One failed batch call, handed to every lease of the batch with its cause.
struct SharedError {
    unavailable: bool,
    retryable: bool,
    source: Arc<leasehold_core::BoxError>,
}

impl SharedError {
    fn split(error: LockError) -> Self {
        let retryable = error.is_retryable();
        match error {
            LockError::Unavailable { source, .. } => SharedError {
                unavailable: true,
                retryable,
                source: Arc::new(source),
            },
            LockError::Backend { source, .. } => SharedError {
                unavailable: false,
                retryable,
                source: Arc::new(source),
            },
            other => SharedError {
                unavailable: false,
                retryable,
                source: Arc::new(Box::new(other)),
            },
        }
    }

    fn to_error(&self) -> LockError {
        let source = SharedSource(self.source.clone());
        if self.unavailable {
            LockError::unavailable(NAME, source)
        } else {
            LockError::Backend {
                backend: NAME,
                retryable: self.retryable,
                source: Box::new(source),
            }
        }
    }
}

#[derive(Debug)]
struct SharedSource(Arc<leasehold_core::BoxError>);

impl std::fmt::Display for SharedSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SharedSource {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}
