//! Release notifications: one pub/sub connection per backend, subscribed to
//! the namespace's release channel, feeding a [`ReleaseHub`].

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::StreamExt;
use leasehold_core::{LockError, ReleaseHub, ReleaseListener};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How often an idle subscription is pinged, so a silently dead connection is
/// noticed and replaced (missed releases then cost a poll, never a hang).
const HEARTBEAT: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Starts its pub/sub task on first use and stops it when dropped.
#[derive(Debug)]
pub(crate) struct Notifier {
    hub: Arc<ReleaseHub>,
    client: redis::Client,
    channel: String,
    timeout: Duration,
    /// Counts completed (re)subscriptions.
    subscriptions: watch::Sender<u64>,
    started: OnceLock<()>,
    stop: CancellationToken,
}

impl Notifier {
    pub(crate) fn new(client: redis::Client, channel: String, timeout: Duration) -> Self {
        Notifier {
            hub: Arc::new(ReleaseHub::new()),
            client,
            channel,
            timeout,
            subscriptions: watch::channel(0).0,
            started: OnceLock::new(),
            stop: CancellationToken::new(),
        }
    }

    /// A listener for the lock key `name`; starts the subscription if this is
    /// the first. Until it is up, waiters poll; when it comes up every
    /// listener is woken once, so nothing released in between is missed.
    pub(crate) fn listen(&self, name: &str) -> ReleaseListener {
        let listener = self.hub.listen(name);
        self.start();
        listener
    }

    /// How many times the subscription has been (re)established.
    pub(crate) fn subscriptions(&self) -> u64 {
        *self.subscriptions.borrow()
    }

    /// Starts the subscription and waits until it is up, at most the timeout.
    pub(crate) async fn ready(&self, backend: &'static str) -> Result<(), LockError> {
        self.start();
        let mut seen = self.subscriptions.subscribe();
        match tokio::time::timeout(self.timeout, seen.wait_for(|count| *count > 0)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(LockError::unavailable(
                backend,
                format!(
                    "release channel subscription not up within {:?}",
                    self.timeout
                ),
            )),
        }
    }

    fn start(&self) {
        self.started.get_or_init(|| {
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                // Outside a runtime nobody can wait anyway; the next call
                // from inside one cannot start it either, so waiters poll.
                tracing::warn!("no tokio runtime: redis release notifications are off");
                return;
            };
            runtime.spawn(run(
                self.client.clone(),
                self.channel.clone(),
                self.hub.clone(),
                self.subscriptions.clone(),
                self.stop.clone(),
                self.timeout,
            ));
        });
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn run(
    client: redis::Client,
    channel: String,
    hub: Arc<ReleaseHub>,
    subscriptions: watch::Sender<u64>,
    stop: CancellationToken,
    timeout: Duration,
) {
    let mut backoff = Duration::from_millis(50);
    while !stop.is_cancelled() {
        let subscribe = async {
            let pubsub = tokio::time::timeout(timeout, client.get_async_pubsub()).await;
            let (mut sink, stream) = pubsub
                .map_err(|_| "connect timed out".to_string())?
                .map_err(|e| e.to_string())?
                .split();
            match tokio::time::timeout(timeout, sink.subscribe(&channel)).await {
                Ok(Ok(())) => Ok((sink, stream)),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("SUBSCRIBE timed out".to_string()),
            }
        };
        let session = tokio::select! {
            () = stop.cancelled() => return,
            session = subscribe => session,
        };
        let (mut sink, mut stream) = match session {
            Ok(session) => session,
            Err(error) => {
                tracing::debug!(%error, ?backoff, "redis release subscription failed; retrying");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = backoff.saturating_mul(2).min(MAX_BACKOFF);
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        subscriptions.send_modify(|count| *count += 1);
        // Releases published while we were not subscribed are lost: wake
        // every waiter once so each tries again.
        hub.notify_all();
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.reset();
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                message = stream.next() => match message {
                    Some(message) => match std::str::from_utf8(message.get_payload_bytes()) {
                        Ok(name) => hub.notify(name),
                        Err(_) => hub.notify_all(),
                    },
                    None => break,
                },
                _ = heartbeat.tick() => {
                    let ping = tokio::time::timeout(timeout, sink.ping::<redis::Value>()).await;
                    if !matches!(ping, Ok(Ok(_))) {
                        break;
                    }
                }
            }
        }
        tracing::debug!("redis release subscription lost; reconnecting");
    }
}
