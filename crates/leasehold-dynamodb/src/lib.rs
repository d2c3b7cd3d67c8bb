//! # leasehold-dynamodb
//!
//! A [`LockBackend`] on Amazon DynamoDB: one item per key, and every
//! acquisition, extension and release a single conditional `UpdateItem`.
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
//! [`DynamoDbBuilder::partition_key`]) is `namespace#key`: the namespace may
//! not contain `#`, so any legal key maps to its own item. Other attributes:
//! `owner` (the holder's owner token), `lease_ms` (its lease duration),
//! `rvn` (record version number: 128 random bits, new on every write),
//! `fence` (the fencing counter) and `holder` (untrusted metadata). Release
//! removes `owner`, `lease_ms` and `holder` but keeps the item, so `fence`
//! never resets: fencing is `Strict`, and durable as DynamoDB's data is.
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
//! ## Cancellation
//! Every operation may be dropped at any await point. `try_acquire` (and so
//! `acquire` and `Locker::lock`) runs each attempt on its own task through
//! [`cancel_safe`]: a lease granted after the caller stopped waiting is
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
//! reach the endpoint at all is not chased. A store that loses its data (an in-memory
//! stand-in restarted) loses the table and the counters with it: configure it
//! with `durable=false` so the capability says fencing is not durable.
#![warn(missing_docs)]

mod config;
mod error;
mod item;
mod observe;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, ReturnValue,
    ReturnValuesOnConditionCheckFailure, ScalarAttributeType, TableStatus,
};
use leasehold_core::{
    Capabilities, Expiry, Fairness, Fencing, FencingToken, Key, Lease, LockBackend, LockError,
    LockInfo, OwnerToken, Waiting, async_trait, cancel_safe, with_timeout,
};
use tokio::time::Instant;

pub use config::{
    DEFAULT_NAMESPACE, DEFAULT_OBSERVATION_CAPACITY, DEFAULT_OPERATION_TIMEOUT,
    DEFAULT_PARTITION_KEY, DynamoDbBuilder, MAX_NAMESPACE_BYTES, OPTIONS,
};

use crate::error::{is_condition_failed, is_validation, map_sdk};
use crate::item::{FENCE, HOLDER, LEASE_MS, LockItem, OWNER, RVN, returned_fence};
use crate::observe::{Observations, Verdict};

pub(crate) const NAME: &str = "dynamodb";

/// Locks in a DynamoDB table; see the [crate docs](crate) for the item,
/// the expiry scheme and its trade-offs. Cheap to clone: clones share the
/// SDK client and the observations of other holders' keys.
#[derive(Clone)]
pub struct DynamoDbBackend {
    client: Client,
    observations: Arc<Observations>,
    options: Arc<DynamoDbBuilder>,
}

impl fmt::Debug for DynamoDbBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DynamoDbBackend")
            .field("table", &self.options.table)
            .field("namespace", &self.options.namespace)
            .field("operation_timeout", &self.options.operation_timeout)
            .finish_non_exhaustive()
    }
}

/// What a conditional acquisition found instead of a free key.
enum Refused {
    /// Held: the item as it was, when the store returned it.
    Held(Option<HashMap<String, AttributeValue>>),
    /// Any other failure.
    Failed(LockError),
}

impl DynamoDbBackend {
    /// Options for `table`, to be finished with
    /// [`DynamoDbBuilder::connect`] or [`DynamoDbBuilder::with_client`].
    pub fn builder(table: impl Into<String>) -> DynamoDbBuilder {
        DynamoDbBuilder::new(table)
    }

    /// Connects by URL: `dynamodb://table?region=..&endpoint=..` (see
    /// [`DynamoDbBuilder::from_url`] for every option).
    /// Cancel safe: a dropped connect takes no lock and leaves nothing behind.
    pub async fn connect(url: &str) -> Result<Self, LockError> {
        DynamoDbBuilder::from_url(url)?.connect().await
    }

    /// The SDK client (with this backend's timeouts), for tooling.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The table name.
    pub fn table(&self) -> &str {
        &self.options.table
    }

    /// The item's partition key value for `key`: `namespace#key`.
    pub fn partition_key_for(&self, key: &Key) -> String {
        format!("{}#{}", self.options.namespace, key.as_str())
    }

