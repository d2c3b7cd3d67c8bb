//! A complete, correct, single-process backend: the embedded default for
//! examples and tests, and the reference the conformance suite is first proven
//! on.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio::time::Instant;

use crate::backend::{
    LockBackend, ReleaseHub, ReleaseListener, extend_each, wait_for_grant, wait_for_lock,
};
use crate::capabilities::{Capabilities, Fairness, Fencing, Waiting};
use crate::clock::{Drift, SharedClock, system_clock};
use crate::config::default_holder;
use crate::error::LockError;
use crate::key::Key;
use crate::kind::{LockFamily, LockKind};
use crate::lease::{Lease, LockInfo};
use crate::listing::{ListPage, ListQuery};
use crate::token::{FencingToken, OwnerToken};
use crate::wait::WaitPolicy;

const NAME: &str = "memory";

/// One holder of a reader–writer lock or a semaphore.
#[derive(Debug)]
struct Sharer {
    kind: LockKind,
    owner: OwnerToken,
    expires_at: Instant,
}

/// The holders of one reader–writer lock or semaphore, and how many writers
/// wait for it (they keep new readers out).
#[derive(Debug, Default)]
struct Shared {
    sharers: Vec<Sharer>,
    waiting_writers: usize,
}

impl Shared {
    /// Whether `kind` may be granted now (expired holders already pruned).
    fn admits(&self, kind: LockKind) -> bool {
        match kind {
            LockKind::Read => {
                self.waiting_writers == 0 && self.sharers.iter().all(|s| s.kind == LockKind::Read)
            }
            LockKind::Permit { permits } => self.sharers.len() < permits as usize,
            _ => self.sharers.is_empty(),
        }
    }
}

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
/// Not fair. Reader–writer locks and semaphores too (see
/// [`LockKind`]); `inspect`, `list` and `force_release` see mutexes only. Nothing survives the process: use it where all contenders share
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
    shared: Mutex<HashMap<(LockFamily, Key), Shared>>,
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
            shared: Mutex::new(HashMap::new()),
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

    fn shared(&self) -> std::sync::MutexGuard<'_, HashMap<(LockFamily, Key), Shared>> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One attempt at a reader, writer or permit grant.
    fn try_share(&self, key: &Key, kind: LockKind, ttl: Duration) -> Result<Lease, LockError> {
        self.check_ttl(ttl)?;
        self.capabilities().check_kind(NAME, kind)?;
        let family = kind.family();
        let now = self.clock.now();
        let mut shared = self.shared();
        let state = shared.entry((family, key.clone())).or_default();
        state.sharers.retain(|s| s.expires_at > now);
        if !state.admits(kind) {
            let first_to_expire = state.sharers.iter().map(|s| s.expires_at).min();
            let info = first_to_expire.map(|end| {
                LockInfo::new(None, Some(end.saturating_duration_since(now)))
                    .with_metadata(Some(self.holder.clone()))
            });
            return Err(LockError::contended(NAME, key.as_str(), info));
        }
        let owner = OwnerToken::generate();
        let fencing_token = FencingToken(self.next_token.fetch_add(1, Ordering::SeqCst));
        state.sharers.push(Sharer {
            kind,
            owner,
            expires_at: now + ttl,
        });
        Ok(Lease::new(
            NAME,
            key.clone(),
            owner,
            fencing_token,
            now,
            ttl,
            self.drift,
        )
        .with_kind(kind))
    }

    /// Counts a writer waiting for `key` until the returned guard drops (the
    /// wait ended, however it ended).
    fn writer_waits(&self, key: &Key) -> WaitingWriter<'_> {
        self.shared()
            .entry((LockFamily::Rw, key.clone()))
            .or_default()
            .waiting_writers += 1;
        WaitingWriter {
            backend: self,
            key: key.clone(),
        }
    }

    fn extend_shared(&self, lease: &Lease, ttl: Duration) -> Result<Lease, LockError> {
        let family = lease.kind().family();
        let now = self.clock.now();
        let mut shared = self.shared();
        let sharer = shared
            .get_mut(&(family, lease.key().clone()))
            .and_then(|state| state.sharers.iter_mut().find(|s| s.owner == *lease.owner()))
            .filter(|s| s.expires_at > now);
        match sharer {
            Some(sharer) => {
                sharer.expires_at = now + ttl;
                Ok(lease.renewed(now, ttl, self.drift))
            }
            None => Err(LockError::lost(
                NAME,
                lease.key().as_str(),
                "the grant expired or was never held",
            )),
        }
    }

    fn release_shared(&self, lease: &Lease) -> Result<(), LockError> {
        let family = lease.kind().family();
        let now = self.clock.now();
        let released = {
            let mut shared = self.shared();
            let state = shared.get_mut(&(family, lease.key().clone()));
            let released = state.is_some_and(|state| {
                let before = state.sharers.len();
                state
                    .sharers
                    .retain(|s| !(s.owner == *lease.owner() && s.expires_at > now));
                state.sharers.len() < before
            });
            // Forget keys nobody holds or waits for.
            shared.retain(|_, state| !state.sharers.is_empty() || state.waiting_writers > 0);
            released
        };
        if released {
            self.releases.notify(lease.key().as_str());
            Ok(())
        } else {
            Err(LockError::not_held(NAME, lease.key().as_str()))
        }
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
            .rw_locks(true)
            .semaphores(true)
    }

    async fn try_acquire_kind(
        &self,
        key: &Key,
        kind: LockKind,
        ttl: Duration,
    ) -> Result<Lease, LockError> {
        match kind {
            LockKind::Exclusive => self.try_acquire(key, ttl).await,
            kind => self.try_share(key, kind, ttl),
        }
    }

    async fn acquire_kind(
        &self,
        key: &Key,
        kind: LockKind,
        ttl: Duration,
        wait: &WaitPolicy,
    ) -> Result<Lease, LockError> {
        match kind {
            LockKind::Exclusive => self.acquire(key, ttl, wait).await,
            LockKind::Write => {
                self.capabilities().check_kind(NAME, kind)?;
                let _waiting = self.writer_waits(key);
                wait_for_grant(self, key, wait, || async { self.try_share(key, kind, ttl) }).await
            }
            kind => {
                wait_for_grant(self, key, wait, || async { self.try_share(key, kind, ttl) }).await
            }
        }
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
        if lease.kind() != LockKind::Exclusive {
            return self.extend_shared(lease, ttl);
        }
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
        if lease.kind() != LockKind::Exclusive {
            return self.release_shared(lease);
        }
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

/// A writer waiting for a reader–writer lock; dropping it ends the wait's
/// hold on new readers.
struct WaitingWriter<'a> {
    backend: &'a MemoryBackend,
    key: Key,
}

impl Drop for WaitingWriter<'_> {
    fn drop(&mut self) {
        let mut shared = self.backend.shared();
        if let Some(state) = shared.get_mut(&(LockFamily::Rw, self.key.clone())) {
            state.waiting_writers = state.waiting_writers.saturating_sub(1);
        }
        drop(shared);
        // Readers held back by this writer may go now.
        self.backend.releases.notify(self.key.as_str());
    }
}
