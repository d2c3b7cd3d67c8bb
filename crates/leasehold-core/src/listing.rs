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
