//! Mutation testing of the conformance suite: a family of deliberately broken
//! backends, each a small in-memory backend with exactly one bug, must each
//! fail the suite, and the same backend without a bug (and the real
//! `MemoryBackend`) must pass it. A suite that passes a broken backend proves
//! nothing about a correct one. A small session backend (with a session
//! ender) does the same for the session-end case. All suites run at once, in
//! about 30 s.
//!
//! Each bug also names the case written to catch it; the test checks that
//! this case is among those that failed, and prints every case that did.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use leasehold_conformance::{CaseReport, Suite, Verdict, run_cases};
use leasehold_core::config::default_holder;
use leasehold_core::{
    CancellationToken, Capabilities, Drift, Expiry, Fencing, FencingToken, Key, Lease, ListPage,
    ListQuery, LockBackend, LockError, LockInfo, LockKind, MemoryBackend, OwnerToken, ReleaseHub,
    ReleaseListener, WaitPolicy, Waiting, async_trait, cancel_safe, extend_each, wait_for_lock,
};
use tokio::time::Instant;

const NAME: &str = "toy";

/// How long a case may run before it counts as a hang. Short, so that a bug
/// that hangs a case (an acquire that ignores its deadline) does not stall
/// the run; every case finishes far sooner on a correct backend.
const CASE_TIMEOUT: Duration = Duration::from_secs(40);

/// How long the delaying bugs hold an answer back: far above the suite's
/// 5 ms validity slack, far below every TTL the cases use.
const REPLY_DELAY: Duration = Duration::from_millis(50);

/// Keys longer than this are cut to it by [`Bug::KeysTruncated`] (a
/// `VARCHAR(255)` column).
const TRUNCATED_KEY_BYTES: usize = 255;

/// One deliberate bug.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bug {
    /// `try_acquire` grants a held key.
    NoExclusion,
    /// `release` deletes the lock whoever's lease it is given.
    ReleaseByAnyOwner,
    /// `extend` renews the lock whoever's lease it is given.
    ExtendByAnyOwner,
    /// Every fencing token is 1.
    ConstantTokens,
    /// A key's token counter lives in its lock entry and is deleted with it:
    /// after a release tokens start at 1 again.
    TokensResetAfterRelease,
    /// Locks never expire.
    TtlIgnored,
    /// Keys are cut to their first 255 bytes.
    KeysTruncated,
    /// Keys are lower-cased.
    KeysCaseFolded,
    /// `extend` answers with a renewed lease but does not renew the lock.
    NoOpExtend,
    /// `acquire` waits until it gets the key, whatever its deadline.
    DeadlineIgnored,
    /// `acquire` with a zero deadline gives `WaitTimedOut` without trying.
    ZeroWaitNeverTries,
    /// The answer is delayed, and validity counted from when it arrived.
    ValidityFromReply,
    /// `extend` of a lease whose key is free re-creates the lock, even though
    /// someone else took and released the key in between.
    ExtendRevives,
    /// The grant is applied, then the answer is delayed with no cleanup: a
    /// caller that drops the acquisition meanwhile strands the lock until
    /// its TTL ends (a request on the wire, no `cancel_safe`).
    StrandsDroppedGrants,
    /// `list` shows entries whose TTL ran out.
    ListShowsExpired,
    /// `force_release` reports the holder but leaves the key held.
    ForceReleaseOnlyReports,
}

impl Bug {
    const ALL: [Bug; 16] = [
        Bug::NoExclusion,
        Bug::ReleaseByAnyOwner,
        Bug::ExtendByAnyOwner,
        Bug::ConstantTokens,
        Bug::TokensResetAfterRelease,
        Bug::TtlIgnored,
        Bug::KeysTruncated,
        Bug::KeysCaseFolded,
        Bug::NoOpExtend,
        Bug::DeadlineIgnored,
        Bug::ZeroWaitNeverTries,
        Bug::ValidityFromReply,
        Bug::ExtendRevives,
        Bug::StrandsDroppedGrants,
        Bug::ListShowsExpired,
        Bug::ForceReleaseOnlyReports,
    ];

