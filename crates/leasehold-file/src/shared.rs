//! Reader–writer locks and semaphores over the same files as the mutex (see
//! [`crate::store`]), in a state file of their own per (family, key): the
//! stem of the reader–writer lock of `key` is `rw.` + [`file_stem`](crate::keys::file_stem)`(key)`,
//! the semaphore's `sem.` + it, so the three locks a key names never share
//! a file (and `list`, which reads only `k-`/`h-` stems, shows mutexes
//! only).
//!
//! The state holds the family's counter, its holders (sharers: kind, token,
//! and the mutex holder's liveness record) and, for a reader–writer lock,
//! the writers waiting for it. A sharer or a waiting writer counts while
//! both its deadline holds and its alive file is locked: the mutex's rule,
//! so a killed reader, writer, permit holder or waiting writer frees its
//! place at once and a hung one at its deadline. Every grant takes the next
//! value of the state's counter and is written durably before it is
//! answered, so a writer's token is above every earlier grant, a reader's
//! above every earlier writer's, and permits strictly increase.
//!
//! A waiting writer ([`FileBackend::acquire_kind`] for `Write`) creates its
//! own alive file first, then records itself (owner, deadline `ttl` ahead)
//! in the same guarded step as its first refused attempt, and refreshes the
//! deadline at the attempts that find it half spent. New readers are
//! refused while it counts. Its [`WaitingWriter`] guard closes the alive
//! file when the wait ends, however it ends (which withdraws it at once),
//! and removes the entry on the blocking pool.

use std::sync::Arc;
use std::time::Duration;

use leasehold_core::{Key, Lease, LockError, LockKind, OwnerToken, WaitPolicy, wait_for_grant};
use tokio::time::Instant;

use crate::FileBackend;
use crate::lease::Shared;
use crate::store::{Alive, Holder, KeyFiles, Sharer, State, info, live, monotonic_ns};

/// A writer waiting for a reader–writer lock: its owner and its locked
/// alive file (the liveness of its entry in the state).
#[derive(Debug)]
pub(crate) struct Registration {
    owner: OwnerToken,
    alive: Alive,
}

/// Whether `kind` may be granted beside the live `sharers`, with `waiting`
/// writers waiting.
fn admits(kind: LockKind, sharers: &[Sharer], waiting: bool) -> bool {
    match kind {
        LockKind::Read => !waiting && sharers.iter().all(|s| s.kind == LockKind::Read),
        LockKind::Permit { permits } => sharers.len() < permits as usize,
        _ => sharers.is_empty(),
    }
}

/// One attempt at a reader, writer or permit; `waiting` is the calling
/// writer's registration while it waits (recorded or refreshed when the
/// attempt is refused, removed when it is granted).
pub(crate) fn try_share(
    shared: &Arc<Shared>,
    key: &Key,
    kind: LockKind,
    ttl: Duration,
    sent_at: Instant,
    waiting: Option<&Registration>,
) -> Result<Lease, LockError> {
    let name = shared.name;
    let files = shared.files_of(kind, key.as_str());
    let _guard = files.guard(name, shared.deadline())?;
    let now = monotonic_ns();
    let mut state = files.read(name)?.unwrap_or_else(|| State {
        key: key.as_str().to_owned(),
        ..State::default()
    });
    let alive = |h: &Holder| live(&files, h, now, &shared.boot);
    let (sharers, dead_sharers): (Vec<Sharer>, Vec<Sharer>) =
        state.sharers.drain(..).partition(|s| alive(&s.holder));
    let mine = |w: &Holder| waiting.is_some_and(|r| r.owner == w.owner);
    let (waiters, dead_waiters): (Vec<Holder>, Vec<Holder>) =
        state.waiters.drain(..).partition(|w| mine(w) || alive(w));
    let dead: Vec<OwnerToken> = dead_sharers
        .iter()
        .map(|s| s.holder.owner)
        .chain(dead_waiters.iter().map(|w| w.owner))
        .collect();
    let others_wait = waiters.iter().any(|w| !mine(w));
    state.sharers = sharers;
    state.waiters = waiters;
    let deadline = now.saturating_add(Shared::ttl_ns(ttl));
    if !admits(kind, &state.sharers, others_wait) {
        let blocker = state
            .sharers
            .iter()
            .filter(|s| kind != LockKind::Read || s.kind != LockKind::Read)
            .min_by_key(|s| s.holder.expires_ns)
            .map(|s| info(s.token, &s.holder, now));
        if let Some(registration) = waiting
            && refresh(&mut state, registration, shared, now, ttl, deadline)
        {
            files.write(name, &state, false)?;
            remove_alive_files(&files, &dead);
        }
        return Err(LockError::contended(name, key.as_str(), blocker));
    }
    let counter = state.counter.checked_add(1).ok_or_else(|| {
        LockError::backend(name, format!("the fencing counter of {key:?} is exhausted"))
    })?;
    let owner = OwnerToken::generate();
    let alive = files.create_alive(name, &owner)?;
    state.counter = counter;
    state.sharers.push(Sharer {
        kind,
        token: counter,
        holder: shared.holder(owner, deadline),
    });
    if let Some(registration) = waiting {
        state.waiters.retain(|w| w.owner != registration.owner);
    }
    if let Err(error) = files.write(name, &state, true) {
        alive.close();
        return Err(error);
    }
    remove_alive_files(&files, &dead);
    Ok(shared
        .lease(key, owner, counter, sent_at, ttl, alive)
        .with_kind(kind))
}

