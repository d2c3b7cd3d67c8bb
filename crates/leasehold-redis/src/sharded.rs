//! Sharded release notifications on a Redis Cluster (Redis 7
//! `SPUBLISH`/`SSUBSCRIBE`): each waited-for key has its own shard channel
//! `{ns:key}:released` ([`KeyLayout::shard_channel`]), in the key's hash
//! slot, so a release is announced only on the key's own shard instead of
//! being broadcast over the cluster bus to every node, as a classic
//! `PUBLISH` is.
//!
//! [`ShardedFeed`] owns one RESP3 cluster connection for the subscriptions
//! (apart from the one calls go through), opened when a listener first
//! waits, and subscribes a channel when a listener of its key first waits,
//! not when the listener is made: a lock granted at its first attempt
//! connects and subscribes nothing. What keeps a waiter
//! from missing a release:
//! - a channel newly subscribed wakes its key's waiters once the
//!   `SSUBSCRIBE` is answered (a release between the waiter's listener and
//!   the subscription would otherwise go unheard);
//! - a resharding moves the key's slot: the old node drops the channel with
//!   a server-sent `sunsubscribe`; the feed subscribes again (the client
//!   follows `MOVED` to the slot's new owner) and wakes the key's waiters;
//! - a node's connection drops (its master failed, or the network): the
//!   feed subscribes every channel again, retrying with backoff (up to 5 s
//!   between tries) until the cluster answers, and wakes every waiter;
//! - every 5 s every channel still waited for is subscribed again (an
//!   idempotent `SSUBSCRIBE` on the slot's current owner: it heals a
//!   subscription lost without a sign, waking nobody, so a release missed
//!   meanwhile costs its waiters a poll), and channels nobody waits for any
//!   more are unsubscribed. A failure there rebuilds the connection (and
//!   the rebuilt subscriptions wake their waiters).
//!
//! Waiters never depend on it for correctness: they poll as well, with the
//! backoff of their [`WaitPolicy`](leasehold_core::WaitPolicy).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use leasehold_core::{LockError, ReleaseHub, ReleaseListener, with_timeout};
use redis::cluster_async::ClusterConnection;
use redis::{PushInfo, PushKind, Value};
use tokio::sync::{mpsc, watch};

use crate::NAME;
use crate::cluster::ClusterTarget;
use crate::error::map;

/// How often every waited-for channel is subscribed again and unused ones
/// are dropped.
const HEARTBEAT: Duration = Duration::from_secs(5);

/// The shortest and longest pause between two tries to rebuild the
/// subscription connection.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// One listened-to channel: the listeners of its key (a hub of one key, so
/// [`ReleaseHub::listened_keys`] tells whether anyone still listens),
/// whether one of them has waited (only then is it subscribed), and
/// whether the cluster answered its `SSUBSCRIBE` since it was last lost.
struct Channel {
    hub: Arc<ReleaseHub>,
    wanted: bool,
    subscribed: bool,
}

/// What the feed's task and its listeners share.
struct Shared {
    /// The cluster the task connects to, each step within `timeout`.
    target: ClusterTarget,
    timeout: Duration,
    /// The task, once a listener first waited (or [`ShardedFeed::ready`]).
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Set (under `task`'s lock) when the feed is dropped: a listener left
    /// behind must not start the task again.
    closed: AtomicBool,
    /// The channels waited for, by name.
    channels: Mutex<HashMap<String, Channel>>,
    /// Channels that got their first waiter, for the task to subscribe.
    requests: mpsc::UnboundedSender<String>,
    /// Release messages heard (`smessage` pushes of a waited-for channel).
    heard: AtomicU64,
    /// `SSUBSCRIBE`s answered (first subscriptions and renewals alike).
    subscribed: watch::Sender<u64>,
    /// Whether a subscription connection is up.
    connected: AtomicBool,
    /// The receiving end of `requests`, while no task holds it.
    inbox: Mutex<Option<mpsc::UnboundedReceiver<String>>>,
}

/// Shard-channel release notifications for one backend on a cluster; see
/// the module docs. Dropping it ends the subscriptions.
pub(crate) struct ShardedFeed {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ShardedFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardedFeed")
            .field("target", &self.shared.target)
            .field("heard", &self.notifications())
            .finish_non_exhaustive()
    }
}

