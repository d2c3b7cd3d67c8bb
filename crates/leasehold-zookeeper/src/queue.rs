//! The FIFO queue algorithm: an ephemeral sequential contender node per
//! acquisition, a watch on the predecessor to wait, a fresh listing to decide
//! (Curator's `LockInternals`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use leasehold_core::{Attempts, Key, Lease, LockError, LockKind, OwnerToken, WaitPolicy};
use tokio::time::Instant;
use zookeeper_client::{Client, CreateMode, Error as ZkError};

use crate::NAME;
use crate::backend::Held;
use crate::backend::ZkBackend;
use crate::error::map;
use crate::path::{Contender, contender_prefix, queue};
use crate::reaper::{Reaper, key_path_of};
use crate::store::Session;

/// Our contender node, and the queue as listed right after its create when
/// that list came with it.
pub(crate) struct Enqueued {
    pub name: String,
    pub czxid: i64,
    pub queue: Option<Vec<Contender>>,
}

impl ZkBackend {
    /// Creates `owner`'s node named `name_prefix` + sequence under
    /// `key_path`, making that node (a container, which the server removes
    /// once it is empty again) and the namespace on demand. A create whose
    /// reply was lost is found again by the owner token in its name.
    /// Returns the node's name and czxid.
    pub(crate) async fn enqueue(
        &self,
        session: &Session,
        key_path: &str,
        name_prefix: &str,
        owner: &OwnerToken,
        cleanup: &mut Reaper,
    ) -> Result<Enqueued, LockError> {
        let client = &session.client;
        let prefix = format!("{key_path}/{name_prefix}");
        let options = CreateMode::EphemeralSequential.with_acls(self.acls());
        for _ in 0..5 {
            // The node's data is the holder label, for inspect and listings.
            let created = client.create(&prefix, self.holder.as_bytes(), &options);
            // The client orders requests when they are made, not when polled,
            // and the server answers a session's requests in order: this list
            // already shows our node, and the uncontended case costs one
            // round trip instead of two.
            let listed = client.list_children(key_path);
            match self.call(created).await? {
                Ok((stat, sequence)) => {
                    let name = format!("{name_prefix}{sequence}");
                    cleanup.known(format!("{key_path}/{name}"));
                    let queue = match self.call(listed).await {
                        Ok(Ok(children)) => Some(queue(&children)),
                        _ => None,
                    };
                    return Ok(Enqueued {
                        name,
                        czxid: stat.czxid,
                        queue,
                    });
                }
                Err(ZkError::NoNode) => self.make_key_node(client, key_path).await?,
                Err(ZkError::ConnectionLoss) => {
                    // The create may have been applied: look for our token.
                    if let Some((name, czxid)) = self.find_own(client, key_path, owner).await? {
                        cleanup.known(format!("{key_path}/{name}"));
                        return Ok(Enqueued {
                            name,
                            czxid,
                            queue: None,
                        });
                    }
                }
                Err(error) => return Err(map(error)),
            }
        }
        Err(LockError::unavailable(
            NAME,
            format!("could not create a contender node under {key_path} in 5 attempts"),
        ))
    }

    pub(crate) async fn make_key_node(
        &self,
        client: &Client,
        key_path: &str,
    ) -> Result<(), LockError> {
        let container = CreateMode::Container.with_acls(self.acls());
        match self.call(client.create(key_path, &[], &container)).await? {
            Ok(_) | Err(ZkError::NodeExists) => Ok(()),
            Err(ZkError::NoNode) => {
                let persistent = CreateMode::Persistent.with_acls(self.acls());
                self.call(client.mkdir(&self.namespace, &persistent))
                    .await?
                    .map_err(map)?;
                match self.call(client.create(key_path, &[], &container)).await? {
                    Ok(_) | Err(ZkError::NodeExists) => Ok(()),
                    Err(error) => Err(map(error)),
                }
            }
            Err(error) => Err(map(error)),
        }
    }

    async fn find_own(
        &self,
        client: &Client,
        key_path: &str,
        owner: &OwnerToken,
    ) -> Result<Option<(String, i64)>, LockError> {
        // sync first so the server we read from has applied our create, if
        // it was applied anywhere.
        let _ = self.call(client.sync(key_path)).await?;
        let Some(own) = self
            .contenders(client, key_path)
            .await?
            .into_iter()
            .find(|c| c.is_owned_by(owner))
        else {
            return Ok(None);
        };
        let stat = self
            .call(client.check_stat(&format!("{key_path}/{}", own.name)))
            .await?
            .map_err(map)?;
        Ok(stat.map(|stat| (own.name, stat.czxid)))
    }