    /// The case written to catch this bug (others may catch it too).
    fn caught_by(self) -> &'static str {
        match self {
            Bug::NoExclusion => "try_acquire_on_held_key_is_contended",
            Bug::ReleaseByAnyOwner => "release_by_non_owner_is_refused",
            Bug::ExtendByAnyOwner => "extend_by_non_owner_is_refused",
            Bug::ConstantTokens | Bug::TokensResetAfterRelease => {
                "fencing_tokens_strictly_increase"
            }
            Bug::TtlIgnored => "holder_that_stops_renewing_loses_lock_after_ttl",
            Bug::KeysTruncated => "long_keys_differing_in_the_last_byte_stay_distinct",
            Bug::KeysCaseFolded => "keys_differing_in_case_whitespace_or_escaping_stay_distinct",
            Bug::NoOpExtend => "extend_keeps_the_lock",
            Bug::DeadlineIgnored => "acquire_times_out_with_timeout",
            Bug::ZeroWaitNeverTries => "zero_wait_acquisition_of_a_free_key_succeeds",
            Bug::ValidityFromReply => "valid_until_is_never_later_than_call_start_plus_ttl",
            Bug::ExtendRevives => "extend_after_take_and_release_is_lost",
            Bug::StrandsDroppedGrants => "dropped_acquisition_leaves_the_key_free",
            Bug::ListShowsExpired => "listing_hides_expired_entries",
            Bug::ForceReleaseOnlyReports => {
                "force_release_evicts_the_holder_and_advances_the_token"
            }
        }
    }
}

#[derive(Debug)]
struct Held {
    owner: OwnerToken,
    token: u64,
    expires: Instant,
}

#[derive(Debug, Default)]
struct State {
    holders: HashMap<String, Held>,
    last_token: u64,
}

/// A small in-memory backend, correct without a bug (the same behaviour as
/// `MemoryBackend`, but polled), broken by exactly one with it.
#[derive(Debug)]
struct Toy {
    bug: Option<Bug>,
    state: Mutex<State>,
}

const NO_DRIFT: Drift = Drift {
    factor: 0.0,
    fixed: Duration::ZERO,
};

impl Toy {
    fn new(bug: Option<Bug>) -> Self {
        Toy {
            bug,
            state: Mutex::new(State::default()),
        }
    }

    fn has(&self, bug: Bug) -> bool {
        self.bug == Some(bug)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The store's name for `key`.
    fn encode(&self, key: &Key) -> String {
        let name = key.as_str();
        if self.has(Bug::KeysCaseFolded) {
            return name.to_lowercase();
        }
        if self.has(Bug::KeysTruncated) && name.len() > TRUNCATED_KEY_BYTES {
            let mut end = TRUNCATED_KEY_BYTES;
            while !name.is_char_boundary(end) {
                end -= 1;
            }
            return name[..end].to_owned();
        }
        name.to_owned()
    }

    fn live(&self, held: &Held, now: Instant) -> bool {
        self.has(Bug::TtlIgnored) || held.expires > now
    }

    fn info(held: &Held, now: Instant) -> LockInfo {
        LockInfo::new(
            Some(FencingToken(held.token)),
            Some(held.expires.saturating_duration_since(now)),
        )
        .with_owner(&held.owner)
        .with_metadata(Some(default_holder()))
    }

    /// The instant a lease's validity counts from, given when the store
    /// applied the call; delays the answer where the bug says so.
    async fn answer_at(&self, applied: Instant) -> Instant {
        if self.has(Bug::ValidityFromReply) {
            tokio::time::sleep(REPLY_DELAY).await;
            return Instant::now();
        }
        if self.has(Bug::StrandsDroppedGrants) {
            tokio::time::sleep(REPLY_DELAY).await;
        }
        applied
    }
}

#[async_trait]
impl LockBackend for Toy {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            .fencing(Fencing::Strict)
            .holder_info(true)
    }

