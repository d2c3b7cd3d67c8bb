//! Release signals: a LISTEN on the backend's channel, on a connection of its
//! own (not one of the user's pool), as a [`ReleaseSource`] for core's
//! [`ReleaseFeed`](leasehold_core::ReleaseFeed), which starts it on the first
//! listener, reconnects with backoff, and wakes every waiter after a
//! reconnect. Polling stays the fallback, so a lost signal costs latency,
//! never a hang.

use std::time::Duration;

use leasehold_core::{LockError, ReleaseSource, ReleaseStream, async_trait};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};

use crate::error::map;

/// One LISTEN subscription per [`subscribe`](ReleaseSource::subscribe).
pub(crate) struct Listen {
    pool: PgPool,
    channel: String,
    timeout: Duration,
    name: &'static str,
}

impl std::fmt::Debug for Listen {
    // The pool's connect options hold the password: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listen")
            .field("channel", &self.channel)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Listen {
    /// A source LISTENing on `channel` at `connect`, each subscription
    /// bounded by `timeout`. Connects lazily.
    pub(crate) fn new(
        name: &'static str,
        connect: PgConnectOptions,
        channel: String,
        timeout: Duration,
    ) -> Self {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(timeout)
            .connect_lazy_with(connect);
        Listen {
            pool,
            channel,
            timeout,
            name,
        }
    }
}

#[async_trait]
impl ReleaseSource for Listen {
    async fn subscribe(&self) -> Result<ReleaseStream, LockError> {
        let name = self.name;
        let mut listener = leasehold_core::with_timeout(name, self.timeout, async {
            let mut listener = PgListener::connect_with(&self.pool)
                .await
                .map_err(|e| map(name, e))?;
            listener
                .listen(&self.channel)
                .await
                .map_err(|e| map(name, e))?;
            Ok(listener)
        })
        .await?;
        // A dropped connection ends the subscription (sqlx would reconnect
        // silently, and whatever was sent meanwhile is missed): the feed
        // subscribes again and wakes everyone.
        listener.eager_reconnect(false);
        Ok(Box::pin(futures_util::stream::unfold(
            Some(listener),
            move |listener| async move {
                let mut listener = listener?;
                match listener.try_recv().await {
                    Ok(Some(notification)) => {
                        let payload = notification.payload().to_owned();
                        Some((Ok(payload), Some(listener)))
                    }
                    Ok(None) => Some((
                        Err(LockError::unavailable(
                            name,
                            "the LISTEN connection dropped",
                        )),
                        None,
                    )),
                    Err(error) => Some((Err(map(name, error)), None)),
                }
            },
        )))
    }
}
