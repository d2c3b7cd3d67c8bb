//! Release signals over N servers: a release runs the single-server release
//! script on every server, and each server that runs it `PUBLISH`es the
//! key's name on the namespace's channel. [`Releases`] subscribes to that
//! channel on every server at once and turns what they say into one signal
//! per release ([`Announced`]), as one [`ReleaseSource`] for the backend's
//! [`ReleaseFeed`].
//!
//! **One signal, when a majority is free.** The servers free a released key
//! one after another; a waiter that tried at the first server's message
//! could be refused by servers whose delete has not run yet, and one woken
//! per server's message (the hub wakes one waiter per signal) would have
//! several waiters try at once and split the vote so that none gets a
//! majority (measured with 4 tasks on Redlock-3: 9.6 round trips per
//! handoff with a signal per message, more than polling's 5.6). So a key's
//! release is signalled once, when the quorum-th server has announced it:
//! a majority is free then, and one waiter of this process tries.
//!
//! Signals are a hint: waiters poll as well. A server that cannot be
//! subscribed (down, or not connected yet) is left out, and the merged
//! subscription ends after [`RETRY_MISSING`] to try it again; fewer than a
//! quorum subscribed is a failed subscription (the feed tries again). A
//! release whose messages are not counted as one (overlapping releases of
//! a key, a message lost with a connection) costs its waiters a poll,
//! never a hang.
//!
//! [`ReleaseFeed`]: leasehold_core::ReleaseFeed

use std::collections::HashMap;
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

/// The most keys whose releases are being counted at once; past it the
/// counts start over (a release counted from scratch is signalled late or
/// not at all: its waiters poll).
const MAX_COUNTED_KEYS: usize = 4096;

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
    /// (connecting a server not connected yet). At least a quorum must
    /// answer; the merged stream ends (with an error) when any server's
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
        for (server, answer) in answers.into_iter().enumerate() {
            let addr = self.nodes.addr(server).to_owned();
            match answer {
                Ok(messages) => {
                    let ended = LockError::unavailable(
                        NAME,
                        format!("{addr}: the release subscription ended"),
                    );
                    let tagged = messages.map(move |key| key.map(|key| (server, key)));
                    streams.push(tagged.chain(stream::iter([Err(ended)])).boxed());
                }
                Err(error) => missing.push(format!("{addr}: {error}")),
            }
        }
        let quorum = self.nodes.quorum();
        if streams.len() < quorum {
            return Err(LockError::unavailable(
                NAME,
                format!(
                    "{} of {} servers' release channels subscribed, {quorum} needed ({})",
                    streams.len(),
                    self.nodes.len(),
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
        let state = (
            select_all(streams),
            Announced::new(quorum, self.nodes.len()),
        );
        let signals = stream::unfold(state, |(mut merged, mut announced)| async move {
            loop {
                match merged.next().await? {
                    Ok((server, key)) => {
                        if let Some(key) = announced.heard(server, key) {
                            return Some((Ok(key), (merged, announced)));
                        }
                    }
                    Err(error) => return Some((Err(error), (merged, announced))),
                }
            }
        });
        Ok(signals.boxed())
    }
}

/// Counts, per key, the servers that announced its release (see the module
/// docs): a key is signalled when the quorum-th server announces it. A
/// server heard a second time before every server was means a new release
/// began, and the count starts over with it.
#[derive(Debug)]
struct Announced {
    quorum: usize,
    servers: usize,
    /// Per key, the servers heard since its count last started.
    heard: HashMap<String, Vec<usize>>,
}

impl Announced {
    fn new(quorum: usize, servers: usize) -> Self {
        Announced {
            quorum,
            servers,
            heard: HashMap::new(),
        }
    }

    /// `server` announced `key`'s release: the key, when that makes a
    /// quorum of servers that announced it.
    fn heard(&mut self, server: usize, key: String) -> Option<String> {
        if self.heard.len() >= MAX_COUNTED_KEYS && !self.heard.contains_key(&key) {
            self.heard.clear();
        }
        let heard = self.heard.entry(key.clone()).or_default();
        if heard.contains(&server) {
            heard.clear();
        }
        heard.push(server);
        let count = heard.len();
        if count >= self.servers {
            // Every server has announced it: this release is counted out.
            self.heard.remove(&key);
        }
        (count == self.quorum).then_some(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signals(announced: &mut Announced, messages: &[(usize, &str)]) -> Vec<String> {
        messages
            .iter()
            .filter_map(|&(server, key)| announced.heard(server, key.to_owned()))
            .collect()
    }

    #[test]
    fn a_release_is_signalled_once_when_a_majority_has_announced_it() {
        let mut announced = Announced::new(2, 3);
        assert_eq!(signals(&mut announced, &[(2, "k")]), Vec::<String>::new());
        assert_eq!(signals(&mut announced, &[(0, "k")]), ["k"]);
        assert_eq!(signals(&mut announced, &[(1, "k")]), Vec::<String>::new());
        // The next release, in another order, and with one server down.
        assert_eq!(signals(&mut announced, &[(1, "k"), (2, "k")]), ["k"]);
        assert_eq!(
            signals(&mut announced, &[(0, "k"), (2, "k")]),
            Vec::<String>::new()
        );
        assert_eq!(signals(&mut announced, &[(1, "k")]), ["k"]);
    }

    #[test]
    fn keys_are_counted_apart_and_a_lone_server_is_a_quorum_of_one() {
        let mut announced = Announced::new(3, 5);
        let heard = signals(
            &mut announced,
            &[(0, "a"), (0, "b"), (1, "a"), (1, "b"), (4, "b"), (3, "a")],
        );
        assert_eq!(heard, ["b", "a"]);
        let mut single = Announced::new(1, 1);
        assert_eq!(signals(&mut single, &[(0, "a"), (0, "a")]), ["a", "a"]);
        assert!(
            single.heard.is_empty(),
            "counted-out releases are forgotten"
        );
    }

    #[test]
    fn the_counts_start_over_past_their_bound() {
        let mut announced = Announced::new(2, 3);
        for i in 0..MAX_COUNTED_KEYS {
            assert_eq!(announced.heard(0, format!("k{i}")), None);
        }
        assert_eq!(announced.heard(0, "new".into()), None);
        assert_eq!(announced.heard.len(), 1);
        assert_eq!(announced.heard(1, "new".into()), Some("new".into()));
    }
}
