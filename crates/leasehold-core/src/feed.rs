//! One owner for a store's release-notification subscription (Redis
//! pub/sub, Postgres LISTEN): it starts lazily when a listener first waits
//! (a lock granted at its first attempt connects nothing), reconnects with
//! backoff when the subscription drops, and wakes every listener after a
//! reconnect (a release may have been missed while it was down). Waiters
//! never depend on it for correctness: they poll as well.

use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::{Stream, StreamExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::backend::{ReleaseHub, ReleaseListener};
use crate::error::LockError;

/// The released keys' names (as the backend passes them to
/// [`ReleaseFeed::listen`]), one per release message; an error ends the
/// subscription and the feed reconnects.
pub type ReleaseStream = Pin<Box<dyn Stream<Item = Result<String, LockError>> + Send>>;

/// A store's release channel: how to open one subscription.
#[async_trait]
pub trait ReleaseSource: Send + Sync + fmt::Debug + 'static {
    /// Connects and subscribes, within the backend's own call timeout. The
    /// stream ends (or yields an error) when the subscription is lost; a
    /// source whose connection can die silently includes a heartbeat that
    /// turns that into an error.
    async fn subscribe(&self) -> Result<ReleaseStream, LockError>;
}

/// The shortest and longest pause between reconnection attempts.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A release subscription shared by one backend's waiters; see the module
/// docs. Dropping it ends the subscription.
///
/// ```
/// use leasehold_core::{LockError, ReleaseFeed, ReleaseSource, ReleaseStream, Wake, async_trait};
/// use std::time::Duration;
///
/// /// A channel that announces one release of `jobs:1` and stays open.
/// #[derive(Debug)]
/// struct OneRelease;
///
/// #[async_trait]
/// impl ReleaseSource for OneRelease {
///     async fn subscribe(&self) -> Result<ReleaseStream, LockError> {
///         let once = futures_util::stream::iter([Ok("jobs:1".to_owned())]);
///         Ok(Box::pin(futures_util::StreamExt::chain(once, futures_util::stream::pending())))
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let feed = ReleaseFeed::new(OneRelease);
/// let mut listener = feed.listen("jobs:1");
/// assert!(feed.ready(Duration::from_secs(1)).await);
/// // Woken by the reconnect announcement or the release itself.
/// assert_eq!(listener.wait(Duration::from_secs(1)).await, Wake::Notified);
/// # }
/// ```
#[derive(Debug)]
pub struct ReleaseFeed {
    subscription: Arc<Subscription>,
}

/// What runs the subscription, shared with the listeners that may start it.
#[derive(Debug)]
struct Subscription {
    hub: Arc<ReleaseHub>,
    source: Arc<dyn ReleaseSource>,
    subscriptions: watch::Sender<u64>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    stop: CancellationToken,
}

impl ReleaseFeed {
    /// A feed over `source`; nothing connects until a listener first waits.
    pub fn new(source: impl ReleaseSource) -> Self {
        ReleaseFeed {
            subscription: Arc::new(Subscription {
                hub: Arc::new(ReleaseHub::new()),
                source: Arc::new(source),
                subscriptions: watch::channel(0).0,
                task: Mutex::new(None),
                stop: CancellationToken::new(),
            }),
        }
    }

    /// A listener for `key`, made before the caller's attempt so no release
    /// in between is missed. When it first waits, it starts (or restarts)
    /// the subscription on the current runtime if that is not running; the
    /// subscription wakes every listener once it is up.
    pub fn listen(&self, key: &str) -> ReleaseListener {
        let listener = self.subscription.hub.listen(key);
        if self.subscription.is_running() {
            return listener;
        }
        let subscription = self.subscription.clone();
        listener.on_first_wait(move || subscription.start())
    }

    /// Wakes the listeners of `key` from this process (a backend that
    /// released a key itself need not wait for the store's echo).
    pub fn notify(&self, key: &str) {
        self.subscription.hub.notify(key);
    }

    /// How many times a subscription came up (for tests and health).
    pub fn subscriptions(&self) -> u64 {
        *self.subscription.subscriptions.borrow()
    }

    /// Starts the subscription if needed and waits up to `timeout` for it to
    /// be up; `false` if it was not.
    pub async fn ready(&self, timeout: Duration) -> bool {
        self.subscription.start();
        let mut seen = self.subscription.subscriptions.subscribe();
        matches!(
            tokio::time::timeout(timeout, seen.wait_for(|count| *count > 0)).await,
            Ok(Ok(_))
        )
    }
}

