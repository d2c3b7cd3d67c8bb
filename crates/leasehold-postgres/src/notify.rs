//! One shared `PgListener` per backend feeding core's `ReleaseHub`.

use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use leasehold_core::{ReleaseHub, ReleaseListener};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use tokio_util::sync::CancellationToken;

/// Release signals: waiters listen on the hub; a background task started on
/// the first listener LISTENs on the channel over its own connection (not one
/// of the user's pool) and wakes the hub per NOTIFY payload. After any
/// (re)connect it wakes everyone, since signals may have been missed; polling
/// stays the fallback, so a lost signal costs latency, never a hang.
pub(crate) struct Notifier {
    hub: Arc<ReleaseHub>,
    started: OnceLock<()>,
    stop: CancellationToken,
    connect: PgConnectOptions,
    channel: String,
    timeout: Duration,
}

impl std::fmt::Debug for Notifier {
    // The connect options hold the password: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("channel", &self.channel)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Notifier {
    pub(crate) fn new(connect: PgConnectOptions, channel: String, timeout: Duration) -> Self {
        Notifier {
            hub: Arc::new(ReleaseHub::new()),
            started: OnceLock::new(),
            stop: CancellationToken::new(),
            connect,
            channel,
            timeout,
        }
    }

    pub(crate) fn listen(&self, signal: &str) -> ReleaseListener {
        let listener = self.hub.listen(signal);
        if self.started.get().is_none()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
            && self.started.set(()).is_ok()
        {
            runtime.spawn(run(
                Arc::downgrade(&self.hub),
                self.connect.clone(),
                self.channel.clone(),
                self.timeout,
                self.stop.clone(),
            ));
        }
        listener
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn run(
    hub: Weak<ReleaseHub>,
    connect: PgConnectOptions,
    channel: String,
    timeout: Duration,
    stop: CancellationToken,
) {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(timeout)
        .connect_lazy_with(connect);
    let mut backoff = Duration::from_millis(50);
    loop {
        let connected = tokio::select! {
            () = stop.cancelled() => return,
            connected = tokio::time::timeout(timeout, async {
                let mut listener = PgListener::connect_with(&pool).await?;
                listener.listen(&channel).await?;
                Ok::<_, sqlx::Error>(listener)
            }) => connected,
        };
        let mut listener = match connected {
            Ok(Ok(listener)) => listener,
            failed => {
                let why = match failed {
                    Ok(Err(error)) => error.to_string(),
                    _ => format!("no answer within {timeout:?}"),
                };
                tracing::debug!(%why, ?backoff, "postgres release listener could not connect");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = backoff.saturating_mul(2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        match hub.upgrade() {
            Some(hub) => hub.notify_all(),
            None => return,
        }
        loop {
            let message = tokio::select! {
                () = stop.cancelled() => return,
                message = listener.try_recv() => message,
            };
            let Some(hub) = hub.upgrade() else { return };
            match message {
                Ok(Some(notification)) => hub.notify(notification.payload()),
                // The connection dropped and was re-established (LISTEN
                // included): anything in between was missed.
                Ok(None) => hub.notify_all(),
                Err(error) => {
                    tracing::debug!(%error, "postgres release listener failed; reconnecting");
                    hub.notify_all();
                    break;
                }
            }
        }
    }
}
