//! The one idea of this backend: a lease is a Redis key holding its owner
//! token under a `PX` TTL, beside a fencing counter that is never deleted.
//! Each step is one script ([`crate::scripts`]) through the [`RedisNode`];
//! the validity is measured here, from the instant the script was sent.

use std::time::Duration;

use leasehold_core::{Drift, FencingToken, Key, Lease, LockError, OwnerToken, SharedClock};
use tokio::time::Instant;

use crate::NAME;
use crate::store::{AcquireOutcome, Ownership, RedisNode, ttl_millis};

/// The lease steps on one server; cheap to clone (clones share the
/// connection).
#[derive(Debug, Clone)]
pub(crate) struct Leases {
    pub(crate) node: RedisNode,
    pub(crate) clock: SharedClock,
    pub(crate) drift: Drift,
}

impl Leases {
    /// Leases on `node`, measured on `clock`, less `drift`.
    pub(crate) fn new(node: RedisNode, clock: SharedClock, drift: Drift) -> Self {
        Leases { node, clock, drift }
    }

    /// One acquisition attempt, cancel safe: [`RedisNode::try_acquire_raw`]
    /// gives back a grant nobody took, and one whose fate is unknown.
    pub(crate) async fn attempt(&self, key: &Key, ttl: Duration) -> Result<Lease, LockError> {
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
            // An `Unavailable` grant, whose fate is unknown, the node
            // gives back itself.
            Err(error) => Err(error),
        }
    }

    /// Compare-and-`PEXPIRE`, validity from the send instant.
    pub(crate) async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<Lease, LockError> {
        let sent_at = self.clock.now();
        let found = self
            .node
            .extend_raw(lease.key(), lease.owner(), ttl)
            .await?;
        renewal(lease, found, sent_at, ttl, self.drift)
    }

    /// Renews a batch with one script call per 256 leases. A TTL out of
    /// range fails its own renewal; a failed call fails the whole batch.
    pub(crate) async fn extend_many(
        &self,
        renewals: &[(Lease, Duration)],
    ) -> Result<Vec<Result<Lease, LockError>>, LockError> {
        let checked: Vec<Result<(), LockError>> = renewals
            .iter()
            .map(|(_, ttl)| ttl_millis(NAME, *ttl).map(drop))
            .collect();
        let valid: Vec<_> = renewals
            .iter()
            .zip(&checked)
            .filter(|(_, checked)| checked.is_ok())
            .map(|((lease, ttl), _)| (lease.key(), lease.owner(), *ttl))
            .collect();
        let sent_at = self.clock.now();
        let mut found = self.node.extend_many_raw(&valid).await?.into_iter();
        Ok(renewals
            .iter()
            .zip(checked)
            .map(|((lease, ttl), checked)| {
                checked?;
                let found = found.next().ok_or_else(|| {
                    LockError::backend(NAME, "the extend script answered too few results")
                })?;
                renewal(lease, found, sent_at, *ttl, self.drift)
            })
            .collect())
    }

    /// Compare-and-delete (which publishes the release).
    pub(crate) async fn release(&self, lease: &Lease) -> Result<(), LockError> {
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

    fn lease(
        &self,
        key: &Key,
        owner: OwnerToken,
        token: FencingToken,
        sent_at: Instant,
        ttl: Duration,
    ) -> Lease {
        Lease::new(NAME, key.clone(), owner, token, sent_at, ttl, self.drift)
    }
}

/// The renewed lease, or why it is gone.
pub(crate) fn renewal(
    lease: &Lease,
    found: Ownership,
    sent_at: Instant,
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
