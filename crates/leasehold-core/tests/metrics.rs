//! The metric names and labels of DESIGN §2 and §7 are the ones the shipped
//! alert rules and dashboard (`ops/`) are built on: this test drives a
//! `Locker` through every outcome, an `Admin` through a force release and a
//! breaker through an outage, and reads every metric back from a recorder,
//! with its labels and its HELP text. Its own test binary, because it
//! installs the process-wide recorder.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use leasehold_core::testing::{Hooks, Spy};
use leasehold_core::{
    Admin, CircuitBreakerLayer, Key, Layer, Lease, LockBackend, LockError, Locker, MemoryBackend,
    TestClock, TtlPolicy, WaitPolicy,
};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tokio_util::sync::CancellationToken;

/// Every metric's running value. A debugging snapshot drains what it reads
/// (counters, gauges and histograms alike), so readings are added up here:
/// the sums are the values a real exporter would show.
struct Readings {
    snapshotter: Snapshotter,
    totals: HashMap<(String, Vec<(String, String)>), f64>,
    /// Each metric's HELP text, as described to the recorder.
    help: HashMap<String, String>,
}

impl Readings {
    /// The value of `name` summed over the series whose labels include every
    /// pair of `labels` (a histogram's value is its sample count).
    fn value(&mut self, name: &str, labels: &[(&str, &str)]) -> f64 {
        for (key, _, help, value) in self.snapshotter.snapshot().into_vec() {
            let key = key.key();
            if let Some(help) = help {
                self.help
                    .insert(key.name().to_owned(), help.as_ref().to_owned());
            }
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

    /// Every series of `name` has exactly the label names `expected`.
    fn assert_labels(&mut self, name: &str, expected: &[&str]) {
        self.value(name, &[]);
        let mut expected = expected.to_vec();
        expected.sort_unstable();
        let mut seen = 0;
        for (series, labels) in self.totals.keys() {
            if series != name {
                continue;
            }
            seen += 1;
            let mut names: Vec<&str> = labels.iter().map(|(k, _)| k.as_str()).collect();
            names.sort_unstable();
            assert_eq!(names, expected, "the labels of {name}");
        }
        assert!(seen > 0, "{name} was never emitted");
    }
}

/// Every store call answers `Unavailable`, like a store that is down.
#[derive(Debug)]
struct Down;

#[leasehold_core::async_trait]
impl Hooks for Down {
    async fn try_acquire(
        &self,
        inner: &dyn LockBackend,
        _key: &Key,
        _ttl: Duration,
    ) -> Result<Lease, LockError> {
        Err(LockError::unavailable(inner.name(), "the store is down"))
    }
}

/// Leases carry a session signal the test ends, like a store's session.
#[derive(Debug)]
struct Session(CancellationToken);

#[leasehold_core::async_trait]
impl Hooks for Session {
    async fn try_acquire(
        &self,
        inner: &dyn LockBackend,
        key: &Key,
        ttl: Duration,
    ) -> Result<Lease, LockError> {
        let lease = inner.try_acquire(key, ttl).await?;
        Ok(lease.with_loss_signal(self.0.clone()))
    }
}

#[tokio::test(start_paused = true)]
async fn locker_emits_the_documented_metrics() {
    let recorder = DebuggingRecorder::new();
    let mut readings = Readings {
        snapshotter: recorder.snapshotter(),
        totals: HashMap::new(),
        help: HashMap::new(),
    };
    recorder
        .install()
        .expect("no other recorder in this binary");
    // The locker under test is named; `other` (unnamed) is "default".
    let memory = &[("backend", "memory"), ("locker", "checkout")];
    let with = |outcome: &'static str| {
        [
            ("backend", "memory"),
            ("locker", "checkout"),
            ("outcome", outcome),
        ]
    };

    let clock = Arc::new(TestClock::new());
    let backend: Arc<dyn LockBackend> = Arc::new(MemoryBackend::with_clock(clock.clone()));
    let ttl = Duration::from_secs(3);
    let locker = Locker::builder_from_arc(backend.clone())
        .name("checkout")
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
        0.0,
        "the other locker's contention was counted under this locker's name"
    );
    assert_eq!(
        readings.value(
            "leasehold_acquire_total",
            &[("locker", "default"), ("outcome", "contended")]
        ),
        1.0
    );
    assert_eq!(
        readings.value("leasehold_acquire_seconds", &with("acquired")),
        1.0
    );
    assert_eq!(
        readings.value(
            "leasehold_acquire_seconds",
            &[("locker", "default"), ("outcome", "contended")]
        ),
        1.0
    );
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
    let renewals = readings.value("leasehold_extend_total", &with("extended"));
    assert!(renewals >= 2.0, "{renewals} renewals in two TTLs");
    assert_eq!(
        readings.value("leasehold_extend_seconds", &with("extended")),
        renewals,
        "one latency sample per renewal"
    );
    assert_eq!(
        readings.value("leasehold_renewal_margin_seconds", memory),
        renewals,
        "one margin sample per successful renewal"
    );

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
    let _thief = backend
        .try_acquire(&Key::new("b").unwrap(), ttl)
        .await
        .unwrap();
    tokio::time::timeout(ttl * 2, paused.lost())
        .await
        .expect("lost() fires");
    let lost = [
        ("backend", "memory"),
        ("locker", "checkout"),
        ("reason", "taken_over"),
    ];
    assert_eq!(readings.value("leasehold_lost_total", &lost), 1.0);
    drop(paused);

