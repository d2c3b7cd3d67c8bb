//! The servers: [`Nodes`] connects N of them (a quorum up front, the rest
//! in the background) and runs one step on many at once ([`Nodes::fan_out`]),
//! each bounded by its own per-node timeout. A [`Slot`] is one server's place:
//! a [`RedisNode`] once connected. A server that is down when the backend
//! starts (or whose first connect fails) is connected later, in the
//! background, when an operation needs it; callers never wait longer than
//! their own per-node timeout for it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::join_all;
use futures_util::stream::FuturesUnordered;
use leasehold_core::{Key, LockError, LockKind, OwnerToken};
use leasehold_redis::{KeyLayout, RedisNode};
use tokio::sync::watch;

use crate::NAME;
use crate::error::{NodeOutcome, QuorumReport};

#[derive(Clone, Default)]
struct State {
    node: Option<RedisNode>,
    /// Connect attempts started so far.
    attempt: u64,
    connecting: bool,
    error: Option<String>,
}

/// One server's place in the quorum; cheap to share.
pub(crate) struct Slot {
    /// `host:port`, for errors and logs.
    pub(crate) addr: String,
    client: redis::Client,
    layout: KeyLayout,
    timeout: Duration,
    /// The label stored with every lease granted on this server.
    holder: Arc<str>,
    state: watch::Sender<State>,
}

impl Slot {
    /// Runs `op` on this server within `per_node`; no answer in time (or no
    /// connection) is `Unavailable`.
    pub(crate) async fn call<T, F, Fut>(
        self: &Arc<Self>,
        per_node: Duration,
        op: F,
    ) -> Result<T, LockError>
    where
        F: FnOnce(RedisNode) -> Fut,
        Fut: Future<Output = Result<T, LockError>>,
    {
        let call = async { op(self.get().await?).await };
        match tokio::time::timeout(per_node, call).await {
            Ok(result) => result,
            Err(_) => {
                let state = if self.node().is_some() {
                    ""
                } else {
                    " (not connected)"
                };
                Err(LockError::unavailable(
                    NAME,
                    format!("no answer within {per_node:?}{state}"),
                ))
            }
        }
    }

    pub(crate) fn new(
        client: redis::Client,
        layout: KeyLayout,
        timeout: Duration,
        holder: Arc<str>,
    ) -> Arc<Self> {
        let addr = client.get_connection_info().addr().to_string();
        Arc::new(Slot {
            addr,
            client,
            layout,
            timeout,
            holder,
            state: watch::Sender::new(State::default()),
        })
    }

    /// The connected node, if any.
    pub(crate) fn node(&self) -> Option<RedisNode> {
        self.state.borrow().node.clone()
    }

    /// The node, connecting first if needed. Waits for the connect attempt in
    /// flight (or a new one); the caller bounds the wait with its own timeout,
    /// and the attempt goes on in the background if the caller gives up.
    pub(crate) async fn get(self: &Arc<Self>) -> Result<RedisNode, LockError> {
        let mut receiver = self.state.subscribe();
        if let Some(node) = &receiver.borrow().node {
            return Ok(node.clone());
        }
        let attempt = self.kick();
        let state = receiver
            .wait_for(|s| s.node.is_some() || (!s.connecting && s.attempt >= attempt))
            .await
            .map_err(|_| LockError::unavailable(NAME, format!("{}: slot closed", self.addr)))?;
        match (&state.node, &state.error) {
            (Some(node), _) => Ok(node.clone()),
            (None, error) => Err(LockError::unavailable(
                NAME,
                format!(
                    "cannot connect: {}",
                    error.as_deref().unwrap_or("unknown error")
                ),
            )),
        }
    }

    /// Starts a connect attempt unless one is in flight; returns its number.
    fn kick(self: &Arc<Self>) -> u64 {
        let mut started = false;
        self.state.send_if_modified(|s| {
            if s.node.is_some() || s.connecting {
                return false;
            }
            s.connecting = true;
            s.attempt += 1;
            started = true;
            true
        });
        let attempt = self.state.borrow().attempt;
        if started {
            let slot = self.clone();
            tokio::spawn(async move {
                let result = RedisNode::connect_voter(
                    slot.client.clone(),
                    slot.layout.clone(),
                    slot.timeout,
                    NAME,
                )
                .await
                .map(|node| node.with_holder(&slot.holder));
                slot.state.send_modify(|s| {
                    s.connecting = false;
                    match result {
                        Ok(node) => {
                            s.node = Some(node);
                            s.error = None;
                        }
                        Err(LockError::Unavailable { source, .. }) => {
                            s.error = Some(source.to_string())
                        }
                        Err(error) => s.error = Some(error.to_string()),
                    }
                });
            });
        }
        attempt
    }
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("addr", &self.addr)
            .field("connected", &self.state.borrow().node.is_some())
            .finish()
    }
}

