//! The operator's view of a store: list held keys, force a stuck one free.
//!
//! Backends implement the mechanism ([`LockBackend::list`],
//! [`LockBackend::force_release`]); [`Admin`] is what tools call: it pages
//! through listings and audits every force release (a `tracing` event at
//! `WARN` with the key, the evicted token and holder, and the reason, and the
//! `leasehold_force_release_total` metric), so an eviction is never silent.

use std::sync::Arc;

use futures_util::{Stream, TryStreamExt};

use crate::backend::LockBackend;
use crate::error::LockError;
use crate::key::Key;
use crate::lease::LockInfo;
use crate::listing::{HeldLock, ListQuery};
use crate::metrics;

/// What [`Admin::force_release`] evicted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Evicted {
    /// The key.
    pub key: String,
    /// The evicted holder, or `None` when the key was free.
    pub holder: Option<LockInfo>,
}

/// Operator tooling over any backend: paged listings and audited force
/// releases. Used by the `leasehold` command line.
///
/// ```
/// use leasehold_core::{Admin, Key, ListQuery, LockBackend, MemoryBackend};
/// use futures_util::TryStreamExt;
/// use std::{sync::Arc, time::Duration};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), leasehold_core::LockError> {
/// let backend = Arc::new(MemoryBackend::new());
/// let lease = backend.try_acquire(&Key::new("payment:user:123")?, Duration::from_secs(30)).await?;
/// let admin = Admin::new(backend.clone());
/// let held: Vec<_> = admin.list(ListQuery::new("payment:")).try_collect().await?;
/// assert_eq!(held[0].key, "payment:user:123");
///
/// let evicted = admin.force_release(&Key::new("payment:user:123")?, "stuck since 03:00, INC-42").await?;
/// assert_eq!(evicted.holder.unwrap().fencing_token, Some(lease.fencing_token()));
/// assert!(backend.extend(&lease, Duration::from_secs(30)).await.is_err());
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Admin {
    backend: Arc<dyn LockBackend>,
}

impl Admin {
    /// Admin over `backend`.
    pub fn new(backend: Arc<dyn LockBackend>) -> Self {
        metrics::describe();
        Admin { backend }
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn LockBackend> {
        &self.backend
    }

    /// Every held key under `query.prefix`, fetched a page at a time (one
    /// store call per `query.limit` keys), so a listing of millions of keys
    /// holds one page in memory and never blocks the store. A key released
    /// or taken while the listing runs may be missed or shown once more.
    pub fn list(
        &self,
        query: ListQuery,
    ) -> impl Stream<Item = Result<HeldLock, LockError>> + Send + 'static {
        let backend = self.backend.clone();
        futures_util::stream::try_unfold(Some(query), move |query| {
            let backend = backend.clone();
            async move {
                let Some(query) = query else {
                    return Ok::<_, LockError>(None);
                };
                let page = backend.list(&query).await?;
                let next = page.next.map(|cursor| query.clone().after(Some(cursor)));
                Ok(Some((
                    futures_util::stream::iter(page.locks.into_iter().map(Ok::<_, LockError>)),
                    next,
                )))
            }
        })
        .try_flatten()
    }

    /// Frees `key` whoever holds it and advances its fencing token past the
    /// evicted holder's, so the evicted holder's next renewal is `Lost` (its
    /// guard's `lost()` fires at that renewal, within a third of its TTL, or
    /// at once on stores that signal it) and a fenced resource rejects its
    /// late writes. `reason` (who and why) is required and goes into the
    /// audit record.
    pub async fn force_release(&self, key: &Key, reason: &str) -> Result<Evicted, LockError> {
        let reason = reason.trim();
        if reason.is_empty() {
            return Err(LockError::Config(
                "a force release needs a reason (who and why), for the audit record".into(),
            ));
        }
        let backend = self.backend.name();
        let holder = self.backend.force_release(key, reason).await?;
        let token = holder.as_ref().and_then(|h| h.fencing_token);
        let label = holder.as_ref().and_then(|h| h.metadata.as_deref());
        tracing::warn!(
            target: "leasehold::audit",
            backend,
            key = key.as_str(),
            evicted_token = token.map(|t| t.0),
            evicted_holder = label,
            reason,
            "force release"
        );
        metrics::force_released(backend, holder.is_some());
        Ok(Evicted {
            key: key.as_str().to_owned(),
            holder,
        })
    }
}