    async fn try_acquire(&self, key: &Key, ttl: Duration) -> Result<Lease, LockError> {
        self.capabilities().check_ttl(NAME, ttl)?;
        let name = self.encode(key);
        let (owner, token, applied) = {
            let mut state = self.state();
            let now = Instant::now();
            if let Some(held) = state.holders.get(&name).filter(|h| self.live(h, now))
                && !self.has(Bug::NoExclusion)
            {
                let info = LockInfo::new(
                    Some(FencingToken(held.token)),
                    Some(held.expires.saturating_duration_since(now)),
                );
                return Err(LockError::contended(NAME, key.as_str(), Some(info)));
            }
            let token = if self.has(Bug::ConstantTokens) {
                1
            } else if self.has(Bug::TokensResetAfterRelease) {
                state.holders.get(&name).map_or(1, |h| h.token + 1)
            } else {
                state.last_token += 1;
                state.last_token
            };
            let owner = OwnerToken::generate();
            state.holders.insert(
                name,
                Held {
                    owner,
                    token,
                    expires: now + ttl,
                },
            );
            (owner, token, now)
        };
        let from = self.answer_at(applied).await;
        Ok(Lease::new(
            NAME,
            key.clone(),
            owner,
            FencingToken(token),
            from,
            ttl,
            NO_DRIFT,
        ))
    }

    async fn acquire(
        &self,
        key: &Key,
        ttl: Duration,
        wait: &WaitPolicy,
    ) -> Result<Lease, LockError> {
        if self.has(Bug::ZeroWaitNeverTries) && wait.deadline.is_zero() {
            return Err(LockError::WaitTimedOut {
                backend: NAME,
                key: key.as_str().to_owned(),
                waited: Duration::ZERO,
            });
        }
        if self.has(Bug::DeadlineIgnored) {
            loop {
                match self.try_acquire(key, ttl).await {
                    Err(e) if e.is_retryable() => {
                        tokio::time::sleep(Duration::from_millis(5)).await
                    }
                    answer => return answer,
                }
            }
        }
        wait_for_lock(self, key, ttl, wait).await
    }

    /// Only the mutex (no reader–writer locks or semaphores on this store
    /// yet: [`Capabilities`] says so, and other kinds are
    /// [`LockError::Unsupported`]).
    async fn try_acquire_kind(
        &self,
        key: &Key,
        kind: LockKind,
        ttl: Duration,
    ) -> Result<Lease, LockError> {
        self.capabilities().check_kind(self.name(), kind)?;
        self.try_acquire(key, ttl).await
    }

    /// Only the mutex, as `try_acquire_kind`.
    async fn acquire_kind(
        &self,
        key: &Key,
        kind: LockKind,
        ttl: Duration,
        wait: &WaitPolicy,
    ) -> Result<Lease, LockError> {
        self.capabilities().check_kind(self.name(), kind)?;
        self.acquire(key, ttl, wait).await
    }

    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<Lease, LockError> {
        self.capabilities().check_ttl(NAME, ttl)?;
        let name = self.encode(lease.key());
        let applied = {
            let mut state = self.state();
            let now = Instant::now();
            let live = state.holders.get(&name).is_some_and(|h| self.live(h, now));
            match state.holders.get_mut(&name) {
                Some(held)
                    if live
                        && (held.owner == *lease.owner() || self.has(Bug::ExtendByAnyOwner)) =>
                {
                    if !self.has(Bug::NoOpExtend) {
                        held.expires = now + ttl;
                    }
                    now
                }
                None if self.has(Bug::ExtendRevives) => {
                    state.holders.insert(
                        name,
                        Held {
                            owner: *lease.owner(),
                            token: lease.fencing_token().get(),
                            expires: now + ttl,
                        },
                    );
                    now
                }
                _ => {
                    return Err(LockError::lost(
                        NAME,
                        lease.key().as_str(),
                        "the lease expired, or the key is free or held by another owner",
                    ));
                }
            }
        };
        let from = self.answer_at(applied).await;
        Ok(lease.renewed(from, ttl, NO_DRIFT))
    }

