//! The watchdog task: its command inbox, its agenda of due renewals, and the
//! loop that hands due leases to a renewal round.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::backend::LockBackend;
use crate::lease::LostReason;
use crate::watchdog::renew::{InFlight, renew};
use crate::watchdog::{Command, Watched, sleep_until_or_forever};

type SessionWatch = Pin<Box<dyn Future<Output = Arc<Watched>> + Send>>;

/// One task per locker and runtime keeps every guard's next renewal in one
/// agenda and renews the due ones together, so ten thousand guards cost one
/// timer, not ten thousand. It also listens to the store's session signals,
/// so a session that ends marks its guards lost at once.
pub(super) async fn run_watchdog(
    backend: Arc<dyn LockBackend>,
    mut commands: Inbox,
    sender: mpsc::WeakUnboundedSender<Command>,
) {
    let mut agenda = Agenda::default();
    let mut sessions: FuturesUnordered<SessionWatch> = FuturesUnordered::new();
    loop {
        let next_due = agenda.next_due();
        let command = tokio::select! {
            command = commands.0.recv() => match command {
                Some(command) => command,
                None => return,
            },
            Some(entry) = sessions.next(), if !sessions.is_empty() => {
                entry.check();
                if entry.is_done() {
                    agenda.forget(entry.id);
                }
                continue;
            }
            () = sleep_until_or_forever(next_due) => {
                // Batch everything due within a few ms to share round trips.
                let due = agenda.take_due(Instant::now() + Duration::from_millis(5));
                if let Some(sender) = sender.upgrade() {
                    tokio::spawn(renew(backend.clone(), InFlight::new(due), sender));
                } else {
                    drop(InFlight::new(due));
                }
                continue;
            }
        };
        match command {
            Command::Watch(entry) => {
                if let Some(signal) = entry.lease().loss_signal().cloned() {
                    let watched = entry.clone();
                    sessions.push(Box::pin(async move {
                        tokio::select! {
                            () = signal.cancelled() => {}
                            () = watched.finished.cancelled() => {}
                            () = watched.lost.cancelled() => {}
                        }
                        watched
                    }));
                }
                agenda.schedule(entry.first_due(), entry);
            }
            Command::Due(entry, at) => {
                if !entry.is_done() {
                    agenda.schedule(at, entry);
                }
            }
            Command::Forget(id) => agenda.forget(id),
            Command::Count(reply) => {
                let _ = reply.send(agenda.len());
            }
            Command::Release(id, lease) => {
                agenda.forget(id);
                let backend = backend.clone();
                tokio::spawn(async move {
                    if let Err(error) = backend.release(&lease).await {
                        tracing::debug!(%error, key = %lease.key(), "background release of a dropped guard failed");
                    }
                });
            }
        }
    }
}

/// The watchdog's command queue. A watchdog task can be dropped before it
/// ever ran (its runtime shut down first); the leases still queued for it
/// are then lost, like those on its agenda.
pub(super) struct Inbox(pub(super) mpsc::UnboundedReceiver<Command>);

impl Drop for Inbox {
    fn drop(&mut self) {
        self.0.close();
        while let Ok(command) = self.0.try_recv() {
            if let Command::Watch(entry) | Command::Due(entry, _) = command {
                entry.mark_lost(
                    LostReason::RenewalFailed,
                    "the tokio runtime that was to renew it shut down",
                );
            }
        }
    }
}

/// The watchdog's timetable: entries by due time, and each entry's due time
/// by id so a released guard's entry can be dropped at once.
#[derive(Default)]
struct Agenda {
    by_due: BTreeMap<(Instant, u64), Arc<Watched>>,
    due_of: HashMap<u64, Instant>,
}

impl Agenda {
    fn schedule(&mut self, at: Instant, entry: Arc<Watched>) {
        if let Some(previous) = self.due_of.insert(entry.id, at) {
            self.by_due.remove(&(previous, entry.id));
        }
        self.by_due.insert((at, entry.id), entry);
    }

    fn forget(&mut self, id: u64) {
        if let Some(at) = self.due_of.remove(&id) {
            self.by_due.remove(&(at, id));
        }
    }

    fn next_due(&self) -> Option<Instant> {
        self.by_due.keys().next().map(|(at, _)| *at)
    }

    /// Removes and returns the live entries due before `horizon`.
    fn take_due(&mut self, horizon: Instant) -> Vec<Arc<Watched>> {
        let later = self.by_due.split_off(&(horizon, u64::MAX));
        let due = std::mem::replace(&mut self.by_due, later);
        due.into_values()
            .filter(|entry| {
                self.due_of.remove(&entry.id);
                !entry.is_done()
            })
            .collect()
    }

    fn len(&self) -> usize {
        self.by_due.len()
    }
}

impl Drop for Agenda {
    /// The watchdog task is going away with leases still scheduled: its
    /// runtime shut down. Nobody renews them now, so they are lost, not
    /// silently left to expire.
    fn drop(&mut self) {
        for entry in self.by_due.values() {
            entry.mark_lost(
                LostReason::RenewalFailed,
                "the tokio runtime that renewed it shut down",
            );
        }
    }
}
