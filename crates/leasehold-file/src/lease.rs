//! The lock algorithm over a key's files (see [`crate::store`] for the
//! files): every step a blocking read-modify-write under the key's guard
//! lock, run on tokio's blocking pool by the backend.
//!
//! A recorded holder holds the key while both hold: its deadline on the
//! host's monotonic clock has not passed, and its process still locks its
//! alive file. So a killed holder's key frees at once (the OS dropped its
//! lock), a live holder that stops renewing loses it at its deadline, and a
//! grant is only written after the previous holder's deadline passed or its
//! process is gone: two holders are never both valid.

use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant, SystemTime};

use leasehold_core::{FencingToken, Key, Lease, LockError, LockInfo, LockKind, OwnerToken};
use tokio::time::Instant;

use crate::config::Settings;
use crate::keys::family_stem;
use crate::store::{Alive, Holder, KeyFiles, State, info, live, monotonic_ns};

/// What the backend's calls share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) name: &'static str,
    pub(crate) settings: Settings,
    /// This boot's id, read once.
    pub(crate) boot: String,
}

impl Shared {
    pub(crate) fn files(&self, key: &str) -> KeyFiles {
        self.files_of(LockKind::Exclusive, key)
    }

    /// The files of the lock of `kind`'s family named `key`.
    pub(crate) fn files_of(&self, kind: LockKind, key: &str) -> KeyFiles {
        KeyFiles::new(&self.settings.dir, family_stem(kind, key))
    }

    /// The deadline for waiting on a guard lock: the operation timeout.
    pub(crate) fn deadline(&self) -> StdInstant {
        StdInstant::now() + self.settings.timeout
    }

    pub(crate) fn ttl_ns(ttl: Duration) -> u64 {
        u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX)
    }

    /// The lease of a grant written to the state: `owner` with token
    /// `counter`, valid from `sent_at`, keeping its `alive` file.
    pub(crate) fn lease(
        &self,
        key: &Key,
        owner: OwnerToken,
        counter: u64,
        sent_at: Instant,
        ttl: Duration,
        alive: Alive,
    ) -> Lease {
        Lease::new(
            self.name,
            key.clone(),
            owner,
            FencingToken(counter),
            sent_at,
            ttl,
            self.settings.drift,
        )
        .with_handle(Arc::new(Handle { alive }))
    }

    /// The record of a new grant (or wait) of `owner` ending at monotonic
    /// `expires_ns`.
    pub(crate) fn holder(&self, owner: OwnerToken, expires_ns: u64) -> Holder {
        Holder {
            owner,
            expires_ns,
            boot: self.boot.clone(),
            acquired_ms: wall_ms(),
            label: self.settings.holder.clone(),
        }
    }
}

/// The handle a lease carries: its alive file.
#[derive(Debug)]
pub(crate) struct Handle {
    pub(crate) alive: Alive,
}

/// One attempt. `sent_at` is read before any file is touched, so validity
/// never counts from later than the call's start.
pub(crate) fn try_acquire(
    shared: &Arc<Shared>,
    key: &Key,
    ttl: Duration,
    sent_at: Instant,
) -> Result<Lease, LockError> {
    let name = shared.name;
    let files = shared.files(key.as_str());
    let _guard = files.guard(name, shared.deadline())?;
    let now = monotonic_ns();
    let mut state = files.read(name)?.unwrap_or_else(|| State {
        key: key.as_str().to_owned(),
        ..State::default()
    });
    let previous = state.holder.take();
    if let Some(holder) = &previous
        && live(&files, holder, now, &shared.boot)
    {
        return Err(LockError::contended(
            name,
            key.as_str(),
            Some(info(state.counter, holder, now)),
        ));
    }
    let owner = OwnerToken::generate();
    let alive = files.create_alive(name, &owner)?;
    let counter = state.counter.checked_add(1).ok_or_else(|| {
        LockError::backend(name, format!("the fencing counter of {key:?} is exhausted"))
    })?;
    state = State {
        key: key.as_str().to_owned(),
        counter,
        holder: Some(shared.holder(owner, now.saturating_add(Shared::ttl_ns(ttl)))),
        ..State::default()
    };
    if let Err(error) = files.write(name, &state, true) {
        alive.close();
        return Err(error);
    }
    if let Some(previous) = previous {
        files.remove_alive(&previous.owner);
    }
    Ok(shared.lease(key, owner, counter, sent_at, ttl, alive))
}