    async fn release(&self, lease: &Lease) -> Result<(), LockError> {
        let name = self.encode(lease.key());
        let mut state = self.state();
        let now = Instant::now();
        let ours = state.holders.get(&name).is_some_and(|h| {
            self.live(h, now) && (h.owner == *lease.owner() || self.has(Bug::ReleaseByAnyOwner))
        });
        if ours {
            state.holders.remove(&name);
            Ok(())
        } else {
            Err(LockError::not_held(NAME, lease.key().as_str()))
        }
    }

    async fn inspect(&self, key: &Key) -> Result<Option<LockInfo>, LockError> {
        let name = self.encode(key);
        let state = self.state();
        let now = Instant::now();
        Ok(state
            .holders
            .get(&name)
            .filter(|h| self.live(h, now))
            .map(|h| Self::info(h, now)))
    }

    async fn list(&self, query: &ListQuery) -> Result<ListPage, LockError> {
        let state = self.state();
        let now = Instant::now();
        let held = state
            .holders
            .iter()
            .filter(|(_, h)| self.live(h, now) || self.has(Bug::ListShowsExpired))
            .map(|(name, h)| (name.clone(), Self::info(h, now)));
        Ok(ListPage::from_held(held, query))
    }

    async fn force_release(&self, key: &Key, _reason: &str) -> Result<Option<LockInfo>, LockError> {
        let name = self.encode(key);
        let mut state = self.state();
        let now = Instant::now();
        let evicted = state
            .holders
            .get(&name)
            .filter(|h| self.live(h, now))
            .map(|h| Self::info(h, now));
        if !self.has(Bug::ForceReleaseOnlyReports) {
            state.holders.remove(&name);
        }
        Ok(evicted)
    }

    async fn extend_many(
        &self,
        renewals: &[(Lease, Duration)],
    ) -> Result<Vec<Result<Lease, LockError>>, LockError> {
        extend_each(self, renewals).await
    }

    fn release_listener(&self, _key: &Key) -> Option<ReleaseListener> {
        None
    }
}

/// A suite whose clients all share `backend` (one store).
fn suite_over(name: String, backend: Arc<dyn LockBackend>) -> Suite {
    Suite::new(name, move || {
        let backend = backend.clone();
        async move { Ok(backend) }
    })
}

/// A correct but slow store: every grant's answer takes [`REPLY_DELAY`] to
/// arrive, and the attempt runs through `cancel_safe`, so a caller that drops
/// it meanwhile leaves nothing held. The control for the dropped-acquisition
/// case: what [`Bug::StrandsDroppedGrants`] does, done right, must pass.
#[derive(Debug)]
struct SlowButCancelSafe {
    inner: Arc<Toy>,
}

#[async_trait]
impl LockBackend for SlowButCancelSafe {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn try_acquire(&self, key: &Key, ttl: Duration) -> Result<Lease, LockError> {
        let (inner, releaser, key) = (self.inner.clone(), self.inner.clone(), key.clone());
        cancel_safe(
            NAME,
            async move {
                let lease = inner.try_acquire(&key, ttl).await?;
                tokio::time::sleep(REPLY_DELAY).await;
                Ok(lease)
            },
            move |lease| async move { releaser.release(&lease).await },
        )
        .await
    }

    /// Only the mutex (no reader–writer locks or semaphores on this store
    /// yet: [`Capabilities`] says so, and other kinds are
    /// [`LockError::Unsupported`]).
    async fn try_acquire_kind(
        &self,
        key: &Key,
        kind: LockKind,
        ttl: Duration,
    ) -> Result<Lease, LockError> {
        self.capabilities().check_kind(self.name(), kind)?;
        self.try_acquire(key, ttl).await
    }

    /// Only the mutex, as `try_acquire_kind`.
    async fn acquire_kind(
        &self,
        key: &Key,
        kind: LockKind,
        ttl: Duration,
        wait: &WaitPolicy,
    ) -> Result<Lease, LockError> {
        self.capabilities().check_kind(self.name(), kind)?;
        self.acquire(key, ttl, wait).await
    }

    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<Lease, LockError> {
        self.inner.extend(lease, ttl).await
    }

