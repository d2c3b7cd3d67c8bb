//! [`DynamoDbBackend`]: constructors, and the [`LockBackend`] impl over the
//! algorithm in `lease.rs`.

use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use leasehold_core::config::BackendConfig;
use leasehold_core::{
    Capabilities, Expiry, Fairness, Fencing, Key, Lease, ListPage, ListQuery, LockBackend,
    LockError, LockInfo, LockKind, OwnerToken, ReleaseListener, WaitPolicy, Waiting, async_trait,
    cancel_safe, extend_each, wait_for_grant, wait_for_lock,
};
use tokio::time::Instant;

use crate::config::DynamoDbConfig;
use crate::error::NAME;
use crate::lease::{Leases, registration_due};
use crate::store::Store;

/// Locks in a DynamoDB table; see the [crate docs](crate) for the item,
/// the expiry scheme and its trade-offs. Cheap to clone: clones share the
/// SDK client and the observations of other holders' keys.
#[derive(Clone)]
pub struct DynamoDbBackend {
    leases: Leases,
    /// The shared `poll` option: the longest pause between a waiter's
    /// attempts.
    poll: Option<Duration>,
}

impl fmt::Debug for DynamoDbBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let store = self.leases.store();
        f.debug_struct("DynamoDbBackend")
            .field("table", &store.table)
            .field("namespace", &store.namespace())
            .field("timeout", &store.timeout())
            .field("poll", &self.poll)
            .finish_non_exhaustive()
    }
}

impl DynamoDbBackend {
    /// Connects by URL: `dynamodb://table?region=..&endpoint=..` (see
    /// [`DynamoDbConfig::from_url`] for every option).
    /// Cancel safe: a dropped connect takes no lock and leaves nothing behind.
    pub async fn connect(url: &str) -> Result<Self, LockError> {
        Self::connect_with(DynamoDbConfig::from_url(url)?).await
    }

    /// Loads the AWS configuration chain (with `config`'s overrides) and
    /// connects; creates the table first if `config` asks for it.
    /// Cancel safe: a dropped connect takes no lock and leaves nothing behind.
    pub async fn connect_with(config: DynamoDbConfig) -> Result<Self, LockError> {
        // Boxed: the AWS configuration chain's future nests deeply, and a
        // caller's own async fn (an application's `main`, the facade's scheme
        // table) would otherwise exceed the compiler's layout depth limit.
        let store = Box::pin(Store::open(&config, None)).await?;
        Ok(Self::over(store, &config))
    }

    /// Uses an existing SDK client. Its timeouts and retries are replaced by
    /// `config`'s operation timeout (no SDK retries), so every call stays
    /// bounded; region, endpoint and credentials set in `config` override
    /// its own. The client keeps its HTTP client if it has one: then a `ca`
    /// in `config` is a [`LockError::Config`] (it could not be applied);
    /// without one it gets leasehold's, with the `ca`. Cancel safe, as
    /// [`DynamoDbBackend::connect_with`].
    pub async fn connect_with_client(
        config: DynamoDbConfig,
        client: Client,
    ) -> Result<Self, LockError> {
        let store = Box::pin(Store::open(&config, Some(client))).await?;
        Ok(Self::over(store, &config))
    }

    fn over(store: Store, config: &DynamoDbConfig) -> Self {
        DynamoDbBackend {
            leases: Leases::new(store, config),
            poll: config.shared.poll,
        }
    }

    /// The SDK client (with this backend's timeouts), for tooling.
    pub fn client(&self) -> &Client {
        &self.leases.store().client
    }

    /// The table name.
    pub fn table(&self) -> &str {
        &self.leases.store().table
    }

    /// The item's partition key value for `key`: `namespace#key`.
    pub fn partition_key_for(&self, key: &Key) -> String {
        self.leases.store().partition_key_for(key)
    }

    /// Creates the lock table (partition key only, a string, on-demand
    /// billing) and waits until it is `ACTIVE`. Idempotent: an existing table
    /// is fine (its key schema is not checked). Each call is bounded by the
    /// operation timeout; waiting for `ACTIVE` by 60 operation timeouts.
    ///
    /// To use an existing table instead, give its partition key attribute
    /// name with [`DynamoDbConfig::partition_key`]; it must be a string and
    /// the table must have no sort key.
    ///
    /// Cancel safety: dropped, the table may still be created; calling again
    /// is idempotent.
    pub async fn create_table(&self) -> Result<(), LockError> {
        self.leases.store().create_table().await
    }

