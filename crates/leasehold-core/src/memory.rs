//! A complete, correct, single-process backend: the embedded default for
//! examples and tests, and the reference the conformance suite is first proven
//! on.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio::time::Instant;

use crate::backend::{LockBackend, ReleaseHub, ReleaseListener, extend_each, wait_for_lock};
use crate::capabilities::{Capabilities, Fairness, Fencing, Waiting};
use crate::clock::{Drift, SharedClock, system_clock};
use crate::config::default_holder;
use crate::error::LockError;
use crate::key::Key;
use crate::lease::{Lease, LockInfo};
use crate::listing::{ListPage, ListQuery};
use crate::token::{FencingToken, OwnerToken};
use crate::wait::WaitPolicy;

const NAME: &str = "memory";

#[derive(Debug)]
struct Holder {
    owner: OwnerToken,
    fencing_token: FencingToken,
    expires_at: Instant,
    acquired_at: SystemTime,
}

/// Locks in this process's memory.
///
/// Strict fencing (one counter for all keys, so every key's tokens strictly
/// increase), TTL expiry on the backend's clock, waiters woken on release.
/// Not fair. Nothing survives the process: use it where all contenders share
/// one process (tests, examples, a single-node deployment).
///
/// ```
/// use leasehold_core::{Locker, MemoryBackend};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), leasehold_core::LockError> {
/// let locker = Locker::new(MemoryBackend::new());
/// let guard = locker.lock("jobs:nightly").await?;
/// println!("fencing token {}", guard.fencing_token());
/// guard.release().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct MemoryBackend {
    holders: Mutex<HashMap<Key, Holder>>,
    next_token: AtomicU64,
    releases: ReleaseHub,
    clock: SharedClock,
    drift: Drift,
    holder: String,
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBackend {
    /// An empty backend on the system clock.
    pub fn new() -> Self {
        Self::with_clock(system_clock())
    }

    /// An empty backend on `clock` (inject pauses and skew in tests).
    pub fn with_clock(clock: SharedClock) -> Self {
        MemoryBackend {
            holders: Mutex::new(HashMap::new()),
            next_token: AtomicU64::new(1),
            releases: ReleaseHub::new(),
            clock,
            drift: Drift {
                factor: 0.0,
                fixed: Duration::ZERO,
            },
            holder: default_holder(),
        }
    }

    /// Sets the holder label shown with every lease of this backend
    /// (default `"<host> pid <pid>"`).
    pub fn holder(mut self, label: impl Into<String>) -> Self {
        self.holder = label.into();
        self
    }

    fn holders(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Holder>> {
        self.holders.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check_ttl(&self, ttl: Duration) -> Result<(), LockError> {
        self.capabilities().check_ttl(NAME, ttl)
    }

    fn info(&self, holder: &Holder, now: Instant) -> LockInfo {
        LockInfo::new(
            Some(holder.fencing_token),
            Some(holder.expires_at.saturating_duration_since(now)),
        )
        .with_owner(&holder.owner)
        .with_metadata(Some(self.holder.clone()))
        .with_acquired_at(Some(holder.acquired_at))
    }
}

#[async_trait]
impl LockBackend for MemoryBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            .fencing(Fencing::Strict)
            .waiting(Waiting::Notified)
            .fairness(Fairness::None)
            .holder_info(true)
    }

    async fn try_acquire(&self, key: &Key, ttl: Duration) -> Result<Lease, LockError> {
        self.check_ttl(ttl)?;
        let now = self.clock.now();
        let mut holders = self.holders();
        if let Some(holder) = holders.get(key).filter(|h| h.expires_at > now) {
            return Err(LockError::contended(
                NAME,
                key.as_str(),
                Some(self.info(holder, now)),
            ));
        }
        let owner = OwnerToken::generate();
        let fencing_token = FencingToken(self.next_token.fetch_add(1, Ordering::SeqCst));
        holders.insert(
            key.clone(),
            Holder {
                owner,
                fencing_token,
                expires_at: now + ttl,
                acquired_at: SystemTime::now(),
            },
        );
        Ok(Lease::new(
            NAME,
            key.clone(),
            owner,
            fencing_token,
            now,
            ttl,
            self.drift,
        ))
    }

    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<Lease, LockError> {
        self.check_ttl(ttl)?;
        let now = self.clock.now();
        let mut holders = self.holders();
        match holders.get_mut(lease.key()) {
            Some(holder) if holder.owner == *lease.owner() && holder.expires_at > now => {
                holder.expires_at = now + ttl;
                Ok(lease.renewed(now, ttl, self.drift))
            }
            Some(holder) if holder.owner == *lease.owner() => Err(LockError::lost(
                NAME,
                lease.key().as_str(),
                "the lease expired before it was extended",
            )),
            _ => Err(LockError::lost(
                NAME,
                lease.key().as_str(),
                "the key is free or held by another owner",
            )),
        }
    }

    async fn acquire(
        &self,
        key: &Key,
        ttl: Duration,
        wait: &WaitPolicy,
    ) -> Result<Lease, LockError> {
        wait_for_lock(self, key, ttl, wait).await
    }

    async fn extend_many(
        &self,
        renewals: &[(Lease, Duration)],
    ) -> Result<Vec<Result<Lease, LockError>>, LockError> {
        extend_each(self, renewals).await
    }

    async fn release(&self, lease: &Lease) -> Result<(), LockError> {
        let now = self.clock.now();
        let released = {
            let mut holders = self.holders();
            let ours = holders
                .get(lease.key())
                .is_some_and(|h| h.owner == *lease.owner() && h.expires_at > now);
            ours && holders.remove(lease.key()).is_some()
        };
        if released {
            self.releases.notify(lease.key().as_str());
            Ok(())
        } else {
            Err(LockError::not_held(NAME, lease.key().as_str()))
        }
    }

    async fn inspect(&self, key: &Key) -> Result<Option<LockInfo>, LockError> {
        let now = self.clock.now();
        Ok(self
            .holders()
            .get(key)
            .filter(|h| h.expires_at > now)
            .map(|h| self.info(h, now)))
    }

    /// Keys in order, the cursor being the last key shown.
    async fn list(&self, query: &ListQuery) -> Result<ListPage, LockError> {
        let now = self.clock.now();
        let holders = self.holders();
        let held = holders
            .iter()
            .filter(|(_, holder)| holder.expires_at > now)
            .map(|(key, holder)| (key.as_str().to_owned(), self.info(holder, now)));
        Ok(ListPage::from_held(held, query))
    }

    /// The next grant's token comes from the one counter, so it exceeds the
    /// evicted one without more work.
    async fn force_release(&self, key: &Key, _reason: &str) -> Result<Option<LockInfo>, LockError> {
        let now = self.clock.now();
        let evicted = self
            .holders()
            .remove(key)
            .filter(|h| h.expires_at > now)
            .map(|h| self.info(&h, now));
        self.releases.notify(key.as_str());
        Ok(evicted)
    }

    fn release_listener(&self, key: &Key) -> Option<ReleaseListener> {
        Some(self.releases.listen(key.as_str()))
    }
}
