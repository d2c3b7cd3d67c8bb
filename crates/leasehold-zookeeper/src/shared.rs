//! Reader–writer locks and counting semaphores: ephemeral sequential nodes
//! under a parent of their own, ranked by sequence (Curator's
//! `InterProcessReadWriteLock` rules, and a semaphore like
//! `InterProcessSemaphoreV2` whose lease nodes are ephemeral, so a crashed
//! session frees them).
//!
//! - A reader (`{owner}-read-{seq}`) may hold once no writer node ranks
//!   before it; a writer (`{owner}-write-{seq}`) once no node at all does; a
//!   permit of `N` (`{owner}-lease-{seq}`) once fewer than `N` nodes do. A
//!   node that may hold keeps that right: nodes only join behind it.
//! - A waiting writer's node is its registration: later readers rank behind
//!   it (writer preference). It goes with the wait: deleted at the deadline,
//!   by the reaper when the call is dropped, with the session at the latest.
//! - A single attempt that may not hold deletes its node before it returns
//!   (as the mutex's `try_acquire`).
//! - Fencing: a reader's or writer's token is its node's czxid (a writer's
//!   node is newer than every node granted before it, a reader's newer than
//!   every writer granted before it). A permit's token is the czxid when the
//!   listing made with its create let it hold, else the mzxid of a
//!   `setData` on its node once a later listing lets it hold: waiters can
//!   notice their turn out of order, the zxids of their grants cannot.
//! - Waiters list the parent's children with a watch and list again when a
//!   child joins or leaves (or the re-check timer runs out).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use leasehold_core::{Attempts, Key, Lease, LockError, LockKind, OwnerToken};
use tokio::time::Instant;
use zookeeper_client::Error as ZkError;

use crate::NAME;
use crate::backend::ZkBackend;
use crate::error::map;
use crate::path::{Contender, PERMIT_MARK, READ_MARK, WRITE_MARK, node_prefix, queue};
use crate::queue::Enqueued;
use crate::reaper::Reaper;
use crate::store::Session;

/// Whether the node `name` of `kind` may hold given the parent's nodes in
/// rank order; `None` when it is not among them.
fn may_hold(kind: LockKind, queue: &[Contender], name: &str) -> Option<bool> {
    let at = queue.iter().position(|c| c.name == name)?;
    let ahead = &queue[..at];
    Some(match kind {
        LockKind::Read => !ahead.iter().any(|c| c.exclusive),
        LockKind::Permit { permits } => at < permits as usize,
        _ => at == 0,
    })
}

/// The mark of `kind`'s nodes.
fn mark(kind: LockKind) -> &'static str {
    match kind {
        LockKind::Read => READ_MARK,
        LockKind::Permit { .. } => PERMIT_MARK,
        _ => WRITE_MARK,
    }
}

/// A node just queued: its owner, parent, path and reaper.
struct Node {
    owner: OwnerToken,
    parent: String,
    path: String,
    cleanup: Reaper,
}

impl ZkBackend {
    /// The parent of `key`'s reader–writer lock (`{namespace}/{encoded
    /// key}.rw`) or semaphore (`….sem`): the encoding never makes a `.`, so
    /// it is never a mutex's node, and listings (which decode every child of
    /// the namespace) skip it.
    pub(crate) fn shared_path(&self, key: &Key, kind: LockKind) -> String {
        let family = match kind {
            LockKind::Permit { .. } => "sem",
            _ => "rw",
        };
        format!("{}.{family}", self.key_path(key))
    }

    /// Creates a node of `kind` for `key` (and the listing made with it),
    /// with the reaper that removes it unless disarmed.
    async fn queue_node(
        &self,
        session: &Arc<Session>,
        key: &Key,
        kind: LockKind,
    ) -> Result<(Node, Enqueued), LockError> {
        let parent = self.shared_path(key, kind);
        let owner = OwnerToken::generate();
        let mut cleanup = Reaper::new(session, parent.clone(), owner, self.timeout);
        let prefix = node_prefix(&owner, mark(kind));
        let enqueued = self
            .enqueue(session, &parent, &prefix, &owner, &mut cleanup)
            .await?;
        let path = format!("{parent}/{}", enqueued.name);
        let node = Node {
            owner,
            parent,
            path,
            cleanup,
        };
        Ok((node, enqueued))
    }

    /// One attempt at `kind` (not the mutex): queues, and withdraws unless
    /// its rank lets it hold. Cancel safe: dropped before it returns, its
    /// node is removed from a background task.
    pub(crate) async fn try_share(
        &self,
        key: &Key,
        kind: LockKind,
        ttl: Duration,
    ) -> Result<Lease, LockError> {
        self.valid_ttl(ttl)?;
        let session = self.sessions.for_ttl(ttl).await?;
        let validity = self.check_ttl(ttl, &session)?;
        let client = &session.client;
        let sent_at = Instant::now();
        let (
            Node {
                owner,
                parent,
                path,
                mut cleanup,
            },
            Enqueued { name, czxid, queue },
        ) = self.queue_node(&session, key, kind).await?;
        let queue = match queue {
            Some(queue) => queue,
            None => self.contenders(client, &parent).await?,
        };
        if may_hold(kind, &queue, &name) == Some(true) {
            cleanup.disarm();
            let lease = self.lease(key, owner, (path, czxid), sent_at, validity, &session);
            return Ok(lease.with_kind(kind));
        }
        self.withdraw(client, &path, &mut cleanup).await?;
        Err(LockError::contended(NAME, key.as_str(), None))
    }

