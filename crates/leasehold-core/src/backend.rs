//! The contract every store implements.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use crate::capabilities::Capabilities;
use crate::error::LockError;
use crate::key::Key;
use crate::kind::LockKind;
use crate::lease::{Lease, LockInfo};
use crate::listing::{ListPage, ListQuery};
use crate::wait::{Attempts, WaitPolicy};

/// The backend-agnostic lock contract, used as `Arc<dyn LockBackend>`.
///
/// Every operation is bounded in time: a dead or paused store yields
/// [`LockError::Unavailable`] within the backend's per-call timeout, never a
/// hang. Ownership is proven only by the lease's owner token, compared in the
/// store in one atomic step.
///
/// Most users never call a backend directly: [`Locker`](crate::Locker) adds
/// guards, auto-extension, loss notification and policies on top.
///
/// ```
/// use leasehold_core::{Key, LockBackend, MemoryBackend};
/// use std::time::Duration;
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), leasehold_core::LockError> {
/// let backend = MemoryBackend::new();
/// let key = Key::new("orders:42")?;
/// let lease = backend.try_acquire(&key, Duration::from_secs(10)).await?;
/// assert!(backend.try_acquire(&key, Duration::from_secs(10)).await.is_err());
/// backend.release(&lease).await?;
/// # Ok(()) }
/// ```
#[async_trait]
pub trait LockBackend: Send + Sync + fmt::Debug + 'static {
    /// A short name for errors, spans and metrics (`"redis"`, `"memory"`).
    fn name(&self) -> &'static str;

    /// What this backend promises.
    fn capabilities(&self) -> Capabilities;

    /// One attempt; never waits for contention. A held key gives
    /// [`LockError::Contended`] with what the store can tell about the holder.
    async fn try_acquire(&self, key: &Key, ttl: Duration) -> Result<Lease, LockError>;

    /// Waits until the key is acquired or `wait.deadline` passes
    /// ([`LockError::WaitTimedOut`]). A store without a queue of its own
    /// implements it as `wait_for_lock(self, key, ttl, wait).await` (see
    /// [`wait_for_lock`]): backoff woken early by
    /// [`LockBackend::release_listener`].
    async fn acquire(
        &self,
        key: &Key,
        ttl: Duration,
        wait: &WaitPolicy,
    ) -> Result<Lease, LockError>;

    /// One attempt at a grant of `kind`: the mutex, a reader or the writer of
    /// the reader–writer lock `key`, or a permit of the semaphore `key` (see
    /// [`LockKind`] for the semantics and the fencing order every backend
    /// keeps). Never waits; a refused attempt leaves nothing in the store
    /// (a single writer attempt does not hold readers back).
    ///
    /// The lease it returns says its kind ([`Lease::kind`]); `extend`,
    /// `extend_many` and `release` take leases of every kind. The mutex is
    /// `try_acquire`; a kind the backend cannot grant is
    /// [`LockError::Unsupported`] (see [`Capabilities::check_kind`]).
    async fn try_acquire_kind(
        &self,
        key: &Key,
        kind: LockKind,
        ttl: Duration,
    ) -> Result<Lease, LockError>;

    /// Waits for a grant of `kind` until `wait.deadline`
    /// ([`LockError::WaitTimedOut`]). A waiting *writer* keeps new readers
    /// out (writer preference): it registers in the store before its first
    /// refused attempt and withdraws when the wait ends, whether by a grant,
    /// the deadline, an error or a dropped call (then at the latest when its
    /// registration expires, within `ttl`). The mutex is `acquire`. A store
    /// without a queue of its own waits with [`wait_for_grant`].
    async fn acquire_kind(
        &self,
        key: &Key,
        kind: LockKind,
        ttl: Duration,
        wait: &WaitPolicy,
    ) -> Result<Lease, LockError>;

    /// Renews a lease we hold for `ttl` from now. Fails with
    /// [`LockError::Lost`] when the lease is gone or someone else holds the
    /// key; never re-creates an expired lock unless the store proves nobody took
    /// it in between.
    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<Lease, LockError>;

    /// Renews several leases. The outer error fails the whole call (the store
    /// was unreachable, the batch was refused); otherwise there is one result
    /// per renewal, in input order. A store that renews a batch in one call
    /// says so in [`Capabilities::batch_extend`]; one that cannot implements
    /// this as `extend_each(self, renewals).await` (see [`extend_each`]).
    async fn extend_many(
        &self,
        renewals: &[(Lease, Duration)],
    ) -> Result<Vec<Result<Lease, LockError>>, LockError>;

    /// Releases a lease we hold with one atomic compare-and-delete. Releasing
    /// twice or after expiry is [`LockError::NotHeld`] (or `Lost`), never a
    /// deletion of somebody else's lock.
    async fn release(&self, lease: &Lease) -> Result<(), LockError>;

    /// The current holder of `key`, if any, for tooling; needs no lock.
    async fn inspect(&self, key: &Key) -> Result<Option<LockInfo>, LockError>;

    /// One page of the held keys under the namespace whose name starts with
    /// `query.prefix`, with what the store knows of each holder (as
    /// [`inspect`](LockBackend::inspect) tells it). Expired entries are never
    /// shown. Reads the store in pages (never a blocking full scan); a key
    /// changing hands during a listing may be missed or shown twice. Tools
    /// page through it with [`Admin::list`](crate::Admin::list).
    async fn list(&self, query: &ListQuery) -> Result<ListPage, LockError>;

    /// Frees `key` whoever holds it and advances its fencing token, so the
    /// evicted holder's next `extend` is [`LockError::Lost`], the next
    /// grant's token exceeds the evicted one, and a holder that wakes up
    /// after it never gets the key back. Returns the evicted holder (`None`
    /// when the key was free). `reason` may be recorded in the store. For
    /// operators: call it through [`Admin::force_release`](crate::Admin),
    /// which audits it.
    async fn force_release(&self, key: &Key, reason: &str) -> Result<Option<LockInfo>, LockError>;

    /// A listener that fires when the store signals `key` may have been
    /// released (a release of any kind on `key`: the mutex, a reader or writer,
    /// a permit; waiters of the other kinds just try again). Created *before* an attempt so no signal is missed in
    /// between. A store without release signals returns `None` (waiters
    /// poll).
    fn release_listener(&self, key: &Key) -> Option<ReleaseListener>;
}

