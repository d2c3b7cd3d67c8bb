//! Wrappers that implement [`LockBackend`] around another backend (tower and
//! object_store style), so policies like timeouts and tracing compose and the
//! conformance suite can run against layered backends too.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tracing::Instrument;

use crate::backend::{LockBackend, ReleaseListener, with_timeout};
use crate::capabilities::Capabilities;
use crate::error::LockError;
use crate::key::Key;
use crate::kind::LockKind;
use crate::lease::{Lease, LockInfo};
use crate::listing::{ListPage, ListQuery};
use crate::wait::WaitPolicy;

/// Turns one backend into another.
///
/// ```
/// use leasehold_core::{Layer, LockBackend, MemoryBackend, TimeoutLayer, TracingLayer};
/// use std::{sync::Arc, time::Duration};
/// let backend: Arc<dyn LockBackend> = Arc::new(MemoryBackend::new());
/// let layered = TracingLayer.layer(TimeoutLayer::new(Duration::from_secs(2)).layer(backend));
/// assert_eq!(layered.name(), "memory");
/// ```
pub trait Layer {
    /// Wraps `inner`.
    fn layer(&self, inner: Arc<dyn LockBackend>) -> Arc<dyn LockBackend>;
}

/// Bounds every single-step call (try_acquire, extend, release, inspect) by a
/// timeout that yields [`LockError::Unavailable`]; `acquire` is bounded by its
/// own wait deadline plus this timeout. For third-party backends without
/// per-call timeouts of their own.
#[derive(Clone, Copy, Debug)]
pub struct TimeoutLayer {
    timeout: Duration,
}

impl TimeoutLayer {
    /// A layer with this per-call timeout.
    pub fn new(timeout: Duration) -> Self {
        TimeoutLayer { timeout }
    }
}

impl Layer for TimeoutLayer {
    fn layer(&self, inner: Arc<dyn LockBackend>) -> Arc<dyn LockBackend> {
        Arc::new(Timeout {
            inner,
            timeout: self.timeout,
        })
    }
}

/// The backend made by [`TimeoutLayer`].
#[derive(Debug)]
pub struct Timeout {
    inner: Arc<dyn LockBackend>,
    timeout: Duration,
}

#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl LockBackend for Timeout {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn try_acquire(&self, key: &Key, ttl: Duration) -> Result<Lease, LockError> {
        with_timeout(self.name(), self.timeout, self.inner.try_acquire(key, ttl)).await
    }
    async fn acquire(
        &self,
        key: &Key,
        ttl: Duration,
        wait: &WaitPolicy,
    ) -> Result<Lease, LockError> {
        with_timeout(
            self.name(),
            wait.deadline.saturating_add(self.timeout),
            self.inner.acquire(key, ttl, wait),
        )
        .await
    }
    async fn try_acquire_kind(
        &self,
        key: &Key,
        kind: LockKind,
        ttl: Duration,
    ) -> Result<Lease, LockError> {
        with_timeout(
            self.name(),
            self.timeout,
            self.inner.try_acquire_kind(key, kind, ttl),
        )
        .await
    }
    async fn acquire_kind(
        &self,
        key: &Key,
        kind: LockKind,
        ttl: Duration,
        wait: &WaitPolicy,
    ) -> Result<Lease, LockError> {
        with_timeout(
            self.name(),
            wait.deadline.saturating_add(self.timeout),
            self.inner.acquire_kind(key, kind, ttl, wait),
        )
        .await
    }
    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<Lease, LockError> {
        with_timeout(self.name(), self.timeout, self.inner.extend(lease, ttl)).await
    }
    /// One bound for the whole batch, so a backend that renews a batch in one
    /// round trip still does.
    async fn extend_many(
        &self,
        renewals: &[(Lease, Duration)],
    ) -> Result<Vec<Result<Lease, LockError>>, LockError> {
        with_timeout(self.name(), self.timeout, self.inner.extend_many(renewals)).await
    }
    async fn release(&self, lease: &Lease) -> Result<(), LockError> {
        with_timeout(self.name(), self.timeout, self.inner.release(lease)).await
    }
    async fn inspect(&self, key: &Key) -> Result<Option<LockInfo>, LockError> {
        with_timeout(self.name(), self.timeout, self.inner.inspect(key)).await
    }
    async fn list(&self, query: &ListQuery) -> Result<ListPage, LockError> {
        with_timeout(self.name(), self.timeout, self.inner.list(query)).await
    }
    async fn force_release(&self, key: &Key, reason: &str) -> Result<Option<LockInfo>, LockError> {
        with_timeout(
            self.name(),
            self.timeout,
            self.inner.force_release(key, reason),
        )
        .await
    }
    fn release_listener(&self, key: &Key) -> Option<ReleaseListener> {
        self.inner.release_listener(key)
    }
}

/// Wraps every backend call in a `tracing` span with the backend, the key and
/// the outcome.
#[derive(Clone, Copy, Debug, Default)]
pub struct TracingLayer;