    /// An update of `lease`'s item that applies only while `lease` still
    /// owns it, with `expression` (which may use `#owner`, `#lease`, `#rvn`
    /// and sets `:rvn` to a fresh record version).
    fn owned_update(
        &self,
        lease: &Lease,
        expression: &str,
    ) -> aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder {
        self.client
            .update_item()
            .table_name(&self.options.table)
            .key(
                &self.options.partition_key,
                AttributeValue::S(self.partition_key_for(lease.key())),
            )
            .update_expression(expression)
            .condition_expression("#owner = :owner")
            .expression_attribute_names("#owner", OWNER)
            .expression_attribute_names("#lease", LEASE_MS)
            .expression_attribute_names("#rvn", RVN)
            .expression_attribute_values(":owner", AttributeValue::S(lease.owner().to_hex()))
            .expression_attribute_values(":rvn", AttributeValue::S(new_rvn()))
    }

    /// Creates the lock table (partition key only, a string, on-demand
    /// billing) and waits until it is `ACTIVE`. Idempotent: an existing table
    /// is fine (its key schema is not checked). Each call is bounded by the
    /// operation timeout; waiting for `ACTIVE` by 60 operation timeouts.
    ///
    /// To use an existing table instead, give its partition key attribute
    /// name with [`DynamoDbBuilder::partition_key`]; it must be a string and
    /// the table must have no sort key.
    ///
    /// Cancel safety: dropped, the table may still be created; calling again
    /// is idempotent.
    pub async fn create_table(&self) -> Result<(), LockError> {
        let table = &self.options.table;
        let pk = &self.options.partition_key;
        let create = self
            .client
            .create_table()
            .table_name(table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(pk)
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .map_err(|e| LockError::backend(NAME, e))?,
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name(pk)
                    .key_type(KeyType::Hash)
                    .build()
                    .map_err(|e| LockError::backend(NAME, e))?,
            );
        match self.bounded(create.send()).await? {
            Ok(_) => tracing::info!(table, "created lock table"),
            Err(err) if err.code_is("ResourceInUseException") => {}
            Err(err) => return Err(map_sdk(table, err)),
        }
        // Bounded products and sums: a timeout of up to a year (validated)
        // never overflows `Instant`.
        let now = self.options.clock.now();
        let wait = self.options.operation_timeout.saturating_mul(60);
        let deadline = now.checked_add(wait).unwrap_or(now);
        loop {
            let described = self
                .bounded(self.client.describe_table().table_name(table).send())
                .await?
                .map_err(|e| map_sdk(table, e))?;
            let status = described.table().and_then(|t| t.table_status());
            if status == Some(&TableStatus::Active) {
                return Ok(());
            }
            if self.options.clock.now() >= deadline {
                return Err(LockError::unavailable(
                    NAME,
                    format!("table {table} did not become ACTIVE in time (status {status:?})"),
                ));
            }
            self.options.clock.sleep(Duration::from_millis(200)).await;
        }
    }

    /// Runs an SDK call under the operation timeout (a backstop to the SDK's
    /// own, which is the same).
    async fn bounded<T, E>(
        &self,
        call: impl Future<Output = Result<T, E>>,
    ) -> Result<Result<T, E>, LockError> {
        with_timeout(NAME, self.options.operation_timeout, async {
            Ok(call.await)
        })
        .await
    }

    /// Maps an SDK error of a lock operation. When the table is missing and
    /// the backend was configured for a non-durable store with
    /// `create_table_if_missing`, it re-creates the table and reports a
    /// retryable error (the store lost its data, counters start over, which
    /// `durable_fencing(false)` already says). A durable store's table is
    /// never re-created behind the caller's back.
    async fn fail<E>(&self, err: aws_sdk_dynamodb::error::SdkError<E>) -> LockError
    where
        E: aws_sdk_dynamodb::error::ProvideErrorMetadata
            + std::error::Error
            + Send
            + Sync
            + 'static,
    {
        let missing = err.code_is("ResourceNotFoundException");
        let mapped = map_sdk(&self.options.table, err);
        if !(missing && self.options.create_table && !self.options.durable_fencing) {
            return mapped;
        }
        tracing::warn!(
            table = %self.options.table,
            "lock table is missing (a non-durable store lost its data): re-creating it"
        );
        match self.create_table().await {
            Ok(()) => LockError::Backend {
                backend: NAME,
                retryable: true,
                source: format!(
                    "table {} was missing and has been re-created; fencing counters started over",
                    self.options.table
                )
                .into(),
            },
            Err(create_error) => create_error,
        }
    }