    /// One queued wait for `kind` (not the mutex) in one session: `Ok(None)`
    /// when our node vanished (the session ended) and the caller should
    /// queue again. A waiter that runs out of time deletes its node.
    pub(crate) async fn wait_for_rank(
        &self,
        session: &Arc<Session>,
        key: &Key,
        kind: LockKind,
        validity: Duration,
        attempts: &mut Attempts,
    ) -> Result<Option<Lease>, LockError> {
        let client = &session.client;
        let mut sent_at = Instant::now();
        let (
            Node {
                owner,
                parent,
                path,
                mut cleanup,
            },
            Enqueued {
                name,
                czxid,
                mut queue,
            },
        ) = self.queue_node(session, key, kind).await?;
        // Whether the decision comes from the listing made with the create.
        let mut at_create = queue.is_some();
        loop {
            let listed = match queue.take() {
                Some(queue) => Ok((queue, None)),
                None => {
                    at_create = false;
                    sent_at = Instant::now();
                    match self.call(client.list_and_watch_children(&parent)).await {
                        Ok(Ok((children, watcher))) => Ok((self::queue(&children), Some(watcher))),
                        Ok(Err(ZkError::NoNode)) => Ok((Vec::new(), None)),
                        Ok(Err(error)) => Err(map(error)),
                        Err(timeout) => Err(timeout),
                    }
                }
            };
            let (listed, watcher) = match listed {
                Ok(listed) => listed,
                Err(_) if session.is_ended() => {
                    cleanup.disarm();
                    return Ok(None);
                }
                Err(error) if error.is_retryable() => {
                    let Some(delay) = attempts.next_delay(None) else {
                        return Err(error);
                    };
                    tokio::time::sleep(delay).await;
                    continue;
                }
                Err(error) => return Err(error),
            };
            match may_hold(kind, &listed, &name) {
                None => {
                    tracing::debug!(key = %key, owner = %owner, "our node vanished; queueing again");
                    cleanup.disarm();
                    return Ok(None);
                }
                Some(true) => {
                    let token = match kind {
                        LockKind::Permit { .. } if !at_create => {
                            let claimed = self
                                .call(client.set_data(&path, self.holder.as_bytes(), None))
                                .await?;
                            match claimed {
                                Ok(stat) => stat.mzxid,
                                Err(
                                    ZkError::NoNode
                                    | ZkError::SessionExpired
                                    | ZkError::ClientClosed,
                                ) => {
                                    cleanup.disarm();
                                    return Ok(None);
                                }
                                Err(error) => return Err(map(error)),
                            }
                        }
                        _ => czxid,
                    };
                    cleanup.disarm();
                    let lease = self.lease(key, owner, (path, token), sent_at, validity, session);
                    return Ok(Some(lease.with_kind(kind)));
                }
                Some(false) => {}
            }
            if attempts.remaining().is_zero() {
                self.withdraw(client, &path, &mut cleanup).await?;
                return Err(attempts.give_up(LockError::contended(NAME, key.as_str(), None)));
            }
            let Some(watcher) = watcher else { continue };
            let recheck = self.poll.min(attempts.remaining());
            tokio::select! {
                _ = watcher.changed() => { self.wakes.watch.fetch_add(1, Ordering::Relaxed); }
                () = tokio::time::sleep(recheck) => { self.wakes.poll.fetch_add(1, Ordering::Relaxed); }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(owner: u8, kind: LockKind, sequence: u32) -> String {
        let owner = OwnerToken::from_bytes([owner; 16]);
        format!("{}{sequence:010}", node_prefix(&owner, mark(kind)))
    }

    #[test]
    fn readers_wait_for_older_writers_writers_for_everyone_permits_for_n() {
        let read = LockKind::Read;
        let write = LockKind::Write;
        let children = [
            node(1, read, 1),
            node(2, read, 2),
            node(3, write, 3),
            node(4, read, 4),
        ];
        let ranked = queue(&children);
        assert_eq!(may_hold(read, &ranked, &children[1]), Some(true));
        assert_eq!(may_hold(write, &ranked, &children[2]), Some(false));
        assert_eq!(may_hold(read, &ranked, &children[3]), Some(false));
        assert_eq!(may_hold(read, &ranked, "gone"), None);
        let permit = LockKind::Permit { permits: 2 };
        let permits: Vec<String> = (1..=3).map(|i| node(i, permit, u32::from(i))).collect();
        let ranked = queue(&permits);
        assert_eq!(may_hold(permit, &ranked, &permits[1]), Some(true));
        assert_eq!(may_hold(permit, &ranked, &permits[2]), Some(false));
    }
}