/// Moves the deadline of a lease we hold to `ttl` from now.
pub(crate) fn extend(
    shared: &Arc<Shared>,
    lease: &Lease,
    ttl: Duration,
    sent_at: Instant,
) -> Result<Lease, LockError> {
    let name = shared.name;
    let key = lease.key().as_str();
    let files = shared.files_of(lease.kind(), key);
    let _guard = files.guard(name, shared.deadline())?;
    let now = monotonic_ns();
    let mut state = files.read(name)?.unwrap_or_default();
    let holder = match state.entry_mut(lease.kind(), lease.owner()) {
        Some(holder) => holder,
        None => {
            return Err(LockError::lost(
                name,
                key,
                "the key is free or held by another owner",
            ));
        }
    };
    if holder.boot != shared.boot || holder.expires_ns <= now {
        return Err(LockError::lost(
            name,
            key,
            "the lease expired before it was extended",
        ));
    }
    holder.expires_ns = now.saturating_add(Shared::ttl_ns(ttl));
    files.write(name, &state, false)?;
    Ok(lease.renewed(sent_at, ttl, shared.settings.drift))
}

/// Clears the holder if it is `lease`'s and still valid; the counter stays.
pub(crate) fn release(shared: &Arc<Shared>, lease: &Lease) -> Result<(), LockError> {
    let name = shared.name;
    let key = lease.key().as_str();
    let files = shared.files_of(lease.kind(), key);
    let result = {
        let _guard = files.guard(name, shared.deadline())?;
        let now = monotonic_ns();
        let mut state = files.read(name)?.unwrap_or_default();
        match state.remove_entry(lease.kind(), lease.owner()) {
            Some(holder) => {
                let valid = holder.boot == shared.boot && holder.expires_ns > now;
                // Ours either way: clearing an expired record nobody took
                // frees the key sooner and harms no one.
                files.write(name, &state, false)?;
                if valid {
                    Ok(())
                } else {
                    Err(LockError::not_held(name, key))
                }
            }
            _ => Err(LockError::not_held(name, key)),
        }
    };
    if let Some(handle) = lease.handle::<Handle>() {
        handle.alive.close();
    } else if result.is_ok() {
        files.remove_alive(lease.owner());
    }
    result
}

/// The live holder of `key`, read without the guard (the state file is
/// replaced atomically).
pub(crate) fn inspect(shared: &Arc<Shared>, key: &Key) -> Result<Option<LockInfo>, LockError> {
    let files = shared.files(key.as_str());
    let now = monotonic_ns();
    Ok(files.read(shared.name)?.and_then(|state| {
        let holder = state.holder.as_ref()?;
        live(&files, holder, now, &shared.boot).then(|| info(state.counter, holder, now))
    }))
}

/// Frees `key` whoever holds it, advancing the counter past the evicted
/// token (durably) so the next grant's token is above it and the evicted
/// holder's renewal is `Lost`.
pub(crate) fn force_release(
    shared: &Arc<Shared>,
    key: &Key,
) -> Result<Option<LockInfo>, LockError> {
    let name = shared.name;
    let files = shared.files(key.as_str());
    let _guard = files.guard(name, shared.deadline())?;
    let now = monotonic_ns();
    let Some(mut state) = files.read(name)? else {
        return Ok(None);
    };
    let Some(holder) = state.holder.take() else {
        return Ok(None);
    };
    let evicted =
        live(&files, &holder, now, &shared.boot).then(|| info(state.counter, &holder, now));
    if evicted.is_some() {
        state.counter = state.counter.saturating_add(1);
    }
    files.write(name, &state, evicted.is_some())?;
    files.remove_alive(&holder.owner);
    Ok(evicted)
}

/// The wall-clock time in ms since the epoch (grant metadata only).
pub(crate) fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
