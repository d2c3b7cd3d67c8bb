//! The keys a [`Locker`](crate::Locker)'s live guards hold and the task that
//! took each, so that a task asking again for a key it holds fails at once
//! with [`LockError::AlreadyHeld`](crate::LockError::AlreadyHeld) instead of
//! waiting out its deadline behind itself (locks are not re-entrant).
//!
//! Only the same task: tasks sharing one locker (request handlers, say) must
//! wait for each other as they would across processes. A future run by
//! `block_on` (a `#[tokio::main]` body) has no task id; all such futures
//! count as one context.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::key::Key;
use crate::kind::LockFamily;

/// One guard's entry: registration id, the task that took it, the guard's
/// loss token.
type Entry = (u64, Option<tokio::task::Id>, CancellationToken);

#[derive(Debug, Default)]
pub(crate) struct HeldKeys {
    held: Mutex<HashMap<(LockFamily, Key), Entry>>,
    next_id: AtomicU64,
}

impl HeldKeys {
    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<(LockFamily, Key), Entry>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a live guard taken by the current task holds `key` (in the
    /// lock `family`: the mutex and the reader–writer lock of one key are
    /// different locks). A guard whose lease is lost no longer counts: its
    /// holder may try again while still holding it.
    pub(crate) fn held_by_this_task(&self, family: LockFamily, key: &Key) -> bool {
        let task = tokio::task::try_id();
        self.held()
            .get(&(family, key.clone()))
            .is_some_and(|(_, taker, lost)| *taker == task && !lost.is_cancelled())
    }

    /// Records that a guard taken by the current task holds `key` until the
    /// returned registration is dropped (with the guard).
    pub(crate) fn register(
        self: &Arc<Self>,
        family: LockFamily,
        key: Key,
        lost: CancellationToken,
    ) -> Holding {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let task = tokio::task::try_id();
        let key = (family, key);
        self.held().insert(key.clone(), (id, task, lost));
        Holding {
            keys: self.clone(),
            key,
            id,
        }
    }
}

/// One guard's entry in [`HeldKeys`], removed when dropped.
#[derive(Debug)]
pub(crate) struct Holding {
    keys: Arc<HeldKeys>,
    key: (LockFamily, Key),
    id: u64,
}

impl Drop for Holding {
    fn drop(&mut self) {
        let mut held = self.keys.held();
        // A lost guard's key may have been taken again by a newer guard
        // since: leave that one's entry alone.
        if held.get(&self.key).is_some_and(|(id, ..)| *id == self.id) {
            held.remove(&self.key);
        }
    }
}
