//! `Locker` and `LockGuard`: what most users touch.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::backend::LockBackend;
use crate::clock::instant_after;
use crate::config;
use crate::error::LockError;
use crate::key::Key;
use crate::lease::{Lease, LostReason};
use crate::retry::RetryPolicy;
use crate::token::FencingToken;
use crate::ttl::TtlPolicy;

/// Anything that names a key: `&str`, `String`, `Key`, `&Key`.
pub trait IntoKey {
    /// Validates (if needed) and converts.
    fn into_key(self) -> Result<Key, LockError>;
}

impl IntoKey for Key {
    fn into_key(self) -> Result<Key, LockError> {
        Ok(self)
    }
}
impl IntoKey for &Key {
    fn into_key(self) -> Result<Key, LockError> {
        Ok(self.clone())
    }
}
impl IntoKey for &str {
    fn into_key(self) -> Result<Key, LockError> {
        Ok(Key::new(self)?)
    }
}
impl IntoKey for String {
    fn into_key(self) -> Result<Key, LockError> {
        Ok(Key::new(self)?)
    }
}
impl IntoKey for &String {
    fn into_key(self) -> Result<Key, LockError> {
        Ok(Key::new(self.as_str())?)
    }
}

/// A cheap-to-clone handle over a backend plus its policies; hands out
/// [`LockGuard`]s that extend themselves and report loss.
///
/// ```
/// use leasehold_core::{Locker, MemoryBackend, RetryPolicy, TtlPolicy};
/// use std::time::Duration;
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), leasehold_core::LockError> {
/// let locker = Locker::builder(MemoryBackend::new())
///     .ttl(TtlPolicy::Fixed(Duration::from_secs(10)))
///     .retry(RetryPolicy::new(Duration::from_secs(5)))
///     .build();
/// let total = locker
///     .with_lock("account:7", |token| async move {
///         // Pass `token` to the protected resource so it can reject stale writers.
///         token.get() + 1
///     })
///     .await?;
/// assert!(total >= 2);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Locker {
    inner: Arc<LockerInner>,
}

#[derive(Debug)]
struct LockerInner {
    backend: Arc<dyn LockBackend>,
    ttl: TtlPolicy,
    retry: RetryPolicy,
    auto_extend: bool,
    /// One watchdog per tokio runtime this locker was used on.
    watchdogs: Mutex<Vec<(tokio::runtime::Id, mpsc::UnboundedSender<Command>)>>,
}

/// Builds a [`Locker`].
#[derive(Debug)]
pub struct LockerBuilder {
    backend: Arc<dyn LockBackend>,
    ttl: TtlPolicy,
    retry: RetryPolicy,
    auto_extend: bool,
}

impl LockerBuilder {
    /// The TTL policy (default: fixed 30 s).
    pub fn ttl(mut self, ttl: TtlPolicy) -> Self {
        self.ttl = ttl;
        self
    }
    /// The retry policy; its deadline is how long `lock` waits (default 30 s).
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }
    /// Whether guards extend their lease at a third of the TTL (default
    /// true). Without it a guard still reports loss when its validity ends.
    pub fn auto_extend(mut self, enabled: bool) -> Self {
        self.auto_extend = enabled;
        self
    }
    /// The locker.
    pub fn build(self) -> Locker {
        Locker {
            inner: Arc::new(LockerInner {
                backend: self.backend,
                ttl: self.ttl,
                retry: self.retry,
                auto_extend: self.auto_extend,
                watchdogs: Mutex::new(Vec::new()),
            }),
        }
    }
}

impl Locker {
    /// A locker with default policies.
    pub fn new(backend: impl LockBackend) -> Self {
        Self::builder(backend).build()
    }

    /// A locker over a shared backend with default policies.
    pub fn from_arc(backend: Arc<dyn LockBackend>) -> Self {
        Self::builder_from_arc(backend).build()
    }

    /// A builder over `backend`.
    pub fn builder(backend: impl LockBackend) -> LockerBuilder {
        Self::builder_from_arc(Arc::new(backend))
    }

    /// A builder over a shared backend.
    pub fn builder_from_arc(backend: Arc<dyn LockBackend>) -> LockerBuilder {
        LockerBuilder {
            backend,
            ttl: TtlPolicy::default(),
            retry: RetryPolicy::default(),
            auto_extend: true,
        }
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn LockBackend> {
        &self.inner.backend
    }

    /// The retry policy.
    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.inner.retry
    }

    /// The TTL policy.
    pub fn ttl_policy(&self) -> &TtlPolicy {
        &self.inner.ttl
    }

    /// How many guards of this locker the watchdog has scheduled for renewal
    /// or a validity check now (renewals in flight are not counted): for
    /// tooling ("what does this process think it holds?").
    pub async fn watched_leases(&self) -> usize {
        let (reply, answer) = tokio::sync::oneshot::channel();
        if self.watchdog().send(Command::Count(reply)).is_err() {
            return 0;
        }
        answer.await.unwrap_or(0)
    }

    /// One attempt; a held key gives [`LockError::Contended`].
    ///
    /// Every way of locking checks the lease when the store's answer arrives:
    /// an answer that came after the lease's validity ended (this process or
    /// the network stalled during acquisition) gives [`LockError::Lost`], never
    /// a guard, and the lease is released in the background.
    pub async fn try_lock(&self, key: impl IntoKey) -> Result<LockGuard, LockError> {
        let key = key.into_key()?;
        self.acquire_guard(key, None).await
    }

