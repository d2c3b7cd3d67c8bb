//! The backend's one ZooKeeper session: its state is reported, its expiry
//! ends every lease made in it, and an expired session is replaced by a new
//! one on the next call (when the backend knows how to connect).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use leasehold_core::{CancellationToken, LockError};
use zookeeper_client::{Client, SessionState};

use crate::NAME;
use crate::options::ZkOptions;

/// One ZooKeeper session and the signal cancelled when it ends.
#[derive(Debug)]
pub(crate) struct Session {
    pub client: Client,
    pub id: i64,
    /// The timeout the server granted.
    pub timeout: Duration,
    /// Cancelled when the session expired or was closed: every ephemeral
    /// node of it is gone, so every lease made in it is lost.
    pub ended: CancellationToken,
}

impl Session {
    /// Wraps a connected client and starts reporting its state.
    pub fn start(client: Client, shutdown: &CancellationToken) -> Arc<Session> {
        let session = Arc::new(Session {
            id: client.session_id().0,
            timeout: client.session_timeout(),
            ended: CancellationToken::new(),
            client,
        });
        if session.client.state().is_terminated() {
            session.ended.cancel();
        }
        let mut states = session.client.state_watcher();
        let ended = session.ended.clone();
        let shutdown = shutdown.clone();
        let id = session.id;
        tokio::spawn(async move {
            loop {
                let state = tokio::select! {
                    state = states.changed() => state,
                    () = shutdown.cancelled() => return,
                    () = ended.cancelled() => return,
                };
                match state {
                    SessionState::Disconnected => tracing::warn!(
                        session = format_args!("{id:#x}"),
                        "zookeeper connection suspended: leases stay valid only until their validity ends unless the session reconnects"
                    ),
                    SessionState::SyncConnected | SessionState::ConnectedReadOnly => {
                        tracing::info!(session = format_args!("{id:#x}"), %state, "zookeeper session reconnected");
                    }
                    SessionState::Expired | SessionState::Closed | SessionState::AuthFailed => {
                        tracing::warn!(session = format_args!("{id:#x}"), %state, "zookeeper session ended: its leases are lost");
                        ended.cancel();
                        return;
                    }
                }
            }
        });
        session
    }

    /// Whether the session can still serve requests.
    pub fn is_ended(&self) -> bool {
        self.ended.is_cancelled() || self.client.state().is_terminated()
    }
}

/// The current session, replaced after it ends.
#[derive(Debug)]
pub(crate) struct Sessions {
    current: Mutex<Arc<Session>>,
    reconnect: tokio::sync::Mutex<()>,
    /// `None` when built from a caller's client: an ended session cannot be
    /// replaced then.
    options: Option<ZkOptions>,
    pub shutdown: CancellationToken,
}

impl Sessions {
    pub fn new(
        session: Arc<Session>,
        options: Option<ZkOptions>,
        shutdown: CancellationToken,
    ) -> Self {
        Sessions {
            current: Mutex::new(session),
            reconnect: tokio::sync::Mutex::new(()),
            options,
            shutdown,
        }
    }

    fn peek(&self) -> Arc<Session> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The live session, connecting a new one if the last one ended.
    pub async fn get(&self) -> Result<Arc<Session>, LockError> {
        let session = self.peek();
        if !session.is_ended() {
            return Ok(session);
        }
        let Some(options) = &self.options else {
            return Err(LockError::unavailable(
                NAME,
                format!(
                    "zookeeper session {:#x} ended and the backend was built from a caller's client, so it cannot open a new one",
                    session.id
                ),
            ));
        };
        let _one_at_a_time = self.reconnect.lock().await;
        let session = self.peek();
        if !session.is_ended() {
            return Ok(session);
        }
        let client = connect(options).await?;
        let fresh = Session::start(client, &self.shutdown);
        tracing::info!(
            old = format_args!("{:#x}", session.id),
            new = format_args!("{:#x}", fresh.id),
            "opened a new zookeeper session after the last one ended"
        );
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = fresh.clone();
        Ok(fresh)
    }
}

/// Connects a client with `options`, bounded by the operation timeout plus
/// the session timeout (the client itself gives up after about the latter).
pub(crate) async fn connect(options: &ZkOptions) -> Result<Client, LockError> {
    let connecting = Client::connector()
        .with_session_timeout(options.session_timeout)
        .connect(&options.hosts);
    match tokio::time::timeout(options.operation_timeout, connecting).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(error)) => Err(LockError::unavailable(NAME, error)),
        Err(_) => Err(LockError::unavailable(
            NAME,
            format!(
                "no zookeeper session with {} within {:?}",
                options.hosts, options.operation_timeout
            ),
        )),
    }
}