/// `extend_many` for a store that cannot renew a batch in one call: renews
/// each lease with its own `extend`, all at once, so one slow call does not
/// delay the others.
pub async fn extend_each<B: LockBackend + ?Sized>(
    backend: &B,
    renewals: &[(Lease, Duration)],
) -> Result<Vec<Result<Lease, LockError>>, LockError> {
    Ok(futures_util::future::join_all(
        renewals
            .iter()
            .map(|(lease, ttl)| backend.extend(lease, *ttl)),
    )
    .await)
}

/// Implements [`LockBackend`] for smart pointers by forwarding every method
/// to the pointee. `missing_trait_methods` is denied, so a method added to
/// the trait and not forwarded here is a compile error, never a silent
/// fallback.
macro_rules! forward_backend {
    ($($pointer:ident),*) => {$(
        #[deny(clippy::missing_trait_methods)]
        #[async_trait]
        impl<T: LockBackend + ?Sized> LockBackend for $pointer<T> {
            fn name(&self) -> &'static str {
                (**self).name()
            }
            fn capabilities(&self) -> Capabilities {
                (**self).capabilities()
            }
            async fn try_acquire(&self, key: &Key, ttl: Duration) -> Result<Lease, LockError> {
                (**self).try_acquire(key, ttl).await
            }
            async fn acquire(
                &self,
                key: &Key,
                ttl: Duration,
                wait: &WaitPolicy,
            ) -> Result<Lease, LockError> {
                (**self).acquire(key, ttl, wait).await
            }
            async fn try_acquire_kind(
                &self,
                key: &Key,
                kind: LockKind,
                ttl: Duration,
            ) -> Result<Lease, LockError> {
                (**self).try_acquire_kind(key, kind, ttl).await
            }
            async fn acquire_kind(
                &self,
                key: &Key,
                kind: LockKind,
                ttl: Duration,
                wait: &WaitPolicy,
            ) -> Result<Lease, LockError> {
                (**self).acquire_kind(key, kind, ttl, wait).await
            }
            async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<Lease, LockError> {
                (**self).extend(lease, ttl).await
            }
            async fn extend_many(
                &self,
                renewals: &[(Lease, Duration)],
            ) -> Result<Vec<Result<Lease, LockError>>, LockError> {
                (**self).extend_many(renewals).await
            }
            async fn release(&self, lease: &Lease) -> Result<(), LockError> {
                (**self).release(lease).await
            }
            async fn inspect(&self, key: &Key) -> Result<Option<LockInfo>, LockError> {
                (**self).inspect(key).await
            }
            async fn list(&self, query: &ListQuery) -> Result<ListPage, LockError> {
                (**self).list(query).await
            }
            async fn force_release(
                &self,
                key: &Key,
                reason: &str,
            ) -> Result<Option<LockInfo>, LockError> {
                (**self).force_release(key, reason).await
            }
            fn release_listener(&self, key: &Key) -> Option<ReleaseListener> {
                (**self).release_listener(key)
            }
        }
    )*};
}