    /// Waits up to the retry policy's deadline; gives [`LockError::Timeout`]
    /// after it.
    pub async fn lock(&self, key: impl IntoKey) -> Result<LockGuard, LockError> {
        let key = key.into_key()?;
        self.acquire_guard(key, Some(self.inner.retry.clone()))
            .await
    }

    /// Waits up to `wait`.
    pub async fn lock_within(
        &self,
        key: impl IntoKey,
        wait: Duration,
    ) -> Result<LockGuard, LockError> {
        let key = key.into_key()?;
        self.acquire_guard(key, Some(self.inner.retry.clone().with_deadline(wait)))
            .await
    }

    /// Takes every key or none: sorts them in one canonical order (the bytes of
    /// the key), drops duplicates and acquires in that order, all within the
    /// retry policy's deadline. On any failure it releases what it took, in
    /// reverse order, before returning the error. Two callers locking {A, B}
    /// and {B, A} at once never deadlock, because both take A first.
    pub async fn lock_all<I>(&self, keys: I) -> Result<MultiGuard, LockError>
    where
        I: IntoIterator,
        I::Item: IntoKey,
    {
        let mut keys = keys
            .into_iter()
            .map(IntoKey::into_key)
            .collect::<Result<Vec<_>, _>>()?;
        keys.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        keys.dedup();
        let deadline = instant_after(Instant::now(), self.inner.retry.deadline);
        let mut guards = Vec::with_capacity(keys.len());
        for key in keys {
            let wait = self
                .inner
                .retry
                .clone()
                .with_deadline(deadline.saturating_duration_since(Instant::now()));
            match self.acquire_guard(key, Some(wait)).await {
                Ok(guard) => guards.push(guard),
                Err(error) => {
                    release_in_reverse(guards).await;
                    return Err(error);
                }
            }
        }
        Ok(MultiGuard { guards })
    }

    /// Acquires `key`, runs `work` with the fencing token and releases. If the
    /// lease is lost while `work` runs, `work` is dropped (cancelled at its
    /// next `.await`) and the result is [`LockError::Lost`]: work protected by a
    /// lock never goes on knowingly without it.
    pub async fn with_lock<F, Fut, T>(&self, key: impl IntoKey, work: F) -> Result<T, LockError>
    where
        F: FnOnce(FencingToken) -> Fut,
        Fut: Future<Output = T>,
    {
        let guard = self.lock(key).await?;
        let output = tokio::select! {
            output = work(guard.fencing_token()) => output,
            () = guard.lost() => {
                return Err(LockError::lost(guard.backend_name(), guard.key().as_str(), "lost while the work ran"));
            }
        };
        guard.release().await?;
        Ok(output)
    }

    async fn acquire_guard(
        &self,
        key: Key,
        wait: Option<RetryPolicy>,
    ) -> Result<LockGuard, LockError> {
        let backend = &self.inner.backend;
        let name = backend.name();
        let ttl = self.inner.ttl.ttl_for(&key);
        let started = Instant::now();
        let span = tracing::debug_span!("leasehold.acquire", backend = name, key = %key, outcome = tracing::field::Empty);
        let result = async {
            // Checked here too, so a third-party backend never sees a TTL
            // whose arithmetic overflows.
            if ttl > config::MAX_DURATION {
                return Err(LockError::InvalidTtl {
                    backend: name,
                    ttl,
                    reason: "must be at most one year".into(),
                });
            }
            let lease = match &wait {
                None => backend.try_acquire(&key, ttl).await,
                Some(wait) => {
                    let _waiting = Gauge::increment("leasehold_waiters", name);
                    backend.acquire(&key, ttl, wait).await
                }
            }?;
            if lease.is_valid_at(Instant::now()) {
                return Ok(lease);
            }
            // The answer came after the lease's validity ended: this process
            // or the network stalled during acquisition. Someone else may hold
            // the key by now, so no guard; and a session-backed store may still
            // hold it for us, so give it back.
            let backend = backend.clone();
            tokio::spawn(async move { backend.release(&lease).await });
            Err(LockError::lost(
                name,
                key.as_str(),
                "the store's answer arrived after the lease's validity ended \
                 (paused or delayed during acquisition)",
            ))
        }
        .instrument(span.clone())
        .await;
        let outcome = match &result {
            Ok(_) => "acquired",
            Err(error) => error.kind(),
        };
        span.record("outcome", outcome);
        metrics::counter!("leasehold_acquire_total", "backend" => name, "outcome" => outcome)
            .increment(1);
        metrics::histogram!("leasehold_acquire_seconds", "backend" => name)
            .record(started.elapsed());
        let lease = result?;
        Ok(self.watch(lease, ttl))
    }

