//! The types a suite is built from and the fixtures hand out: the client
//! [`Factory`], the store's fault hooks ([`Store`], [`SessionEnder`]) and
//! [`Skipped`]. They depend on nothing else in the crate.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use leasehold_core::{Capabilities, LockBackend, LockError};

/// A boxed future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Makes a new client of the store under test (its own connection).
pub type Factory =
    Arc<dyn Fn() -> BoxFuture<Result<Arc<dyn LockBackend>, LockError>> + Send + Sync>;

/// Fault hooks on the store server, for the fault cases.
pub trait Store: Send + Sync + 'static {
    /// Freezes the server (`docker pause`): connections stay open, nothing
    /// answers.
    fn pause(&self) -> BoxFuture<Result<(), String>>;
    /// Thaws it.
    fn unpause(&self) -> BoxFuture<Result<(), String>>;
    /// Stops and starts it at the same address; returns once the container
    /// runs (the store may need a moment more: callers retry).
    fn restart(&self) -> BoxFuture<Result<(), String>>;
}

/// Ends the store session that carries `lease`, the way a network drop, a
/// server-side kill or a session timeout would (terminate the Postgres
/// backend process, revoke the etcd lease, expire the ZooKeeper session).
/// Only for stores whose leases live in a session
/// ([`leasehold_core::Expiry::Session`] or a pinned connection); the suite's
/// session-end cases run where one is given.
pub type SessionEnder =
    Arc<dyn Fn(leasehold_core::Lease) -> BoxFuture<Result<(), String>> + Send + Sync>;

/// Why a suite did not run.
#[derive(Debug)]
pub struct Skipped(pub String);

/// The capabilities a backend made by `factory` reports.
pub async fn capabilities_of(factory: &Factory) -> Result<Capabilities, LockError> {
    Ok(factory().await?.capabilities())
}