forward_backend!(Arc, Box);

/// The default waiting loop: attempt, then wait for a release signal or the
/// next backoff delay, until `wait.deadline`. Retryable store errors are
/// retried within the deadline; when it passes, contention becomes
/// [`LockError::WaitTimedOut`] and any other error is returned as it is.
pub async fn wait_for_lock<B: LockBackend + ?Sized>(
    backend: &B,
    key: &Key,
    ttl: Duration,
    wait: &WaitPolicy,
) -> Result<Lease, LockError> {
    wait_for_lock_with(backend, key, wait, || backend.try_acquire(key, ttl)).await
}

/// [`wait_for_lock`] with an attempt of the backend's own: for a store that
/// can also queue a waiter itself (Postgres advisory mode blocks in the
/// server's lock queue for a while when a refusal leaves it a session to
/// spare), woken and paced like [`wait_for_lock`] otherwise. `attempt` is
/// one try at the mutex `key`; a refusal is [`LockError::Contended`].
///
/// ```
/// use leasehold_core::{Key, LockBackend, MemoryBackend, WaitPolicy, wait_for_lock_with};
/// use std::time::Duration;
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), leasehold_core::LockError> {
/// let backend = MemoryBackend::new();
/// let key = Key::new("orders:42")?;
/// let ttl = Duration::from_secs(5);
/// let lease = wait_for_lock_with(&backend, &key, &WaitPolicy::new(Duration::from_secs(1)), || {
///     backend.try_acquire(&key, ttl)
/// })
/// .await?;
/// backend.release(&lease).await?;
/// # Ok(()) }
/// ```
pub async fn wait_for_lock_with<B, F, Fut>(
    backend: &B,
    key: &Key,
    wait: &WaitPolicy,
    attempt: F,
) -> Result<Lease, LockError>
where
    B: LockBackend + ?Sized,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Lease, LockError>>,
{
    wait_until(backend, key, wait, Waking::One, attempt).await
}

/// [`wait_for_lock`] for any attempt: calls `attempt` (one refusal-free try
/// of any [`LockKind`], with whatever the backend registers while it waits)
/// until it succeeds, woken early by [`LockBackend::release_listener`] of
/// `key`. A release wakes every such waiter of this process (readers and
/// permits may be granted together), where [`wait_for_lock`] wakes one.
///
/// ```
/// use leasehold_core::{Key, LockBackend, LockKind, MemoryBackend, WaitPolicy, wait_for_grant};
/// use std::time::Duration;
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), leasehold_core::LockError> {
/// let backend = MemoryBackend::new();
/// let key = Key::new("pool")?;
/// let ttl = Duration::from_secs(5);
/// let permit = wait_for_grant(&backend, &key, &WaitPolicy::new(Duration::from_secs(1)), || {
///     backend.try_acquire_kind(&key, LockKind::Permit { permits: 2 }, ttl)
/// })
/// .await?;
/// backend.release(&permit).await?;
/// # Ok(()) }
/// ```
pub async fn wait_for_grant<B, F, Fut>(
    backend: &B,
    key: &Key,
    wait: &WaitPolicy,
    attempt: F,
) -> Result<Lease, LockError>
where
    B: LockBackend + ?Sized,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Lease, LockError>>,
{
    wait_until(backend, key, wait, Waking::All, attempt).await
}

/// Whom a release signal wakes among this process's waiters of the key.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Waking {
    /// One (a mutex: see [`ReleaseHub`]).
    One,
    /// Every waiter, each on any signal, taking none (a woken waiter that
    /// signalled the rest again would wake those that failed, who would
    /// signal again: a busy loop).
    All,
}

