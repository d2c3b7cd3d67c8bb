//! What this client has seen of other holders' record version numbers, and
//! since when, on its own monotonic clock.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
struct Observation {
    rvn: String,
    /// When this client first saw `rvn` (the instant a response carrying it
    /// *arrived*, so the holder's write happened before it).
    since: Instant,
    lease: Duration,
    last_seen: Instant,
}

/// What an observation says about a held item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The same RVN has stayed unchanged for a whole lease duration: the
    /// holder stopped renewing, a takeover conditional on that RVN is safe.
    Expired,
    /// Still live as far as this client knows; at most this long left.
    Live(Duration),
}

/// Per-key observations, bounded: past `capacity` entries the least recently
/// seen half is forgotten. Forgetting is always safe: it only restarts a
/// waiter's observation window (a later takeover), never an early one.
#[derive(Debug)]
pub(crate) struct Observations {
    entries: Mutex<HashMap<String, Observation>>,
    capacity: usize,
}

impl Observations {
    pub(crate) fn new(capacity: usize) -> Self {
        Observations {
            entries: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Observation>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that `pk` was seen held with `rvn` and `lease` at `now`, and
    /// says whether that RVN has now been unchanged for a whole lease.
    pub(crate) fn observe(&self, pk: &str, rvn: &str, lease: Duration, now: Instant) -> Verdict {
        let mut entries = self.entries();
        if let Some(seen) = entries.get_mut(pk) {
            seen.last_seen = now;
            if seen.rvn == rvn {
                // The lease the holder wrote with this RVN; a holder never
                // changes it without a new RVN.
                seen.lease = lease;
                let elapsed = now.saturating_duration_since(seen.since);
                return if elapsed >= lease {
                    Verdict::Expired
                } else {
                    Verdict::Live(lease - elapsed)
                };
            }
        }
        if entries.len() >= self.capacity && !entries.contains_key(pk) {
            Self::forget_oldest_half(&mut entries);
        }
        entries.insert(
            pk.to_owned(),
            Observation {
                rvn: rvn.to_owned(),
                since: now,
                lease,
                last_seen: now,
            },
        );
        Verdict::Live(lease)
    }

    /// The time left on `rvn` by this client's observation, if it has one.
    pub(crate) fn remaining(&self, pk: &str, rvn: &str, now: Instant) -> Option<Duration> {
        let entries = self.entries();
        let seen = entries.get(pk).filter(|seen| seen.rvn == rvn)?;
        Some(
            seen.lease
                .saturating_sub(now.saturating_duration_since(seen.since)),
        )
    }

    /// Drops what was seen of `pk` (we hold it now, or it is free).
    pub(crate) fn forget(&self, pk: &str) {
        self.entries().remove(pk);
    }

    /// How many keys are being observed.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries().len()
    }

    fn forget_oldest_half(entries: &mut HashMap<String, Observation>) {
        let mut seen: Vec<Instant> = entries.values().map(|o| o.last_seen).collect();
        let middle = seen.len() / 2;
        let (_, cutoff, _) = seen.select_nth_unstable(middle);
        let cutoff = *cutoff;
        entries.retain(|_, o| o.last_seen > cutoff);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(10);

    #[test]
    fn the_same_rvn_expires_only_after_a_whole_lease_of_observation() {
        let obs = Observations::new(16);
        let t0 = Instant::now();
        assert_eq!(obs.observe("k", "r1", LEASE, t0), Verdict::Live(LEASE));
        assert_eq!(
            obs.observe("k", "r1", LEASE, t0 + Duration::from_secs(4)),
            Verdict::Live(Duration::from_secs(6))
        );
        assert_eq!(obs.observe("k", "r1", LEASE, t0 + LEASE), Verdict::Expired);
    }

    #[test]
    fn a_new_rvn_restarts_the_window() {
        let obs = Observations::new(16);
        let t0 = Instant::now();
        obs.observe("k", "r1", LEASE, t0);
        assert_eq!(
            obs.observe("k", "r2", LEASE, t0 + Duration::from_secs(9)),
            Verdict::Live(LEASE)
        );
        assert_eq!(
            obs.observe("k", "r2", LEASE, t0 + Duration::from_secs(18)),
            Verdict::Live(Duration::from_secs(1))
        );
        assert_eq!(
            obs.remaining("k", "r2", t0 + Duration::from_secs(18)),
            Some(Duration::from_secs(1))
        );
        assert_eq!(obs.remaining("k", "r1", t0), None);
    }

    #[test]
    fn memory_stays_bounded_and_recent_observations_survive() {
        let obs = Observations::new(100);
        let t0 = Instant::now();
        for i in 0..10_000u64 {
            obs.observe(&format!("k{i}"), "r", LEASE, t0 + Duration::from_millis(i));
        }
        assert!(obs.len() <= 100, "{} observations kept", obs.len());
        assert!(
            obs.remaining("k9999", "r", t0).is_some(),
            "the newest observation was forgotten"
        );
    }
}
