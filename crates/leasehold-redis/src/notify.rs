//! Release notifications: the release script `PUBLISH`es each released lock
//! key's name on the namespace's channel; [`PubSub`] is that channel as a
//! [`ReleaseSource`], and the backend's core [`ReleaseFeed`] owns the
//! subscription (lazy start, reconnects, waking everyone after one).
//!
//! [`ReleaseFeed`]: leasehold_core::ReleaseFeed

use std::time::Duration;

use futures_util::StreamExt;
use leasehold_core::{LockError, ReleaseSource, ReleaseStream, async_trait, with_timeout};

use crate::error::map;
use crate::store::RedisNode;

/// How often an idle subscription is pinged, so a silently dead connection is
/// noticed and replaced (missed releases then cost a poll, never a hang).
const HEARTBEAT: Duration = Duration::from_secs(5);

/// One pub/sub connection subscribed to a namespace's release channel, on
/// the server the node's calls go to when it (re)subscribes (after a
/// Sentinel failover: the new master). Its errors carry the node's backend
/// name (`redis`, or `redlock` for a Redlock server).
#[derive(Debug)]
pub(crate) struct PubSub {
    node: RedisNode,
    channel: String,
    timeout: Duration,
}

impl PubSub {
    /// The release channel `channel` of the server behind `node`; every
    /// step (connect, `SUBSCRIBE`, each heartbeat `PING`) within `timeout`.
    pub(crate) fn new(node: RedisNode, channel: String, timeout: Duration) -> Self {
        PubSub {
            node,
            channel,
            timeout,
        }
    }
}

#[async_trait]
impl ReleaseSource for PubSub {
    async fn subscribe(&self) -> Result<ReleaseStream, LockError> {
        let (timeout, backend) = (self.timeout, self.node.backend);
        let pubsub = with_timeout(backend, timeout, async {
            self.node
                .client()
                .get_async_pubsub()
                .await
                .map_err(|e| map(backend, e))
        })
        .await?;
        let (mut sink, messages) = pubsub.split();
        with_timeout(backend, timeout, async {
            sink.subscribe(&self.channel)
                .await
                .map_err(|e| map(backend, e))
        })
        .await?;
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.reset();
        let state = (sink, messages, heartbeat);
        // Each released key's name; a heartbeat PING left unanswered ends the
        // stream with an error, so the feed reconnects.
        let stream = futures_util::stream::unfold(Some(state), move |state| async move {
            let (mut sink, mut messages, mut heartbeat) = state?;
            loop {
                tokio::select! {
                    message = messages.next() => {
                        let message = message?;
                        let name = String::from_utf8_lossy(message.get_payload_bytes()).into_owned();
                        return Some((Ok(name), Some((sink, messages, heartbeat))));
                    }
                    _ = heartbeat.tick() => {
                        let ping = tokio::time::timeout(timeout, sink.ping::<redis::Value>()).await;
                        if !matches!(ping, Ok(Ok(_))) {
                            let error = LockError::unavailable(
                                backend,
                                format!("the release subscription did not answer a PING within {timeout:?}"),
                            );
                            return Some((Err(error), None));
                        }
                    }
                }
            }
        });
        Ok(Box::pin(stream))
    }
}