async fn wait_until<B, F, Fut>(
    backend: &B,
    key: &Key,
    wait: &WaitPolicy,
    waking: Waking,
    mut attempt: F,
) -> Result<Lease, LockError>
where
    B: LockBackend + ?Sized,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Lease, LockError>>,
{
    let mut attempts = Attempts::new(wait);
    // The release signal this waiter took, if its last wait ended in one:
    // passed on to the key's next waiter of this process if this call is
    // dropped before its attempt has answered.
    let mut woken: Option<PassOn> = None;
    loop {
        let mut listener = backend.release_listener(key);
        let result = attempt().await;
        // A grant holds the key, and a refusal means someone else does;
        // either way a release will signal again. Any other failure keeps
        // it too: passing it on would have the next waiter retry at once,
        // skipping its backoff, against a store that just failed.
        if let Some(wake) = woken.take() {
            wake.keep();
        }
        let error = match result {
            Ok(lease) => return Ok(lease),
            Err(error) if error.is_retryable() => error,
            Err(error) => return Err(error),
        };
        // Never sleep past the holder's expiry when the store told us when it is.
        let holder_expires = match &error {
            LockError::Contended {
                holder: Some(holder),
                ..
            } => holder
                .remaining
                .map(|left| left.saturating_add(Duration::from_millis(1))),
            _ => None,
        };
        let Some(delay) = attempts.next_delay(holder_expires) else {
            return Err(attempts.give_up(error));
        };
        match listener.as_mut() {
            Some(listener) => {
                let notified = match waking {
                    Waking::One => listener.wait(delay).await,
                    Waking::All => listener.wait_any(delay).await,
                };
                if waking == Waking::One && notified == Wake::Notified {
                    woken = Some(listener.pass_on());
                }
            }
            None => tokio::time::sleep(delay).await,
        }
    }
}

/// Runs one store call under the per-call timeout; running out of time is
/// [`LockError::Unavailable`].
pub async fn with_timeout<T>(
    backend: &'static str,
    timeout: Duration,
    call: impl Future<Output = Result<T, LockError>>,
) -> Result<T, LockError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => result,
        Err(_) => Err(timed_out(backend, timeout)),
    }
}

/// The error of a call that got no answer within `timeout`.
pub(crate) fn timed_out(backend: &'static str, timeout: Duration) -> LockError {
    LockError::unavailable(
        backend,
        format!("no answer within the operation timeout of {timeout:?}"),
    )
}

/// Runs an acquisition so that a caller who stops waiting (drops the future:
/// a `select!`, a timeout, an aborted task) never strands a grant in the
/// store. The attempt runs to its end on its own task (it is bounded by the
/// backend's per-call timeouts), and a lease it wins after the caller left is
/// handed to `release` there, at once, instead of blocking the key until its
/// TTL runs out.
///
/// Every backend whose store call can be applied after the client gave up on
/// it (a request already on the wire) wraps `try_acquire` and `acquire` in
/// this. A panic in the attempt becomes [`LockError::Backend`].
///
/// ```
/// use leasehold_core::{Key, LockBackend, MemoryBackend, cancel_safe};
/// use std::{sync::Arc, time::Duration};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), leasehold_core::LockError> {
/// let backend = Arc::new(MemoryBackend::new());
/// let key = Key::new("jobs:nightly")?;
/// let (b, k) = (backend.clone(), key.clone());
/// let r = backend.clone();
/// let lease = cancel_safe(
///     "memory",
///     async move { b.try_acquire(&k, Duration::from_secs(5)).await },
///     move |lease| async move { r.release(&lease).await },
/// )
/// .await?;
/// backend.release(&lease).await?;
/// # Ok(()) }
/// ```
pub async fn cancel_safe<A, R, RF>(
    backend: &'static str,
    attempt: A,
    release: R,
) -> Result<Lease, LockError>
where
    A: Future<Output = Result<Lease, LockError>> + Send + 'static,
    R: FnOnce(Lease) -> RF + Send + 'static,
    RF: Future<Output = Result<(), LockError>> + Send + 'static,
{
    let (reply, answer) = tokio::sync::oneshot::channel();
    // The caller acknowledges the answer in the same poll that reads it: an
    // answer delivered to a caller that was dropped before reading it is
    // released too, not lost inside the channel.
    let (ack, acked) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let result = attempt.await;
        let granted = result.as_ref().ok().cloned();
        let unclaimed = match reply.send(result) {
            Err(Ok(lease)) => Some(lease),
            Err(Err(_)) => None,
            Ok(()) => match (granted, acked.await) {
                (Some(lease), Err(_)) => Some(lease),
                _ => None,
            },
        };
        if let Some(lease) = unclaimed {
            let key = lease.key().clone();
            match release(lease).await {
                Ok(()) => {
                    tracing::debug!(backend, %key, "released a lease granted after its caller gave up")
                }
                Err(error) => {
                    tracing::warn!(backend, %key, %error, "could not release a lease granted after its caller gave up; it expires with its TTL")
                }
            }
        }
    });
    let result = answer
        .await
        .unwrap_or_else(|_| Err(LockError::backend(backend, "the acquisition task panicked")));
    let _ = ack.send(());
    result
}

