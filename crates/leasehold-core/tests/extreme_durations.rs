//! Every public entry point that takes a duration or a factor, driven with
//! extreme values: each gives a value or a typed error, never a panic.

use std::sync::Arc;
use std::time::Duration;

use leasehold_core::{
    AdaptiveConfig, AdaptiveTtl, Drift, Key, Layer, LockBackend, LockError, Locker, MemoryBackend,
    TimeoutLayer, TtlPolicy, WaitPolicy, config, instant_after,
};
use proptest::prelude::*;
use tokio::time::Instant;

/// Durations from zero to `Duration::MAX`, weighted towards the edges.
fn any_duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::MAX),
        Just(Duration::from_nanos(1)),
        Just(config::MAX_DURATION),
        Just(config::MAX_DURATION + Duration::from_nanos(1)),
        (0u64..u64::MAX, 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
        (0u64..10_000_000).prop_map(Duration::from_millis),
    ]
}

fn any_factor() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(f64::MAX),
        Just(-1.0),
        Just(0.0),
        any::<f64>(),
        0.0..2.0f64,
    ]
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
}

/// A lock on a free key through the public API with these settings: it must
/// lock or fail with a typed error.
async fn lock_with(ttl: TtlPolicy, retry: WaitPolicy, wait: Duration, drift: Drift) {
    let _ = drift.valid_until(Instant::now(), wait);
    let backend: Arc<dyn LockBackend> = Arc::new(MemoryBackend::new());
    let locker = Locker::builder_from_arc(backend)
        .ttl(ttl)
        .wait(retry)
        .build();
    for result in [
        locker.lock("k").await,
        locker.lock_within("k2", wait).await,
        locker.try_lock("k3").await,
    ] {
        match result {
            Ok(guard) => guard.release().await.unwrap(),
            Err(LockError::InvalidTtl { .. }) => {}
            Err(other) => panic!("a free key gave {other}"),
        }
    }
    let multi = locker.lock_all(["a", "b"]).await;
    if let Ok(multi) = multi {
        multi.release().await.unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn extreme_policies_never_panic(
        ttl in any_duration(),
        wait in any_duration(),
        min in any_duration(),
        max in any_duration(),
        deadline in any_duration(),
        factor in any_factor(),
        fixed in any_duration(),
    ) {
        let retry = WaitPolicy::new(deadline).with_delays(min, max);
        for delay in retry.schedule().take(8) {
            prop_assert!(delay >= retry.min_delay.min(retry.max_delay));
        }
        let drift = Drift { factor, fixed };
        prop_assert!(drift.allowance(ttl) <= ttl);
        let now = Instant::now();
        prop_assert!(drift.valid_until(now, ttl) >= now);
        prop_assert!(instant_after(now, wait) >= now);
        runtime().block_on(lock_with(TtlPolicy::Fixed(ttl), retry.clone(), wait, drift));
    }

    #[test]
    fn extreme_adaptive_settings_never_panic(
        quantile in any_factor(),
        factor in any_factor(),
        min in any_duration(),
        max in any_duration(),
        initial in any_duration(),
        held in any_duration(),
        min_samples in 0u32..4,
    ) {
        let adaptive = AdaptiveTtl::new(AdaptiveConfig {
            quantile,
            factor,
            min,
            max,
            initial,
            min_samples,
            ..AdaptiveConfig::default()
        });
        let key = Key::new("class:1").unwrap();
        for _ in 0..4 {
            adaptive.record(&key, held);
            let _ = adaptive.ttl_for(&key);
        }
        let policy = TtlPolicy::Adaptive(Arc::new(adaptive));
        runtime().block_on(lock_with(policy, WaitPolicy::no_wait(), Duration::ZERO, Drift::default()));
    }

    #[test]
    fn configuration_durations_parse_or_say_why(value in "\\PC{0,24}", unit in prop_oneof![Just(""), Just("ms"), Just("s"), Just("m"), Just("h"), Just("d")]) {
        let text = format!("{value}{unit}");
        if let Ok(parsed) = config::duration("wait", &text) {
            prop_assert!(parsed <= config::MAX_DURATION);
        }
    }
}

#[test]
fn huge_numbers_in_configuration_are_config_errors() {
    for text in [
        "10000000000000000000s",
        "1e308s",
        "99999999999999999999999999h",
    ] {
        match config::duration("wait", text) {
            Err(LockError::Config(message)) => assert!(message.contains("wait"), "{message}"),
            other => panic!("{text} gave {other:?}"),
        }
    }
}

#[test]
fn a_forever_wait_through_a_timeout_layer_locks() {
    // On 7ad27fd this panicked with "overflow when adding durations"
    // (TimeoutLayer bounded acquire by `wait.deadline + timeout`).
    runtime().block_on(async {
        let backend: Arc<dyn LockBackend> =
            TimeoutLayer::new(Duration::MAX).layer(Arc::new(MemoryBackend::new()));
        let locker = Locker::builder_from_arc(backend)
            .ttl(TtlPolicy::Fixed(Duration::from_secs(1)))
            .build();
        let guard = locker.lock_within("k", Duration::MAX).await.unwrap();
        guard.release().await.unwrap();
    });
}
