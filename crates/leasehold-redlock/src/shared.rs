//! Reader–writer locks over N servers: each grant is the single-server
//! reader–writer step of [`leasehold_redis`] on every server at once, and
//! a majority decides, exactly as for the mutex ([`Quorum::attempt`]). A
//! waiting writer registers on the servers that refused it and withdraws
//! from all of them when its wait ends. Why there are no semaphores here:
//! see the crate docs.

use std::time::Duration;

use leasehold_core::{Key, Lease, LockBackend, LockError, OwnerToken, WaitPolicy, wait_for_grant};
use leasehold_redis::WaitingStep;

use crate::quorum::Quorum;
use crate::store::Nodes;

/// The shortest pause between refreshes of a waiting writer's
/// registrations.
const MIN_REFRESH: Duration = Duration::from_millis(10);

impl Nodes {
    /// Refreshes or withdraws a waiting writer's registration on every
    /// server at once, each within `per_node`; best effort (a server that
    /// misses it lets its registration expire within the writer's TTL).
    pub(crate) async fn waiting_writer(
        &self,
        key: &Key,
        waiter: &OwnerToken,
        step: WaitingStep,
        per_node: Duration,
    ) {
        let results = self
            .fan_out(&self.all(), per_node, |node| async move {
                node.waiting_writer_raw(key, waiter, step).await
            })
            .await;
        for (i, result) in results.into_iter().enumerate() {
            if let Err(error) = result {
                tracing::debug!(%key, server = %self.addr(i), %error, ?step, "redlock waiting-writer step failed");
            }
        }
    }
}

impl Quorum {
    /// Waits for the writer's side of `key`: `attempt(waiter)` is one
    /// cancel-safe attempt that registers `waiter` where it is refused
    /// (new readers are refused there), the registrations are refreshed
    /// every third of `ttl` while it waits and withdrawn from every server
    /// when the wait ends however it ends (a dropped call included: the
    /// withdrawal is spawned), or at the latest when they expire.
    pub(crate) async fn wait_to_write<B, F, Fut>(
        &self,
        backend: &B,
        key: &Key,
        ttl: Duration,
        wait: &WaitPolicy,
        mut attempt: F,
    ) -> Result<Lease, LockError>
    where
        B: LockBackend + ?Sized,
        F: FnMut(OwnerToken) -> Fut,
        Fut: std::future::Future<Output = Result<Lease, LockError>>,
    {
        let waiter = OwnerToken::generate();
        let per_node = self.node_timeout(ttl);
        let _registered = WaitingWriter {
            nodes: self.nodes.clone(),
            key: key.clone(),
            waiter,
            per_node: self.timeout,
        };
        let every = (ttl / 3).max(MIN_REFRESH);
        let refresh = async {
            loop {
                tokio::time::sleep(every).await;
                let step = WaitingStep::Refresh(ttl);
                self.nodes
                    .waiting_writer(key, &waiter, step, per_node)
                    .await;
            }
        };
        let grant = wait_for_grant(backend, key, wait, || attempt(waiter));
        tokio::select! {
            result = grant => result,
            () = refresh => Err(LockError::backend(crate::NAME, "a waiting writer's refresh loop ended")),
        }
    }
}

/// A writer's registrations while it waits; dropping it withdraws them
/// from every server in the background.
struct WaitingWriter {
    nodes: Nodes,
    key: Key,
    waiter: OwnerToken,
    per_node: Duration,
}

impl Drop for WaitingWriter {
    fn drop(&mut self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (nodes, key, waiter, per_node) = (
            self.nodes.clone(),
            self.key.clone(),
            self.waiter,
            self.per_node,
        );
        runtime.spawn(async move {
            nodes
                .waiting_writer(&key, &waiter, WaitingStep::Withdraw, per_node)
                .await;
        });
    }
}