    fn watch(&self, lease: Lease, ttl: Duration) -> LockGuard {
        let name = self.inner.backend.name();
        let entry = Arc::new(Watched {
            id: NEXT_WATCH_ID.fetch_add(1, Ordering::Relaxed),
            backend: name,
            lease: Mutex::new(lease),
            ttl,
            lost: CancellationToken::new(),
            reason: OnceLock::new(),
            finished: CancellationToken::new(),
            auto_extend: self.inner.auto_extend,
        });
        let watchdog = self.watchdog();
        if watchdog.send(Command::Watch(entry.clone())).is_err() {
            // No task can renew it or notice its end: never hand out a guard
            // that silently expires.
            entry.mark_lost(
                LostReason::RenewalFailed,
                "no watchdog could be started to renew it",
            );
        }
        metrics::gauge!("leasehold_held", "backend" => name).increment(1.0);
        LockGuard {
            locker: self.clone(),
            entry,
            watchdog,
            acquired_at: Instant::now(),
            released: false,
        }
    }

    /// The watchdog of the runtime this call runs on, started if there is
    /// none yet (or if the one there stopped).
    ///
    /// One watchdog per runtime, not per locker: a `Locker` kept in a
    /// `static` or built in a setup `block_on` and then used from another
    /// runtime would otherwise send its guards to a task that no longer runs
    /// (or is never polled), and they would expire silently.
    fn watchdog(&self) -> mpsc::UnboundedSender<Command> {
        let runtime = tokio::runtime::Handle::current();
        let mut watchdogs = self
            .inner
            .watchdogs
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        watchdogs.retain(|(_, sender)| !sender.is_closed());
        if let Some((_, sender)) = watchdogs.iter().find(|(id, _)| *id == runtime.id()) {
            return sender.clone();
        }
        let (sender, receiver) = mpsc::unbounded_channel();
        runtime.spawn(run_watchdog(
            self.inner.backend.clone(),
            Inbox(receiver),
            sender.downgrade(),
        ));
        watchdogs.push((runtime.id(), sender.clone()));
        sender
    }
}

async fn release_in_reverse(guards: Vec<LockGuard>) {
    for guard in guards.into_iter().rev() {
        if let Err(error) = guard.release().await {
            tracing::warn!(%error, "rolling back a partial multi-lock failed; the lease will expire");
        }
    }
}

static NEXT_WATCH_ID: AtomicU64 = AtomicU64::new(0);

/// A held lock. It extends itself in the background (at a third of the TTL,
/// on one shared scheduler per [`Locker`] and runtime), and
/// [`LockGuard::lost`] completes when the lease is lost: renewals failed until
/// validity ran out, the store ended the session, or someone else holds the
/// key now ([`LockGuard::lost_reason`] says which).
///
/// Call [`LockGuard::release`] to learn the store's answer. Dropping a guard
/// never blocks: it releases in the background and counts
/// `leasehold_release_total{outcome="dropped"}`.
#[derive(Debug)]
pub struct LockGuard {
    locker: Locker,
    entry: Arc<Watched>,
    watchdog: mpsc::UnboundedSender<Command>,
    acquired_at: Instant,
    released: bool,
}

impl LockGuard {
    /// The key.
    pub fn key(&self) -> Key {
        self.entry.lease().key().clone()
    }

    /// The fencing token: pass it to the protected resource.
    pub fn fencing_token(&self) -> FencingToken {
        self.entry.lease().fencing_token()
    }

    /// The end of validity on this process's monotonic clock, as of the last
    /// successful extension.
    pub fn valid_until(&self) -> Instant {
        self.entry.lease().valid_until()
    }

    /// A copy of the current lease.
    pub fn lease(&self) -> Lease {
        self.entry.lease()
    }

    /// Whether the lease is known to be lost: the watchdog declared it, the
    /// store signalled the end of its session, or its validity has passed
    /// (checked here on the spot, so the answer holds even when no watchdog
    /// could run).
    pub fn is_lost(&self) -> bool {
        self.entry.check();
        self.entry.lost.is_cancelled()
    }

    /// Why the lease was lost, once it is.
    pub fn lost_reason(&self) -> Option<LostReason> {
        self.entry.check();
        self.entry.reason.get().copied()
    }

    /// Completes when the lease is lost, or when the guard is released or
    /// dropped (the work it protects must stop then too). Stop the protected
    /// work when it does. It needs no watchdog: a store's session signal and
    /// the lease's own end of validity complete it directly.
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        let entry = self.entry.clone();
        async move { entry.ended().await }
    }

    /// A token cancelled when the lease is lost (for `tokio_util`-style
    /// cancellation of the protected work). It is a child of the guard's own
    /// loss token: no task is spawned per call.
    pub fn lost_token(&self) -> CancellationToken {
        self.entry.lost.child_token()
    }

    fn backend_name(&self) -> &'static str {
        self.entry.backend
    }

    /// Releases the lock and returns the store's answer (`NotHeld` when it
    /// had already expired or been taken over).
    pub async fn release(mut self) -> Result<(), LockError> {
        self.released = true;
        self.entry.finished.cancel();
        let _ = self.watchdog.send(Command::Forget(self.entry.id));
        let lease = self.entry.lease();
        let backend = self.locker.inner.backend.clone();
        let name = backend.name();
        let result = backend
            .release(&lease)
            .instrument(
                tracing::debug_span!("leasehold.release", backend = name, key = %lease.key()),
            )
            .await;
        let outcome = match &result {
            Ok(()) => "released",
            Err(error) => error.kind(),
        };
        metrics::counter!("leasehold_release_total", "backend" => name, "outcome" => outcome)
            .increment(1);
        self.finish(&lease);
        result
    }

    fn finish(&self, lease: &Lease) {
        let held = self.acquired_at.elapsed();
        let name = self.backend_name();
        metrics::histogram!("leasehold_hold_seconds", "backend" => name).record(held);
        metrics::gauge!("leasehold_held", "backend" => name).decrement(1.0);
        self.locker.inner.ttl.record(lease.key(), held);
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        self.entry.finished.cancel();
        let lease = self.entry.lease();
        metrics::counter!("leasehold_release_total", "backend" => self.backend_name(), "outcome" => "dropped")
            .increment(1);
        self.finish(&lease);
        // Never blocks: the watchdog task releases it. If that runtime is
        // gone, release on the current one; with no runtime at all, the lease
        // expires on its own.
        if let Err(mpsc::error::SendError(Command::Release(_, lease))) =
            self.watchdog.send(Command::Release(self.entry.id, lease))
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let backend = self.locker.inner.backend.clone();
            runtime.spawn(async move { backend.release(&lease).await });
        }
    }
}

