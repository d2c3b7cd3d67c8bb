//! The watchdog task, the timetable it shares with its guards (the agenda
//! of due renewals and the time its timer is set for), and the loop that
//! hands due leases to a renewal round.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use crate::backend::LockBackend;
use crate::lease::{Lease, LostReason};
use crate::watchdog::Watched;
use crate::watchdog::renew::{InFlight, renew};

/// One task per locker and runtime keeps every guard's next renewal in one
/// agenda and renews the due ones together, so ten thousand guards cost one
/// timer, not ten thousand. It also releases dropped guards' leases. It
/// ends when the locker and all its guards are gone.
pub(super) async fn run_watchdog(backend: Arc<dyn LockBackend>, mut inbox: Inbox) {
    let timetable = inbox.timetable.clone();
    let timer = tokio::time::sleep_until(Instant::now());
    tokio::pin!(timer);
    let mut timer_at = None;
    loop {
        let armed = timetable.plan().armed;
        if armed != timer_at {
            if let Some(at) = armed {
                timer.as_mut().reset(at);
            }
            timer_at = armed;
        }
        tokio::select! {
            lease = inbox.releases.recv() => {
                let Some(lease) = lease else { return };
                let backend = backend.clone();
                tokio::spawn(async move {
                    if let Err(error) = backend.release(&lease).await {
                        tracing::debug!(%error, key = %lease.key(), "background release of a dropped guard failed");
                    }
                });
            }
            // A guard scheduled a lease before the timer: reset it.
            () = timetable.wake.notified() => {}
            () = &mut timer, if timer_at.is_some() => {
                timer_at = None;
                // Batch everything due within a few ms to share round trips.
                let due = timetable.take_due(Instant::now() + Duration::from_millis(5));
                if !due.is_empty() {
                    tokio::spawn(renew(backend.clone(), InFlight::new(due), timetable.clone()));
                }
            }
        }
    }
}

/// The watchdog task's side of its queue and timetable. A watchdog task can
/// be dropped before it ever ran (its runtime shut down first): closing
/// the timetable then marks the leases on it lost, and any later one is
/// lost as it is scheduled. Queued releases are dropped: those leases
/// expire on their own.
pub(super) struct Inbox {
    releases: mpsc::UnboundedReceiver<Lease>,
    timetable: Arc<Timetable>,
}

impl Inbox {
    pub(super) fn new(releases: mpsc::UnboundedReceiver<Lease>, timetable: Arc<Timetable>) -> Self {
        Inbox {
            releases,
            timetable,
        }
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        self.releases.close();
        for entry in self.timetable.close() {
            entry.mark_lost(LostReason::RenewalFailed, RUNTIME_GONE);
        }
    }
}

/// Why a lease whose watchdog went away is lost.
const RUNTIME_GONE: &str = "the tokio runtime that renewed it shut down";

/// What a watchdog and its guards share: the agenda, and when the task's
/// timer fires. A guard that schedules a lease due before that wakes the
/// task; any later one it finds when the timer fires.
#[derive(Debug, Default)]
pub(super) struct Timetable {
    plan: Mutex<Plan>,
    wake: Notify,
}

#[derive(Debug, Default)]
struct Plan {
    agenda: Agenda,
    /// When the task's timer fires; `None`: it sleeps until woken. Guards
    /// only move it earlier; a stale time (its lease released since) costs
    /// one idle wake-up.
    armed: Option<Instant>,
    /// The task is gone: nothing on the agenda will be renewed.
    closed: bool,
}

impl Timetable {
    fn plan(&self) -> MutexGuard<'_, Plan> {
        self.plan.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts `entry` on the agenda at `at` (in place of any earlier time),
    /// waking the task if its timer would fire later. With the task gone the
    /// lease is lost.
    pub(super) fn schedule(&self, at: Instant, entry: Arc<Watched>) {
        let mut plan = self.plan();
        if plan.closed {
            drop(plan);
            entry.mark_lost(LostReason::RenewalFailed, RUNTIME_GONE);
            return;
        }
        plan.agenda.schedule(at, entry);
        let earlier = plan.armed.is_none_or(|armed| at < armed);
        if earlier {
            plan.armed = Some(at);
        }
        drop(plan);
        if earlier {
            self.wake.notify_one();
        }
    }

    /// Takes a released guard's entry off the agenda.
    pub(super) fn forget(&self, id: u64) {
        self.plan().agenda.forget(id);
    }

