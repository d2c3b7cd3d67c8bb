//! Reader–writer locks and counting semaphores for a [`Locker`]: handles
//! that name one key and hand out the same [`LockGuard`]s as the mutex, with
//! auto-extension, loss notification, per-call options and metrics (the
//! `kind` label: `read`, `write`, `permit`).

use crate::error::LockError;
use crate::guard::LockGuard;
use crate::key::{IntoKey, Key};
use crate::kind::LockKind;
use crate::lock_options::LockOptions;
use crate::locker::Locker;

impl Locker {
    /// The reader–writer lock `key` (independent of the mutex `key`): see
    /// [`RwLock`] and [`LockKind`] for its semantics. Checks the key now; the
    /// store is asked nothing until a read or write.
    ///
    /// ```
    /// use leasehold_core::{Locker, MemoryBackend};
    /// use std::sync::Arc;
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), leasehold_core::LockError> {
    /// let backend = Arc::new(MemoryBackend::new());
    /// // Two services (a task holding a lock may not ask for it again).
    /// let (api, worker) = (Locker::from_arc(backend.clone()), Locker::from_arc(backend));
    /// let a = api.rw_lock("cache:prices")?.read().await?;
    /// let b = worker.rw_lock("cache:prices")?.read().await?; // readers share
    /// assert!(worker.rw_lock("cache:prices")?.try_write().await.is_err());
    /// let last_read = b.fencing_token().max(a.fencing_token());
    /// a.release().await?;
    /// b.release().await?;
    /// let writer = worker.rw_lock("cache:prices")?.write().await?;
    /// assert!(writer.fencing_token() > last_read);
    /// # writer.release().await?; Ok(()) }
    /// ```
    pub fn rw_lock(&self, key: impl IntoKey) -> Result<RwLock, LockError> {
        Ok(RwLock::new(self.clone(), key.into_key()?))
    }

    /// The counting semaphore `key` of `permits` permits (independent of the
    /// mutex `key`): see [`Semaphore`]. Zero permits is a
    /// [`LockError::Config`].
    ///
    /// ```
    /// use leasehold_core::{Locker, MemoryBackend};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), leasehold_core::LockError> {
    /// let locker = Locker::new(MemoryBackend::new());
    /// let exports = locker.semaphore("reports:export", 2)?;
    /// let one = exports.acquire().await?;
    /// let two = exports.acquire().await?;
    /// assert!(exports.try_acquire().await.is_err()); // both permits taken
    /// one.release().await?;
    /// two.release().await?;
    /// # Ok(()) }
    /// ```
    pub fn semaphore(&self, key: impl IntoKey, permits: u32) -> Result<Semaphore, LockError> {
        let kind = LockKind::permit(permits)
            .ok_or_else(|| LockError::Config(LockKind::ZERO_PERMITS.into()))?;
        Ok(Semaphore::new(self.clone(), key.into_key()?, kind))
    }
}

/// The reader–writer lock of one key, made by [`Locker::rw_lock`]: many
/// readers together or one writer, every grant fenced (see [`LockKind`]).
///
/// A waiting writer keeps new readers out, so a stream of readers never
/// starves it. Not re-entrant and no upgrade: a task asking again for a lock
/// it holds, in either mode, gets [`LockError::AlreadyHeld`] at once
/// (waiting for itself would only run out its deadline). On a backend
/// without reader–writer locks ([`Capabilities::rw_locks`](crate::Capabilities::rw_locks))
/// every call is [`LockError::Unsupported`].
#[derive(Clone, Debug)]
pub struct RwLock {
    locker: Locker,
    key: Key,
}

impl RwLock {
    pub(crate) fn new(locker: Locker, key: Key) -> Self {
        RwLock { locker, key }
    }

    /// The key.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// Waits (up to the locker's wait policy) to read.
    pub async fn read(&self) -> Result<LockGuard, LockError> {
        self.read_with(&LockOptions::new()).await
    }

    /// Waits to read, with this call's own options.
    pub async fn read_with(&self, options: &LockOptions) -> Result<LockGuard, LockError> {
        self.wait(LockKind::Read, options).await
    }

    /// One attempt to read: [`LockError::Contended`] while a writer holds or
    /// waits.
    pub async fn try_read(&self) -> Result<LockGuard, LockError> {
        self.attempt(LockKind::Read).await
    }

    /// Waits (up to the locker's wait policy) to write; while it waits, new
    /// readers are refused.
    pub async fn write(&self) -> Result<LockGuard, LockError> {
        self.write_with(&LockOptions::new()).await
    }

    /// Waits to write, with this call's own options.
    pub async fn write_with(&self, options: &LockOptions) -> Result<LockGuard, LockError> {
        self.wait(LockKind::Write, options).await
    }

    /// One attempt to write; a refused attempt holds no reader back.
    pub async fn try_write(&self) -> Result<LockGuard, LockError> {
        self.attempt(LockKind::Write).await
    }

    async fn wait(&self, kind: LockKind, options: &LockOptions) -> Result<LockGuard, LockError> {
        let wait = self.locker.wait_for(options);
        self.locker
            .acquire_guard(self.key.clone(), kind, Some(wait), options)
            .await
    }

    async fn attempt(&self, kind: LockKind) -> Result<LockGuard, LockError> {
        self.locker
            .acquire_guard(self.key.clone(), kind, None, &LockOptions::new())
            .await
    }
}

/// The counting semaphore of one key, made by [`Locker::semaphore`]: at most
/// `permits` valid holders at any instant. Each permit is a lease like a
/// mutex's (TTL or session, renewed by the same watchdog), so a crashed
/// holder's permit frees when its lease ends, and each carries a fencing
/// token, strictly increasing per semaphore.
///
/// Permits belong to no task: one task may hold several. Everyone using one
/// semaphore must agree on `permits` (each attempt is judged against its
/// own). On a backend without semaphores ([`Capabilities::semaphores`](crate::Capabilities::semaphores))
/// every call is [`LockError::Unsupported`].
#[derive(Clone, Debug)]
pub struct Semaphore {
    locker: Locker,
    key: Key,
    kind: LockKind,
}

impl Semaphore {
    pub(crate) fn new(locker: Locker, key: Key, kind: LockKind) -> Self {
        Semaphore { locker, key, kind }
    }

    /// The key.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// How many holders it admits at once.
    pub fn permits(&self) -> u32 {
        self.kind.permits().unwrap_or(1)
    }

    /// Waits (up to the locker's wait policy) for a permit.
    pub async fn acquire(&self) -> Result<LockGuard, LockError> {
        self.acquire_with(&LockOptions::new()).await
    }

    /// Waits for a permit, with this call's own options.
    pub async fn acquire_with(&self, options: &LockOptions) -> Result<LockGuard, LockError> {
        let wait = self.locker.wait_for(options);
        self.locker
            .acquire_guard(self.key.clone(), self.kind, Some(wait), options)
            .await
    }

    /// One attempt: [`LockError::Contended`] when every permit is held.
    pub async fn try_acquire(&self) -> Result<LockGuard, LockError> {
        self.locker
            .acquire_guard(self.key.clone(), self.kind, None, &LockOptions::new())
            .await
    }
}