/// Why a waiter woke up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    /// The store signalled a release.
    Notified,
    /// The wait ran out (a poll).
    TimedOut,
}

/// Per-key release signals shared by a backend's waiters: the backend calls
/// [`ReleaseHub::notify`] when its store says a key was released (a pub/sub
/// message, a watch event, a NOTIFY), and waiters hold
/// [`ReleaseListener`]s. Memory stays bounded: a key's entry lives only while
/// someone listens.
///
/// A release wakes **one** listener of the key, not all of them: a mutex
/// has one grant to give, and with every waiter of a hot key woken, each
/// release cost the store one refused attempt per waiter (64 tasks on one
/// Redis key managed a fifth of the handoffs of polling waiters). The
/// others stay parked until a holder releases again or their poll comes
/// round. A waiter dropped before the attempt its signal led to has
/// answered passes the signal on ([`ReleaseListener::pass_on`]), so no
/// signal is stranded with a caller that went away. [`wait_for_grant`]
/// (readers, permits: they may all be granted at once) wakes on every
/// signal instead, and [`ReleaseHub::notify_all`] wakes everyone.
#[derive(Debug, Default)]
pub struct ReleaseHub {
    keys: Mutex<HashMap<String, Weak<SignalSender>>>,
}

/// A key's signals: how many listeners may still act on them. Every signal
/// is a send on the key's channel, which wakes each listener to try to take
/// one; taking one sends nothing.
#[derive(Clone, Copy, Debug, Default)]
struct Signals {
    wakes: usize,
}

type SignalSender = watch::Sender<Signals>;

/// Signals `wakes` more listeners of the key of `sender` (at least one, or
/// every listener when `all`).
fn signal(sender: &SignalSender, all: bool) {
    let listeners = sender.receiver_count();
    sender.send_modify(|signals| {
        signals.wakes = if all { listeners } else { signals.wakes.max(1) };
    });
}

impl ReleaseHub {
    /// An empty hub.
    pub fn new() -> Self {
        Self::default()
    }

    /// A listener for `key` (the store's encoded name or the key itself; the
    /// backend picks one and uses it on both sides).
    pub fn listen(&self, key: &str) -> ReleaseListener {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sender) = keys.get(key).and_then(Weak::upgrade) {
            let receiver = sender.subscribe();
            return ReleaseListener {
                receiver,
                sender,
                first_wait: None,
            };
        }
        if keys.len() >= 64 && keys.len().is_power_of_two() {
            keys.retain(|_, weak| weak.strong_count() > 0);
        }
        let sender = Arc::new(watch::channel(Signals::default()).0);
        keys.insert(key.to_owned(), Arc::downgrade(&sender));
        let receiver = sender.subscribe();
        ReleaseListener {
            receiver,
            sender,
            first_wait: None,
        }
    }

    /// Signals a release of `key`: one listener wakes (see [`ReleaseHub`]).
    pub fn notify(&self, key: &str) {
        let sender = {
            let keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
            keys.get(key).and_then(Weak::upgrade)
        };
        if let Some(sender) = sender {
            signal(&sender, false);
        }
    }

    /// Wakes every listener of every key (after a reconnect, when signals may
    /// have been missed).
    pub fn notify_all(&self) {
        let senders: Vec<_> = {
            let keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
            keys.values().filter_map(Weak::upgrade).collect()
        };
        for sender in senders {
            signal(&sender, true);
        }
    }

    /// How many keys have listeners now.
    pub fn listened_keys(&self) -> usize {
        let keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        keys.values().filter(|weak| weak.strong_count() > 0).count()
    }
}

