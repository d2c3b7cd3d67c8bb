//! The lock algorithm: every acquisition, extension and release one
//! conditional `UpdateItem`, and expiry decided by observing record version
//! numbers (RVNs) on this client's monotonic clock, never by a wall clock.
//!
//! What this client has seen of other holders' RVNs is kept in
//! `lease/observations.rs`.

mod admin;
mod observations;
mod shared;

pub(crate) use shared::registration_due;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};
use leasehold_core::{
    Attempts, Drift, FencingToken, Key, Lease, LockError, LockInfo, LockKind, OwnerToken,
    SharedClock, WaitPolicy,
};
use tokio::time::Instant;

use crate::config::DynamoDbConfig;
use crate::error::{self, NAME, is_condition_failed, is_validation, outcome_unknown};
use crate::item::{ACQUIRED_MS, FENCE, HOLDER, LEASE_MS, LockItem, OWNER, RVN, returned_fence};
use crate::store::Store;
use observations::{Observations, Verdict};

/// The algorithm over one [`Store`], with what this client has observed of
/// other holders' items. Cheap to clone: clones share both.
#[derive(Clone, Debug)]
pub(crate) struct Leases {
    store: Arc<Store>,
    observations: Arc<Observations>,
    clock: SharedClock,
    drift: Drift,
    holder: String,
}

/// What a conditional acquisition found instead of a free key.
enum Refused {
    /// Held: the item as it was, when the store returned it.
    Held(Option<HashMap<String, AttributeValue>>),
    /// Any other failure.
    Failed(LockError),
}

impl Leases {
    pub(crate) fn new(store: Store, config: &DynamoDbConfig) -> Self {
        Leases {
            store: Arc::new(store),
            observations: Arc::new(Observations::new(config.observation_capacity)),
            clock: config.clock.clone(),
            drift: config.drift_or_default(),
            holder: config.shared.holder_or_default(),
        }
    }

    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// One acquisition attempt of `key` for `ttl` (`lease_ms`, checked):
    /// a conditional write on a free item, else a takeover if this client
    /// has seen the holder's RVN unchanged for a whole lease, else
    /// `Contended`.
    pub(crate) async fn acquire(
        &self,
        key: &Key,
        ttl: Duration,
        lease_ms: u64,
    ) -> Result<Lease, LockError> {
        let pk = self.store.partition_key_for(key);
        let owner = OwnerToken::generate();
        let sent_at = self.clock.now();
        let found = match self.write_acquire(key, &pk, &owner, lease_ms, None).await {
            Ok(fence) => {
                self.observations.forget(&pk);
                tracing::debug!(key = key.as_str(), owner = %owner, fence, "acquired");
                return Ok(self.lease(key, owner, fence, sent_at, ttl));
            }
            Err(Refused::Failed(err)) => return Err(err),
            Err(Refused::Held(Some(old))) => LockItem::decode(&old, &self.store.what(key))?,
            // The store did not return the item it refused on: read it.
            Err(Refused::Held(None)) => match self.store.read(key).await? {
                Some(item) => item,
                None => return Err(LockError::contended(NAME, key.as_str(), None)),
            },
        };
        self.contend(key, &pk, found, ttl, lease_ms).await
    }

    /// Renews `lease` for `ttl` (`lease_ms`) with a new RVN, while we own it.
    pub(crate) async fn extend(
        &self,
        lease: &Lease,
        ttl: Duration,
        lease_ms: u64,
    ) -> Result<Lease, LockError> {
        let key = lease.key();
        let sent_at = self.clock.now();
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
        match self.store.bounded(request.send()).await? {
            Ok(_) => Ok(lease.renewed(sent_at, ttl, self.drift)),
            Err(err) if is_condition_failed(&err) => Err(LockError::lost(
                NAME,
                key.as_str(),
                "the key is free or was taken over by another owner",
            )),
            Err(err) => Err(self.store.fail(err).await),
        }
    }

    /// Frees `lease`'s key if we own it; keeps the item, so `fence` never
    /// resets.
    pub(crate) async fn release(&self, lease: &Lease) -> Result<(), LockError> {
        let key = lease.key();
        let request = self
            .owned_update(
                lease,
                "SET #rvn = :rvn REMOVE #owner, #lease, #holder, #acquired",
            )
            .expression_attribute_names("#holder", HOLDER)
            .expression_attribute_names("#acquired", ACQUIRED_MS);
        match self.store.bounded(request.send()).await? {
            Ok(_) => {
                tracing::debug!(key = key.as_str(), owner = %lease.owner(), "released");
                Ok(())
            }
            Err(err) if is_condition_failed(&err) => Err(LockError::not_held(NAME, key.as_str())),
            Err(err) => Err(self.store.fail(err).await),
        }
    }

    /// The holder of `key`, with the time left as this client estimates it.
    pub(crate) async fn inspect(&self, key: &Key) -> Result<Option<LockInfo>, LockError> {
        let Some(item) = self.store.read(key).await? else {
            return Ok(None);
        };
        Ok(self.estimate(&self.store.partition_key_for(key), &item))
    }

    /// What `inspect` tells of `item` (the item `pk`): the time left by this
    /// client's observation of its RVN, else its whole lease.
    fn estimate(&self, pk: &str, item: &LockItem) -> Option<LockInfo> {
        let now = self.clock.now();
        let remaining = item.held.as_ref().map(|(_, lease)| {
            self.observations
                .remaining(pk, &item.rvn, now)
                .unwrap_or(*lease)
        });
        item.info(remaining)
    }

