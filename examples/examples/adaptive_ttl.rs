//! Adaptive TTL: hold times drawn from a distribution (most jobs take about
//! 200 ms, a tail takes up to 2 s); the policy learns the 95th percentile per
//! key class and sets TTL = p95 x 1.5, clamped. Printed as it learns.
//!
//! Run: `cargo run --example adaptive_ttl`

use std::sync::Arc;
use std::time::Duration;

use leasehold::{AdaptiveConfig, AdaptiveTtl, Key, TtlPolicy};
use rand::Rng;

fn main() {
    let policy = TtlPolicy::Adaptive(Arc::new(AdaptiveTtl::new(AdaptiveConfig {
        min: Duration::from_millis(100),
        ..AdaptiveConfig::default()
    })));
    let key = Key::new("report:daily").expect("valid key");
    let mut rng = rand::rng();
    let mut held = Vec::new();
    for sample in 1..=2000u32 {
        // 90% around 200 ms, 10% between 1 and 2 s.
        let ms = if rng.random_bool(0.9) {
            rng.random_range(150..250)
        } else {
            rng.random_range(1000..2000)
        };
        held.push(ms);
        policy.record(&key, Duration::from_millis(ms));
        if [1, 10, 19, 20, 50, 100, 500, 1000, 2000].contains(&sample) {
            println!(
                "after {sample:>4} samples: ttl = {:?}",
                policy.ttl_for(&key)
            );
        }
    }
    held.sort_unstable();
    let p95 = held[held.len() * 95 / 100];
    println!(
        "observed p95 = {p95} ms; learned ttl = {:?} (target ~{} ms)",
        policy.ttl_for(&key),
        p95 * 3 / 2
    );
    println!(
        "a different class still uses the initial ttl: {:?}",
        policy.ttl_for(&Key::new("other:x").expect("key"))
    );
}