    // A session the store ended under a guard nobody asked about is counted
    // by the time the guard is released, as a session end.
    let session = CancellationToken::new();
    let sessions = Spy::new(backend.clone(), Session(session.clone()));
    let in_session = Locker::builder_from_arc(Arc::new(sessions))
        .name("checkout")
        .build()
        .try_lock("s")
        .await
        .unwrap();
    session.cancel();
    let _ = in_session.release().await;
    let ended = [("locker", "checkout"), ("reason", "session_ended")];
    assert_eq!(readings.value("leasehold_lost_total", &ended), 1.0);

    // An operator forces the thief's key free: counted, with whether it
    // evicted someone.
    Admin::new(backend.clone())
        .force_release(&Key::new("b").unwrap(), "INC-1: stuck holder")
        .await
        .unwrap();
    assert_eq!(
        readings.value(
            "leasehold_force_release_total",
            &[("backend", "memory"), ("evicted", "true")]
        ),
        1.0
    );

    // A store that is down opens the circuit.
    let down: Arc<dyn LockBackend> = Arc::new(Spy::new(backend.clone(), Down));
    let breaker = CircuitBreakerLayer::new().failures(1).layer(down);
    assert!(Locker::from_arc(breaker).try_lock("c").await.is_err());
    assert_eq!(
        readings.value("leasehold_circuit_open", &[("backend", "memory")]),
        1.0
    );

    // Acquisitions carry their lock kind.
    let reader = locker.rw_lock("prices").unwrap().read().await.unwrap();
    let read = [
        ("locker", "checkout"),
        ("kind", "read"),
        ("outcome", "acquired"),
    ];
    assert_eq!(readings.value("leasehold_acquire_total", &read), 1.0);
    reader.release().await.unwrap();

    // A task takes two key classes in the order opposite to one learned:
    // counted, before any deadlock.
    let x = locker.lock("order-x:1").await.unwrap();
    let y = locker.lock("order-y:1").await.unwrap();
    drop((y, x));
    let y = locker.lock("order-y:2").await.unwrap();
    let x = locker.lock("order-x:2").await.unwrap();
    drop((x, y));
    assert_eq!(
        readings.value("leasehold_order_inversions_total", memory),
        1.0
    );

    // Every metric has the labels the alert rules and dashboard use, and
    // HELP text.
    let locker_labels = ["backend", "locker"];
    let with_outcome = ["backend", "locker", "outcome"];
    let with_kind = ["backend", "kind", "locker", "outcome"];
    let metrics: [(&str, &[&str]); 13] = [
        ("leasehold_acquire_total", &with_kind),
        ("leasehold_acquire_seconds", &with_kind),
        ("leasehold_held", &locker_labels),
        ("leasehold_hold_seconds", &locker_labels),
        ("leasehold_waiters", &locker_labels),
        ("leasehold_extend_total", &with_outcome),
        ("leasehold_extend_seconds", &with_outcome),
        ("leasehold_renewal_margin_seconds", &locker_labels),
        ("leasehold_lost_total", &["backend", "locker", "reason"]),
        ("leasehold_release_total", &with_outcome),
        ("leasehold_force_release_total", &["backend", "evicted"]),
        ("leasehold_circuit_open", &["backend"]),
        ("leasehold_order_inversions_total", &locker_labels),
    ];
    for (name, labels) in metrics {
        readings.assert_labels(name, labels);
        let help = readings.help.get(name).map(String::as_str).unwrap_or("");
        assert!(help.len() > 20, "{name} has no HELP text: {help:?}");
    }
}
