//! What a listing asks and answers ([`LockBackend::list`](crate::LockBackend::list)):
//! the query, one page, one held lock. Apart from [`Admin`](crate::Admin) so
//! the contract and the tool both use them without importing each other.

use crate::lease::LockInfo;

/// One page of a listing: held keys whose name starts with `prefix`.
///
/// ```
/// use leasehold_core::ListQuery;
/// let first = ListQuery::new("payment:").limit(100);
/// assert_eq!(first.prefix, "payment:");
/// assert!(first.cursor.is_none());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListQuery {
    /// Only keys starting with this (byte-wise); empty for every key.
    pub prefix: String,
    /// At most this many locks per page (a store may return fewer, even
    /// none, on a page that is not the last).
    pub limit: usize,
    /// Where the previous page ended ([`ListPage::next`]); `None` to start.
    pub cursor: Option<String>,
}

impl ListQuery {
    /// The first page of keys under `prefix`, 1,000 at a time.
    pub fn new(prefix: impl Into<String>) -> Self {
        ListQuery {
            prefix: prefix.into(),
            limit: 1_000,
            cursor: None,
        }
    }

    /// Sets the page size (at least 1).
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit.max(1);
        self
    }

    /// Continues after `cursor`.
    pub fn after(mut self, cursor: Option<String>) -> Self {
        self.cursor = cursor;
        self
    }
}

/// A held key and what the store knows about its holder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldLock {
    /// The key, without the backend's namespace.
    pub key: String,
    /// Its holder: fencing token, holder label, remaining validity, ...
    pub info: LockInfo,
}

/// One page of [`LockBackend::list`](crate::LockBackend::list).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListPage {
    /// Held keys (expired entries are never shown).
    pub locks: Vec<HeldLock>,
    /// The cursor of the next page; `None` after the last page. Opaque.
    pub next: Option<String>,
}

impl ListPage {
    /// The page `query` asks for out of every held key at once (a store
    /// that can read them all, such as the in-memory one): keys under the
    /// prefix and after the cursor, in byte order, at most `query.limit`;
    /// the cursor of the next page is the last key shown.
    ///
    /// ```
    /// use leasehold_core::{ListPage, ListQuery, LockInfo};
    /// let held = ["jobs:b", "jobs:a", "other"].map(|k| (k.to_owned(), LockInfo::default()));
    /// let page = ListPage::from_held(held, &ListQuery::new("jobs:").limit(1));
    /// assert_eq!(page.locks[0].key, "jobs:a");
    /// assert_eq!(page.next.as_deref(), Some("jobs:a"));
    /// ```
    pub fn from_held(
        held: impl IntoIterator<Item = (String, LockInfo)>,
        query: &ListQuery,
    ) -> ListPage {
        let mut held: Vec<(String, LockInfo)> = held
            .into_iter()
            .filter(|(key, _)| {
                key.starts_with(&query.prefix)
                    && query
                        .cursor
                        .as_deref()
                        .is_none_or(|after| key.as_str() > after)
            })
            .collect();
        held.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let more = held.len() > query.limit;
        let locks: Vec<HeldLock> = held
            .into_iter()
            .take(query.limit)
            .map(|(key, info)| HeldLock { key, info })
            .collect();
        let next = if more {
            locks.last().map(|l| l.key.clone())
        } else {
            None
        };
        ListPage { locks, next }
    }
}