    /// Removes the entries due before `horizon`, sets the timer for the next
    /// one, and returns the live ones (a loss nobody counted yet, such as a
    /// session signal, is counted here).
    fn take_due(&self, horizon: Instant) -> Vec<Arc<Watched>> {
        let due = {
            let mut plan = self.plan();
            let due = plan.agenda.take_due(horizon);
            plan.armed = plan.agenda.next_due();
            due
        };
        due.into_iter()
            .filter(|entry| {
                entry.check();
                !entry.is_done()
            })
            .collect()
    }

    /// How many live leases are on the agenda.
    pub(super) fn live(&self) -> usize {
        self.plan()
            .agenda
            .by_due
            .values()
            .filter(|entry| !entry.is_done())
            .count()
    }

    /// Marks the timetable closed and empties the agenda.
    fn close(&self) -> Vec<Arc<Watched>> {
        let mut plan = self.plan();
        plan.closed = true;
        plan.armed = None;
        let agenda = std::mem::take(&mut plan.agenda);
        agenda.by_due.into_values().collect()
    }
}

/// The watchdog's timetable: entries by due time, and each entry's due time
/// by id so a released guard's entry can be dropped at once.
#[derive(Debug, Default)]
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

    /// Removes and returns the entries due before `horizon`.
    fn take_due(&mut self, horizon: Instant) -> Vec<Arc<Watched>> {
        let later = self.by_due.split_off(&(horizon, u64::MAX));
        let due = std::mem::replace(&mut self.by_due, later);
        for (_, id) in due.keys() {
            self.due_of.remove(id);
        }
        due.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use futures_util::FutureExt;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::clock::Drift;
    use crate::key::Key;
    use crate::metrics::Meter;
    use crate::token::{FencingToken, OwnerToken};

    fn watched(id: u64) -> Arc<Watched> {
        let lease = Lease::new(
            "test",
            Key::new(format!("k{id}")).unwrap(),
            OwnerToken::generate(),
            FencingToken(id),
            Instant::now(),
            Duration::from_secs(30),
            Drift::default(),
        );
        Arc::new(Watched {
            id,
            meter: Meter::new("test", "test".into()),
            lease: Mutex::new(lease),
            ttl: Duration::from_secs(30),
            lost: CancellationToken::new(),
            reason: OnceLock::new(),
            finished: CancellationToken::new(),
            auto_extend: true,
        })
    }

    /// Whether the task was woken since the last look.
    fn woken(timetable: &Timetable) -> bool {
        timetable.wake.notified().now_or_never().is_some()
    }

    #[tokio::test(start_paused = true)]
    async fn only_a_lease_due_before_the_timer_wakes_the_task() {
        let timetable = Timetable::default();
        let now = Instant::now();
        let second = Duration::from_secs(1);
        timetable.schedule(now + 10 * second, watched(1));
        assert!(
            woken(&timetable),
            "an idle task must learn of its first lease"
        );
        // Locks taken and released between two renewal rounds: each due
        // after the timer, so none wakes the task.
        for id in 2..100 {
            timetable.schedule(now + 11 * second, watched(id));
            timetable.forget(id);
        }
        assert!(
            !woken(&timetable),
            "a lease due after the timer woke the task"
        );
        timetable.schedule(now + 5 * second, watched(100));
        assert!(
            woken(&timetable),
            "a lease due before the timer must reset it"
        );
        assert_eq!(timetable.plan().armed, Some(now + 5 * second));
        // When the timer fires it is set for what is left, and the stale
        // time of a forgotten lease goes.
        timetable.forget(100);
        assert!(timetable.take_due(now + 6 * second).is_empty());
        assert_eq!(timetable.plan().armed, Some(now + 10 * second));
        assert_eq!(timetable.live(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_gone_task_leaves_every_lease_lost() {
        let (on_agenda, later) = (watched(1), watched(2));
        let timetable = Arc::new(Timetable::default());
        timetable.schedule(Instant::now(), on_agenda.clone());
        // The watchdog task dropped (its runtime shut down, perhaps before
        // it ever ran).
        let (_releases, receiver) = mpsc::unbounded_channel();
        drop(Inbox::new(receiver, timetable.clone()));
        timetable.schedule(Instant::now(), later.clone());
        for entry in [on_agenda, later] {
            assert_eq!(entry.reason.get(), Some(&LostReason::RenewalFailed));
            assert!(entry.lost.is_cancelled());
        }
    }
}
