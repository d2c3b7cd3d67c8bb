//! [`FileBackend`]: construction, and the thin [`LockBackend`] impl that
//! runs each call's file work ([`crate::lease`], [`crate::admin`]) on
//! tokio's blocking pool under the operation timeout.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use leasehold_core::{
    Capabilities, Expiry, Fairness, Fencing, Key, Lease, ListPage, ListQuery, LockBackend,
    LockError, LockInfo, LockKind, ReleaseHub, ReleaseListener, WaitPolicy, Waiting, async_trait,
    cancel_safe, extend_each, wait_for_lock, with_timeout,
};

use crate::admin;
use crate::config::{FileConfig, MIN_TTL};
use crate::error::{io_error, task_failed};
use crate::lease::{self, Shared};
use crate::store::boot_id;

const NAME: &str = "file";

/// Release signals between the backends of one process, by state file path
/// (a release in another process is seen at the next poll).
fn process_hub() -> &'static ReleaseHub {
    static HUB: OnceLock<ReleaseHub> = OnceLock::new();
    HUB.get_or_init(ReleaseHub::new)
}

/// Directories already created or checked by this process.
fn checked_dirs() -> &'static Mutex<HashMap<std::path::PathBuf, ()>> {
    static DIRS: OnceLock<Mutex<HashMap<std::path::PathBuf, ()>>> = OnceLock::new();
    DIRS.get_or_init(Default::default)
}

/// Locks in a directory of the local file system, shared by every process
/// of the host that opens the same directory (see the crate docs for the
/// guarantees and limits). Cheap to clone.
#[derive(Clone)]
pub struct FileBackend {
    pub(crate) shared: Arc<Shared>,
    config: Arc<FileConfig>,
}