/// Records the waiting writer, or moves its deadline `ttl` ahead when less
/// than half of it is left; says whether the state changed.
fn refresh(
    state: &mut State,
    registration: &Registration,
    shared: &Shared,
    now: u64,
    ttl: Duration,
    deadline: u64,
) -> bool {
    // A wait that ended (its guard closed the alive file before removing
    // the entry under the key's guard) is never recorded again by an
    // attempt still in flight.
    if !registration.alive.is_open() {
        return false;
    }
    let half = Shared::ttl_ns(ttl) / 2;
    match state
        .waiters
        .iter_mut()
        .find(|w| w.owner == registration.owner)
    {
        Some(entry) if entry.boot == shared.boot && entry.expires_ns.saturating_sub(now) > half => {
            false
        }
        Some(entry) => {
            entry.expires_ns = deadline;
            entry.boot.clone_from(&shared.boot);
            true
        }
        None => {
            state
                .waiters
                .push(shared.holder(registration.owner, deadline));
            true
        }
    }
}

fn remove_alive_files(files: &KeyFiles, owners: &[OwnerToken]) {
    for owner in owners {
        files.remove_alive(owner);
    }
}

/// A new waiting writer's registration: a fresh owner and its locked alive
/// file (nothing is recorded in the state yet).
fn register(shared: &Arc<Shared>, key: &Key) -> Result<Registration, LockError> {
    let files = shared.files_of(LockKind::Write, key.as_str());
    let owner = OwnerToken::generate();
    let alive = files.create_alive(shared.name, &owner)?;
    Ok(Registration { owner, alive })
}

/// Removes a finished wait's entry (and any dead one) from the state.
fn withdraw(shared: &Arc<Shared>, key: &Key, owner: OwnerToken) -> Result<(), LockError> {
    let name = shared.name;
    let files = shared.files_of(LockKind::Write, key.as_str());
    let _guard = files.guard(name, shared.deadline())?;
    let now = monotonic_ns();
    let Some(mut state) = files.read(name)? else {
        return Ok(());
    };
    let before = state.waiters.len();
    state
        .waiters
        .retain(|w| w.owner != owner && live(&files, w, now, &shared.boot));
    if state.waiters.len() < before {
        files.write(name, &state, false)?;
    }
    Ok(())
}

/// A writer's wait in progress; dropping it withdraws the writer: its alive
/// file closes at once (so its entry no longer counts), and its entry is
/// removed on the blocking pool.
pub(crate) struct WaitingWriter {
    backend: FileBackend,
    key: Key,
    registration: Arc<Registration>,
}

impl Drop for WaitingWriter {
    fn drop(&mut self) {
        self.registration.alive.close();
        let (backend, key, owner) = (
            self.backend.clone(),
            self.key.clone(),
            self.registration.owner,
        );
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let what = key.clone();
                if let Err(error) = backend
                    .blocking(move |shared| withdraw(shared, &what, owner))
                    .await
                {
                    tracing::debug!(backend = backend.shared.name, %key, %error,
                        "could not remove a finished writer's wait (it no longer counts)");
                }
                // Readers held back by this writer may go now.
                backend.notify_released(&key);
            });
        }
    }
}

impl FileBackend {
    /// One attempt at a reader, writer or permit, through
    /// [`FileBackend::granting`] (cancel safe).
    pub(crate) async fn share(
        &self,
        key: &Key,
        kind: LockKind,
        ttl: Duration,
        waiting: Option<Arc<Registration>>,
    ) -> Result<Lease, LockError> {
        let key = key.clone();
        self.granting(move |shared, sent_at| {
            try_share(shared, &key, kind, ttl, sent_at, waiting.as_deref())
        })
        .await
    }

    /// Waits for a reader, writer or permit with core's [`wait_for_grant`],
    /// polling at the `poll` option at most; a writer registers its wait
    /// (see the module docs).
    pub(crate) async fn wait_share(
        &self,
        key: &Key,
        kind: LockKind,
        ttl: Duration,
        wait: &WaitPolicy,
    ) -> Result<Lease, LockError> {
        let wait = wait.polling_at(Some(self.shared.settings.poll));
        let waiting = match kind {
            LockKind::Write => {
                let what = key.clone();
                let registration = self.blocking(move |shared| register(shared, &what)).await?;
                Some(WaitingWriter {
                    backend: self.clone(),
                    key: key.clone(),
                    registration: Arc::new(registration),
                })
            }
            _ => None,
        };
        let registration = waiting.as_ref().map(|w| w.registration.clone());
        wait_for_grant(self, key, &wait, || {
            self.share(key, kind, ttl, registration.clone())
        })
        .await
    }
}
