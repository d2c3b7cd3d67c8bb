//! The backend's ZooKeeper sessions, one per TTL class: each one's state is
//! reported, its expiry ends every lease made in it, and an expired session
//! is replaced by a new one on the next call (when the backend knows how to
//! connect).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use leasehold_core::{CancellationToken, LockError};
use tokio::time::Instant;
use zookeeper_client::{Client, SessionState};

use crate::NAME;
use crate::config::ZkConfig;

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
        let (id, timeout) = (session.id, session.timeout);
        tokio::spawn(async move {
            // When the connection dropped, if it has not come back since.
            let mut suspended_at: Option<Instant> = None;
            loop {
                let given_up = async {
                    match suspended_at {
                        Some(at) => tokio::time::sleep_until(at + timeout).await,
                        None => std::future::pending().await,
                    }
                };
                let state = tokio::select! {
                    state = states.changed() => state,
                    () = given_up => {
                        // Curator's rule: the server has not heard from us
                        // for a whole session timeout, so it has expired the
                        // session (or will before we could reconnect). Without
                        // it the loss would wait for the client's reconnect
                        // backoff, which can run far past the TTL.
                        tracing::warn!(session = format_args!("{id:#x}"), ?timeout, "zookeeper connection lost for the whole session timeout: its leases are lost");
                        ended.cancel();
                        return;
                    }
                    () = shutdown.cancelled() => return,
                    () = ended.cancelled() => return,
                };
                match state {
                    SessionState::Disconnected => {
                        suspended_at.get_or_insert_with(Instant::now);
                        tracing::warn!(
                            session = format_args!("{id:#x}"),
                            "zookeeper connection suspended: leases stay valid only until their validity ends unless the session reconnects"
                        );
                    }
                    SessionState::SyncConnected | SessionState::ConnectedReadOnly => {
                        suspended_at = None;
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

/// The backend's sessions, one per TTL class (see [`Sessions::class`]),
/// each made on first use and replaced after it ends.
///
/// Why: a ZooKeeper lock lives as long as its session, and a crashed holder's
/// session ends one session timeout after the server last heard from it. One
/// session per backend made every lock outlive a crash by the backend's
/// session timeout (10 s by default) whatever TTL it was taken with; a
/// session whose timeout matches the TTL frees a crashed holder's key within
/// the TTL (plus rounding, below), as etcd's session per TTL does.
#[derive(Debug)]
pub(crate) struct Sessions {
    classes: Mutex<HashMap<Duration, Arc<Slot>>>,
    /// `None` when built from a caller's client: that one session serves
    /// every TTL and cannot be replaced.
    options: Option<ZkConfig>,
    fixed: Option<Arc<Session>>,
    bounds: Mutex<Bounds>,
    pub shutdown: CancellationToken,
}

/// What the server told us of its session timeout bounds.
#[derive(Clone, Copy, Debug)]
struct Bounds {
    /// The shortest session it grants (`minSessionTimeout`, 2 × tickTime by
    /// default), probed at connect.
    min: Duration,
    /// The longest, once a session was granted less than it asked for.
    max: Option<Duration>,
}

/// One TTL class's current session.
#[derive(Debug, Default)]
struct Slot {
    current: Mutex<Option<Arc<Session>>>,
    connecting: tokio::sync::Mutex<()>,
}

/// What the minimum is taken to be when the probe gets no answer in time:
/// ZooKeeper's default (2 × the default tickTime of 2 s).
const ASSUMED_MIN: Duration = Duration::from_secs(4);
/// The session timeout the probe asks for: servers grant their minimum when
/// asked less, so the answer is max(minimum, this).
const PROBE_ASK: Duration = Duration::from_millis(250);

impl Sessions {
    /// Probes the server's minimum session timeout, then opens the session of
    /// `options.session_timeout` (so a store that does not answer fails
    /// here).
    pub async fn connect(options: ZkConfig) -> Result<Self, LockError> {
        let shutdown = CancellationToken::new();
        let (min, default) = tokio::join!(
            probe_min(&options),
            connect(&options, options.session_timeout)
        );
        let default = Session::start(default?, &shutdown);
        let sessions = Sessions {
            classes: Mutex::new(HashMap::new()),
            options: Some(options.clone()),
            fixed: None,
            bounds: Mutex::new(Bounds {
                min: min.unwrap_or(ASSUMED_MIN),
                max: None,
            }),
            shutdown,
        };
        sessions.learn(options.session_timeout, default.timeout);
        let slot = Arc::new(Slot::default());
        *lock(&slot.current) = Some(default);
        lock(&sessions.classes).insert(options.session_timeout, slot);
        Ok(sessions)
    }

    /// The caller's one session, for every TTL.
    pub fn fixed(client: Client) -> Self {
        let shutdown = CancellationToken::new();
        let session = Session::start(client, &shutdown);
        Sessions {
            classes: Mutex::new(HashMap::new()),
            options: None,
            bounds: Mutex::new(Bounds {
                min: session.timeout,
                max: Some(session.timeout),
            }),
            fixed: Some(session),
            shutdown,
        }
    }

    /// The shortest TTL a crashed holder's key is freed after: the server's
    /// minimum session timeout (for a caller's client, its session timeout).
    pub fn min_ttl(&self) -> Duration {
        lock(&self.bounds).min
    }

    /// The session timeout asked for leases of `ttl`: the TTL rounded up to
    /// whole seconds (so that TTLs from an adaptive policy share a bounded
    /// number of sessions: at most one per second between the server's
    /// bounds), raised to the server's minimum and capped at its maximum
    /// once known.
    pub fn class(&self, ttl: Duration) -> Duration {
        let bounds = *lock(&self.bounds);
        let secs = ttl
            .as_secs()
            .saturating_add(u64::from(ttl.subsec_nanos() > 0));
        let mut class = Duration::from_secs(secs).max(bounds.min);
        if let Some(max) = bounds.max {
            class = class.min(max);
        }
        class
    }

    /// Records what the server granted when asked `asked`.
    fn learn(&self, asked: Duration, granted: Duration) {
        let mut bounds = lock(&self.bounds);
        if granted > asked && granted > bounds.min {
            bounds.min = granted;
        }
        if granted < asked {
            bounds.max = Some(granted);
        }
    }

    /// The session of calls that hold no lease (`inspect`, `client()`).
    pub async fn default_session(&self) -> Result<Arc<Session>, LockError> {
        match &self.options {
            Some(options) => self.of_class(options.session_timeout).await,
            None => self.get_fixed(),
        }
    }

    /// The live session for leases of `ttl`, connecting one if needed.
    pub async fn for_ttl(&self, ttl: Duration) -> Result<Arc<Session>, LockError> {
        match &self.options {
            Some(_) => self.of_class(self.class(ttl)).await,
            None => self.get_fixed(),
        }
    }

    fn get_fixed(&self) -> Result<Arc<Session>, LockError> {
        let session = self.fixed.clone().ok_or_else(|| {
            LockError::backend(NAME, "a backend without options has its caller's session")
        })?;
        if session.is_ended() {
            return Err(LockError::unavailable(
                NAME,
                format!(
                    "zookeeper session {:#x} ended and the backend was built from a caller's client, so it cannot open a new one",
                    session.id
                ),
            ));
        }
        Ok(session)
    }

    async fn of_class(&self, class: Duration) -> Result<Arc<Session>, LockError> {
        let Some(options) = &self.options else {
            return self.get_fixed();
        };
        let slot = lock(&self.classes).entry(class).or_default().clone();
        if let Some(session) = lock(&slot.current).clone()
            && !session.is_ended()
        {
            return Ok(session);
        }
        let _one_at_a_time = slot.connecting.lock().await;
        let old = lock(&slot.current).clone();
        if let Some(session) = &old
            && !session.is_ended()
        {
            return Ok(session.clone());
        }
        let client = connect(options, class).await?;
        let fresh = Session::start(client, &self.shutdown);
        self.learn(class, fresh.timeout);
        match old {
            Some(old) => tracing::info!(
                old = format_args!("{:#x}", old.id),
                new = format_args!("{:#x}", fresh.id),
                timeout = ?fresh.timeout,
                "opened a new zookeeper session after the last one ended"
            ),
            None => tracing::debug!(
                session = format_args!("{:#x}", fresh.id),
                asked = ?class,
                granted = ?fresh.timeout,
                "opened a zookeeper session for a TTL class"
            ),
        }
        *lock(&slot.current) = Some(fresh.clone());
        Ok(fresh)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Asks the server for a session shorter than any it grants and closes it
/// again: the timeout granted is the server's minimum (or [`PROBE_ASK`], if
/// the minimum is lower). `None` when no answer comes within the operation
/// timeout (the client gives a session this short only a short time to
/// connect, so a slow link or a loaded machine can fail one try: it tries
/// again until the operation timeout, since a wrong guess here changes
/// `min_ttl`).
async fn probe_min(options: &ZkConfig) -> Option<Duration> {
    let probing = async {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let connector = Client::connector()
                .with_session_timeout(PROBE_ASK)
                .with_connection_timeout(PROBE_ASK * 3 / 5)
                .with_fail_eagerly();
            match crate::tls::dial(connector, options).await {
                Ok(Ok(client)) => return Some(client.session_timeout()), // dropped: closed
                Ok(Err(error)) => {
                    tracing::debug!(%error, attempt, "probing zookeeper's minimum session timeout failed")
                }
                // The session's own connect reports it.
                Err(_) => return None,
            }
        }
    };
    tokio::time::timeout(options.timeout_value(), probing)
        .await
        .ok()
        .flatten()
}

/// Connects a client with a session of `timeout`, bounded by the operation
/// timeout.
pub(crate) async fn connect(options: &ZkConfig, timeout: Duration) -> Result<Client, LockError> {
    let mut connector = Client::connector().with_session_timeout(timeout);
    if let Some((user, password)) = &options.digest {
        let credentials = format!("{user}:{}", password.expose());
        connector = connector.with_auth("digest", credentials.as_bytes());
    }
    let connecting = crate::tls::dial(connector, options);
    match tokio::time::timeout(options.timeout_value(), connecting).await {
        Ok(Ok(Ok(client))) => Ok(client),
        Ok(Ok(Err(error))) => Err(LockError::unavailable(NAME, error)),
        Ok(Err(config)) => Err(config),
        Err(_) => Err(LockError::unavailable(
            NAME,
            format!(
                "no zookeeper session with {} within {:?}{}",
                options.hosts,
                options.timeout_value(),
                if options.tls {
                    " over TLS (a refused handshake looks the same: is the server's certificate \
                     signed by the `ca` given, does it name the host dialled, and does the \
                     server require a client certificate?)"
                } else {
                    ""
                }
            ),
        )),
    }
}