    async fn release(&self, lease: &Lease) -> Result<(), LockError> {
        self.inner.release(lease).await
    }

    async fn inspect(&self, key: &Key) -> Result<Option<LockInfo>, LockError> {
        self.inner.inspect(key).await
    }

    async fn list(&self, query: &ListQuery) -> Result<ListPage, LockError> {
        self.inner.list(query).await
    }

    async fn force_release(&self, key: &Key, reason: &str) -> Result<Option<LockInfo>, LockError> {
        self.inner.force_release(key, reason).await
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

    fn release_listener(&self, _key: &Key) -> Option<ReleaseListener> {
        None
    }
}

/// The store of [`SessionToy`]: which session holds which key.
#[derive(Debug, Default)]
struct SessionStore {
    /// Store name of the key → (session id, owner, fencing token).
    holders: Mutex<HashMap<String, (u64, OwnerToken, u64)>>,
    last_token: AtomicU64,
    last_session: AtomicU64,
    /// Wakes the waiters of a key its holder gave up.
    released: ReleaseHub,
}

impl SessionStore {
    fn holders(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, OwnerToken, u64)>> {
        self.holders.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One client's session: its locks live until released or until the session
/// ends, which deletes them all at once (a dropped connection, an expired
/// ZooKeeper session).
#[derive(Debug)]
struct Session {
    id: u64,
    ended: CancellationToken,
    store: Arc<SessionStore>,
    bug: Option<SessionBug>,
}

impl Session {
    /// Deletes the session's locks and (unless that is the bug) wakes their
    /// waiters, as a store's watch on a deleted node would.
    fn end(&self) {
        self.ended.cancel();
        let mut freed = Vec::new();
        self.store.holders().retain(|key, (session, ..)| {
            let ours = *session == self.id;
            if ours {
                freed.push(key.clone());
            }
            !ours
        });
        if self.bug != Some(SessionBug::EndWakesNoWaiter) {
            for key in freed {
                self.store.released.notify(&key);
            }
        }
    }
}

/// What a broken [`SessionToy`] gets wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SessionBug {
    /// Its leases carry no loss signal: a guard learns of its session's end
    /// only from its next renewal.
    LossUnsignalled,
    /// A session's end frees its keys but wakes only the waiters of a
    /// release: a waiter sits out its poll behind a crashed holder.
    EndWakesNoWaiter,
}

/// A session backend in memory: each client is a session, and the session
/// ender ends one. Correct when its leases carry the session's end as their
/// loss signal and a session's end wakes the waiters of its keys; each
/// [`SessionBug`] breaks one of the two.
#[derive(Debug)]
struct SessionToy {
    session: Arc<Session>,
}

impl SessionToy {
    fn client(store: &Arc<SessionStore>, bug: Option<SessionBug>) -> Self {
        SessionToy {
            session: Arc::new(Session {
                id: store.last_session.fetch_add(1, Ordering::SeqCst) + 1,
                ended: CancellationToken::new(),
                store: store.clone(),
                bug,
            }),
        }
    }

    fn ours(&self, held: &(u64, OwnerToken, u64), lease: &Lease) -> bool {
        held.0 == self.session.id && held.1 == *lease.owner()
    }
}

#[async_trait]
impl LockBackend for SessionToy {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            .expiry(Expiry::Session)
            .fencing(Fencing::Strict)
            .waiting(Waiting::Notified)
            .holder_info(true)
    }

    async fn try_acquire(&self, key: &Key, ttl: Duration) -> Result<Lease, LockError> {
        self.capabilities().check_ttl(NAME, ttl)?;
        if self.session.ended.is_cancelled() {
            return Err(LockError::unavailable(NAME, "the session ended"));
        }
        let now = Instant::now();
        let store = &self.session.store;
        let mut holders = store.holders();
        if let Some((_, _, token)) = holders.get(key.as_str()) {
            let info = LockInfo::new(Some(FencingToken(*token)), None);
            return Err(LockError::contended(NAME, key.as_str(), Some(info)));
        }
        let owner = OwnerToken::generate();
        let token = store.last_token.fetch_add(1, Ordering::SeqCst) + 1;
        holders.insert(key.as_str().to_owned(), (self.session.id, owner, token));
        let lease = Lease::new(
            NAME,
            key.clone(),
            owner,
            FencingToken(token),
            now,
            ttl,
            NO_DRIFT,
        )
        .with_handle(Arc::new(self.session.clone()));
        Ok(if self.session.bug == Some(SessionBug::LossUnsignalled) {
            lease
        } else {
            lease.with_loss_signal(self.session.ended.clone())
        })
    }

