//! [`Locker`]: the user API (lock, try, wait, all-or-none, run-under-lock).
//! Guards live in `guard.rs`, the renewal engine in `watchdog.rs`.

use std::future::Future;
use std::panic::Location;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::Instrument;

use crate::backend::LockBackend;
use crate::config;
use crate::error::LockError;
use crate::guard::{LockGuard, MultiGuard};
use crate::held::HeldKeys;
use crate::key::{IntoKey, Key};
use crate::kind::{LockFamily, LockKind};
use crate::lease::Lease;
use crate::lock_options::LockOptions;
use crate::lockdep::{LockOrder, Lockdep};
use crate::metrics;
use crate::token::FencingToken;
use crate::ttl::TtlPolicy;
use crate::wait::{Attempts, WaitPolicy};
use crate::waits;
use crate::watchdog::Watchdogs;

/// A cheap-to-clone handle over a backend plus its policies; hands out
/// [`LockGuard`]s that extend themselves and report loss.
///
/// ```
/// use leasehold_core::{Locker, MemoryBackend, WaitPolicy, TtlPolicy};
/// use std::time::Duration;
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), leasehold_core::LockError> {
/// let locker = Locker::builder(MemoryBackend::new())
///     .ttl(TtlPolicy::Fixed(Duration::from_secs(10)))
///     .wait(WaitPolicy::new(Duration::from_secs(5)))
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
    wait: WaitPolicy,
    auto_extend: bool,
    watchdogs: Watchdogs,
    held: Arc<HeldKeys>,
    /// The `backend` and `locker` labels of this locker's metrics.
    meter: metrics::Meter,
    // Deadlock tooling (waits.rs, lockdep.rs).
    record_waits: bool,
    lockdep: Lockdep,
}

/// Builds a [`Locker`].
#[derive(Debug)]
pub struct LockerBuilder {
    backend: Arc<dyn LockBackend>,
    ttl: TtlPolicy,
    wait: WaitPolicy,
    auto_extend: bool,
    name: Arc<str>,
    // Deadlock tooling (waits.rs, lockdep.rs).
    record_waits: bool,
    lock_order: LockOrder,
    key_class: fn(&Key) -> &str,
}