impl Layer for TracingLayer {
    fn layer(&self, inner: Arc<dyn LockBackend>) -> Arc<dyn LockBackend> {
        Arc::new(Traced { inner })
    }
}

/// The backend made by [`TracingLayer`].
#[derive(Debug)]
pub struct Traced {
    inner: Arc<dyn LockBackend>,
}

impl Traced {
    async fn traced<T>(
        &self,
        operation: &'static str,
        key: &str,
        call: impl std::future::Future<Output = Result<T, LockError>>,
    ) -> Result<T, LockError> {
        let span = tracing::info_span!("leasehold", operation, backend = self.inner.name(), key = %key, outcome = tracing::field::Empty);
        let result = call.instrument(span.clone()).await;
        span.record(
            "outcome",
            result.as_ref().map_or_else(LockError::kind, |_| "ok"),
        );
        result
    }
}

#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl LockBackend for Traced {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn try_acquire(&self, key: &Key, ttl: Duration) -> Result<Lease, LockError> {
        self.traced(
            "try_acquire",
            key.as_str(),
            self.inner.try_acquire(key, ttl),
        )
        .await
    }
    async fn acquire(
        &self,
        key: &Key,
        ttl: Duration,
        wait: &WaitPolicy,
    ) -> Result<Lease, LockError> {
        self.traced("acquire", key.as_str(), self.inner.acquire(key, ttl, wait))
            .await
    }
    async fn try_acquire_kind(
        &self,
        key: &Key,
        kind: LockKind,
        ttl: Duration,
    ) -> Result<Lease, LockError> {
        self.traced(
            "try_acquire_kind",
            key.as_str(),
            self.inner.try_acquire_kind(key, kind, ttl),
        )
        .await
    }
    async fn acquire_kind(
        &self,
        key: &Key,
        kind: LockKind,
        ttl: Duration,
        wait: &WaitPolicy,
    ) -> Result<Lease, LockError> {
        self.traced(
            "acquire_kind",
            key.as_str(),
            self.inner.acquire_kind(key, kind, ttl, wait),
        )
        .await
    }
    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<Lease, LockError> {
        self.traced(
            "extend",
            lease.key().as_str(),
            self.inner.extend(lease, ttl),
        )
        .await
    }
    async fn extend_many(
        &self,
        renewals: &[(Lease, Duration)],
    ) -> Result<Vec<Result<Lease, LockError>>, LockError> {
        let span = tracing::info_span!(
            "leasehold",
            operation = "extend_many",
            backend = self.inner.name(),
            leases = renewals.len(),
            outcome = tracing::field::Empty
        );
        let result = self
            .inner
            .extend_many(renewals)
            .instrument(span.clone())
            .await;
        span.record(
            "outcome",
            result.as_ref().map_or_else(LockError::kind, |_| "ok"),
        );
        result
    }
    async fn release(&self, lease: &Lease) -> Result<(), LockError> {
        self.traced("release", lease.key().as_str(), self.inner.release(lease))
            .await
    }
    async fn inspect(&self, key: &Key) -> Result<Option<LockInfo>, LockError> {
        self.traced("inspect", key.as_str(), self.inner.inspect(key))
            .await
    }
    async fn list(&self, query: &ListQuery) -> Result<ListPage, LockError> {
        self.traced("list", &query.prefix, self.inner.list(query))
            .await
    }
    async fn force_release(&self, key: &Key, reason: &str) -> Result<Option<LockInfo>, LockError> {
        self.traced(
            "force_release",
            key.as_str(),
            self.inner.force_release(key, reason),
        )
        .await
    }
    fn release_listener(&self, key: &Key) -> Option<ReleaseListener> {
        self.inner.release_listener(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryBackend;
    use crate::testing::{Hooks, Spy};

    /// Renews only in batches: a single `extend` is an error, so a layer that
    /// falls back to renewing one by one is caught.
    #[derive(Debug)]
    struct BatchOnly;

    #[async_trait]
    impl Hooks for BatchOnly {
        async fn extend(
            &self,
            _: &dyn LockBackend,
            _: &Lease,
            _: Duration,
        ) -> Result<Lease, LockError> {
            Err(LockError::backend("batch-only", "renewed one by one"))
        }
    }

    #[tokio::test]
    async fn layers_pass_a_renewal_batch_through_whole() {
        let ttl = Duration::from_secs(5);
        let inner: Arc<dyn LockBackend> =
            Arc::new(Spy::new(Arc::new(MemoryBackend::new()), BatchOnly));
        let layered = TracingLayer.layer(TimeoutLayer::new(Duration::from_secs(2)).layer(inner));
        let mut renewals = Vec::new();
        for name in ["a", "b", "c"] {
            let lease = layered
                .try_acquire(&Key::new(name).unwrap(), ttl)
                .await
                .unwrap();
            renewals.push((lease, ttl));
        }
        let results = layered.extend_many(&renewals).await.unwrap();
        assert_eq!(results.len(), 3);
        for result in results {
            result.expect("the batch reached the inner backend whole");
        }
    }
}