/// Several locks taken by [`Locker::lock_all`], in canonical order.
#[derive(Debug)]
pub struct MultiGuard {
    guards: Vec<LockGuard>,
}

impl MultiGuard {
    /// The guards, in acquisition (canonical) order.
    pub fn guards(&self) -> &[LockGuard] {
        &self.guards
    }

    /// The fencing token of each key, in canonical order.
    pub fn fencing_tokens(&self) -> Vec<(Key, FencingToken)> {
        self.guards
            .iter()
            .map(|g| (g.key(), g.fencing_token()))
            .collect()
    }

    /// Completes when any of the leases is lost; like
    /// [`LockGuard::lost`], it owns what it needs, so it can move into a
    /// spawned task.
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        let losses: Vec<_> = self.guards.iter().map(|g| Box::pin(g.lost())).collect();
        async move {
            if losses.is_empty() {
                return std::future::pending().await;
            }
            futures_util::future::select_all(losses).await;
        }
    }

    /// Releases every lock in reverse order; returns the first error, after
    /// trying them all.
    pub async fn release(self) -> Result<(), LockError> {
        let mut first_error = None;
        for guard in self.guards.into_iter().rev() {
            if let Err(error) = guard.release().await {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Counts a gauge up for as long as it lives.
struct Gauge(&'static str, &'static str);

impl Gauge {
    fn increment(name: &'static str, backend: &'static str) -> Self {
        metrics::gauge!(name, "backend" => backend).increment(1.0);
        Gauge(name, backend)
    }
}

impl Drop for Gauge {
    fn drop(&mut self) {
        metrics::gauge!(self.0, "backend" => self.1).decrement(1.0);
    }
}

// ---- the shared scheduler -------------------------------------------------

#[derive(Debug)]
struct Watched {
    id: u64,
    backend: &'static str,
    lease: Mutex<Lease>,
    ttl: Duration,
    /// Cancelled once, when the lease is declared lost.
    lost: CancellationToken,
    reason: OnceLock<LostReason>,
    /// Cancelled when the guard is released or dropped.
    finished: CancellationToken,
    auto_extend: bool,
}

impl Watched {
    fn lease(&self) -> Lease {
        self.lease.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn is_done(&self) -> bool {
        self.finished.is_cancelled() || self.lost.is_cancelled()
    }

    fn mark_lost(&self, reason: LostReason, why: &str) {
        if self.is_done() || self.reason.set(reason).is_err() {
            return;
        }
        tracing::warn!(backend = self.backend, key = %self.lease().key(), reason = reason.as_str(), why, "lease lost");
        metrics::counter!("leasehold_lost_total", "backend" => self.backend, "reason" => reason.as_str())
            .increment(1);
        self.lost.cancel();
    }

    /// Declares the loss that the lease itself shows: the store's session
    /// signal fired, or validity has passed.
    fn check(&self) {
        if self.is_done() {
            return;
        }
        let lease = self.lease();
        if lease
            .loss_signal()
            .is_some_and(CancellationToken::is_cancelled)
        {
            self.mark_lost(LostReason::SessionEnded, "the store ended the session");
        } else if !lease.is_valid_at(Instant::now()) {
            let reason = if self.auto_extend {
                LostReason::RenewalFailed
            } else {
                LostReason::Expired
            };
            self.mark_lost(reason, "validity ended without a renewal");
        }
    }

    /// Completes when the lease is lost or the guard finished.
    async fn ended(&self) {
        loop {
            self.check();
            if self.is_done() {
                return;
            }
            let lease = self.lease();
            let session = async {
                match lease.loss_signal() {
                    Some(signal) => signal.cancelled().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = self.lost.cancelled() => {}
                () = self.finished.cancelled() => {}
                () = session => {}
                () = tokio::time::sleep_until(lease.valid_until()) => {}
            }
        }
    }

    /// When the first renewal is due: a third of the TTL after the lease was
    /// granted, and always before validity ends.
    fn first_due(&self) -> Instant {
        let lease = self.lease();
        if self.auto_extend {
            next_renewal(&lease, Instant::now(), Duration::ZERO)
        } else {
            lease.valid_until()
        }
    }
}

/// When a lease renewed (or granted) by `now` is next due: a third of its
/// TTL on, but never later than halfway to the end of its validity, and early
/// enough that a renewal as slow as the last one (`latency`, twice over)
/// still lands before validity ends. A slow store gets renewed back to back
/// rather than lost.
fn next_renewal(lease: &Lease, now: Instant, latency: Duration) -> Instant {
    let left = lease.valid_until().saturating_duration_since(now);
    let by = (lease.ttl() / 3)
        .min(left / 2)
        .min(left.saturating_sub(latency.saturating_mul(2)));
    instant_after(now, by)
}

#[derive(Debug)]
enum Command {
    Watch(Arc<Watched>),
    Due(Arc<Watched>, Instant),
    /// The guard was released: drop its agenda entry now rather than when
    /// it falls due (at high lock rates those stale entries piled up).
    Forget(u64),
    /// A dropped guard: forget it and release in the background.
    Release(u64, Lease),
    Count(tokio::sync::oneshot::Sender<usize>),
}

type SessionWatch = Pin<Box<dyn Future<Output = Arc<Watched>> + Send>>;

/// One task per locker and runtime keeps every guard's next renewal in one
/// agenda and renews the due ones together, so ten thousand guards cost one
/// timer, not ten thousand. It also listens to the store's session signals,
/// so a session that ends marks its guards lost at once.
async fn run_watchdog(
    backend: Arc<dyn LockBackend>,
    mut commands: Inbox,
    sender: mpsc::WeakUnboundedSender<Command>,
) {
    let mut agenda = Agenda::default();
    let mut sessions: FuturesUnordered<SessionWatch> = FuturesUnordered::new();
    loop {
        let next_due = agenda.next_due();
        let command = tokio::select! {
            command = commands.0.recv() => match command {
                Some(command) => command,
                None => return,
            },
            Some(entry) = sessions.next(), if !sessions.is_empty() => {
                entry.check();
                if entry.is_done() {
                    agenda.forget(entry.id);
                }
                continue;
            }
            () = sleep_until_or_forever(next_due) => {
                // Batch everything due within a few ms to share round trips.
                let due = agenda.take_due(Instant::now() + Duration::from_millis(5));
                if let Some(sender) = sender.upgrade() {
                    tokio::spawn(renew(backend.clone(), InFlight::new(due), sender));
                } else {
                    drop(InFlight::new(due));
                }
                continue;
            }
        };
        match command {
            Command::Watch(entry) => {
                if let Some(signal) = entry.lease().loss_signal().cloned() {
                    let watched = entry.clone();
                    sessions.push(Box::pin(async move {
                        tokio::select! {
                            () = signal.cancelled() => {}
                            () = watched.finished.cancelled() => {}
                            () = watched.lost.cancelled() => {}
                        }
                        watched
                    }));
                }
                agenda.schedule(entry.first_due(), entry);
            }
            Command::Due(entry, at) => {
                if !entry.is_done() {
                    agenda.schedule(at, entry);
                }
            }
            Command::Forget(id) => agenda.forget(id),
            Command::Count(reply) => {
                let _ = reply.send(agenda.len());
            }
            Command::Release(id, lease) => {
                agenda.forget(id);
                let backend = backend.clone();
                tokio::spawn(async move {
                    if let Err(error) = backend.release(&lease).await {
                        tracing::debug!(%error, key = %lease.key(), "background release of a dropped guard failed");
                    }
                });
            }
        }
    }
}

/// The watchdog's command queue. A watchdog task can be dropped before it
/// ever ran (its runtime shut down first); the leases still queued for it
/// are then lost, like those on its agenda.
struct Inbox(mpsc::UnboundedReceiver<Command>);

impl Drop for Inbox {
    fn drop(&mut self) {
        self.0.close();
        while let Ok(command) = self.0.try_recv() {
            if let Command::Watch(entry) | Command::Due(entry, _) = command {
                entry.mark_lost(
                    LostReason::RenewalFailed,
                    "the tokio runtime that was to renew it shut down",
                );
            }
        }
    }
}

/// The watchdog's timetable: entries by due time, and each entry's due time
/// by id so a released guard's entry can be dropped at once.
#[derive(Default)]
struct Agenda {
    by_due: BTreeMap<(Instant, u64), Arc<Watched>>,
    due_of: HashMap<u64, Instant>,
}

impl Agenda {
    fn schedule(&mut self, at: Instant, entry: Arc<Watched>) {
        if let Some(previous) = self.due_of.insert(entry.id, at) {
            self.by_due.remove(&(previous, entry.id));
        }
        self.by_due.insert((at, entry.id), entry);
    }

    fn forget(&mut self, id: u64) {
        if let Some(at) = self.due_of.remove(&id) {
            self.by_due.remove(&(at, id));
        }
    }

    fn next_due(&self) -> Option<Instant> {
        self.by_due.keys().next().map(|(at, _)| *at)
    }

    /// Removes and returns the live entries due before `horizon`.
    fn take_due(&mut self, horizon: Instant) -> Vec<Arc<Watched>> {
        let later = self.by_due.split_off(&(horizon, u64::MAX));
        let due = std::mem::replace(&mut self.by_due, later);
        due.into_values()
            .filter(|entry| {
                self.due_of.remove(&entry.id);
                !entry.is_done()
            })
            .collect()
    }

    fn len(&self) -> usize {
        self.by_due.len()
    }
}

impl Drop for Agenda {
    /// The watchdog task is going away with leases still scheduled: its
    /// runtime shut down. Nobody renews them now, so they are lost, not
    /// silently left to expire.
    fn drop(&mut self) {
        for entry in self.by_due.values() {
            entry.mark_lost(
                LostReason::RenewalFailed,
                "the tokio runtime that renewed it shut down",
            );
        }
    }
}

/// Leases taken off the agenda for one renewal round. Until the round has
/// settled each of them (back on the agenda, or lost), dropping it (a panic in
/// the backend, a runtime shutting down) marks the rest lost: no guard is ever
/// left unrenewed and unreported.
struct InFlight {
    entries: Vec<Arc<Watched>>,
}

impl InFlight {
    fn new(entries: Vec<Arc<Watched>>) -> Self {
        InFlight { entries }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        for entry in &self.entries {
            entry.mark_lost(
                LostReason::RenewalFailed,
                "the renewal task ended before it finished (a panic in the backend, or the runtime shut down)",
            );
        }
    }
}

async fn sleep_until_or_forever(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

type Renewal =
    Pin<Box<dyn Future<Output = (Vec<Arc<Watched>>, Vec<Result<Lease, LockError>>)> + Send>>;

async fn renew(
    backend: Arc<dyn LockBackend>,
    mut round: InFlight,
    sender: mpsc::UnboundedSender<Command>,
) {
    let name = backend.name();
    let now = Instant::now();
    let (to_extend, checks): (Vec<_>, Vec<_>) = std::mem::take(&mut round.entries)
        .into_iter()
        .partition(|entry| entry.auto_extend);
    for entry in checks {
        if now >= entry.lease().valid_until() {
            entry.mark_lost(LostReason::Expired, "validity ended (auto-extend is off)");
        } else {
            let _ = sender.send(Command::Due(entry.clone(), entry.lease().valid_until()));
        }
    }
    if to_extend.is_empty() {
        return;
    }
    round.entries = to_extend.clone();
    // A store that renews many leases in one call gets one batch; any other
    // gets one call per lease, all at once, each settled as it answers.
    let sent_at = Instant::now();
    let mut calls: FuturesUnordered<Renewal> = FuturesUnordered::new();
    if backend.capabilities().batch_extend {
        let backend = backend.clone();
        let entries = to_extend.clone();
        calls.push(Box::pin(async move {
            let renewals: Vec<(Lease, Duration)> =
                entries.iter().map(|e| (e.lease(), e.ttl)).collect();
            let results = backend.extend_many(&renewals).await;
            (entries, results)
        }));
    } else {
        for entry in &to_extend {
            let backend = backend.clone();
            let entry = entry.clone();
            calls.push(Box::pin(async move {
                let result = backend.extend(&entry.lease(), entry.ttl).await;
                (vec![entry], vec![result])
            }));
        }
    }
    // A renewal stuck on a slow store must not delay the loss signal past
    // validity: watch the deadlines while the calls run.
    let mut deadlines: Vec<(Instant, Arc<Watched>)> = to_extend
        .iter()
        .map(|entry| (entry.lease().valid_until(), entry.clone()))
        .collect();
    deadlines.sort_by_key(|(at, _)| *at);
    let mut deadlines = deadlines.into_iter().peekable();
    while !calls.is_empty() {
        let next_deadline = deadlines.peek().map(|(at, _)| *at);
        tokio::select! {
            Some((entries, results)) = calls.next() => {
                settle(name, &entries, results, sent_at, &sender);
            }
            () = sleep_until_or_forever(next_deadline) => {
                if let Some((_, entry)) = deadlines.next() {
                    // Settled entries carry their renewed validity by now.
                    entry.check();
                }
            }
        }
    }
    round.entries.clear();
}

/// Applies one renewal call's answers: renewed leases go back on the agenda,
/// refusals are losses, and transient errors retry before validity ends. A
/// backend that returned fewer results than leases left the rest unanswered:
/// they count as [`LockError::Unavailable`].
fn settle(
    name: &'static str,
    entries: &[Arc<Watched>],
    results: Vec<Result<Lease, LockError>>,
    sent_at: Instant,
    sender: &mpsc::UnboundedSender<Command>,
) {
    let answered = results.len();
    let mut results = results.into_iter();
    let now = Instant::now();
    let latency = now.saturating_duration_since(sent_at);
    for entry in entries {
        let result = results.next().unwrap_or_else(|| {
            Err(LockError::unavailable(
                name,
                format!(
                    "extend_many answered {answered} of {} renewals",
                    entries.len()
                ),
            ))
        });
        if entry.is_done() {
            continue;
        }
        let outcome = match result {
            Ok(lease) => {
                let next = next_renewal(&lease, now, latency);
                *entry.lease.lock().unwrap_or_else(|e| e.into_inner()) = lease;
                let _ = sender.send(Command::Due(entry.clone(), next));
                "extended"
            }
            Err(error) if error.is_retryable() => {
                let valid_until = entry.lease().valid_until();
                if now >= valid_until {
                    entry.mark_lost(
                        LostReason::RenewalFailed,
                        "renewals failed until validity ended",
                    );
                } else {
                    // Try again soon, and once more right at the end of validity.
                    let retry = instant_after(now, (entry.ttl / 10).max(Duration::from_millis(10)))
                        .min(valid_until);
                    let _ = sender.send(Command::Due(entry.clone(), retry));
                }
                error.kind()
            }
            Err(error) => {
                entry.mark_lost(LostReason::TakenOver, &error.to_string());
                error.kind()
            }
        };
        metrics::counter!("leasehold_extend_total", "backend" => name, "outcome" => outcome)
            .increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MemoryBackend, TestClock};
    use proptest::prelude::*;

    fn locker_on(backend: Arc<dyn LockBackend>, ttl: Duration, wait: Duration) -> Locker {
        Locker::builder_from_arc(backend)
            .ttl(TtlPolicy::Fixed(ttl))
            .retry(RetryPolicy::new(wait))
            .build()
    }

    async fn is_free(backend: &Arc<dyn LockBackend>, key: &str) -> bool {
        backend
            .inspect(&Key::new(key).unwrap())
            .await
            .unwrap()
            .is_none()
    }

    #[tokio::test(start_paused = true)]
    async fn guard_auto_extend_keeps_the_lock_past_several_ttls() {
        let backend: Arc<dyn LockBackend> = Arc::new(MemoryBackend::new());
        let locker = locker_on(backend.clone(), Duration::from_secs(3), Duration::ZERO);
        let guard = locker.lock("k").await.unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(!guard.is_lost(), "the watchdog let a held lock go");
        assert!(
            !is_free(&backend, "k").await,
            "the key expired while its guard lived"
        );
        assert!(guard.valid_until() > Instant::now());
        guard.release().await.unwrap();
        assert!(is_free(&backend, "k").await);
    }

    #[tokio::test(start_paused = true)]
    async fn lost_fires_when_the_lease_is_stolen() {
        // The holder's process is paused (its clock jumps past the TTL), the
        // lease expires, and someone else takes the key: the next renewal is
        // refused and lost() fires.
        let clock = Arc::new(TestClock::new());
        let backend: Arc<dyn LockBackend> = Arc::new(MemoryBackend::with_clock(clock.clone()));
        let locker = locker_on(backend.clone(), Duration::from_secs(3), Duration::ZERO);
        let guard = locker.lock("k").await.unwrap();
        clock.jump(Duration::from_secs(10));
        let thief = backend
            .try_acquire(&Key::new("k").unwrap(), Duration::from_secs(60))
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), guard.lost())
            .await
            .expect("lost() did not fire");
        assert!(guard.is_lost());
        assert!(matches!(
            guard.release().await,
            Err(LockError::NotHeld { .. })
        ));
        assert!(
            !is_free(&backend, "k").await,
            "releasing the stolen guard freed the thief's lock"
        );
        backend.release(&thief).await.unwrap();
    }

    /// Answers every acquisition only after `delay`, like a process paused
    /// (or a link stalled) between sending the request and reading the reply.
    #[derive(Debug)]
    struct LateAnswer {
        inner: MemoryBackend,
        delay: Duration,
    }

    #[async_trait::async_trait]
    impl LockBackend for LateAnswer {
        fn name(&self) -> &'static str {
            "late-answer"
        }
        fn capabilities(&self) -> crate::Capabilities {
            self.inner.capabilities()
        }
        async fn try_acquire(&self, key: &Key, ttl: Duration) -> Result<Lease, LockError> {
            let lease = self.inner.try_acquire(key, ttl).await;
            tokio::time::sleep(self.delay).await;
            lease
        }
        async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<Lease, LockError> {
            self.inner.extend(lease, ttl).await
        }
        async fn release(&self, lease: &Lease) -> Result<(), LockError> {
            self.inner.release(lease).await
        }
        async fn inspect(&self, key: &Key) -> Result<Option<crate::LockInfo>, LockError> {
            self.inner.inspect(key).await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_after_validity_gives_lost_not_a_guard() {
        let ttl = Duration::from_secs(3);
        let late: Arc<dyn LockBackend> = Arc::new(LateAnswer {
            inner: MemoryBackend::new(),
            delay: ttl * 2,
        });
        for wait in [Duration::ZERO, Duration::from_secs(1)] {
            let locker = locker_on(late.clone(), ttl, wait);
            let result = if wait.is_zero() {
                locker.try_lock("k").await
            } else {
                locker.lock("k").await
            };
            assert!(
                matches!(result, Err(LockError::Lost { .. })),
                "a lease whose validity ended before the answer came was handed out: {result:?}"
            );
        }
        // A prompt answer still locks.
        let prompt: Arc<dyn LockBackend> = Arc::new(LateAnswer {
            inner: MemoryBackend::new(),
            delay: ttl / 10,
        });
        let guard = locker_on(prompt, ttl, Duration::ZERO)
            .try_lock("k")
            .await
            .expect("an answer within validity locks");
        guard.release().await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_a_guard_releases_in_the_background() {
        let backend: Arc<dyn LockBackend> = Arc::new(MemoryBackend::new());
        let locker = locker_on(backend.clone(), Duration::from_secs(60), Duration::ZERO);
        let guard = locker.lock("k").await.unwrap();
        drop(guard);
        // The release runs on the watchdog task; it needs no TTL to pass.
        let key = Key::new("k").unwrap();
        let lease = tokio::time::timeout(Duration::from_secs(1), async {
            loop {
                if let Ok(lease) = backend.try_acquire(&key, Duration::from_secs(60)).await {
                    return lease;
                }
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("a dropped guard's key was not released in the background");
        backend.release(&lease).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn released_and_dropped_guards_leave_the_watchdog_agenda_at_once() {
        // Regression: released guards stayed in the agenda until their first
        // renewal fell due (a third of the TTL later), so a high lock rate
        // piled up entries (benchmarks: ~200k at 20k locks/s).
        let backend: Arc<dyn LockBackend> = Arc::new(MemoryBackend::new());
        let locker = locker_on(backend, Duration::from_secs(30), Duration::ZERO);
        let kept = locker.lock("kept").await.unwrap();
        for i in 0..1000 {
            let guard = locker.lock(format!("k{i}")).await.unwrap();
            if i % 2 == 0 {
                guard.release().await.unwrap();
            } else {
                drop(guard);
            }
        }
        assert_eq!(
            locker.watched_leases().await,
            1,
            "only the guard still held should be scheduled"
        );
        kept.release().await.unwrap();
        assert_eq!(locker.watched_leases().await, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn lock_all_takes_keys_in_canonical_order_without_duplicates() {
        let backend: Arc<dyn LockBackend> = Arc::new(MemoryBackend::new());
        let locker = locker_on(
            backend.clone(),
            Duration::from_secs(60),
            Duration::from_secs(1),
        );
        let guards = locker.lock_all(["b", "a", "c", "a", "b"]).await.unwrap();
        let keys: Vec<String> = guards
            .guards()
            .iter()
            .map(|g| g.key().to_string())
            .collect();
        assert_eq!(keys, ["a", "b", "c"]);
        let tokens: Vec<u64> = guards
            .fencing_tokens()
            .iter()
            .map(|(_, t)| t.get())
            .collect();
        assert!(
            tokens.windows(2).all(|w| w[0] < w[1]),
            "acquired out of order: {tokens:?}"
        );
        guards.release().await.unwrap();
        for key in ["a", "b", "c"] {
            assert!(is_free(&backend, key).await);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failed_lock_all_rolls_back_what_it_took() {
        let backend: Arc<dyn LockBackend> = Arc::new(MemoryBackend::new());
        let blocker = backend
            .try_acquire(&Key::new("m").unwrap(), Duration::from_secs(600))
            .await
            .unwrap();
        let locker = locker_on(
            backend.clone(),
            Duration::from_secs(60),
            Duration::from_secs(2),
        );
        let result = locker.lock_all(["z", "m", "a"]).await;
        assert!(
            matches!(result, Err(LockError::Timeout { .. })),
            "got {result:?}"
        );
        assert!(
            is_free(&backend, "a").await,
            "a was left held after the rollback"
        );
        assert!(is_free(&backend, "z").await, "z must never have been taken");
        backend.release(&blocker).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn opposite_order_multi_locks_from_many_tasks_finish() {
        let backend: Arc<dyn LockBackend> = Arc::new(MemoryBackend::new());
        let locker = locker_on(
            backend.clone(),
            Duration::from_secs(10),
            Duration::from_secs(60),
        );
        let mut tasks = Vec::new();
        for task in 0..16 {
            let locker = locker.clone();
            tasks.push(tokio::spawn(async move {
                let keys = if task % 2 == 0 {
                    ["A", "B"]
                } else {
                    ["B", "A"]
                };
                for _ in 0..20 {
                    locker
                        .lock_all(keys)
                        .await
                        .unwrap()
                        .release()
                        .await
                        .unwrap();
                }
            }));
        }
        for task in tasks {
            tokio::time::timeout(Duration::from_secs(60), task)
                .await
                .expect("deadlock")
                .unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn with_lock_cancels_the_work_when_the_lease_is_lost() {
        let clock = Arc::new(TestClock::new());
        let backend: Arc<dyn LockBackend> = Arc::new(MemoryBackend::with_clock(clock.clone()));
        let locker = locker_on(backend.clone(), Duration::from_secs(3), Duration::ZERO);
        let thief_backend = backend.clone();
        let result = locker
            .with_lock("k", |_token| async move {
                clock.jump(Duration::from_secs(10));
                let _thief = thief_backend
                    .try_acquire(&Key::new("k").unwrap(), Duration::from_secs(60))
                    .await;
                tokio::time::sleep(Duration::from_secs(3600)).await;
                "finished"
            })
            .await;
        assert!(
            matches!(result, Err(LockError::Lost { .. })),
            "got {result:?}"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn lock_all_holds_exactly_the_distinct_keys_then_frees_them(
            names in proptest::collection::vec("[a-c]{1,2}", 1..8)
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
            runtime.block_on(async {
                let backend: Arc<dyn LockBackend> = Arc::new(MemoryBackend::new());
                let locker = locker_on(backend.clone(), Duration::from_secs(60), Duration::from_secs(1));
                let guards = locker.lock_all(names.iter()).await.unwrap();
                let mut expected: Vec<&String> = names.iter().collect();
                expected.sort();
                expected.dedup();
                let held: Vec<String> = guards.guards().iter().map(|g| g.key().to_string()).collect();
                prop_assert_eq!(held.iter().collect::<Vec<_>>(), expected.clone());
                guards.release().await.unwrap();
                for name in expected {
                    prop_assert!(is_free(&backend, name).await);
                }
                Ok(())
            })?;
        }
    }
}