impl fmt::Debug for FileBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileBackend")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl FileBackend {
    /// Connects by URL (`file:///var/lock/myapp?namespace=billing`, see
    /// [`FileConfig::from_url`]).
    pub async fn connect(url: &str) -> Result<Self, LockError> {
        Self::connect_with(FileConfig::from_url(url)?).await
    }

    /// Opens the lock directory of `config`, creating it (with its parents)
    /// unless `create(false)`; it must be a directory we can write.
    pub async fn connect_with(config: FileConfig) -> Result<Self, LockError> {
        let settings = config.settings()?;
        let dir = settings.dir.clone();
        let create = settings.create;
        tokio::task::spawn_blocking(move || prepare_dir(&dir, create))
            .await
            .map_err(|e| task_failed(NAME, e))??;
        Ok(FileBackend {
            shared: Arc::new(Shared {
                name: NAME,
                settings,
                boot: boot_id(),
            }),
            config: Arc::new(config),
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &FileConfig {
        &self.config
    }

    /// The directory holding the lock files (the namespace's subdirectory,
    /// if one is set).
    pub fn dir(&self) -> &std::path::Path {
        &self.shared.settings.dir
    }

    /// Runs `work` on the blocking pool under the operation timeout.
    pub(crate) async fn blocking<T, F>(&self, work: F) -> Result<T, LockError>
    where
        T: Send + 'static,
        F: FnOnce(&Arc<Shared>) -> Result<T, LockError> + Send + 'static,
    {
        let shared = self.shared.clone();
        with_timeout(NAME, self.shared.settings.timeout, async move {
            tokio::task::spawn_blocking(move || work(&shared))
                .await
                .map_err(|e| task_failed(NAME, e))?
        })
        .await
    }

    /// One granting attempt on the blocking pool, through core's
    /// [`cancel_safe`]: a lease won after the caller stopped waiting is
    /// released at once (even unreleased, a dropped lease frees its place,
    /// its alive file closing with it).
    pub(crate) async fn granting<F>(&self, work: F) -> Result<Lease, LockError>
    where
        F: FnOnce(&Arc<Shared>, tokio::time::Instant) -> Result<Lease, LockError> + Send + 'static,
    {
        let sent_at = self.shared.settings.clock.now();
        let (this, back) = (self.clone(), self.clone());
        cancel_safe(
            NAME,
            async move { this.blocking(move |shared| work(shared, sent_at)).await },
            move |lease| async move { back.release(&lease).await },
        )
        .await
    }

    /// Wakes this process's waiters of `key` (of every kind).
    pub(crate) fn notify_released(&self, key: &Key) {
        process_hub().notify(&self.signal_name(key));
    }

    fn signal_name(&self, key: &Key) -> String {
        self.shared
            .files(key.as_str())
            .state_path()
            .to_string_lossy()
            .into_owned()
    }

    fn check_ttl(&self, ttl: Duration) -> Result<(), LockError> {
        self.capabilities().check_ttl(NAME, ttl)
    }
}

fn prepare_dir(dir: &std::path::Path, create: bool) -> Result<(), LockError> {
    let mut checked = checked_dirs().lock().unwrap_or_else(|e| e.into_inner());
    if checked.contains_key(dir) && dir.is_dir() {
        return Ok(());
    }
    if create {
        std::fs::create_dir_all(dir)
            .map_err(|e| io_error(NAME, "create the lock directory", dir, e))?;
    }
    let metadata = std::fs::metadata(dir).map_err(|e| {
        LockError::Config(format!(
            "the lock directory {} is not usable: {e}",
            dir.display()
        ))
    })?;
    if !metadata.is_dir() {
        return Err(LockError::Config(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    if metadata.permissions().readonly() {
        return Err(LockError::Config(format!(
            "the lock directory {} is read-only",
            dir.display()
        )));
    }
    checked.insert(dir.to_owned(), ());
    Ok(())
}

#[async_trait]
impl LockBackend for FileBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            .fencing(Fencing::Strict)
            .durable_fencing(true)
            .expiry(Expiry::Ttl)
            .waiting(Waiting::Polled)
            .fairness(Fairness::None)
            .min_ttl(MIN_TTL)
            .ttl_granularity(Duration::from_millis(1))
            .holder_info(true)
            .rw_locks(true)
            .semaphores(true)
    }

    /// One attempt on the blocking pool, through core's [`cancel_safe`]: a
    /// caller that stops waiting never strands a grant (a lease won after it
    /// left is released at once; even unreleased, a dropped lease frees its
    /// key, its alive file closing with it).
    async fn try_acquire(&self, key: &Key, ttl: Duration) -> Result<Lease, LockError> {
        self.check_ttl(ttl)?;
        let key = key.clone();
        self.granting(move |shared, sent_at| lease::try_acquire(shared, &key, ttl, sent_at))
            .await
    }

    /// Core's loop ([`wait_for_lock`]): polls at the `poll` option (default
    /// 50 ms) at most; a release by a backend of this process wakes waiters
    /// at once.
    async fn acquire(
        &self,
        key: &Key,
        ttl: Duration,
        wait: &WaitPolicy,
    ) -> Result<Lease, LockError> {
        self.check_ttl(ttl)?;
        let poll = Some(self.shared.settings.poll);
        wait_for_lock(self, key, ttl, &wait.polling_at(poll)).await
    }

    /// Every kind: the mutex is `try_acquire`; a reader, writer or permit is
    /// one guarded step on the family's own state file (see the crate
    /// docs), cancel safe like the mutex.
    async fn try_acquire_kind(
        &self,
        key: &Key,
        kind: LockKind,
        ttl: Duration,
    ) -> Result<Lease, LockError> {
        self.capabilities().check_kind(NAME, kind)?;
        if kind == LockKind::Exclusive {
            return self.try_acquire(key, ttl).await;
        }
        self.check_ttl(ttl)?;
        self.share(key, kind, ttl, None).await
    }

    /// Every kind, polled like `acquire`; a waiting writer records its wait
    /// in the state (new readers are refused while it lives) and withdraws
    /// it when the wait ends, however it ends.
    async fn acquire_kind(
        &self,
        key: &Key,
        kind: LockKind,
        ttl: Duration,
        wait: &WaitPolicy,
    ) -> Result<Lease, LockError> {
        self.capabilities().check_kind(NAME, kind)?;
        if kind == LockKind::Exclusive {
            return self.acquire(key, ttl, wait).await;
        }
        self.check_ttl(ttl)?;
        self.wait_share(key, kind, ttl, wait).await
    }

    /// Compares the owner token and the deadline under the key's guard, then
    /// moves the deadline (every kind, in its family's state). Cancel
    /// safety: a dropped renewal may or may not have moved the deadline;
    /// either is valid.
    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<Lease, LockError> {
        self.check_ttl(ttl)?;
        let sent_at = self.shared.settings.clock.now();
        let lease = lease.clone();
        self.blocking(move |shared| lease::extend(shared, &lease, ttl, sent_at))
            .await
    }

    /// Core's [`extend_each`]: each renewal is its own guarded write.
    async fn extend_many(
        &self,
        renewals: &[(Lease, Duration)],
    ) -> Result<Vec<Result<Lease, LockError>>, LockError> {
        extend_each(self, renewals).await
    }

    /// Clears the holder (owner compare; every kind, in its family's
    /// state), keeping the counter, and closes the lease's alive file. Wakes
    /// this process's waiters of the key, of every kind.
    async fn release(&self, lease: &Lease) -> Result<(), LockError> {
        let key = lease.key().clone();
        let lease = lease.clone();
        let result = self
            .blocking(move |shared| lease::release(shared, &lease))
            .await;
        if result.is_ok() {
            self.notify_released(&key);
        }
        result
    }

    /// The live holder of the mutex: token, time left, owner hint, label,
    /// grant time (not the reader–writer lock or semaphore of the key).
    async fn inspect(&self, key: &Key) -> Result<Option<LockInfo>, LockError> {
        let key = key.clone();
        self.blocking(move |shared| lease::inspect(shared, &key))
            .await
    }

    /// Held mutexes by key order; the cursor is the last key shown.
    async fn list(&self, query: &ListQuery) -> Result<ListPage, LockError> {
        let query = query.clone();
        self.blocking(move |shared| admin::list(shared, &query))
            .await
    }

    /// Clears the holder and advances the counter (fsync'd), so the evicted
    /// holder's next renewal is `Lost` and the next token is above the
    /// evicted one. The reason is only logged at `DEBUG` (the
    /// [`Admin`](leasehold_core::Admin) audits).
    async fn force_release(&self, key: &Key, reason: &str) -> Result<Option<LockInfo>, LockError> {
        tracing::debug!(backend = NAME, key = key.as_str(), reason, "force release");
        let what = key.clone();
        let evicted = self
            .blocking(move |shared| lease::force_release(shared, &what))
            .await?;
        self.notify_released(key);
        Ok(evicted)
    }

    /// Wakes on releases (of any kind on `key`) by backends of this process
    /// only; releases by other processes are seen by polling.
    fn release_listener(&self, key: &Key) -> Option<ReleaseListener> {
        Some(process_hub().listen(&self.signal_name(key)))
    }
}