    /// One attempt at a reader, writer or permit grant on its own task
    /// ([`cancel_safe`]): a grant won after the caller left is released.
    async fn shared_attempt(
        &self,
        key: &Key,
        kind: LockKind,
        ttl: Duration,
        lease_ms: u64,
        waiter: Option<OwnerToken>,
    ) -> Result<Lease, LockError> {
        let (leases, key) = (self.leases.clone(), key.clone());
        let releaser = self.leases.clone();
        cancel_safe(
            NAME,
            async move {
                leases
                    .acquire_shared(&key, kind, ttl, lease_ms, waiter)
                    .await
            },
            move |lease| async move { releaser.release_shared(&lease).await },
        )
        .await
    }

    /// The TTL in whole milliseconds (rounded up), within the bounds every
    /// backend shares ([`Capabilities::check_ttl`]: at least 1 ms, at most
    /// one year), so no `Instant + ttl` can overflow.
    fn check_ttl(&self, ttl: Duration) -> Result<u64, LockError> {
        self.capabilities().check_ttl(NAME, ttl)?;
        Ok(ttl.as_nanos().div_ceil(1_000_000) as u64)
    }
}

#[async_trait]
impl LockBackend for DynamoDbBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            .fencing(Fencing::Strict)
            .durable_fencing(self.leases.store().durable)
            .expiry(Expiry::Ttl)
            .waiting(Waiting::Polled)
            .fairness(Fairness::None)
            .min_ttl(Duration::from_millis(1))
            .ttl_granularity(Duration::from_millis(1))
            .holder_info(true)
            // One item per lock, grants conditioned on the admission
            // rule: see the crate docs ("Reader–writer locks and semaphores").
            .rw_locks(true)
            .semaphores(true)
    }

    /// One attempt, run to its end on its own task ([`cancel_safe`]): a
    /// caller that stops waiting (a dropped `lock()`, a `select!`, a
    /// timeout) leaves no key held, because a grant that arrives after it
    /// left is released at once in the background. A write whose answer was
    /// lost (the call timed out: the request may still sit in a frozen
    /// store's socket) is given back in the background too, see the crate
    /// docs.
    async fn try_acquire(&self, key: &Key, ttl: Duration) -> Result<Lease, LockError> {
        let lease_ms = self.check_ttl(ttl)?;
        let (leases, key) = (self.leases.clone(), key.clone());
        let releaser = self.leases.clone();
        cancel_safe(
            NAME,
            async move { leases.acquire(&key, ttl, lease_ms).await },
            move |lease| async move { releaser.release(&lease).await },
        )
        .await
    }

    /// No queue and no release signal: the core's polling loop over
    /// `try_acquire` (each attempt cancel safe), its pauses capped at the
    /// `poll` option when set.
    async fn acquire(
        &self,
        key: &Key,
        ttl: Duration,
        wait: &WaitPolicy,
    ) -> Result<Lease, LockError> {
        wait_for_lock(self, key, ttl, &wait.polling_at(self.poll)).await
    }

    /// A reader, writer or permit: one conditional write on the lock's item
    /// (see the crate docs), on its own task like `try_acquire`. A refusal
    /// costs no more unless the item is new (one write creates it) or holds
    /// entries this client has seen unrenewed for their whole lease (one
    /// write removes them), after which the grant is asked again.
    async fn try_acquire_kind(
        &self,
        key: &Key,
        kind: LockKind,
        ttl: Duration,
    ) -> Result<Lease, LockError> {
        if kind == LockKind::Exclusive {
            return self.try_acquire(key, ttl).await;
        }
        self.capabilities().check_kind(NAME, kind)?;
        let lease_ms = self.check_ttl(ttl)?;
        self.shared_attempt(key, kind, ttl, lease_ms, None).await
    }

    /// Polls like `acquire` (pauses capped at a third of the TTL). A
    /// waiting writer keeps a registration in the lock's item that refuses
    /// new readers: written before its first attempt, rewritten before any
    /// attempt a third of the TTL after the last write, removed by its grant
    /// or withdrawn when the wait ends without one (for a dropped call, on a
    /// spawned task; at the latest it is judged expired one lease after its
    /// last rewrite, as a holder is).
    async fn acquire_kind(
        &self,
        key: &Key,
        kind: LockKind,
        ttl: Duration,
        wait: &WaitPolicy,
    ) -> Result<Lease, LockError> {
        if kind == LockKind::Exclusive {
            return self.acquire(key, ttl, wait).await;
        }
        self.capabilities().check_kind(NAME, kind)?;
        let lease_ms = self.check_ttl(ttl)?;
        let wait = wait.polling_at(self.poll).polling_at(Some(ttl / 3));
        if kind != LockKind::Write {
            return wait_for_grant(self, key, &wait, || {
                self.shared_attempt(key, kind, ttl, lease_ms, None)
            })
            .await;
        }
        let mut registration = Registration {
            leases: self.leases.clone(),
            key: key.clone(),
            waiter: OwnerToken::generate(),
            written: Mutex::new(None),
            active: true,
        };
        let waiter = registration.waiter;
        let result = {
            let registration = &registration;
            wait_for_grant(self, key, &wait, || async move {
                registration.renew(ttl, lease_ms).await?;
                self.shared_attempt(key, kind, ttl, lease_ms, Some(waiter))
                    .await
            })
            .await
        };
        registration.active = false;
        if result.is_err() {
            // Best effort: a registration left behind expires like a holder.
            if let Err(error) = self.leases.withdraw(key, waiter).await {
                tracing::debug!(key = key.as_str(), %error, "could not withdraw a writer's wait; it expires like a holder");
            }
        }
        result
    }

    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<Lease, LockError> {
        let lease_ms = self.check_ttl(ttl)?;
        if lease.kind() != LockKind::Exclusive {
            return self.leases.extend_shared(lease, ttl, lease_ms).await;
        }
        self.leases.extend(lease, ttl, lease_ms).await
    }

    /// One conditional write per lease, all at once (no batch renewal).
    async fn extend_many(
        &self,
        renewals: &[(Lease, Duration)],
    ) -> Result<Vec<Result<Lease, LockError>>, LockError> {
        extend_each(self, renewals).await
    }

    /// Cancel safety: a dropped release may or may not be applied; a lease
    /// left behind frees one observed lease duration later, and releasing
    /// the same lease again finishes the job.
    async fn release(&self, lease: &Lease) -> Result<(), LockError> {
        if lease.kind() != LockKind::Exclusive {
            return self.leases.release_shared(lease).await;
        }
        self.leases.release(lease).await
    }

    /// Read-only; cancel safe.
    async fn inspect(&self, key: &Key) -> Result<Option<LockInfo>, LockError> {
        self.leases.inspect(key).await
    }

    /// A page of a strongly consistent `Scan` of the namespace's held
    /// items (the table has no sort key to query a prefix by), skipping
    /// those this backend has seen unrenewed for a whole lease.
    async fn list(&self, query: &ListQuery) -> Result<ListPage, LockError> {
        self.leases.list(query).await
    }

    /// One conditional `UpdateItem` that removes the holder and bumps the
    /// fencing counter. Cancel safety: a dropped call may or may not have
    /// evicted (inspect before retrying: a retry evicts a new holder).
    async fn force_release(&self, key: &Key, reason: &str) -> Result<Option<LockInfo>, LockError> {
        self.leases.force_release(key, reason).await
    }

    /// DynamoDB signals no releases: waiters poll.
    fn release_listener(&self, _key: &Key) -> Option<ReleaseListener> {
        None
    }
}

/// A waiting writer's registration; dropped while active (the call was
/// dropped), it is withdrawn on a spawned task.
struct Registration {
    leases: Leases,
    key: Key,
    waiter: OwnerToken,
    /// When it was last written (sent), on the runtime's clock.
    written: Mutex<Option<Instant>>,
    active: bool,
}

impl Registration {
    /// Writes the registration when it is due (see [`registration_due`]).
    async fn renew(&self, ttl: Duration, lease_ms: u64) -> Result<(), LockError> {
        let now = Instant::now();
        let last = *self.written.lock().unwrap_or_else(|e| e.into_inner());
        if !registration_due(last, now, ttl) {
            return Ok(());
        }
        self.leases
            .register(&self.key, self.waiter, lease_ms)
            .await?;
        *self.written.lock().unwrap_or_else(|e| e.into_inner()) = Some(now);
        Ok(())
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if !self.active {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (leases, key, waiter) = (self.leases.clone(), self.key.clone(), self.waiter);
            runtime.spawn(async move {
                if let Err(error) = leases.withdraw(&key, waiter).await {
                    tracing::debug!(key = key.as_str(), %error, "could not withdraw a dropped writer's wait; it expires like a holder");
                }
            });
        }
    }
}