impl LockerBuilder {
    /// The name in the `locker` label of this locker's metrics (default
    /// `"default"`), so two applications sharing one process and one
    /// metrics exporter are told apart. Keep it to a handful of fixed names
    /// per process: every name is a set of time series.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Arc::from(name.into());
        self
    }
    /// The TTL policy (default: fixed 30 s).
    pub fn ttl(mut self, ttl: TtlPolicy) -> Self {
        self.ttl = ttl;
        self
    }
    /// How `lock` waits for a held key: its deadline (default 60 s, twice the
    /// default TTL, so a crashed holder's key frees within the wait) and the
    /// backoff between attempts. Running out gives
    /// [`LockError::WaitTimedOut`](crate::LockError::WaitTimedOut); a store
    /// call that runs past the backend's `timeout` gives `Unavailable`.
    pub fn wait(mut self, wait: WaitPolicy) -> Self {
        self.wait = wait;
        self
    }

    /// The old name of [`LockerBuilder::wait`].
    #[deprecated(
        since = "0.2.0",
        note = "renamed `wait`: it sets how long and how to wait"
    )]
    pub fn retry(self, wait: WaitPolicy) -> Self {
        self.wait(wait)
    }
    /// Whether guards extend their lease at a third of the TTL (default
    /// true). Without it a guard still reports loss when its validity ends.
    pub fn auto_extend(mut self, enabled: bool) -> Self {
        self.auto_extend = enabled;
        self
    }
    /// Whether a wait for a held key is recorded in the store for
    /// `leasehold top` and `leasehold deadlocks` (default true). Costs
    /// nothing when the key is free, nor for a wait shorter than
    /// [`RECORD_AFTER`](crate::waits::RECORD_AFTER); a longer wait costs one
    /// acquisition and one release of an entry, and a renewal per third of
    /// the TTL while it lasts (see [`waits`](crate::waits)).
    pub fn record_waits(mut self, enabled: bool) -> Self {
        self.record_waits = enabled;
        self
    }
    /// What to do when a task takes key classes in an order that inverts
    /// one learned earlier (default [`LockOrder::Warn`]).
    pub fn lock_order(mut self, mode: LockOrder) -> Self {
        self.lock_order = mode;
        self
    }
    /// The class of a key for the lock-order check (default
    /// [`Key::default_class`]: the key up to its first `:`).
    pub fn key_class(mut self, class_of: fn(&Key) -> &str) -> Self {
        self.key_class = class_of;
        self
    }
    /// The locker.
    pub fn build(self) -> Locker {
        metrics::describe();
        let meter = metrics::Meter::new(self.backend.name(), self.name);
        Locker {
            inner: Arc::new(LockerInner {
                meter,
                backend: self.backend,
                ttl: self.ttl,
                wait: self.wait,
                auto_extend: self.auto_extend,
                watchdogs: Watchdogs::default(),
                held: Arc::default(),
                record_waits: self.record_waits,
                lockdep: Lockdep::new(self.lock_order, self.key_class),
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
            wait: WaitPolicy::default(),
            auto_extend: true,
            name: Arc::from("default"),
            record_waits: true,
            lock_order: LockOrder::default(),
            key_class: Key::default_class,
        }
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn LockBackend> {
        &self.inner.backend
    }

    /// How `lock` waits (deadline and backoff).
    pub fn wait_policy(&self) -> &WaitPolicy {
        &self.inner.wait
    }

    /// The TTL policy.
    pub fn ttl_policy(&self) -> &TtlPolicy {
        &self.inner.ttl
    }

    /// How many guards of this locker the watchdog has scheduled for renewal
    /// or a validity check now (renewals in flight are not counted): for
    /// tooling ("what does this process think it holds?").
    pub async fn watched_leases(&self) -> usize {
        self.inner.watchdogs.scheduled()
    }

    /// One attempt; a held key gives [`LockError::Contended`]. A key that
    /// this task already holds through this locker gives
    /// [`LockError::AlreadyHeld`] at once, from every way of locking: locks
    /// are not re-entrant, and waiting would only wait out the deadline
    /// behind itself. Other tasks sharing the locker wait for each other as
    /// usual.
    ///
    /// Every way of locking checks the lease when the store's answer arrives:
    /// an answer that came after the lease's validity ended (this process or
    /// the network stalled during acquisition) gives [`LockError::Lost`], never
    /// a guard, and the lease is released in the background.
    pub async fn try_lock(&self, key: impl IntoKey) -> Result<LockGuard, LockError> {
        self.try_lock_with(key, &LockOptions::new()).await
    }

    /// [`Locker::try_lock`] with this call's own options (`wait` is ignored).
    pub async fn try_lock_with(
        &self,
        key: impl IntoKey,
        options: &LockOptions,
    ) -> Result<LockGuard, LockError> {
        let key = key.into_key()?;
        self.acquire_guard(key, LockKind::Exclusive, None, options)
            .await
    }

    /// Waits up to the wait policy's deadline; gives [`LockError::WaitTimedOut`]
    /// after it.
    #[track_caller]
    pub fn lock(&self, key: impl IntoKey) -> impl Future<Output = Result<LockGuard, LockError>> {
        let site = Location::caller();
        async move { self.lock_at(key, &LockOptions::new(), site).await }
    }

    /// Waits up to `wait`.
    #[track_caller]
    pub fn lock_within(
        &self,
        key: impl IntoKey,
        wait: Duration,
    ) -> impl Future<Output = Result<LockGuard, LockError>> {
        let site = Location::caller();
        async move {
            self.lock_at(key, &LockOptions::new().wait(wait), site)
                .await
        }
    }

    /// [`Locker::lock`] with this call's own TTL, wait and auto-extension.
    #[track_caller]
    pub fn lock_with(
        &self,
        key: impl IntoKey,
        options: &LockOptions,
    ) -> impl Future<Output = Result<LockGuard, LockError>> {
        self.lock_at(key, options, Location::caller())
    }

    /// `lock_with` called at `site`: checks the lock order, then waits.
    async fn lock_at(
        &self,
        key: impl IntoKey,
        options: &LockOptions,
        site: &'static Location<'static>,
    ) -> Result<LockGuard, LockError> {
        let key = key.into_key()?;
        if self.inner.lockdep.enabled() {
            let holds = self.inner.held.this_task_holds();
            let holds = holds.iter().map(|(key, _)| key);
            self.inner
                .lockdep
                .check(&key, holds, site, &self.inner.meter)?;
        }
        let wait = self.wait_for(options);
        self.acquire_guard(key, LockKind::Exclusive, Some(wait), options)
            .await
    }

    /// The lock-order check (for its tests).
    #[cfg(test)]
    pub(crate) fn lockdep(&self) -> &Lockdep {
        &self.inner.lockdep
    }

    /// The wait policy of a call: the locker's, with the call's deadline.
    pub(crate) fn wait_for(&self, options: &LockOptions) -> WaitPolicy {
        match options.wait {
            Some(deadline) => self.inner.wait.clone().with_deadline(deadline),
            None => self.inner.wait.clone(),
        }
    }

    /// Takes every key or none: sorts them in one canonical order (the bytes of
    /// the key), drops duplicates and acquires in that order, all within the
    /// wait policy's deadline. On any failure it releases what it took, in
    /// reverse order, before returning the error. Two callers locking {A, B}
    /// and {B, A} at once never deadlock, because both take A first.
    pub async fn lock_all<I>(&self, keys: I) -> Result<MultiGuard, LockError>
    where
        I: IntoIterator,
        I::Item: IntoKey,
    {
        self.lock_all_with(keys, &LockOptions::new()).await
    }

    /// [`Locker::lock_all`] with this call's own options (one deadline for
    /// all the keys together).
    pub async fn lock_all_with<I>(
        &self,
        keys: I,
        options: &LockOptions,
    ) -> Result<MultiGuard, LockError>
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
        let wait = self.wait_for(options);
        // One deadline for all the keys together.
        let attempts = Attempts::new(&wait);
        let mut guards = Vec::with_capacity(keys.len());
        for key in keys {
            let wait = wait.clone().with_deadline(attempts.remaining());
            match self
                .acquire_guard(key, LockKind::Exclusive, Some(wait), options)
                .await
            {
                Ok(guard) => guards.push(guard),
                Err(error) => {
                    release_in_reverse(guards).await;
                    return Err(error);
                }
            }
        }
        Ok(MultiGuard::new(guards))
    }

    /// Acquires `key`, runs `work` with the fencing token and releases. If the
    /// lease is lost while `work` runs, `work` is dropped (cancelled at its
    /// next `.await`) and the result is [`LockError::Lost`]: work protected by a
    /// lock never goes on knowingly without it.
    ///
    /// Once `work` has finished, its result is returned even if the release
    /// then fails (the failure is logged and counted in
    /// `leasehold_release_total`, and the lease runs out on its own): an
    /// error there would invite a retry that runs the work twice.
    #[track_caller]
    pub fn with_lock<F, Fut, T>(
        &self,
        key: impl IntoKey,
        work: F,
    ) -> impl Future<Output = Result<T, LockError>>
    where
        F: FnOnce(FencingToken) -> Fut,
        Fut: Future<Output = T>,
    {
        let site = Location::caller();
        async move { self.with_lock_at(key, work, site).await }
    }

    async fn with_lock_at<F, Fut, T>(
        &self,
        key: impl IntoKey,
        work: F,
        site: &'static Location<'static>,
    ) -> Result<T, LockError>
    where
        F: FnOnce(FencingToken) -> Fut,
        Fut: Future<Output = T>,
    {
        let guard = self.lock_at(key, &LockOptions::new(), site).await?;
        let output = tokio::select! {
            output = work(guard.fencing_token()) => output,
            () = guard.lost() => {
                return Err(LockError::lost(guard.backend_name(), guard.key().as_str(), "lost while the work ran"));
            }
        };
        let key = guard.key();
        if let Err(error) = guard.release().await {
            tracing::warn!(%error, %key, "the work finished but releasing its lock failed; the lease will run out");
        }
        Ok(output)
    }

    /// Acquires `key` as `kind`, waiting by `wait` or trying once (`None`),
    /// and hands out a watched guard. Semaphores are not owned by a task: a
    /// task may hold several permits of one, so only the mutex and the
    /// reader–writer lock refuse a task that already holds them.
    pub(crate) async fn acquire_guard(
        &self,
        key: Key,
        kind: LockKind,
        wait: Option<WaitPolicy>,
        options: &LockOptions,
    ) -> Result<LockGuard, LockError> {
        let backend = &self.inner.backend;
        let name = backend.name();
        let family = kind.family();
        if family != LockFamily::Semaphore && self.inner.held.held_by_this_task(family, &key) {
            return Err(LockError::AlreadyHeld {
                backend: name,
                key: key.as_str().to_owned(),
            });
        }
        let ttl = options.ttl.unwrap_or_else(|| self.inner.ttl.ttl_for(&key));
        let auto_extend = options.auto_extend.unwrap_or(self.inner.auto_extend);
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
            let lease = match (&wait, kind) {
                (None, LockKind::Exclusive) => backend.try_acquire(&key, ttl).await,
                (None, kind) => backend.try_acquire_kind(&key, kind, ttl).await,
                (Some(wait), kind) => {
                    let _waiting = metrics::Waiting::start(&self.inner.meter);
                    // The waiters registry records mutex waits (what
                    // `leasehold deadlocks` can follow); other kinds wait
                    // unrecorded.
                    match kind {
                        LockKind::Exclusive if self.inner.record_waits => {
                            let holds = || self.inner.held.this_task_holds();
                            waits::acquire_recorded(backend, &key, ttl, wait, holds).await
                        }
                        LockKind::Exclusive => backend.acquire(&key, ttl, wait).await,
                        kind => backend.acquire_kind(&key, kind, ttl, wait).await,
                    }
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
        self.inner.meter.acquired(kind, outcome, started.elapsed());
        let lease = result?;
        Ok(self.watch(lease, ttl, auto_extend))
    }

    fn watch(&self, lease: Lease, ttl: Duration, auto_extend: bool) -> LockGuard {
        let backend = &self.inner.backend;
        let key = lease.key().clone();
        let family = lease.kind().family();
        let meter = &self.inner.meter;
        let watch = self
            .inner
            .watchdogs
            .watch(backend, meter, lease, ttl, auto_extend);
        let token = watch.lease().fencing_token();
        let holding = self
            .inner
            .held
            .register(family, key, token, watch.lost_token());
        LockGuard::new(
            backend.clone(),
            meter.clone(),
            self.inner.ttl.clone(),
            watch,
            holding,
        )
    }
}

async fn release_in_reverse(guards: Vec<LockGuard>) {
    for guard in guards.into_iter().rev() {
        if let Err(error) = guard.release().await {
            tracing::warn!(%error, "rolling back a partial multi-lock failed; the lease will expire");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Hooks, Spy};
    use crate::{MemoryBackend, TestClock};
    use proptest::prelude::*;

    fn locker_on(backend: Arc<dyn LockBackend>, ttl: Duration, wait: Duration) -> Locker {
        Locker::builder_from_arc(backend)
            .ttl(TtlPolicy::Fixed(ttl))
            .wait(WaitPolicy::new(wait))
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
        delay: Duration,
    }

    #[async_trait::async_trait]
    impl Hooks for LateAnswer {
        async fn try_acquire(
            &self,
            inner: &dyn LockBackend,
            key: &Key,
            ttl: Duration,
        ) -> Result<Lease, LockError> {
            let lease = inner.try_acquire(key, ttl).await;
            tokio::time::sleep(self.delay).await;
            lease
        }
        async fn acquire(
            &self,
            inner: &dyn LockBackend,
            key: &Key,
            ttl: Duration,
            wait: &WaitPolicy,
        ) -> Result<Lease, LockError> {
            let lease = inner.acquire(key, ttl, wait).await;
            tokio::time::sleep(self.delay).await;
            lease
        }
    }

    fn late(delay: Duration) -> Arc<dyn LockBackend> {
        Arc::new(Spy::new(
            Arc::new(MemoryBackend::new()),
            LateAnswer { delay },
        ))
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_after_validity_gives_lost_not_a_guard() {
        let ttl = Duration::from_secs(3);
        let slow = late(ttl * 2);
        for wait in [Duration::ZERO, Duration::from_secs(1)] {
            let locker = locker_on(slow.clone(), ttl, wait);
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
        let prompt = late(ttl / 10);
        let guard = locker_on(prompt, ttl, Duration::ZERO)
            .try_lock("k")
            .await
            .expect("an answer within validity locks");
        guard.release().await.unwrap();
    }

    /// A scheduled job's lock is held `at_least_for` from when this node
    /// learned it holds it, not from when it asked: a slow grant (a loaded
    /// machine, a slow store) must not shorten the hold, or a node firing a
    /// little late runs the same run again (seen in CI: the scheduler example
    /// on Postgres advisory ran run 0 twice).
    #[tokio::test(start_paused = true)]
    async fn a_scheduled_job_holds_at_least_for_from_its_grant() {
        let (grant_delay, at_least) = (Duration::from_millis(200), Duration::from_millis(300));
        let slow = late(grant_delay);
        let locker = locker_on(slow.clone(), Duration::from_secs(10), Duration::ZERO);
        let asked = Instant::now();
        let ran = locker
            .run_at_most_once("job", Duration::from_secs(10), at_least, |_| async {})
            .await
            .unwrap();
        assert!(matches!(ran, crate::Ran::Ran(..)));
        // Just before grant + at_least_for (past ask + at_least_for).
        tokio::time::sleep_until(asked + grant_delay + at_least - Duration::from_millis(20)).await;
        assert!(
            !is_free(&slow, "job").await,
            "the job's lock was released before at_least_for had passed since its grant"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            is_free(&slow, "job").await,
            "the lock outlived at_least_for"
        );
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
            matches!(result, Err(LockError::WaitTimedOut { .. })),
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
