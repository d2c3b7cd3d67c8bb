//! Release signals over N servers: a release runs the single-server release
//! script on every server, and each server that runs it `PUBLISH`es the
//! key's name on the namespace's channel. [`Releases`] subscribes to that
//! channel on every server at once and merges what they say, as one
//! [`ReleaseSource`] for the backend's [`ReleaseFeed`].
//!
//! Why every server and not one: the servers free a released key one after
//! another, and a waiter woken by the first one to say so may be refused
//! by a server whose delete has not run yet (then no quorum is free). The
//! last server to free the key speaks last, so the waiter, which listens
//! again before each attempt, hears it and tries once more. Each server's
//! message wakes a waiter ([`ReleaseHub`](leasehold_core::ReleaseHub)
//! wakes one per signal), so a release may wake up to N waiters of a key
//! where one gets it; the others are refused and wait again.
//!
//! Signals are a hint: waiters poll as well. A server that cannot be
//! subscribed (down, or not connected yet) is left out, and the merged
//! subscription ends after [`RETRY_MISSING`] to try it again; a release
//! heard on none of the subscribed servers costs its waiters a poll, never
//! a hang.
//!
//! [`ReleaseFeed`]: leasehold_core::ReleaseFeed

use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::{self, select_all};
use leasehold_core::{LockError, ReleaseSource, ReleaseStream, async_trait};

use crate::NAME;
use crate::store::Nodes;

/// How long a merged subscription that left servers out runs before it
/// ends, so the feed subscribes again and the servers left out are tried
/// again (the feed wakes every waiter then, as after any reconnect).
pub(crate) const RETRY_MISSING: Duration = Duration::from_secs(10);

/// The release channel of every server of one backend; see the module
/// docs.
#[derive(Debug)]
pub(crate) struct Releases {
    nodes: Nodes,
    /// Bounds each server's connect and `SUBSCRIBE`.
    timeout: Duration,
}

impl Releases {
    pub(crate) fn new(nodes: Nodes, timeout: Duration) -> Self {
        Releases { nodes, timeout }
    }
}

#[async_trait]
impl ReleaseSource for Releases {
    /// Subscribes on every server at once, each within the timeout
    /// (connecting a server not connected yet). At least one must answer;
    /// the merged stream ends (with an error) when any server's
    /// subscription ends, or after [`RETRY_MISSING`] when servers were left
    /// out.
    async fn subscribe(&self) -> Result<ReleaseStream, LockError> {
        let answers = self
            .nodes
            .fan_out(&self.nodes.all(), self.timeout, |node| async move {
                node.release_source().subscribe().await
            })
            .await;
        let mut streams = Vec::new();
        let mut missing = Vec::new();
        for (i, answer) in answers.into_iter().enumerate() {
            let addr = self.nodes.addr(i).to_owned();
            match answer {
                Ok(messages) => {
                    let ended = LockError::unavailable(
                        NAME,
                        format!("{addr}: the release subscription ended"),
                    );
                    streams.push(messages.chain(stream::iter([Err(ended)])).boxed());
                }
                Err(error) => missing.push(format!("{addr}: {error}")),
            }
        }
        if streams.is_empty() {
            return Err(LockError::unavailable(
                NAME,
                format!(
                    "no server's release channel could be subscribed ({})",
                    missing.join("; ")
                ),
            ));
        }
        if !missing.is_empty() {
            tracing::debug!(
                left_out = %missing.join("; "),
                retry_in = ?RETRY_MISSING,
                "redlock release subscription left servers out"
            );
            let retry = LockError::unavailable(
                NAME,
                format!(
                    "retrying the release subscription of {} server(s) left out",
                    missing.len()
                ),
            );
            let again = stream::once(async move {
                tokio::time::sleep(RETRY_MISSING).await;
                Err(retry)
            });
            streams.push(again.boxed());
        }
        Ok(select_all(streams).boxed())
    }
}