    /// An update of `lease`'s item that applies only while `lease` still
    /// owns it, with `expression` (which may use `#owner`, `#lease`, `#rvn`
    /// and sets `:rvn` to a fresh record version).
    fn owned_update(&self, lease: &Lease, expression: &str) -> UpdateItemFluentBuilder {
        self.store
            .update(&self.store.partition_key_for(lease.key()))
            .update_expression(expression)
            .condition_expression("#owner = :owner")
            .expression_attribute_names("#owner", OWNER)
            .expression_attribute_names("#lease", LEASE_MS)
            .expression_attribute_names("#rvn", RVN)
            .expression_attribute_values(":owner", AttributeValue::S(lease.owner().to_hex()))
            .expression_attribute_values(":rvn", AttributeValue::S(new_rvn()))
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
            .store
            .update(pk)
            .update_expression(
                "SET #owner = :owner, #lease = :lease, #rvn = :rvn, #holder = :holder, \
                 #acquired = :acquired, #fence = if_not_exists(#fence, :zero) + :one",
            )
            .expression_attribute_names("#owner", OWNER)
            .expression_attribute_names("#lease", LEASE_MS)
            .expression_attribute_names("#rvn", RVN)
            .expression_attribute_names("#holder", HOLDER)
            .expression_attribute_names("#fence", FENCE)
            .expression_attribute_names("#acquired", ACQUIRED_MS)
            .expression_attribute_values(":owner", AttributeValue::S(owner.to_hex()))
            .expression_attribute_values(":lease", AttributeValue::N(lease_ms.to_string()))
            .expression_attribute_values(":rvn", AttributeValue::S(new_rvn()))
            .expression_attribute_values(":holder", AttributeValue::S(self.holder.clone()))
            .expression_attribute_values(":acquired", AttributeValue::N(now_ms().to_string()))
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
        let what = self.store.what(key);
        match self.store.bounded(request.send()).await {
            Err(unavailable) => {
                self.reclaim(key, LockKind::Exclusive, owner, lease_ms);
                Err(Refused::Failed(unavailable))
            }
            Ok(Ok(output)) => returned_fence(output.attributes(), &what).map_err(Refused::Failed),
            Ok(Err(err)) if is_condition_failed(&err) => {
                let old = err
                    .as_service_error()
                    .and_then(|e| match e {
                        UpdateItemError::ConditionalCheckFailedException(c) => c.item().cloned(),
                        _ => None,
                    })
                    .filter(|item| !item.is_empty());
                Err(Refused::Held(old))
            }
            Ok(Err(err)) if is_validation(&err) => {
                // An attribute of the wrong type breaks the update expression:
                // name it if the item shows which.
                let mapped = error::map(&self.store.table, err);
                Err(Refused::Failed(match self.store.read(key).await {
                    Err(decode_error) => decode_error,
                    Ok(_) => mapped,
                }))
            }
            Ok(Err(err)) => {
                // A timeout or an unreadable answer says nothing about
                // whether the write was applied: give it back if it was.
                if outcome_unknown(&err) {
                    self.reclaim(key, LockKind::Exclusive, owner, lease_ms);
                }
                Err(Refused::Failed(self.store.fail(err).await))
            }
        }
    }

    /// Gives back, in the background, a lease whose acquisition got no
    /// answer: the write may sit in a frozen store's socket and be applied
    /// when it wakes, long after the call timed out. Tries a
    /// compare-and-release by `owner` with backoff (100 ms growing to 1 s)
    /// until it succeeds, a final error comes back, or one lease duration
    /// has passed (after which the lease, if it ever existed, is anyone's to
    /// take over). A release refused because the key is not ours is
    /// harmless: it deletes nothing of anyone else's. `kind` says which lock
    /// the grant was for (a reader, writer or permit has its own item).
    fn reclaim(&self, key: &Key, kind: LockKind, owner: &OwnerToken, lease_ms: u64) {
        let (this, key, owner) = (self.clone(), key.clone(), *owner);
        let ttl = Duration::from_millis(lease_ms);
        tokio::spawn(async move {
            let lease = Lease::new(
                NAME,
                key.clone(),
                owner,
                FencingToken(0),
                this.clock.now(),
                ttl,
                this.drift,
            )
            .with_kind(kind);
            let policy = WaitPolicy::new(ttl)
                .with_delays(Duration::from_millis(100), Duration::from_secs(1));
            let mut attempts = Attempts::new(&policy);
            loop {
                let released = if kind == LockKind::Exclusive {
                    this.release(&lease).await
                } else {
                    this.release_shared(&lease).await
                };
                match released {
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
                let Some(delay) = attempts.next_delay(None) else {
                    return;
                };
                tokio::time::sleep(delay).await;
            }
        });
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
            self.drift,
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
        let seen_at = self.clock.now();
        match self.observations.observe(pk, &item.rvn, held_for, seen_at) {
            Verdict::Live(remaining) => Err(LockError::contended(
                NAME,
                key.as_str(),
                item.info(Some(remaining)),
            )),
            Verdict::Expired => {
                let owner = OwnerToken::generate();
                let sent_at = self.clock.now();
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

/// This client's wall clock in milliseconds since the epoch, for
/// [`ACQUIRED_MS`] only (shown, never trusted).
fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis())
}

fn new_rvn() -> String {
    OwnerToken::generate().to_hex()
}