    /// The key's contenders in queue order (empty if the key's node is gone).
    pub(crate) async fn contenders(
        &self,
        client: &Client,
        key_path: &str,
    ) -> Result<Vec<Contender>, LockError> {
        match self.call(client.list_children(key_path)).await? {
            Ok(children) => Ok(queue(&children)),
            Err(ZkError::NoNode) => Ok(Vec::new()),
            Err(error) => Err(map(error)),
        }
    }

    /// Deletes our node and waits for the answer (gone already is fine).
    pub(crate) async fn withdraw(
        &self,
        client: &Client,
        path: &str,
        cleanup: &mut Reaper,
    ) -> Result<(), LockError> {
        match self.call(client.delete(path, None)).await? {
            Ok(()) | Err(ZkError::NoNode) => {
                cleanup.disarm();
                Ok(())
            }
            Err(error) => Err(map(error)),
        }
    }

    /// One queued attempt in one session: returns `Ok(None)` when our node
    /// vanished (session ended) and the caller should queue again.
    async fn wait_in_queue(
        &self,
        session: &Arc<Session>,
        key: &Key,
        validity: Duration,
        attempts: &mut Attempts,
    ) -> Result<Option<Lease>, LockError> {
        let client = &session.client;
        let key_path = self.key_path(key);
        let owner = OwnerToken::generate();
        let mut cleanup = Reaper::new(session, key_path.clone(), owner, self.timeout);
        let mut sent_at = Instant::now();
        let Enqueued {
            name,
            czxid,
            mut queue,
        } = self
            .enqueue(
                session,
                &key_path,
                &contender_prefix(&owner),
                &owner,
                &mut cleanup,
            )
            .await?;
        let path = format!("{key_path}/{name}");
        loop {
            let listed = match queue.take() {
                Some(queue) => Ok(queue),
                None => {
                    sent_at = Instant::now();
                    self.contenders(client, &key_path).await
                }
            };
            let queue = match listed {
                Ok(queue) => queue,
                Err(error) if error.is_retryable() && !session.is_ended() => {
                    let Some(delay) = attempts.next_delay(None) else {
                        return Err(error);
                    };
                    tokio::time::sleep(delay).await;
                    continue;
                }
                Err(error) if session.is_ended() => {
                    tracing::debug!(%error, key = %key, "session ended while queued; queueing again");
                    cleanup.disarm();
                    return Ok(None);
                }
                Err(error) => return Err(error),
            };
            let Some(at) = queue.iter().position(|c| c.name == name) else {
                tracing::debug!(key = %key, owner = %owner, "our contender node vanished; queueing again");
                cleanup.disarm();
                return Ok(None);
            };
            if at == 0 {
                cleanup.disarm();
                return Ok(Some(self.lease(
                    key,
                    owner,
                    (path, czxid),
                    sent_at,
                    validity,
                    session,
                )));
            }
            if attempts.remaining().is_zero() {
                self.withdraw(client, &path, &mut cleanup).await?;
                return Err(attempts.give_up(LockError::contended(NAME, key.as_str(), None)));
            }
            let predecessor = format!("{key_path}/{}", queue[at - 1].name);
            let watcher = match self.call(client.get_and_watch_data(&predecessor)).await {
                Ok(Ok((_, _, watcher))) => watcher,
                Ok(Err(ZkError::NoNode)) => continue,
                Ok(Err(error)) => {
                    let error = map(error);
                    if !error.is_retryable() {
                        return Err(error);
                    }
                    if let Some(delay) = attempts.next_delay(None) {
                        tokio::time::sleep(delay).await;
                    }
                    continue;
                }
                Err(timeout) => {
                    if attempts.remaining().is_zero() {
                        return Err(timeout);
                    }
                    continue;
                }
            };
            let recheck = self.poll.min(attempts.remaining());
            tokio::select! {
                _ = watcher.changed() => { self.wakes.watch.fetch_add(1, Ordering::Relaxed); }
                () = tokio::time::sleep(recheck) => { self.wakes.poll.fetch_add(1, Ordering::Relaxed); }
            }
        }
    }