/// The N servers of one backend and the quorum N/2+1 over them; clones
/// share the servers.
#[derive(Debug, Clone)]
pub(crate) struct Nodes {
    slots: Vec<Arc<Slot>>,
    quorum: usize,
}

impl Nodes {
    /// Connects every server at once and returns when a quorum is connected
    /// (the rest go on connecting in the background), with whether every
    /// server is connected and keeps its counters across a restart (AOF with
    /// fsync always). Each connected server's eviction policy is checked and
    /// logged. Fewer than a quorum within `timeout` is
    /// [`LockError::Unavailable`]; a server listed twice is a config error.
    /// Every lease granted stores the label `holder`.
    pub(crate) async fn connect(
        clients: Vec<redis::Client>,
        layout: KeyLayout,
        timeout: Duration,
        holder: &str,
    ) -> Result<(Self, bool), LockError> {
        if clients.is_empty() {
            return Err(LockError::Config(
                "redlock needs at least one server".into(),
            ));
        }
        let slots: Vec<Arc<Slot>> = clients
            .into_iter()
            .map(|client| Slot::new(client, layout.clone(), timeout, holder.into()))
            .collect();
        let mut seen = std::collections::HashSet::new();
        for slot in &slots {
            if !seen.insert(slot.addr.clone()) {
                return Err(LockError::Config(format!(
                    "redlock server {} is listed twice; the servers must be independent",
                    slot.addr
                )));
            }
        }
        if slots.len().is_multiple_of(2) {
            tracing::warn!(
                servers = slots.len(),
                "redlock over an even number of servers tolerates no more failures than one server fewer"
            );
        }
        let nodes = Nodes {
            quorum: slots.len() / 2 + 1,
            slots,
        };
        let durable = nodes.connect_quorum(timeout).await?;
        Ok((nodes, durable))
    }

    /// Connects every slot at once and waits for a quorum (or for every
    /// attempt to end); see [`Nodes::connect`].
    async fn connect_quorum(&self, timeout: Duration) -> Result<bool, LockError> {
        let slots = &self.slots;
        let mut pending: FuturesUnordered<_> = slots
            .iter()
            .enumerate()
            .map(|(i, slot)| async move { (i, tokio::time::timeout(timeout, slot.get()).await) })
            .collect();
        let mut outcomes: Vec<Option<NodeOutcome>> = vec![None; slots.len()];
        let mut connected = 0;
        while let Some((i, result)) = pending.next().await {
            outcomes[i] = Some(match result {
                Ok(Ok(_)) => {
                    connected += 1;
                    NodeOutcome::Ours
                }
                Ok(Err(error)) => NodeOutcome::from_error(error),
                Err(_) => NodeOutcome::Unreachable(format!("no connection within {timeout:?}")),
            });
            if connected >= self.quorum {
                // Stragglers go on connecting in the background.
                break;
            }
        }
        if connected < self.quorum {
            let outcomes = outcomes
                .into_iter()
                .map(|outcome| match outcome {
                    Some(NodeOutcome::Ours) => NodeOutcome::Free,
                    Some(other) => other,
                    None => NodeOutcome::Unreachable("pending".into()),
                })
                .collect();
            let note = "fewer than a quorum of servers could be connected";
            return Err(LockError::unavailable(
                NAME,
                self.report("connect", "", outcomes, Some(note.into())),
            ));
        }
        // Every connected server's configuration: durable counters, and the
        // eviction policy (any but `noeviction` can evict a held lock key, see
        // `leasehold_redis::SafetyFinding`), logged per server.
        let probes = join_all(slots.iter().map(|slot| async move {
            let node = slot.node()?;
            let persistence = tokio::time::timeout(timeout, node.persistence())
                .await
                .ok()?;
            persistence.log_findings(&slot.addr);
            Some(persistence.durable_fencing())
        }))
        .await;
        Ok(connected == slots.len() && probes.into_iter().all(|durable| durable == Some(true)))
    }

    /// How many servers must agree: N/2+1.
    pub(crate) fn quorum(&self) -> usize {
        self.quorum
    }

