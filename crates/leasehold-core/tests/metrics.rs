//! The metric names of DESIGN §2 are the ones dashboards and alerts are built
//! on: this test drives a `Locker` through every outcome and reads them back
//! from a recorder. Its own test binary, because it installs the process-wide
//! recorder.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use leasehold_core::{
    Key, LockBackend, LockError, Locker, MemoryBackend, TestClock, TtlPolicy, WaitPolicy,
};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

/// Every metric's running value. A debugging snapshot drains what it reads
/// (counters, gauges and histograms alike), so readings are added up here:
/// the sums are the values a real exporter would show.
struct Readings {
    snapshotter: Snapshotter,
    totals: HashMap<(String, Vec<(String, String)>), f64>,
}

impl Readings {
    /// The value of `name` summed over the series whose labels include every
    /// pair of `labels` (a histogram's value is its sample count).
    fn value(&mut self, name: &str, labels: &[(&str, &str)]) -> f64 {
        for (key, _, _, value) in self.snapshotter.snapshot().into_vec() {
            let key = key.key();
            let series = (
                key.name().to_owned(),
                key.labels()
                    .map(|l| (l.key().to_owned(), l.value().to_owned()))
                    .collect(),
            );
            *self.totals.entry(series).or_default() += match value {
                DebugValue::Counter(n) => n as f64,
                DebugValue::Gauge(g) => g.into_inner(),
                DebugValue::Histogram(samples) => samples.len() as f64,
            };
        }
        self.totals
            .iter()
            .filter(|((series, series_labels), _)| {
                series == name
                    && labels
                        .iter()
                        .all(|(k, v)| series_labels.iter().any(|(sk, sv)| sk == k && sv == v))
            })
            .map(|(_, total)| total)
            .sum()
    }
}

#[tokio::test(start_paused = true)]
async fn locker_emits_the_documented_metrics() {
    let recorder = DebuggingRecorder::new();
    let mut readings = Readings {
        snapshotter: recorder.snapshotter(),
        totals: HashMap::new(),
    };
    recorder
        .install()
        .expect("no other recorder in this binary");
    let memory = &[("backend", "memory")];
    let with = |outcome: &'static str| [("backend", "memory"), ("outcome", outcome)];

    let clock = Arc::new(TestClock::new());
    let backend: Arc<dyn LockBackend> = Arc::new(MemoryBackend::with_clock(clock.clone()));
    let ttl = Duration::from_secs(3);
    let locker = Locker::builder_from_arc(backend.clone())
        .ttl(TtlPolicy::Fixed(ttl))
        .wait(WaitPolicy::new(Duration::from_secs(30)))
        .build();

    // Acquired, then contended (for another holder: this task asking again
    // would be AlreadyHeld); the holder's guard counts as held.
    let guard = locker.lock("a").await.unwrap();
    let other = Locker::from_arc(backend.clone());
    assert!(matches!(
        other.try_lock("a").await,
        Err(LockError::Contended { .. })
    ));
    assert_eq!(
        readings.value("leasehold_acquire_total", &with("acquired")),
        1.0
    );
    assert_eq!(
        readings.value("leasehold_acquire_total", &with("contended")),
        1.0
    );
    assert_eq!(readings.value("leasehold_acquire_seconds", memory), 2.0);
    assert_eq!(readings.value("leasehold_held", memory), 1.0);

    // A waiter shows in the gauge while it waits, and no longer once it holds.
    let waiter = tokio::spawn({
        let locker = locker.clone();
        async move { locker.lock("a").await }
    });
    while readings.value("leasehold_waiters", memory) < 1.0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Auto-extension renews the holder's lease.
    tokio::time::sleep(ttl * 2).await;
    assert!(readings.value("leasehold_extend_total", &with("extended")) >= 2.0);

    // Release: counted, the hold time recorded, the waiter gets the key.
    guard.release().await.unwrap();
    let second = waiter.await.unwrap().unwrap();
    assert_eq!(
        readings.value("leasehold_release_total", &with("released")),
        1.0
    );
    assert_eq!(readings.value("leasehold_hold_seconds", memory), 1.0);
    assert_eq!(readings.value("leasehold_waiters", memory), 0.0);
    assert_eq!(readings.value("leasehold_held", memory), 1.0);

    // A dropped guard is released in the background and counted as dropped.
    drop(second);
    assert_eq!(
        readings.value("leasehold_release_total", &with("dropped")),
        1.0
    );
    assert_eq!(readings.value("leasehold_held", memory), 0.0);

    // A lease taken over while its holder was paused is counted as lost.
    let paused = locker.lock("b").await.unwrap();
    clock.jump(ttl * 4);
    let thief = backend
        .try_acquire(&Key::new("b").unwrap(), ttl)
        .await
        .unwrap();
    tokio::time::timeout(ttl * 2, paused.lost())
        .await
        .expect("lost() fires");
    assert_eq!(readings.value("leasehold_lost_total", memory), 1.0);
    backend.release(&thief).await.unwrap();
}
