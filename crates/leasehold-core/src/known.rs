//! [`KnownKeys`]: the keys a backend saw registered in its store, so that
//! their later grants can skip the registration.
//!
//! A store that names held keys in a registry of its own (a table that
//! `list` reads, beside the lock itself) must register a key at or after
//! its grant. Looking the key up, or writing it again, at every grant costs
//! every grant; remembering which keys were seen costs memory and must not
//! trust the registry forever, since an operator may delete rows. The set
//! is bounded ([`KnownKeys::MAX`]) and forgotten as a whole every
//! [`KnownKeys::FOR`], so a deleted row comes back at a grant of its key
//! once every process that saw it has forgotten it.

use std::collections::HashSet;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A bounded set of the keys whose registry row a backend saw, forgotten
/// as a whole when it grows past [`KnownKeys::MAX`] and every
/// [`KnownKeys::FOR`]. `T` is whatever names a key to the backend (an id,
/// a lock name). Shared between tasks: it locks a mutex for a lookup or an
/// insert, never across an `.await`.
///
/// ```
/// use leasehold_core::known::KnownKeys;
///
/// let known = KnownKeys::default();
/// assert!(!known.contains(&"orders:42"));
/// // ... the grant registered the key in the store ...
/// known.insert("orders:42");
/// assert!(known.contains(&"orders:42"));
/// ```
#[derive(Debug)]
pub struct KnownKeys<T> {
    seen: Mutex<(Instant, HashSet<T>)>,
}

impl<T> Default for KnownKeys<T> {
    fn default() -> Self {
        KnownKeys {
            seen: Mutex::new((Instant::now(), HashSet::new())),
        }
    }
}

impl<T: Hash + Eq> KnownKeys<T> {
    /// How long the set trusts what it saw.
    pub const FOR: Duration = Duration::from_secs(300);

    /// The most keys the set remembers.
    pub const MAX: usize = 1 << 16;

    /// Whether `key` was seen registered (and not forgotten since).
    pub fn contains(&self, key: &T) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.0.elapsed() > Self::FOR {
            *seen = (Instant::now(), HashSet::new());
        }
        seen.1.contains(key)
    }

    /// `key` is registered in the store.
    pub fn insert(&self, key: T) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.1.len() >= Self::MAX {
            *seen = (Instant::now(), HashSet::new());
        }
        seen.1.insert(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_forgotten_when_too_many() {
        let known = KnownKeys::default();
        known.insert(-7);
        assert!(known.contains(&-7) && !known.contains(&7));
        for id in 0..KnownKeys::<i64>::MAX as i64 {
            known.insert(id);
        }
        assert!(
            !known.contains(&-7),
            "kept past {} keys",
            KnownKeys::<i64>::MAX
        );
        assert!(known.contains(&(KnownKeys::<i64>::MAX as i64 - 1)));
    }
}
