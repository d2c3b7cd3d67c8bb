//! One server's place in the quorum: a [`RedisNode`] once connected. A server
//! that is down when the backend starts (or whose first connect fails) is
//! connected later, in the background, when an operation needs it; callers
//! never wait longer than their own per-node timeout for it.

use std::sync::Arc;
use std::time::Duration;

use leasehold_core::LockError;
use leasehold_redis::{KeyLayout, RedisNode};
use tokio::sync::watch;

use crate::NAME;

#[derive(Clone, Default)]
struct State {
    node: Option<RedisNode>,
    /// Connect attempts started so far.
    attempt: u64,
    connecting: bool,
    error: Option<String>,
}

/// A server slot; cheap to share.
pub(crate) struct Slot {
    /// `host:port`, for errors and logs.
    pub addr: String,
    client: redis::Client,
    layout: KeyLayout,
    timeout: Duration,
    state: watch::Sender<State>,
}

impl Slot {
    pub fn new(client: redis::Client, layout: KeyLayout, timeout: Duration) -> Arc<Self> {
        let addr = client.get_connection_info().addr().to_string();
        Arc::new(Slot {
            addr,
            client,
            layout,
            timeout,
            state: watch::Sender::new(State::default()),
        })
    }

    /// The connected node, if any.
    pub fn node(&self) -> Option<RedisNode> {
        self.state.borrow().node.clone()
    }

    /// The node, connecting first if needed. Waits for the connect attempt in
    /// flight (or a new one); the caller bounds the wait with its own timeout,
    /// and the attempt goes on in the background if the caller gives up.
    pub async fn get(self: &Arc<Self>) -> Result<RedisNode, LockError> {
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
                let result = RedisNode::connect_named(
                    slot.client.clone(),
                    slot.layout.clone(),
                    slot.timeout,
                    NAME,
                )
                .await;
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