/// Whether the subscription's task is running (one that ended with its
/// runtime is not).
fn running(task: &Option<tokio::task::JoinHandle<()>>) -> bool {
    task.as_ref().is_some_and(|handle| !handle.is_finished())
}

impl Subscription {
    fn is_running(&self) -> bool {
        running(&self.task.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn start(&self) {
        let mut task = self.task.lock().unwrap_or_else(|e| e.into_inner());
        if running(&task) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("no tokio runtime: release notifications are off, waiters poll");
            return;
        };
        *task = Some(runtime.spawn(run(
            self.source.clone(),
            self.hub.clone(),
            self.subscriptions.clone(),
            self.stop.clone(),
        )));
    }
}

impl Drop for ReleaseFeed {
    fn drop(&mut self) {
        // A listener left behind may still start it: it ends at once.
        self.subscription.stop.cancel();
    }
}

async fn run(
    source: Arc<dyn ReleaseSource>,
    hub: Arc<ReleaseHub>,
    subscriptions: watch::Sender<u64>,
    stop: CancellationToken,
) {
    let mut backoff = FIRST_BACKOFF;
    while !stop.is_cancelled() {
        let subscribed = tokio::select! {
            () = stop.cancelled() => return,
            subscribed = source.subscribe() => subscribed,
        };
        match subscribed {
            Ok(mut stream) => {
                backoff = FIRST_BACKOFF;
                subscriptions.send_modify(|count| *count += 1);
                // A release may have gone by while no subscription was up.
                hub.notify_all();
                loop {
                    let message = tokio::select! {
                        () = stop.cancelled() => return,
                        message = stream.next() => message,
                    };
                    match message {
                        Some(Ok(key)) => hub.notify(&key),
                        Some(Err(error)) => {
                            tracing::debug!(%error, "release subscription lost; reconnecting");
                            break;
                        }
                        None => {
                            tracing::debug!("release subscription ended; reconnecting");
                            break;
                        }
                    }
                }
            }
            Err(error) => {
                tracing::debug!(%error, ?backoff, "release subscription failed; retrying");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = backoff.saturating_mul(2).min(MAX_BACKOFF);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::backend::Wake;

    /// Fails its first subscription, then delivers `k` once and drops the
    /// subscription, so the feed must reconnect.
    #[derive(Debug, Default)]
    struct Flaky {
        calls: AtomicU32,
    }

    #[async_trait]
    impl ReleaseSource for Flaky {
        async fn subscribe(&self) -> Result<ReleaseStream, LockError> {
            match self.calls.fetch_add(1, Ordering::SeqCst) {
                0 => Err(LockError::unavailable("flaky", "refused")),
                1 => Ok(Box::pin(futures_util::stream::iter([Ok("k".to_owned())]))),
                _ => Ok(Box::pin(futures_util::stream::pending())),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_feed_retries_reconnects_and_wakes_listeners() {
        let feed = ReleaseFeed::new(Flaky::default());
        let mut listener = feed.listen("k");
        assert_eq!(listener.wait(Duration::from_secs(1)).await, Wake::Notified);
        // The first stream ended after one message: a second subscription
        // comes up.
        tokio::time::timeout(Duration::from_secs(10), async {
            while feed.subscriptions() < 2 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the feed did not reconnect after its subscription ended");
    }

    /// Counts its subscriptions; each stays open and announces nothing.
    #[derive(Debug, Default)]
    struct Counted(Arc<AtomicU32>);

    #[async_trait]
    impl ReleaseSource for Counted {
        async fn subscribe(&self) -> Result<ReleaseStream, LockError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(Box::pin(futures_util::stream::pending()))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_feed_starts_when_a_listener_first_waits_not_when_it_is_made() {
        let subscribed = Arc::new(AtomicU32::new(0));
        let feed = ReleaseFeed::new(Counted(subscribed.clone()));
        drop(feed.listen("k"));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            subscribed.load(Ordering::SeqCst),
            0,
            "a listener that never waited started the subscription"
        );
        let mut listener = feed.listen("k");
        // Woken by the new subscription (a release may have gone by).
        assert_eq!(listener.wait(Duration::from_secs(1)).await, Wake::Notified);
        assert_eq!(subscribed.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_feed_started_on_a_finished_runtime_restarts_on_the_current_one() {
        let feed = Arc::new(ReleaseFeed::new(Flaky::default()));
        let first = feed.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                assert!(first.ready(Duration::from_secs(5)).await);
            });
        })
        .join()
        .unwrap();
        assert!(
            feed.ready(Duration::from_secs(5)).await,
            "the subscription did not come up again on this runtime"
        );
    }
}
