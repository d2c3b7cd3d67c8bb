//! The keys a [`Locker`](crate::Locker)'s live guards hold and the task that
//! took each, so that a task asking again for a key it holds fails at once
//! with [`LockError::AlreadyHeld`](crate::LockError::AlreadyHeld) instead of
//! waiting out its deadline behind itself (locks are not re-entrant), and so
//! that the waiters registry and the lock-order check know what the current
//! task already holds.
//!
//! Only the same task: tasks sharing one locker (request handlers, say) must
//! wait for each other as they would across processes. A future run by
//! `block_on` (a `#[tokio::main]` body) has no task id; all such futures
//! count as one context.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::task::Id;
use tokio_util::sync::CancellationToken;

use crate::key::Key;
use crate::kind::LockFamily;
use crate::token::FencingToken;

/// One guard's entry: registration id, the task that took it, its fencing
/// token, the guard's loss token.
type Entry = (u64, Option<Id>, FencingToken, CancellationToken);

/// A held lock: the family (the mutex, the reader–writer lock and the
/// semaphore of one key are different locks) and the key.
type HeldKey = (LockFamily, Key);

#[derive(Debug, Default)]
struct Table {
    held: HashMap<HeldKey, Entry>,
    /// The keys of `held` by taking task, so a task's holdings are found
    /// without scanning every guard of the locker.
    by_task: HashMap<Option<Id>, Vec<HeldKey>>,
}

impl Table {
    fn forget(&mut self, key: &HeldKey, task: Option<Id>) {
        if let Some(keys) = self.by_task.get_mut(&task) {
            if let Some(at) = keys.iter().position(|k| k == key) {
                keys.swap_remove(at);
            }
            if keys.is_empty() {
                self.by_task.remove(&task);
            }
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct HeldKeys {
    table: Mutex<Table>,
    next_id: AtomicU64,
}

impl HeldKeys {
    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a live guard taken by the current task holds `key`. A guard
    /// whose lease is lost no longer counts: its holder may try again while
    /// still holding it.
    pub(crate) fn held_by_this_task(&self, family: LockFamily, key: &Key) -> bool {
        let task = tokio::task::try_id();
        self.table()
            .held
            .get(&(family, key.clone()))
            .is_some_and(|(_, taker, _, lost)| *taker == task && !lost.is_cancelled())
    }

    /// The mutex keys the current task holds through live (not lost) guards,
    /// with their fencing tokens, in no particular order (what the waiters
    /// registry and the lock-order check know of: reader–writer locks and
    /// semaphores are not in them).
    pub(crate) fn this_task_holds(&self) -> Vec<(Key, FencingToken)> {
        let task = tokio::task::try_id();
        let table = self.table();
        let Some(keys) = table.by_task.get(&task) else {
            return Vec::new();
        };
        keys.iter()
            .filter(|(family, _)| *family == LockFamily::Mutex)
            .filter_map(|held| {
                let (_, _, token, lost) = table.held.get(held)?;
                (!lost.is_cancelled()).then(|| (held.1.clone(), *token))
            })
            .collect()
    }

    /// Records that a guard taken by the current task holds `key` until the
    /// returned registration is dropped (with the guard).
    pub(crate) fn register(
        self: &Arc<Self>,
        family: LockFamily,
        key: Key,
        token: FencingToken,
        lost: CancellationToken,
    ) -> Holding {
        let key = (family, key);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let task = tokio::task::try_id();
        let mut table = self.table();
        if let Some((_, earlier, ..)) = table.held.insert(key.clone(), (id, task, token, lost)) {
            table.forget(&key, earlier);
        }
        table.by_task.entry(task).or_default().push(key.clone());
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
    key: HeldKey,
    id: u64,
}

impl Drop for Holding {
    fn drop(&mut self) {
        let mut table = self.keys.table();
        // A lost guard's key may have been taken again by a newer guard
        // since: leave that one's entry alone.
        if let Some(&(id, task, ..)) = table.held.get(&self.key)
            && id == self.id
        {
            table.held.remove(&self.key);
            table.forget(&self.key, task);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_sees_its_own_holdings_only_until_they_are_dropped() {
        let keys = Arc::new(HeldKeys::default());
        let a = keys.register(
            LockFamily::Mutex,
            Key::new("a").unwrap(),
            FencingToken(1),
            CancellationToken::new(),
        );
        let lost = CancellationToken::new();
        let b = keys.register(
            LockFamily::Mutex,
            Key::new("b").unwrap(),
            FencingToken(2),
            lost.clone(),
        );
        let mut holds = keys.this_task_holds();
        holds.sort();
        assert_eq!(
            holds,
            [
                (Key::new("a").unwrap(), FencingToken(1)),
                (Key::new("b").unwrap(), FencingToken(2))
            ]
        );
        lost.cancel();
        assert_eq!(
            keys.this_task_holds().len(),
            1,
            "a lost guard holds nothing"
        );
        let other = tokio::spawn({
            let keys = keys.clone();
            async move { keys.this_task_holds() }
        });
        assert!(
            other.await.unwrap().is_empty(),
            "another task holds nothing"
        );
        drop((a, b));
        assert!(keys.this_task_holds().is_empty());
        assert!(
            keys.table().by_task.is_empty(),
            "the index forgets empty tasks"
        );
    }
}