    /// Only the mutex (no reader–writer locks or semaphores on this store
    /// yet: [`Capabilities`] says so, and other kinds are
    /// [`LockError::Unsupported`]).
    async fn try_acquire_kind(
        &self,
        key: &Key,
        kind: LockKind,
        ttl: Duration,
    ) -> Result<Lease, LockError> {
        self.capabilities().check_kind(self.name(), kind)?;
        self.try_acquire(key, ttl).await
    }

    /// Only the mutex, as `try_acquire_kind`.
    async fn acquire_kind(
        &self,
        key: &Key,
        kind: LockKind,
        ttl: Duration,
        wait: &WaitPolicy,
    ) -> Result<Lease, LockError> {
        self.capabilities().check_kind(self.name(), kind)?;
        self.acquire(key, ttl, wait).await
    }

    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<Lease, LockError> {
        self.capabilities().check_ttl(NAME, ttl)?;
        let now = Instant::now();
        let holders = self.session.store.holders();
        match holders.get(lease.key().as_str()) {
            Some(held) if self.ours(held, lease) => Ok(lease.renewed(now, ttl, NO_DRIFT)),
            _ => Err(LockError::lost(
                NAME,
                lease.key().as_str(),
                "the lock is gone (released, or its session ended)",
            )),
        }
    }

    async fn release(&self, lease: &Lease) -> Result<(), LockError> {
        let mut holders = self.session.store.holders();
        match holders.get(lease.key().as_str()) {
            Some(held) if self.ours(held, lease) => {
                holders.remove(lease.key().as_str());
                self.session.store.released.notify(lease.key().as_str());
                Ok(())
            }
            _ => Err(LockError::not_held(NAME, lease.key().as_str())),
        }
    }

    async fn inspect(&self, key: &Key) -> Result<Option<LockInfo>, LockError> {
        let holders = self.session.store.holders();
        Ok(holders.get(key.as_str()).map(session_info))
    }

    async fn list(&self, query: &ListQuery) -> Result<ListPage, LockError> {
        let holders = self.session.store.holders();
        let held = holders
            .iter()
            .map(|(name, held)| (name.clone(), session_info(held)));
        Ok(ListPage::from_held(held, query))
    }