    /// The TTL in whole milliseconds (rounded up), within the bounds every
    /// backend shares ([`Capabilities::check_ttl`]: at least 1 ms, at most
    /// one year), so no `Instant + ttl` can overflow.
    fn check_ttl(&self, ttl: Duration) -> Result<u64, LockError> {
        self.capabilities().check_ttl(NAME, ttl)?;
        Ok(ttl.as_nanos().div_ceil(1_000_000) as u64)
    }

    fn what(&self, key: &Key) -> String {
        format!("key {:?} in table {}", key.as_str(), self.options.table)
    }

    fn holder_value(&self) -> AttributeValue {
        AttributeValue::S(self.options.holder_metadata.clone().unwrap_or_default())
    }

    /// One conditional write that takes `pk` for `owner`: when the item is
    /// free (`expected_rvn` `None`), or when its RVN is still `expected_rvn`
    /// (a takeover). Returns the new fencing token.
    async fn write_acquire(
        &self,
        key: &Key,
        pk: &str,
        owner: &OwnerToken,
        lease_ms: u64,
        expected_rvn: Option<&str>,
    ) -> Result<u64, Refused> {
        let mut request = self
            .client
            .update_item()
            .table_name(&self.options.table)
            .key(
                &self.options.partition_key,
                AttributeValue::S(pk.to_owned()),
            )
            .update_expression(
                "SET #owner = :owner, #lease = :lease, #rvn = :rvn, #holder = :holder, \
                 #fence = if_not_exists(#fence, :zero) + :one",
            )
            .expression_attribute_names("#owner", OWNER)
            .expression_attribute_names("#lease", LEASE_MS)
            .expression_attribute_names("#rvn", RVN)
            .expression_attribute_names("#holder", HOLDER)
            .expression_attribute_names("#fence", FENCE)
            .expression_attribute_values(":owner", AttributeValue::S(owner.to_hex()))
            .expression_attribute_values(":lease", AttributeValue::N(lease_ms.to_string()))
            .expression_attribute_values(":rvn", AttributeValue::S(new_rvn()))
            .expression_attribute_values(":holder", self.holder_value())
            .expression_attribute_values(":zero", AttributeValue::N("0".into()))
            .expression_attribute_values(":one", AttributeValue::N("1".into()))
            .return_values(ReturnValue::UpdatedNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        request = match expected_rvn {
            None => request.condition_expression("attribute_not_exists(#owner)"),
            Some(rvn) => request
                .condition_expression("#rvn = :seen")
                .expression_attribute_values(":seen", AttributeValue::S(rvn.to_owned())),
        };
        let what = self.what(key);
        match self.bounded(request.send()).await {
            Err(unavailable) => {
                self.reclaim(key, owner, lease_ms);
                Err(Refused::Failed(unavailable))
            }
            Ok(Ok(output)) => returned_fence(output.attributes(), &what).map_err(Refused::Failed),
            Ok(Err(err)) if is_condition_failed(&err) => {
                let old = err
                    .as_service_error()
                    .and_then(|e| match e {
                        aws_sdk_dynamodb::operation::update_item::UpdateItemError::ConditionalCheckFailedException(c) => c.item().cloned(),
                        _ => None,
                    })
                    .filter(|item| !item.is_empty());
                Err(Refused::Held(old))
            }
            Ok(Err(err)) if is_validation(&err) => {
                // An attribute of the wrong type breaks the update expression:
                // name it if the item shows which.
                let mapped = map_sdk(&self.options.table, err);
                Err(Refused::Failed(match self.read(key, pk).await {
                    Err(decode_error) => decode_error,
                    Ok(_) => mapped,
                }))
            }
            Ok(Err(err)) => {
                // A timeout or an unreadable answer says nothing about
                // whether the write was applied: give it back if it was.
                if matches!(
                    err,
                    aws_sdk_dynamodb::error::SdkError::TimeoutError(_)
                        | aws_sdk_dynamodb::error::SdkError::ResponseError(_)
                ) {
                    self.reclaim(key, owner, lease_ms);
                }
                Err(Refused::Failed(self.fail(err).await))
            }
        }
    }

    /// Gives back, in the background, a lease whose acquisition got no
    /// answer: the write may sit in a frozen store's socket and be applied
    /// when it wakes, long after the call timed out. Tries a
    /// compare-and-release by `owner` with backoff (100 ms doubling to 1 s)
    /// until it succeeds, a final error comes back, or one lease duration
    /// has passed (after which the lease, if it ever existed, is anyone's to
    /// take over). A release refused because the key is not ours is
    /// harmless: it deletes nothing of anyone else's.
    fn reclaim(&self, key: &Key, owner: &OwnerToken, lease_ms: u64) {
        let (this, key, owner) = (self.clone(), key.clone(), *owner);
        let ttl = Duration::from_millis(lease_ms);
        tokio::spawn(async move {
            let clock = this.options.clock.clone();
            let started = clock.now();
            let lease = Lease::new(
                NAME,
                key.clone(),
                owner,
                FencingToken(0),
                started,
                ttl,
                this.options.drift,
            );
            let mut delay = Duration::from_millis(100);
            loop {
                match this.release_lease(&lease).await {
                    Ok(()) => {
                        tracing::debug!(
                            key = key.as_str(),
                            "released a lease whose acquisition had timed out"
                        );
                        return;
                    }
                    Err(error)
                        if error.is_retryable() || matches!(error, LockError::NotHeld { .. }) => {}
                    Err(error) => {
                        tracing::debug!(key = key.as_str(), %error, "gave up releasing a timed-out acquisition");
                        return;
                    }
                }
                if clock.now().saturating_duration_since(started) >= ttl {
                    return;
                }
                clock.sleep(delay).await;
                delay = delay.saturating_mul(2).min(Duration::from_secs(1));
            }
        });
    }

    /// A strongly consistent read of `pk`, decoded.
    async fn read(&self, key: &Key, pk: &str) -> Result<Option<LockItem>, LockError> {
        let request = self
            .client
            .get_item()
            .table_name(&self.options.table)
            .key(
                &self.options.partition_key,
                AttributeValue::S(pk.to_owned()),
            )
            .consistent_read(true);
        let output = match self.bounded(request.send()).await? {
            Ok(output) => output,
            Err(err) => return Err(self.fail(err).await),
        };
        output
            .item()
            .map(|item| LockItem::decode(item, &self.what(key)))
            .transpose()
    }

    fn lease(
        &self,
        key: &Key,
        owner: OwnerToken,
        fence: u64,
        sent_at: Instant,
        ttl: Duration,
    ) -> Lease {
        Lease::new(
            NAME,
            key.clone(),
            owner,
            FencingToken(fence),
            sent_at,
            ttl,
            self.options.drift,
        )
    }

    /// Decides what to do about a held item: a takeover when this client has
    /// seen its RVN unchanged for a whole lease, else `Contended`.
    async fn contend(
        &self,
        key: &Key,
        pk: &str,
        item: LockItem,
        ttl: Duration,
        lease_ms: u64,
    ) -> Result<Lease, LockError> {
        let Some((_, held_for)) = item.held else {
            // Released between our write and the answer: say so; the next
            // attempt finds it free.
            self.observations.forget(pk);
            return Err(LockError::contended(NAME, key.as_str(), None));
        };
        let seen_at = self.options.clock.now();
        match self.observations.observe(pk, &item.rvn, held_for, seen_at) {
            Verdict::Live(remaining) => Err(LockError::contended(
                NAME,
                key.as_str(),
                item.info(Some(remaining)),
            )),
            Verdict::Expired => {
                let owner = OwnerToken::generate();
                let sent_at = self.options.clock.now();
                match self
                    .write_acquire(key, pk, &owner, lease_ms, Some(&item.rvn))
                    .await
                {
                    Ok(fence) => {
                        self.observations.forget(pk);
                        tracing::debug!(
                            key = key.as_str(),
                            owner = %owner,
                            fence,
                            "took over a lock whose record version stayed unchanged for its lease"
                        );
                        Ok(self.lease(key, owner, fence, sent_at, ttl))
                    }
                    Err(Refused::Held(_)) => Err(LockError::contended(NAME, key.as_str(), None)),
                    Err(Refused::Failed(err)) => Err(err),
                }
            }
        }
    }
}

fn new_rvn() -> String {
    OwnerToken::generate().to_hex()
}

trait CodeIs {
    fn code_is(&self, code: &str) -> bool;
}

impl<E: aws_sdk_dynamodb::error::ProvideErrorMetadata> CodeIs
    for aws_sdk_dynamodb::error::SdkError<E>
{
    fn code_is(&self, code: &str) -> bool {
        aws_sdk_dynamodb::error::ProvideErrorMetadata::code(self) == Some(code)
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
            .durable_fencing(self.options.durable_fencing)
            .expiry(Expiry::Ttl)
            .waiting(Waiting::Polled)
            .fairness(Fairness::None)
            .min_ttl(Duration::from_millis(1))
            .ttl_granularity(Duration::from_millis(1))
            .holder_info(true)
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
        let (this, key) = (self.clone(), key.clone());
        let releaser = self.clone();
        cancel_safe(
            NAME,
            async move { this.attempt(&key, ttl, lease_ms).await },
            move |lease| async move { releaser.release(&lease).await },
        )
        .await
    }

    /// Cancel safety: a dropped extend may still be applied; that only
    /// keeps our own lease longer, and the lease we hold is unchanged.
    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<Lease, LockError> {
        let lease_ms = self.check_ttl(ttl)?;
        self.extend_checked(lease, ttl, lease_ms).await
    }

    /// Cancel safety: a dropped release may or may not be applied; a lease
    /// left behind frees one observed lease duration later, and releasing
    /// the same lease again finishes the job.
    async fn release(&self, lease: &Lease) -> Result<(), LockError> {
        self.release_lease(lease).await
    }

    /// Read-only; cancel safe.
    async fn inspect(&self, key: &Key) -> Result<Option<LockInfo>, LockError> {
        self.inspect_key(key).await
    }
}

impl DynamoDbBackend {
    /// One acquisition attempt (the TTL is checked); the trait's
    /// `try_acquire` runs it through [`cancel_safe`].
    async fn attempt(&self, key: &Key, ttl: Duration, lease_ms: u64) -> Result<Lease, LockError> {
        let pk = self.partition_key_for(key);
        let owner = OwnerToken::generate();
        let sent_at = self.options.clock.now();
        let found = match self.write_acquire(key, &pk, &owner, lease_ms, None).await {
            Ok(fence) => {
                self.observations.forget(&pk);
                tracing::debug!(key = key.as_str(), owner = %owner, fence, "acquired");
                return Ok(self.lease(key, owner, fence, sent_at, ttl));
            }
            Err(Refused::Failed(err)) => return Err(err),
            Err(Refused::Held(Some(old))) => LockItem::decode(&old, &self.what(key))?,
            // The store did not return the item it refused on: read it.
            Err(Refused::Held(None)) => match self.read(key, &pk).await? {
                Some(item) => item,
                None => return Err(LockError::contended(NAME, key.as_str(), None)),
            },
        };
        self.contend(key, &pk, found, ttl, lease_ms).await
    }