    /// Queues, and withdraws unless at the head. Cancel safe: dropped before
    /// it returns, its node is removed from a background task.
    pub(crate) async fn try_lock(&self, key: &Key, ttl: Duration) -> Result<Lease, LockError> {
        self.valid_ttl(ttl)?;
        let session = self.sessions.for_ttl(ttl).await?;
        let validity = self.check_ttl(ttl, &session)?;
        let client = &session.client;
        let key_path = self.key_path(key);
        let owner = OwnerToken::generate();
        let mut cleanup = Reaper::new(&session, key_path.clone(), owner, self.timeout);
        let sent_at = Instant::now();
        let Enqueued { name, czxid, queue } = self
            .enqueue(
                &session,
                &key_path,
                &contender_prefix(&owner),
                &owner,
                &mut cleanup,
            )
            .await?;
        let path = format!("{key_path}/{name}");
        let queue = match queue {
            Some(queue) => queue,
            None => self.contenders(client, &key_path).await?,
        };
        match queue.first() {
            Some(head) if head.name == name => {
                cleanup.disarm();
                Ok(self.lease(key, owner, (path, czxid), sent_at, validity, &session))
            }
            _ => {
                self.withdraw(client, &path, &mut cleanup).await?;
                let others: Vec<Contender> = queue.into_iter().filter(|c| c.name != name).collect();
                let holder = self.holder_info(client, &key_path, &others).await;
                Err(LockError::contended(NAME, key.as_str(), holder))
            }
        }
    }

    /// Queues behind the current holder and waits for the watch on the
    /// predecessor; FIFO; one attempt always happens, even with a zero wait.
    /// A waiter that times out removes its node; cancel safe: one whose
    /// future is dropped has it removed from a background task. Readers,
    /// writers and permits (`kind`) wait for their rank instead (see
    /// `shared.rs`), in the same sessions.
    pub(crate) async fn lock(
        &self,
        key: &Key,
        kind: LockKind,
        ttl: Duration,
        wait: &WaitPolicy,
    ) -> Result<Lease, LockError> {
        self.valid_ttl(ttl)?;
        let mut attempts = Attempts::new(wait);
        loop {
            let attempt = async {
                let session = self.sessions.for_ttl(ttl).await?;
                let validity = self.check_ttl(ttl, &session)?;
                match kind {
                    LockKind::Exclusive => {
                        self.wait_in_queue(&session, key, validity, &mut attempts)
                            .await
                    }
                    kind => {
                        self.wait_for_rank(&session, key, kind, validity, &mut attempts)
                            .await
                    }
                }
            };
            let error = match attempt.await {
                Ok(Some(lease)) => return Ok(lease),
                Ok(None) => continue,
                Err(error) if error.is_retryable() => error,
                Err(error) => return Err(error),
            };
            let Some(delay) = attempts.next_delay(None) else {
                return Err(error);
            };
            tokio::time::sleep(delay).await;
        }
    }

    /// Deletes a held lease's node and waits for ZooKeeper's answer. A delete
    /// whose answer was lost may or may not have been applied: it is asked
    /// again (deleting by path is idempotent for us) until the operation
    /// timeout, and if that runs out, the reaper keeps deleting in the
    /// background so the lock does not stay taken for the session's life.
    pub(crate) async fn delete_node(&self, lease: &Lease, held: &Held) -> Result<(), LockError> {
        const RETRY: Duration = Duration::from_millis(50);
        let client = &held.session.client;
        let mut attempts = Attempts::new(&WaitPolicy::new(self.timeout).with_delays(RETRY, RETRY));
        let mut retried = false;
        loop {
            let answer =
                tokio::time::timeout(attempts.remaining(), client.delete(&held.path, None)).await;
            let error = match answer {
                Ok(Ok(())) => return Ok(()),
                // Gone after a retry: our earlier delete was applied.
                Ok(Err(ZkError::NoNode)) if retried => return Ok(()),
                Ok(Err(ZkError::NoNode | ZkError::SessionExpired | ZkError::ClientClosed)) => {
                    return Err(LockError::not_held(NAME, lease.key().as_str()));
                }
                Ok(Err(error)) => map(error),
                Err(_) => LockError::unavailable(
                    NAME,
                    "no answer to the delete within the operation timeout",
                ),
            };
            // Another try only with a whole retry delay left before the deadline.
            let next = match error.is_retryable() {
                true => attempts.next_delay(None).filter(|delay| *delay >= RETRY),
                false => None,
            };
            let Some(delay) = next else {
                let mut reaper = Reaper::new(
                    &held.session,
                    key_path_of(&held.path).to_owned(),
                    *lease.owner(),
                    self.timeout,
                );
                reaper.known(held.path.clone());
                drop(reaper); // armed: deletes in the background
                return Err(error);
            };
            retried = true;
            tokio::time::sleep(delay).await;
        }
    }
}
