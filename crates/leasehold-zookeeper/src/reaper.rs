//! The reaper: removes the contender nodes an acquisition abandoned, from a
//! background task, until that works or the session ends.

use std::sync::Arc;
use std::time::Duration;

use leasehold_core::{LockError, OwnerToken, with_timeout};
use zookeeper_client::{Client, Error as ZkError};

use crate::NAME;
use crate::error::map;
use crate::path::queue;
use crate::store::Session;

/// The key node's path of a contender node's path.
pub(crate) fn key_path_of(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(parent, _)| parent)
}

/// Removes the contender nodes an acquisition abandoned (the future was
/// dropped, an error cut it short, a release got no answer). Drop never
/// blocks: it spawns the removal, which lists the key's children and deletes
/// every one carrying the owner token (the node whose create was in flight,
/// and a duplicate a retried create may have made, ZOOKEEPER-22), and
/// retries with backoff (50 ms doubling to 5 s) until that succeeds or the
/// session ends, when the server removes the nodes itself. Each store call is
/// bounded by the operation timeout. It once gave up at the first error or
/// after 30 s, leaving an orphaned contender that blocked the key for the
/// session's life.
pub(crate) struct Reaper {
    session: Arc<Session>,
    key_path: String,
    owner: OwnerToken,
    path: Option<String>,
    timeout: Duration,
    armed: bool,
}

impl Reaper {
    pub(crate) fn new(
        session: &Arc<Session>,
        key_path: String,
        owner: OwnerToken,
        timeout: Duration,
    ) -> Self {
        Reaper {
            session: session.clone(),
            key_path,
            owner,
            path: None,
            timeout,
            armed: true,
        }
    }

    pub(crate) fn known(&mut self, path: String) {
        self.path = Some(path);
    }

    pub(crate) fn disarm(&mut self) {
        self.armed = false;
    }
}

/// Deletes every child of `key_path` carrying `owner`'s token (only `known`
/// when the key path is not known): `Ok` with the count removed once none is
/// left.
async fn sweep(
    client: &Client,
    key_path: &str,
    owner: &OwnerToken,
    known: Option<&str>,
    timeout: Duration,
) -> Result<usize, LockError> {
    let mut paths: Vec<String> = Vec::new();
    if key_path.is_empty() {
        paths.extend(known.map(str::to_owned));
    } else {
        let listed = with_timeout(NAME, timeout, async {
            Ok(client.list_children(key_path).await)
        })
        .await?;
        match listed {
            Ok(children) => paths.extend(
                queue(&children)
                    .into_iter()
                    .filter(|c| c.is_owned_by(owner))
                    .map(|c| format!("{key_path}/{}", c.name)),
            ),
            Err(ZkError::NoNode) => {}
            Err(error) => return Err(map(error)),
        }
    }
    let mut removed = 0;
    for path in paths {
        match with_timeout(NAME, timeout, async {
            Ok(client.delete(&path, None).await)
        })
        .await?
        {
            Ok(()) => removed += 1,
            Err(ZkError::NoNode) => {}
            Err(error) => return Err(map(error)),
        }
    }
    Ok(removed)
}

impl Drop for Reaper {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // no runtime: the node goes with the session.
        };
        let session = self.session.clone();
        let path = self.path.take();
        let key_path = std::mem::take(&mut self.key_path);
        let owner = self.owner;
        let timeout = self.timeout;
        runtime.spawn(async move {
            let mut delay = Duration::from_millis(50);
            loop {
                if session.is_ended() {
                    return; // its ephemeral nodes went with it
                }
                let swept = tokio::select! {
                    () = session.ended.cancelled() => return,
                    swept = sweep(&session.client, &key_path, &owner, path.as_deref(), timeout) => swept,
                };
                match swept {
                    Ok(removed) => {
                        tracing::debug!(owner = %owner, removed, "removed abandoned contender nodes");
                        return;
                    }
                    Err(error) => tracing::debug!(%error, owner = %owner,
                        "removing an abandoned contender node failed; retrying until it works or the session ends"),
                }
                tokio::select! {
                    () = session.ended.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        });
    }
}
