//! Test doubles that change one or two things about a real backend: a
//! [`Spy`] forwards every call to an inner backend through [`Hooks`], whose
//! methods all forward by default, so a test overrides only the call it
//! bends (a late answer, a slow renewal, a broken release) and can never
//! half-forward the rest. Enabled by the `testing` feature.
//!
//! ```
//! use leasehold_core::testing::{Hooks, Spy};
//! use leasehold_core::{Key, Lease, LockBackend, LockError, MemoryBackend, async_trait};
//! use std::{sync::Arc, time::Duration};
//!
//! /// Refuses every release, as a backend with a broken compare-and-delete might.
//! #[derive(Debug)]
//! struct NoRelease;
//!
//! #[async_trait]
//! impl Hooks for NoRelease {
//!     async fn release(&self, _inner: &dyn LockBackend, lease: &Lease) -> Result<(), LockError> {
//!         Err(LockError::not_held("spy", lease.key().as_str()))
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), LockError> {
//! let spy = Spy::new(Arc::new(MemoryBackend::new()), NoRelease);
//! let lease = spy.try_acquire(&Key::new("k")?, Duration::from_secs(5)).await?;
//! assert!(spy.release(&lease).await.is_err());
//! # Ok(()) }
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::backend::{LockBackend, ReleaseListener};
use crate::capabilities::Capabilities;
use crate::error::LockError;
use crate::key::Key;
use crate::kind::LockKind;
use crate::lease::{Lease, LockInfo};
use crate::listing::{ListPage, ListQuery};
use crate::wait::WaitPolicy;

/// What a [`Spy`] does on each call; every method forwards to `inner` unless
/// overridden.
#[async_trait]
pub trait Hooks: Send + Sync + fmt::Debug + 'static {
    /// The name (default: the inner backend's).
    fn name(&self, inner: &dyn LockBackend) -> &'static str {
        inner.name()
    }
    /// The capabilities (default: the inner backend's).
    fn capabilities(&self, inner: &dyn LockBackend) -> Capabilities {
        inner.capabilities()
    }
    /// One attempt.
    async fn try_acquire(
        &self,
        inner: &dyn LockBackend,
        key: &Key,
        ttl: Duration,
    ) -> Result<Lease, LockError> {
        inner.try_acquire(key, ttl).await
    }
    /// A waiting acquisition.
    async fn acquire(
        &self,
        inner: &dyn LockBackend,
        key: &Key,
        ttl: Duration,
        wait: &WaitPolicy,
    ) -> Result<Lease, LockError> {
        inner.acquire(key, ttl, wait).await
    }
    /// A renewal.
    async fn extend(
        &self,
        inner: &dyn LockBackend,
        lease: &Lease,
        ttl: Duration,
    ) -> Result<Lease, LockError> {
        inner.extend(lease, ttl).await
    }
    /// A batch renewal.
    async fn extend_many(
        &self,
        inner: &dyn LockBackend,
        renewals: &[(Lease, Duration)],
    ) -> Result<Vec<Result<Lease, LockError>>, LockError> {
        inner.extend_many(renewals).await
    }
    /// A release.
    async fn release(&self, inner: &dyn LockBackend, lease: &Lease) -> Result<(), LockError> {
        inner.release(lease).await
    }
    /// An inspection.
    async fn inspect(
        &self,
        inner: &dyn LockBackend,
        key: &Key,
    ) -> Result<Option<LockInfo>, LockError> {
        inner.inspect(key).await
    }
    /// A page of a listing.
    async fn list(
        &self,
        inner: &dyn LockBackend,
        query: &ListQuery,
    ) -> Result<ListPage, LockError> {
        inner.list(query).await
    }
    /// A force release.
    async fn force_release(
        &self,
        inner: &dyn LockBackend,
        key: &Key,
        reason: &str,
    ) -> Result<Option<LockInfo>, LockError> {
        inner.force_release(key, reason).await
    }
    /// One attempt at a grant of `kind`.
    async fn try_acquire_kind(
        &self,
        inner: &dyn LockBackend,
        key: &Key,
        kind: LockKind,
        ttl: Duration,
    ) -> Result<Lease, LockError> {
        inner.try_acquire_kind(key, kind, ttl).await
    }
    /// A waiting acquisition of `kind`.
    async fn acquire_kind(
        &self,
        inner: &dyn LockBackend,
        key: &Key,
        kind: LockKind,
        ttl: Duration,
        wait: &WaitPolicy,
    ) -> Result<Lease, LockError> {
        inner.acquire_kind(key, kind, ttl, wait).await
    }
    /// A release listener.
    fn release_listener(&self, inner: &dyn LockBackend, key: &Key) -> Option<ReleaseListener> {
        inner.release_listener(key)
    }
}

/// A backend that runs every call through `hooks` around `inner`.
#[derive(Debug)]
pub struct Spy<H> {
    inner: Arc<dyn LockBackend>,
    hooks: H,
}

impl<H: Hooks> Spy<H> {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn LockBackend>, hooks: H) -> Self {
        Spy { inner, hooks }
    }

    /// The hooks (to read what they counted).
    pub fn hooks(&self) -> &H {
        &self.hooks
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &Arc<dyn LockBackend> {
        &self.inner
    }
}

#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl<H: Hooks> LockBackend for Spy<H> {
    fn name(&self) -> &'static str {
        self.hooks.name(&*self.inner)
    }
    fn capabilities(&self) -> Capabilities {
        self.hooks.capabilities(&*self.inner)
    }
    async fn try_acquire(&self, key: &Key, ttl: Duration) -> Result<Lease, LockError> {
        self.hooks.try_acquire(&*self.inner, key, ttl).await
    }
    async fn acquire(
        &self,
        key: &Key,
        ttl: Duration,
        wait: &WaitPolicy,
    ) -> Result<Lease, LockError> {
        self.hooks.acquire(&*self.inner, key, ttl, wait).await
    }
    async fn try_acquire_kind(
        &self,
        key: &Key,
        kind: LockKind,
        ttl: Duration,
    ) -> Result<Lease, LockError> {
        self.hooks
            .try_acquire_kind(&*self.inner, key, kind, ttl)
            .await
    }
    async fn acquire_kind(
        &self,
        key: &Key,
        kind: LockKind,
        ttl: Duration,
        wait: &WaitPolicy,
    ) -> Result<Lease, LockError> {
        self.hooks
            .acquire_kind(&*self.inner, key, kind, ttl, wait)
            .await
    }
    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<Lease, LockError> {
        self.hooks.extend(&*self.inner, lease, ttl).await
    }
    async fn extend_many(
        &self,
        renewals: &[(Lease, Duration)],
    ) -> Result<Vec<Result<Lease, LockError>>, LockError> {
        self.hooks.extend_many(&*self.inner, renewals).await
    }
    async fn release(&self, lease: &Lease) -> Result<(), LockError> {
        self.hooks.release(&*self.inner, lease).await
    }
    async fn inspect(&self, key: &Key) -> Result<Option<LockInfo>, LockError> {
        self.hooks.inspect(&*self.inner, key).await
    }
    async fn list(&self, query: &ListQuery) -> Result<ListPage, LockError> {
        self.hooks.list(&*self.inner, query).await
    }
    async fn force_release(&self, key: &Key, reason: &str) -> Result<Option<LockInfo>, LockError> {
        self.hooks.force_release(&*self.inner, key, reason).await
    }
    fn release_listener(&self, key: &Key) -> Option<ReleaseListener> {
        self.hooks.release_listener(&*self.inner, key)
    }
}