impl ShardedFeed {
    /// A feed over the cluster `target`, each step within `timeout`;
    /// nothing connects until a listener first waits.
    pub(crate) fn new(target: ClusterTarget, timeout: Duration) -> Self {
        let (requests, inbox) = mpsc::unbounded_channel();
        ShardedFeed {
            shared: Arc::new(Shared {
                target,
                timeout,
                task: Mutex::new(None),
                closed: AtomicBool::new(false),
                channels: Mutex::new(HashMap::new()),
                requests,
                heard: AtomicU64::new(0),
                subscribed: watch::channel(0).0,
                connected: AtomicBool::new(false),
                inbox: Mutex::new(Some(inbox)),
            }),
        }
    }

    /// A listener for the lock `lock` announced on `channel`, made before
    /// the caller's attempt; when it first waits, the feed's task starts
    /// unless it runs, and the channel, unless already wanted, is
    /// subscribed in the background (its listeners are woken once that
    /// subscription is up).
    pub(crate) fn listen(&self, channel: &str, lock: &str) -> ReleaseListener {
        let running = self.shared.running();
        let mut channels = self
            .shared
            .channels
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let entry = channels
            .entry(channel.to_owned())
            .or_insert_with(|| Channel {
                hub: Arc::new(ReleaseHub::new()),
                wanted: false,
                subscribed: false,
            });
        let listener = entry.hub.listen(lock);
        if entry.wanted && running {
            return listener;
        }
        let (shared, channel) = (self.shared.clone(), channel.to_owned());
        listener.on_first_wait(move || shared.want(channel))
    }

    /// How many release messages were heard.
    pub(crate) fn notifications(&self) -> u64 {
        self.shared.heard.load(Ordering::Relaxed)
    }

    /// How many `SSUBSCRIBE`s were answered.
    pub(crate) fn subscriptions(&self) -> u64 {
        *self.shared.subscribed.borrow()
    }