    async fn extend_checked(
        &self,
        lease: &Lease,
        ttl: Duration,
        lease_ms: u64,
    ) -> Result<Lease, LockError> {
        let key = lease.key();
        let sent_at = self.options.clock.now();
        if !lease.is_valid_at(sent_at) {
            return Err(LockError::lost(
                NAME,
                key.as_str(),
                "the lease expired before it was extended",
            ));
        }
        let request = self
            .owned_update(lease, "SET #lease = :lease, #rvn = :rvn")
            .expression_attribute_values(":lease", AttributeValue::N(lease_ms.to_string()));
        match self.bounded(request.send()).await? {
            Ok(_) => Ok(lease.renewed(sent_at, ttl, self.options.drift)),
            Err(err) if is_condition_failed(&err) => Err(LockError::lost(
                NAME,
                key.as_str(),
                "the key is free or was taken over by another owner",
            )),
            Err(err) => Err(self.fail(err).await),
        }
    }

    async fn release_lease(&self, lease: &Lease) -> Result<(), LockError> {
        let key = lease.key();
        let request = self
            .owned_update(lease, "SET #rvn = :rvn REMOVE #owner, #lease, #holder")
            .expression_attribute_names("#holder", HOLDER);
        match self.bounded(request.send()).await? {
            Ok(_) => {
                tracing::debug!(key = key.as_str(), owner = %lease.owner(), "released");
                Ok(())
            }
            Err(err) if is_condition_failed(&err) => Err(LockError::not_held(NAME, key.as_str())),
            Err(err) => Err(self.fail(err).await),
        }
    }

    async fn inspect_key(&self, key: &Key) -> Result<Option<LockInfo>, LockError> {
        let pk = self.partition_key_for(key);
        let Some(item) = self.read(key, &pk).await? else {
            return Ok(None);
        };
        let now = self.options.clock.now();
        let remaining = match &item.held {
            Some((_, lease)) => Some(
                self.observations
                    .remaining(&pk, &item.rvn, now)
                    .unwrap_or(*lease),
            ),
            None => None,
        };
        Ok(item.info(remaining))
    }
}