    async fn force_release(&self, key: &Key, _reason: &str) -> Result<Option<LockInfo>, LockError> {
        let evicted = self.session.store.holders().remove(key.as_str());
        self.session.store.released.notify(key.as_str());
        Ok(evicted.as_ref().map(session_info))
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

    fn release_listener(&self, key: &Key) -> Option<ReleaseListener> {
        Some(self.session.store.released.listen(key.as_str()))
    }
}

/// What a [`SessionToy`] tells of a holder.
fn session_info((_, owner, token): &(u64, OwnerToken, u64)) -> LockInfo {
    LockInfo::new(Some(FencingToken(*token)), None)
        .with_owner(owner)
        .with_metadata(Some(default_holder()))
}

/// A suite over [`SessionToy`] clients of one store, with its session ender.
fn session_suite(name: String, bug: Option<SessionBug>) -> Suite {
    let store = Arc::new(SessionStore::default());
    Suite::new(name, move || {
        let client = SessionToy::client(&store, bug);
        async move { Ok(Arc::new(client) as Arc<dyn LockBackend>) }
    })
    .with_session_ender(|lease: Lease| {
        let session = lease.handle::<Arc<Session>>().cloned();
        async move {
            session
                .ok_or_else(|| "not a session toy lease".to_owned())?
                .end();
            Ok(())
        }
    })
}

/// A backend the suite runs against, and the case meant to catch its bug
/// (`None`: a correct backend, which must pass every case).
struct Subject {
    name: String,
    meant_for: Option<&'static str>,
    suite: Suite,
}

/// Prints past the test harness's output capture: the table of which case
/// caught which bug is the point of the run, also when it passes.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// The first `max` characters of `text`.
fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

fn failed(reports: &[CaseReport]) -> Vec<(&'static str, &str)> {
    reports
        .iter()
        .filter_map(|r| match &r.verdict {
            Verdict::Failed(message) => Some((r.name, message.as_str())),
            _ => None,
        })
        .collect()
}

#[test]
fn every_broken_backend_fails_the_suite_and_correct_ones_pass() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let started = std::time::Instant::now();
    let correct = |name: &str, backend: Arc<dyn LockBackend>| Subject {
        name: name.to_owned(),
        meant_for: None,
        suite: suite_over(name.to_owned(), backend),
    };
    let mut subjects = vec![
        correct("memory", Arc::new(MemoryBackend::new())),
        correct("toy", Arc::new(Toy::new(None))),
        correct(
            "slow-cancel-safe-toy",
            Arc::new(SlowButCancelSafe {
                inner: Arc::new(Toy::new(None)),
            }),
        ),
        Subject {
            name: "session-toy".into(),
            meant_for: None,
            suite: session_suite("session-toy".into(), None),
        },
        Subject {
            name: "SessionEndUnsignalled".into(),
            meant_for: Some("ending_the_holders_session_fires_lost"),
            suite: session_suite(
                "SessionEndUnsignalled".into(),
                Some(SessionBug::LossUnsignalled),
            ),
        },
        Subject {
            name: "SessionEndWakesNoWaiter".into(),
            meant_for: Some("a_waiter_gets_the_key_when_the_holders_session_ends"),
            suite: session_suite(
                "SessionEndWakesNoWaiter".into(),
                Some(SessionBug::EndWakesNoWaiter),
            ),
        },
    ];
    for bug in Bug::ALL {
        let name = format!("{bug:?}");
        subjects.push(Subject {
            meant_for: Some(bug.caught_by()),
            suite: suite_over(name.clone(), Arc::new(Toy::new(Some(bug)))),
            name,
        });
    }
    let results = runtime.block_on(async {
        let runs = subjects.into_iter().map(|subject| async move {
            let reports = run_cases(&subject.suite, CASE_TIMEOUT).await;
            (subject.name, subject.meant_for, reports)
        });
        futures_util::future::join_all(runs).await
    });
    let mut problems = Vec::new();
    for (name, meant_for, reports) in &results {
        let reports = match reports {
            Ok(reports) => reports,
            Err(e) => {
                problems.push(format!("{name}: the suite did not run: {e}"));
                continue;
            }
        };
        let failures = failed(reports);
        let passed = reports
            .iter()
            .filter(|r| r.verdict == Verdict::Passed)
            .count();
        match meant_for {
            None => {
                let skipped = reports.len() - passed - failures.len();
                say(&format!(
                    "correct {name}: {passed} passed, {} failed, {skipped} skipped",
                    failures.len()
                ));
                for (case, message) in &failures {
                    problems.push(format!("correct backend {name} failed {case}: {message}"));
                }
            }
            Some(meant_for) => {
                let names: Vec<&str> = failures.iter().map(|(case, _)| *case).collect();
                say(&format!("broken {name}: caught by {} cases", names.len()));
                for (case, message) in &failures {
                    say(&format!("    {case}: {}", clip(message, 150)));
                }
                if failures.is_empty() {
                    problems.push(format!("broken backend {name} passed the whole suite"));
                } else if !names.contains(meant_for) {
                    problems.push(format!(
                        "broken backend {name} was not caught by {meant_for}, the case meant \
                         for it (caught by {names:?})"
                    ));
                }
            }
        }
    }
    say(&format!(
        "{} backends through the suite in {:?}",
        results.len(),
        started.elapsed()
    ));
    runtime.shutdown_timeout(Duration::from_secs(5));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