    /// Starts the feed and waits up to `timeout` until its connection is up
    /// and every channel waited for is subscribed; `false` if they were not.
    pub(crate) async fn ready(&self, timeout: Duration) -> bool {
        let mut changes = self.shared.subscribed.subscribe();
        self.shared.start();
        let all_up = async {
            loop {
                changes.borrow_and_update();
                if self.shared.all_subscribed() {
                    return;
                }
                if changes.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(timeout, all_up).await.is_ok()
    }
}

impl Shared {
    /// Whether the task runs.
    fn running(&self) -> bool {
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner());
        task.as_ref().is_some_and(|task| !task.is_finished())
    }

    /// Starts the task on the current runtime unless it runs or the feed
    /// was dropped (it starts again after its runtime went away, e.g. the
    /// backend is used from another one).
    fn start(self: &Arc<Self>) {
        let mut task = self.task.lock().unwrap_or_else(|e| e.into_inner());
        if self.closed.load(Ordering::Relaxed)
            || task.as_ref().is_some_and(|task| !task.is_finished())
        {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("no tokio runtime: release notifications are off, waiters poll");
            return;
        };
        let Some(inbox) = self.inbox.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        let running = Running {
            shared: self.clone(),
            inbox: Some(inbox),
        };
        *task = Some(runtime.spawn(run(running, self.target.clone(), self.timeout)));
    }

    /// A listener of `channel` waits: starts the task unless it runs, and
    /// asks it to subscribe the channel unless it already was asked. (The
    /// channel is there: it is swept only once nobody listens.)
    fn want(self: &Arc<Self>, channel: String) {
        self.start();
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        let Some(entry) = channels.get_mut(&channel) else {
            return;
        };
        if !std::mem::replace(&mut entry.wanted, true) {
            drop(channels);
            let _ = self.requests.send(channel);
        }
    }

    /// Whether the connection is up and every wanted channel subscribed.
    fn all_subscribed(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
            && self
                .channels
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .all(|channel| channel.subscribed || !channel.wanted)
    }

    /// The channels a listener has waited for.
    fn wanted(&self) -> Vec<String> {
        let channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        channels
            .iter()
            .filter(|(_, entry)| entry.wanted)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Marks `channel` (every channel: `None`) as not subscribed.
    fn lost(&self, channel: Option<&str>) {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        for (name, entry) in channels.iter_mut() {
            if channel.is_none_or(|lost| lost == name) {
                entry.subscribed = false;
            }
        }
    }
}

impl Drop for ShardedFeed {
    fn drop(&mut self) {
        let mut task = self.shared.task.lock().unwrap_or_else(|e| e.into_inner());
        self.shared.closed.store(true, Ordering::Relaxed);
        if let Some(task) = task.take() {
            task.abort();
        }
    }
}

/// The task's hold on the request inbox: however the task ends (its
/// runtime going away cancels it), every channel counts as lost and the
/// inbox goes back, so a later listener starts the task again and its
/// first subscriptions wake their waiters.
struct Running {
    shared: Arc<Shared>,
    inbox: Option<mpsc::UnboundedReceiver<String>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shared.connected.store(false, Ordering::Relaxed);
        self.shared.lost(None);
        *self.shared.inbox.lock().unwrap_or_else(|e| e.into_inner()) = self.inbox.take();
    }
}

/// The feed's task: (re)connects with backoff and serves one connection
/// until it fails.
async fn run(mut running: Running, target: ClusterTarget, timeout: Duration) {
    let shared = running.shared.clone();
    let Some(inbox) = running.inbox.as_mut() else {
        return;
    };
    let mut backoff = FIRST_BACKOFF;
    loop {
        let served = serve(&shared, &target, timeout, inbox).await;
        shared.connected.store(false, Ordering::Relaxed);
        shared.lost(None);
        match served {
            Ok(()) => return,
            Err(error) => {
                tracing::debug!(%error, ?backoff, "redis shard-channel subscriptions lost; reconnecting");
                tokio::time::sleep(backoff).await;
                backoff = backoff.saturating_mul(2).min(MAX_BACKOFF);
            }
        }
    }
}

/// One subscription connection: subscribes every waited-for channel (and
/// wakes their waiters), then follows pushes, new channels and the
/// heartbeat. `Ok` when the feed was dropped.
async fn serve(
    shared: &Shared,
    target: &ClusterTarget,
    timeout: Duration,
    inbox: &mut mpsc::UnboundedReceiver<String>,
) -> Result<(), LockError> {
    let (push_sender, mut pushes) = mpsc::unbounded_channel::<PushInfo>();
    let builder = target
        .builder(timeout)
        .use_protocol(redis::ProtocolVersion::RESP3)
        .push_sender(push_sender);
    let mut conn = target.connect(builder, timeout, NAME).await?;
    // Every channel waited for now, new ones included.
    while inbox.try_recv().is_ok() {}
    resubscribe_all(shared, &mut conn, timeout).await?;
    shared.connected.store(true, Ordering::Relaxed);
    shared.subscribed.send_modify(|count| *count += 1);
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.reset();
    loop {
        tokio::select! {
            push = pushes.recv() => {
                let Some(push) = push else { return Err(LockError::unavailable(NAME, "the push channel closed")) };
                on_push(shared, &mut conn, timeout, push).await?;
            }
            channel = inbox.recv() => {
                let Some(channel) = channel else { return Ok(()) };
                subscribe(shared, &mut conn, timeout, &[channel]).await?;
            }
            _ = heartbeat.tick() => {
                sweep(shared, &mut conn, timeout).await?;
                resubscribe_all(shared, &mut conn, timeout).await?;
            }
        }
    }
}

/// A message wakes its key's waiters; a server-sent `sunsubscribe` of a
/// channel still waited for (its slot moved) subscribes it again; a lost
/// node connection subscribes everything again.
async fn on_push(
    shared: &Shared,
    conn: &mut ClusterConnection,
    timeout: Duration,
    push: PushInfo,
) -> Result<(), LockError> {
    let text = |i: usize| match push.data.get(i) {
        Some(Value::BulkString(bytes)) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Some(Value::SimpleString(text)) => Some(text.clone()),
        _ => None,
    };
    match push.kind {
        PushKind::SMessage => {
            let (Some(channel), Some(lock)) = (text(0), text(1)) else {
                return Ok(());
            };
            let hub = hub_of(shared, &channel);
            if let Some(hub) = hub {
                shared.heard.fetch_add(1, Ordering::Relaxed);
                hub.notify(&lock);
            }
            Ok(())
        }
        PushKind::SUnsubscribe => {
            let Some(channel) = text(0) else {
                return Ok(());
            };
            if hub_of(shared, &channel).is_some() {
                shared.lost(Some(&channel));
                tracing::debug!(%channel, "redis shard channel dropped by the server (slot moved); subscribing again");
                subscribe(shared, conn, timeout, &[channel]).await?;
            }
            Ok(())
        }
        PushKind::Disconnection => {
            tracing::debug!(
                "a redis cluster node's subscription connection dropped; subscribing again"
            );
            shared.lost(None);
            resubscribe_all(shared, conn, timeout).await
        }
        _ => Ok(()),
    }
}

fn hub_of(shared: &Shared, channel: &str) -> Option<Arc<ReleaseHub>> {
    let channels = shared.channels.lock().unwrap_or_else(|e| e.into_inner());
    channels.get(channel).map(|entry| entry.hub.clone())
}

/// Subscribes `channels` (each with its own `SSUBSCRIBE`, routed to its
/// slot's master), then wakes the waiters of each one that was not
/// subscribed (new, or lost): a release may have gone by meanwhile. A
/// renewal of a subscribed channel wakes nobody. Channels nobody waits for
/// any more are skipped.
async fn subscribe(
    shared: &Shared,
    conn: &mut ClusterConnection,
    timeout: Duration,
    channels: &[String],
) -> Result<(), LockError> {
    for channel in channels {
        let Some(hub) = hub_of(shared, channel) else {
            continue;
        };
        with_timeout(NAME, timeout, async {
            conn.ssubscribe(channel).await.map_err(|e| map(NAME, e))
        })
        .await?;
        let was_subscribed = shared
            .channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(channel)
            .map(|entry| std::mem::replace(&mut entry.subscribed, true));
        shared.subscribed.send_modify(|count| *count += 1);
        if was_subscribed == Some(false) {
            hub.notify_all();
        }
    }
    Ok(())
}

/// Subscribes every wanted channel again (idempotent where it still is).
/// With none, a `PING` on a random node stands in for it, so a dead
/// connection is still noticed.
async fn resubscribe_all(
    shared: &Shared,
    conn: &mut ClusterConnection,
    timeout: Duration,
) -> Result<(), LockError> {
    let channels = shared.wanted();
    if channels.is_empty() {
        with_timeout(NAME, timeout, async {
            redis::cmd("PING")
                .query_async::<Value>(conn)
                .await
                .map_err(|e| map(NAME, e))
        })
        .await?;
        shared.subscribed.send_modify(|count| *count += 1);
        return Ok(());
    }
    subscribe(shared, conn, timeout, &channels).await
}

/// Drops the channels nobody listens to any more (`SUNSUBSCRIBE` for
/// those that were wanted).
async fn sweep(
    shared: &Shared,
    conn: &mut ClusterConnection,
    timeout: Duration,
) -> Result<(), LockError> {
    let unused: Vec<String> = {
        let mut channels = shared.channels.lock().unwrap_or_else(|e| e.into_inner());
        let mut unused = Vec::new();
        channels.retain(|name, entry| {
            let listened = entry.hub.listened_keys() > 0;
            if !listened && entry.wanted {
                unused.push(name.clone());
            }
            listened
        });
        unused
    };
    for channel in unused {
        with_timeout(NAME, timeout, async {
            conn.sunsubscribe(&channel).await.map_err(|e| map(NAME, e))
        })
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A feed over a cluster nobody serves (loopback port 1 refuses): the
    /// tests look only at whether its task was started.
    fn feed_nowhere() -> ShardedFeed {
        let url = "redis+cluster://127.0.0.1:1";
        let target = ClusterTarget::parse(url, url, None).expect("a cluster url");
        ShardedFeed::new(target, Duration::from_millis(200))
    }

    /// A lock granted at its first attempt made a listener that never
    /// waited: that must not open the subscription connection.
    #[tokio::test]
    async fn the_feed_connects_when_a_listener_first_waits_not_when_it_is_made() {
        let feed = feed_nowhere();
        drop(feed.listen("{ns:a}:released", "a"));
        assert!(
            !feed.shared.running(),
            "a listener that never waited started the subscription connection"
        );
        let mut listener = feed.listen("{ns:b}:released", "b");
        listener.wait(Duration::ZERO).await;
        assert!(
            feed.shared.running(),
            "a listener's first wait started nothing"
        );
    }

    /// A listener left behind by a dropped feed does not start it again.
    #[tokio::test]
    async fn a_listener_outliving_its_feed_starts_nothing() {
        let feed = feed_nowhere();
        let mut listener = feed.listen("{ns:a}:released", "a");
        let shared = feed.shared.clone();
        drop(feed);
        listener.wait(Duration::ZERO).await;
        assert!(
            !shared.running(),
            "a dropped feed's listener started its task"
        );
    }
}