/// Fires once a release of its key is signalled after the listener was made
/// and no other listener of the key took that signal first (see
/// [`ReleaseHub`]).
#[derive(Debug)]
pub struct ReleaseListener {
    receiver: watch::Receiver<Signals>,
    sender: Arc<SignalSender>,
    first_wait: Option<FirstWait>,
}

/// What a listener runs when it first waits ([`ReleaseListener::on_first_wait`]).
struct FirstWait(Box<dyn FnOnce() + Send + Sync>);

impl fmt::Debug for FirstWait {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FirstWait")
    }
}

impl ReleaseListener {
    /// Runs `first_wait` when this listener first waits, not when it is
    /// made. A waiting loop makes its listener before every attempt, so
    /// that no release between a refusal and the wait goes unheard; a feed
    /// that subscribes per key (Redis Cluster's shard channels) asks for
    /// the key's subscription here instead, so that a lock granted at its
    /// first attempt costs the store nothing more. Such a feed must wake
    /// the key's listeners once that subscription is up: a release before
    /// it is otherwise unheard.
    ///
    /// ```
    /// use leasehold_core::{ReleaseHub, Wake};
    /// use std::sync::atomic::{AtomicBool, Ordering};
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let hub = ReleaseHub::new();
    /// let asked = Arc::new(AtomicBool::new(false));
    /// let flag = asked.clone();
    /// let mut listener = hub
    ///     .listen("k")
    ///     .on_first_wait(move || flag.store(true, Ordering::Relaxed));
    /// assert!(!asked.load(Ordering::Relaxed), "made, not waited on");
    /// hub.notify("k");
    /// assert_eq!(listener.wait(Duration::from_secs(1)).await, Wake::Notified);
    /// assert!(asked.load(Ordering::Relaxed));
    /// # }
    /// ```
    pub fn on_first_wait(mut self, first_wait: impl FnOnce() + Send + Sync + 'static) -> Self {
        self.first_wait = Some(FirstWait(Box::new(first_wait)));
        self
    }

    /// Runs the [`on_first_wait`](Self::on_first_wait) hook, once.
    fn waiting(&mut self) {
        if let Some(FirstWait(first_wait)) = self.first_wait.take() {
            first_wait();
        }
    }

    /// Waits for a release signal, at most `timeout`.
    pub async fn wait(&mut self, timeout: Duration) -> Wake {
        self.waiting();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.receiver.changed()).await {
                Ok(Ok(())) => {
                    self.receiver.borrow_and_update();
                    if self.take() {
                        return Wake::Notified;
                    }
                    // Another listener took it: keep waiting.
                }
                _ => return Wake::TimedOut,
            }
        }
    }

    /// Waits for any release signal of the key, whether or not another
    /// listener takes it, at most `timeout` (waiters that may all be granted
    /// together: readers, permits).
    async fn wait_any(&mut self, timeout: Duration) -> Wake {
        self.waiting();
        match tokio::time::timeout(timeout, self.receiver.changed()).await {
            Ok(Ok(())) => {
                self.receiver.borrow_and_update();
                Wake::Notified
            }
            _ => Wake::TimedOut,
        }
    }

    /// Takes one of the signalled wakes, if one is left.
    fn take(&self) -> bool {
        let mut took = false;
        self.sender.send_if_modified(|signals| {
            if signals.wakes > 0 {
                signals.wakes -= 1;
                took = true;
            }
            // Taking wakes nobody.
            false
        });
        took
    }

    /// The signal this listener's [`wait`](Self::wait) returned
    /// [`Wake::Notified`] for, to pass on to the next listener of the key
    /// when dropped, unless [`PassOn::keep`] says the attempt it led to
    /// answered. [`wait_for_lock`] does this; a backend's own waiting loop
    /// should too.
    pub fn pass_on(&self) -> PassOn {
        PassOn {
            sender: Some(self.sender.clone()),
        }
    }
}

