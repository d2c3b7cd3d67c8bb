//! The operations tooling relies on: what the store knows of a lock's
//! holder, listings of held locks page by page, and force releases.

use std::time::{Duration, SystemTime};

use leasehold_core::{FencingToken, HeldLock, Key, ListPage, ListQuery, LockError, LockInfo};
use zookeeper_client::{Client, Error as ZkError, MultiReadResult, Stat};

use crate::NAME;
use crate::backend::ZkBackend;
use crate::error::map;
use crate::path::{Contender, decode_key, queue};

/// Reads per multi-read request, so that a page of long key names and
/// queues stays far below the server's 1 MB `jute.maxbuffer`.
const READS_PER_REQUEST: usize = 128;

/// What a multi-read reads at each path.
#[derive(Clone, Copy, Debug)]
enum Read {
    Children,
    Data,
}

impl ZkBackend {
    /// What the store knows about the holder of `queue` (its first
    /// contender), or `None` when the head went meanwhile or could not be
    /// read (best effort, for `inspect` and contention errors).
    pub(crate) async fn holder_info(
        &self,
        client: &Client,
        key_path: &str,
        queue: &[Contender],
    ) -> Option<LockInfo> {
        let head = queue.first()?;
        let (data, stat) = self
            .call(client.get_data(&format!("{key_path}/{}", head.name)))
            .await
            .ok()?
            .ok()?;
        Some(describe(queue, &data, &stat))
    }