    /// The servers' `host:port`, in configuration order.
    pub(crate) fn servers(&self) -> Vec<String> {
        self.slots.iter().map(|s| s.addr.clone()).collect()
    }

    /// The connected servers' nodes (`None`: not connected yet).
    pub(crate) fn nodes(&self) -> Vec<Option<RedisNode>> {
        self.slots.iter().map(|s| s.node()).collect()
    }

    /// How many servers there are.
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Every server's index.
    pub(crate) fn all(&self) -> Vec<usize> {
        (0..self.slots.len()).collect()
    }

    /// Runs `op` on the servers `which` (indices) in parallel, each bounded
    /// by `per_node` (connecting included). Results come in `which`'s order.
    pub(crate) async fn fan_out<T, F, Fut>(
        &self,
        which: &[usize],
        per_node: Duration,
        op: F,
    ) -> Vec<Result<T, LockError>>
    where
        F: Fn(RedisNode) -> Fut,
        Fut: Future<Output = Result<T, LockError>>,
    {
        self.fan_out_each(which, per_node, |_, node| op(node)).await
    }

    /// [`Nodes::fan_out`], with each server's index passed to `op` (for a
    /// step whose arguments differ per server).
    pub(crate) async fn fan_out_each<T, F, Fut>(
        &self,
        which: &[usize],
        per_node: Duration,
        op: F,
    ) -> Vec<Result<T, LockError>>
    where
        F: Fn(usize, RedisNode) -> Fut,
        Fut: Future<Output = Result<T, LockError>>,
    {
        let op = &op;
        join_all(
            which
                .iter()
                .map(|&i| self.slots[i].call(per_node, move |node| op(i, node))),
        )
        .await
    }

    /// Compare-and-deletes `owner`'s grant of `kind` on the servers
    /// `which`, in parallel.
    pub(crate) async fn release_on(
        &self,
        which: &[usize],
        key: &Key,
        kind: LockKind,
        owner: &OwnerToken,
        per_node: Duration,
    ) -> Vec<NodeOutcome> {
        self.fan_out(which, per_node, |node| async move {
            node.release_kind_raw(key, kind, owner).await
        })
        .await
        .into_iter()
        .map(NodeOutcome::from_ownership)
        .collect()
    }

    /// Compare-and-deletes `owner`'s grant of `kind` on every server, each within
    /// `per_node`, and returns as soon as `enough` of them confirmed it (or
    /// every server answered). Each server's call runs in its own task, so a
    /// slow server's release still lands after we return (or after the
    /// caller is dropped) instead of leaving our key there until it expires;
    /// servers still answering are reported `Unreachable`.
    pub(crate) async fn release_until(
        &self,
        key: &Key,
        kind: LockKind,
        owner: &OwnerToken,
        per_node: Duration,
        enough: usize,
    ) -> Vec<NodeOutcome> {
        let (sender, mut answers) = tokio::sync::mpsc::unbounded_channel();
        for (i, slot) in self.slots.iter().enumerate() {
            let (slot, key, owner, sender) = (slot.clone(), key.clone(), *owner, sender.clone());
            tokio::spawn(async move {
                let released = slot
                    .call(per_node, |node| async move {
                        node.release_kind_raw(&key, kind, &owner).await
                    })
                    .await;
                let _ = sender.send((i, NodeOutcome::from_ownership(released)));
            });
        }
        drop(sender);
        let mut outcomes: Vec<Option<NodeOutcome>> = vec![None; self.slots.len()];
        let mut ours = 0;
        while let Some((i, outcome)) = answers.recv().await {
            ours += usize::from(outcome == NodeOutcome::Ours);
            outcomes[i] = Some(outcome);
            if ours >= enough {
                break;
            }
        }
        outcomes
            .into_iter()
            .map(|outcome| {
                outcome.unwrap_or_else(|| {
                    NodeOutcome::Unreachable("still answering when enough had released".into())
                })
            })
            .collect()
    }

    /// The report of one step: every server's outcome, in configuration
    /// order.
    pub(crate) fn report(
        &self,
        step: &'static str,
        key: &str,
        outcomes: Vec<NodeOutcome>,
        note: Option<String>,
    ) -> QuorumReport {
        QuorumReport {
            step,
            key: key.to_owned(),
            quorum: self.quorum,
            nodes: self.servers().into_iter().zip(outcomes).collect(),
            note,
        }
    }

    /// The server at `i`'s `host:port`.
    pub(crate) fn addr(&self, i: usize) -> &str {
        &self.slots[i].addr
    }
}