/// A release signal a waiter acted on, passed on to the key's next listener
/// when dropped (see [`ReleaseListener::pass_on`]).
#[derive(Debug)]
#[must_use = "dropping it passes the signal on at once"]
pub struct PassOn {
    sender: Option<Arc<SignalSender>>,
}

impl PassOn {
    /// The attempt answered (a grant or a refusal: either way someone
    /// holds the key, whose release will signal), so the signal is not
    /// passed on.
    pub fn keep(mut self) {
        self.sender = None;
    }
}

impl Drop for PassOn {
    fn drop(&mut self) {
        if let Some(sender) = self.sender.take() {
            signal(&sender, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_listener_sees_a_release_signalled_after_it_was_made() {
        let hub = ReleaseHub::new();
        let mut listener = hub.listen("k");
        hub.notify("k");
        assert_eq!(listener.wait(Duration::from_secs(1)).await, Wake::Notified);
        assert_eq!(listener.wait(Duration::from_secs(1)).await, Wake::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn a_release_wakes_one_listener_and_a_dropped_wake_passes_it_on() {
        let hub = ReleaseHub::new();
        let (mut first, mut second) = (hub.listen("k"), hub.listen("k"));
        hub.notify("k");
        assert_eq!(first.wait(Duration::from_secs(1)).await, Wake::Notified);
        let short = Duration::from_millis(10);
        assert_eq!(
            second.wait(short).await,
            Wake::TimedOut,
            "two woken by one release"
        );
        first.pass_on().keep();
        assert_eq!(
            second.wait(short).await,
            Wake::TimedOut,
            "a kept wake was passed on"
        );
        hub.notify("k");
        assert_eq!(second.wait(Duration::from_secs(1)).await, Wake::Notified);
        drop(second.pass_on());
        assert_eq!(
            first.wait(Duration::from_secs(1)).await,
            Wake::Notified,
            "a wake dropped unanswered was not passed on"
        );
        hub.notify_all();
        assert_eq!(first.wait(short).await, Wake::Notified);
        assert_eq!(
            second.wait(short).await,
            Wake::Notified,
            "notify_all woke one"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn signals_for_other_keys_do_not_wake_a_listener() {
        let hub = ReleaseHub::new();
        let mut listener = hub.listen("a");
        hub.notify("b");
        assert_eq!(
            listener.wait(Duration::from_millis(10)).await,
            Wake::TimedOut
        );
        hub.notify_all();
        assert_eq!(
            listener.wait(Duration::from_millis(10)).await,
            Wake::Notified
        );
    }

    #[tokio::test]
    async fn a_grant_delivered_to_a_caller_dropped_before_reading_it_is_released() {
        use crate::MemoryBackend;
        let backend = Arc::new(MemoryBackend::new());
        let key = Key::new("k").unwrap();
        let (b, k, r) = (backend.clone(), key.clone(), backend.clone());
        let mut call = Box::pin(cancel_safe(
            "memory",
            async move { b.try_acquire(&k, Duration::from_secs(60)).await },
            move |lease: Lease| async move { r.release(&lease).await },
        ));
        // Polled once (the attempt is spawned), then the task delivers the
        // grant, then the caller is dropped without reading it.
        let pending =
            std::future::poll_fn(|cx| std::task::Poll::Ready(call.as_mut().poll(cx).is_pending()))
                .await;
        assert!(pending);
        tokio::task::yield_now().await;
        drop(call);
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        let lease = backend
            .try_acquire(&key, Duration::from_secs(1))
            .await
            .expect("the grant delivered to a dropped caller stranded the key");
        backend.release(&lease).await.unwrap();
        // A caller that reads its answer keeps the lease.
        let (b, k, r) = (backend.clone(), key.clone(), backend.clone());
        let kept = cancel_safe(
            "memory",
            async move { b.try_acquire(&k, Duration::from_secs(60)).await },
            move |lease: Lease| async move { r.release(&lease).await },
        )
        .await
        .unwrap();
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        backend
            .release(&kept)
            .await
            .expect("a lease its caller read was released under it");
    }

    #[test]
    fn hub_forgets_keys_nobody_listens_to() {
        let hub = ReleaseHub::new();
        for i in 0..1000 {
            let _listener = hub.listen(&format!("k{i}"));
        }
        assert_eq!(hub.listened_keys(), 0);
        assert!(
            hub.keys.lock().unwrap().len() < 1000,
            "dead entries were never pruned"
        );
    }
}