    /// One page: the namespace's key nodes (one listing; ZooKeeper cannot
    /// page a node's children) whose decoded key starts with the prefix and
    /// comes after the cursor, in key order, `limit` of them; then one
    /// multi-read of their queues and one of their heads. A key node with no
    /// contender left (a container not yet removed) is not shown, so a page
    /// may come back short; the cursor is the last key considered.
    pub(crate) async fn list_page(&self, query: &ListQuery) -> Result<ListPage, LockError> {
        let session = self.sessions.default_session().await?;
        let client = &session.client;
        let segments = match self.call(client.list_children(&self.namespace)).await? {
            Ok(children) => children,
            Err(ZkError::NoNode) => return Ok(ListPage::default()),
            Err(error) => return Err(map(error)),
        };
        let mut keys: Vec<(String, String)> = segments
            .into_iter()
            .filter_map(|segment| {
                let key = decode_key(&segment)?;
                let wanted = key.starts_with(&query.prefix)
                    && query
                        .cursor
                        .as_deref()
                        .is_none_or(|after| key.as_str() > after);
                wanted.then_some((key, segment))
            })
            .collect();
        keys.sort_unstable();
        let limit = query.limit.max(1);
        let more = keys.len() > limit;
        keys.truncate(limit);
        let next = more
            .then(|| keys.last().map(|(key, _)| key.clone()))
            .flatten();

        let key_paths: Vec<String> = keys
            .iter()
            .map(|(_, segment)| format!("{}/{segment}", self.namespace))
            .collect();
        let queues = self
            .read_all(client, &key_paths, Read::Children)
            .await?
            .into_iter()
            .map(|answer| match answer {
                MultiReadResult::Children { children } => Ok(queue(&children)),
                MultiReadResult::Error {
                    err: ZkError::NoNode,
                } => Ok(Vec::new()),
                other => Err(unexpected(other)),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let held: Vec<usize> = (0..queues.len())
            .filter(|&at| !queues[at].is_empty())
            .collect();
        let head_paths: Vec<String> = held
            .iter()
            .map(|&at| format!("{}/{}", key_paths[at], queues[at][0].name))
            .collect();
        let heads = self.read_all(client, &head_paths, Read::Data).await?;
        let mut locks = Vec::with_capacity(held.len());
        for (at, answer) in held.into_iter().zip(heads) {
            match answer {
                MultiReadResult::Data { data, stat } => locks.push(HeldLock {
                    key: keys[at].0.clone(),
                    info: describe(&queues[at], &data, &stat),
                }),
                // Released between the two reads.
                MultiReadResult::Error {
                    err: ZkError::NoNode,
                } => {}
                other => return Err(unexpected(other)),
            }
        }
        Ok(ListPage { locks, next })
    }

    /// Deletes the head contender of `key`'s queue, checked against the
    /// version read with it, from the session of calls that hold no lock
    /// (any session may delete another's ephemeral node). The next contender's
    /// watch fires and it holds the lock with its own, higher czxid; the
    /// evicted holder's next extend finds its node gone: `Lost`. `None` when
    /// the queue was empty, or the holder read left on its own before the
    /// delete. A delete whose answer was lost is asked again: gone then, it
    /// counts as ours.
    pub(crate) async fn evict(&self, key: &Key) -> Result<Option<LockInfo>, LockError> {
        let session = self.sessions.default_session().await?;
        let client = &session.client;
        let key_path = self.key_path(key);
        let queue = self.contenders(client, &key_path).await?;
        let Some(head) = queue.first() else {
            return Ok(None);
        };
        let path = format!("{key_path}/{}", head.name);
        let (data, stat) = match self.call(client.get_data(&path)).await? {
            Ok(read) => read,
            Err(ZkError::NoNode) => return Ok(None),
            Err(error) => return Err(map(error)),
        };
        let evicted = describe(&queue, &data, &stat);
        let mut retried = false;
        loop {
            let error = match self.call(client.delete(&path, Some(stat.version))).await {
                Ok(Ok(())) => return Ok(Some(evicted)),
                Ok(Err(ZkError::NoNode)) if retried => return Ok(Some(evicted)),
                Ok(Err(ZkError::NoNode)) => return Ok(None),
                Ok(Err(error)) => map(error),
                Err(timeout) => timeout,
            };
            if retried || !error.is_retryable() || session.is_ended() {
                return Err(error);
            }
            retried = true;
        }
    }

    /// One read per path, `READS_PER_REQUEST` to a multi-read; the answers
    /// in path order.
    async fn read_all(
        &self,
        client: &Client,
        paths: &[String],
        read: Read,
    ) -> Result<Vec<MultiReadResult>, LockError> {
        let mut answers = Vec::with_capacity(paths.len());
        for chunk in paths.chunks(READS_PER_REQUEST) {
            let mut reader = client.new_multi_reader();
            for path in chunk {
                match read {
                    Read::Children => reader.add_get_children(path),
                    Read::Data => reader.add_get_data(path),
                }
                .map_err(map)?;
            }
            match self.call(reader.commit()).await? {
                Ok(read) if read.len() == chunk.len() => answers.extend(read),
                Ok(_) => {
                    return Err(LockError::backend(
                        NAME,
                        "multi-read answered a different number of reads",
                    ));
                }
                Err(error) => return Err(map(error)),
            }
        }
        Ok(answers)
    }
}

/// A queue's head as a [`LockInfo`]: its czxid as token, the owner hint
/// from its name, its data as the holder label (none for a node made before
/// labels were stored), its ctime (the server's clock) as the acquisition
/// time, and the contenders behind it as waiters. The remaining validity is
/// the holder's session's, which only the holder knows.
fn describe(queue: &[Contender], data: &[u8], stat: &Stat) -> LockInfo {
    let label = (!data.is_empty()).then(|| String::from_utf8_lossy(data).into_owned());
    let acquired_at = u64::try_from(stat.ctime)
        .ok()
        .map(|millis| SystemTime::UNIX_EPOCH + Duration::from_millis(millis));
    let waiters = u32::try_from(queue.len().saturating_sub(1)).unwrap_or(u32::MAX);
    let mut info = LockInfo::new(Some(FencingToken(stat.czxid as u64)), None)
        .with_metadata(label)
        .with_acquired_at(acquired_at)
        .with_waiters(Some(waiters));
    info.owner_hint = queue.first().map(Contender::owner_hint);
    info
}

/// A multi-read answer that is neither the one asked for nor "no node".
fn unexpected(answer: MultiReadResult) -> LockError {
    match answer {
        MultiReadResult::Error { err } => map(err),
        _ => LockError::backend(NAME, "multi-read answered an unexpected kind"),
    }
}
