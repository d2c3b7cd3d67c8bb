//! How long a lease asks for: a fixed TTL, or one learned from observed hold
//! times.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::key::Key;

/// Chooses the TTL of each acquisition.
///
/// A TTL only bounds how long a *dead* holder blocks others: a live holder's
/// guard keeps extending it, so a TTL that turns out too short is extended,
/// never lost.
///
/// ```
/// use leasehold_core::{Key, TtlPolicy};
/// use std::time::Duration;
/// let policy = TtlPolicy::adaptive();
/// let key = Key::new("report:7").unwrap();
/// for _ in 0..100 {
///     policy.record(&key, Duration::from_millis(200));
/// }
/// // Learned: about 1.5 x the 95th percentile of 200 ms, clamped to the minimum.
/// assert_eq!(policy.ttl_for(&key), Duration::from_secs(1));
/// ```
#[derive(Clone)]
pub enum TtlPolicy {
    /// Always this TTL.
    Fixed(Duration),
    /// Learned per key class; see [`AdaptiveTtl`].
    Adaptive(Arc<AdaptiveTtl>),
}

impl fmt::Debug for TtlPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TtlPolicy::Fixed(ttl) => f.debug_tuple("Fixed").field(ttl).finish(),
            TtlPolicy::Adaptive(adaptive) => {
                f.debug_tuple("Adaptive").field(&adaptive.config).finish()
            }
        }
    }
}

impl Default for TtlPolicy {
    /// A fixed 30 s TTL.
    fn default() -> Self {
        TtlPolicy::Fixed(Duration::from_secs(30))
    }
}

impl TtlPolicy {
    /// Adaptive with the default [`AdaptiveConfig`].
    pub fn adaptive() -> Self {
        TtlPolicy::Adaptive(Arc::new(AdaptiveTtl::new(AdaptiveConfig::default())))
    }

    /// The TTL for the next acquisition of `key`.
    pub fn ttl_for(&self, key: &Key) -> Duration {
        match self {
            TtlPolicy::Fixed(ttl) => *ttl,
            TtlPolicy::Adaptive(adaptive) => adaptive.ttl_for(key),
        }
    }

    /// Records how long `key` was held (ignored by `Fixed`).
    pub fn record(&self, key: &Key, held: Duration) {
        if let TtlPolicy::Adaptive(adaptive) = self {
            adaptive.record(key, held);
        }
    }
}

/// Settings of [`AdaptiveTtl`].
#[derive(Clone)]
pub struct AdaptiveConfig {
    /// The hold-time quantile the TTL covers (default 0.95).
    pub quantile: f64,
    /// The multiple of that quantile (default 1.5).
    pub factor: f64,
    /// The smallest TTL (default 1 s).
    pub min: Duration,
    /// The largest TTL (default 5 min).
    pub max: Duration,
    /// The TTL before enough samples are in (default 30 s).
    pub initial: Duration,
    /// Samples a class needs before its learned TTL is used (default 20).
    pub min_samples: u32,
    /// Most classes tracked; later classes share one overflow class
    /// (default 1024).
    pub max_classes: usize,
    /// The class of a key (default: the part before its first `:`).
    pub classify: Arc<dyn Fn(&Key) -> String + Send + Sync>,
}

impl fmt::Debug for AdaptiveConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptiveConfig")
            .field("quantile", &self.quantile)
            .field("factor", &self.factor)
            .field("min", &self.min)
            .field("max", &self.max)
            .field("initial", &self.initial)
            .field("min_samples", &self.min_samples)
            .field("max_classes", &self.max_classes)
            .finish_non_exhaustive()
    }
}

impl Default for AdaptiveConfig {
    fn default() -> Self {
        AdaptiveConfig {
            quantile: 0.95,
            factor: 1.5,
            min: Duration::from_secs(1),
            max: Duration::from_secs(300),
            initial: Duration::from_secs(30),
            min_samples: 20,
            max_classes: 1024,
            classify: Arc::new(|key: &Key| key.default_class().to_owned()),
        }
    }
}

/// Learns hold times per key class and sets
/// `TTL = clamp(quantile(q) * factor, min, max)`.
///
/// Memory is fixed per class: a log-scale histogram of [`BUCKETS`] counters
/// (10% wide buckets from 1 ms to about 6 hours), whose counts halve once a
/// class has seen 10 000 samples, so old behaviour fades and counters never
/// overflow. The number of classes is capped by `max_classes`.
pub struct AdaptiveTtl {
    config: AdaptiveConfig,
    classes: Mutex<HashMap<String, Histogram>>,
}

/// Buckets per class histogram.
pub const BUCKETS: usize = 160;
const GROWTH: f64 = 1.1;
const OVERFLOW_CLASS: &str = "\u{0}overflow";
const DECAY_AT: u32 = 10_000;

#[derive(Clone)]
struct Histogram {
    counts: [u32; BUCKETS],
    total: u32,
}

impl Histogram {
    fn new() -> Self {
        Histogram {
            counts: [0; BUCKETS],
            total: 0,
        }
    }

    fn bucket_of(held: Duration) -> usize {
        let millis = held.as_secs_f64() * 1000.0;
        if millis <= 1.0 {
            return 0;
        }
        ((millis.ln() / GROWTH.ln()).ceil() as usize).min(BUCKETS - 1)
    }

    /// The upper bound of a bucket.
    fn bound(bucket: usize) -> Duration {
        Duration::from_secs_f64(GROWTH.powi(bucket as i32) / 1000.0)
    }

    fn record(&mut self, held: Duration) {
        self.counts[Self::bucket_of(held)] += 1;
        self.total += 1;
        if self.total >= DECAY_AT {
            self.total = 0;
            for count in &mut self.counts {
                *count /= 2;
                self.total += *count;
            }
        }
    }

    fn quantile(&self, q: f64) -> Duration {
        let rank = (q.clamp(0.0, 1.0) * f64::from(self.total)).ceil().max(1.0) as u64;
        let mut seen = 0u64;
        for (bucket, count) in self.counts.iter().enumerate() {
            seen += u64::from(*count);
            if seen >= rank {
                return Self::bound(bucket);
            }
        }
        Self::bound(BUCKETS - 1)
    }
}

impl AdaptiveTtl {
    /// A policy with no samples yet.
    pub fn new(config: AdaptiveConfig) -> Self {
        AdaptiveTtl {
            config,
            classes: Mutex::new(HashMap::new()),
        }
    }

    /// The settings.
    pub fn config(&self) -> &AdaptiveConfig {
        &self.config
    }

    /// Records one observed hold time.
    pub fn record(&self, key: &Key, held: Duration) {
        let class = (self.config.classify)(key);
        let mut classes = self.classes.lock().unwrap_or_else(|e| e.into_inner());
        let class = if classes.contains_key(&class) || classes.len() < self.config.max_classes {
            class
        } else {
            OVERFLOW_CLASS.to_owned()
        };
        classes
            .entry(class)
            .or_insert_with(Histogram::new)
            .record(held);
    }

    /// The TTL for `key`'s class now.
    pub fn ttl_for(&self, key: &Key) -> Duration {
        let class = (self.config.classify)(key);
        let classes = self.classes.lock().unwrap_or_else(|e| e.into_inner());
        let histogram = classes.get(&class).or_else(|| classes.get(OVERFLOW_CLASS));
        match histogram {
            Some(h) if h.total >= self.config.min_samples => {
                // A factor so large (or not a number) that the product leaves
                // Duration's range lands on `max` instead of panicking.
                let learned = Duration::try_from_secs_f64(
                    h.quantile(self.config.quantile).as_secs_f64() * self.config.factor,
                )
                .unwrap_or(self.config.max);
                learned.clamp(self.config.min, self.config.max.max(self.config.min))
            }
            _ => self.config.initial,
        }
    }

    /// Classes tracked (at most `max_classes + 1`, the overflow class).
    pub fn classes(&self) -> usize {
        self.classes.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    fn key(name: &str) -> Key {
        Key::new(name).unwrap()
    }

    fn policy(min: Duration, max: Duration) -> AdaptiveTtl {
        AdaptiveTtl::new(AdaptiveConfig {
            min,
            max,
            ..AdaptiveConfig::default()
        })
    }

    #[test]
    fn converges_to_quantile_times_factor_on_a_known_distribution() {
        // Uniform hold times on [0, 2 s]: the 95th percentile is 1.9 s, so the
        // TTL should be about 2.85 s (within one 10% bucket).
        let adaptive = policy(Duration::from_millis(10), Duration::from_secs(600));
        let mut rng = rand::rng();
        for _ in 0..5000 {
            adaptive.record(
                &key("job:x"),
                Duration::from_millis(rng.random_range(0..=2000)),
            );
        }
        let ttl = adaptive.ttl_for(&key("job:y")).as_secs_f64();
        assert!(
            (2.85..=2.85 * 1.1 * 1.02).contains(&ttl),
            "expected ~2.85 s, got {ttl} s"
        );
    }

    #[test]
    fn uses_initial_ttl_until_enough_samples() {
        let adaptive = policy(Duration::from_millis(1), Duration::from_secs(600));
        for _ in 0..19 {
            adaptive.record(&key("a:1"), Duration::from_millis(100));
        }
        assert_eq!(adaptive.ttl_for(&key("a:1")), Duration::from_secs(30));
        adaptive.record(&key("a:1"), Duration::from_millis(100));
        assert!(adaptive.ttl_for(&key("a:1")) < Duration::from_secs(1));
    }

    #[test]
    fn clamps_to_min_and_max() {
        let adaptive = policy(Duration::from_secs(2), Duration::from_secs(10));
        for _ in 0..100 {
            adaptive.record(&key("fast:1"), Duration::from_millis(3));
            adaptive.record(&key("slow:1"), Duration::from_secs(3600));
        }
        assert_eq!(adaptive.ttl_for(&key("fast:1")), Duration::from_secs(2));
        assert_eq!(adaptive.ttl_for(&key("slow:1")), Duration::from_secs(10));
    }

    #[test]
    fn classes_learn_separately() {
        let adaptive = policy(Duration::from_millis(1), Duration::from_secs(600));
        for _ in 0..100 {
            adaptive.record(&key("short:1"), Duration::from_millis(10));
            adaptive.record(&key("long:1"), Duration::from_secs(10));
        }
        assert!(adaptive.ttl_for(&key("short:2")) < Duration::from_millis(20));
        assert!(adaptive.ttl_for(&key("long:2")) > Duration::from_secs(14));
    }

    #[test]
    fn memory_stays_bounded_under_many_classes_and_samples() {
        let adaptive = AdaptiveTtl::new(AdaptiveConfig {
            max_classes: 8,
            ..AdaptiveConfig::default()
        });
        for i in 0..10_000 {
            adaptive.record(&key(&format!("class{i}:x")), Duration::from_millis(i));
        }
        assert_eq!(adaptive.classes(), 9, "8 classes plus the overflow class");
        // One class sampled far past the decay point keeps small counters.
        for _ in 0..100_000 {
            adaptive.record(&key("class0:x"), Duration::from_millis(5));
        }
        let classes = adaptive.classes.lock().unwrap();
        assert!(classes["class0"].total < DECAY_AT);
    }

    #[test]
    fn learned_ttl_follows_a_shift_in_hold_times() {
        let adaptive = policy(Duration::from_millis(1), Duration::from_secs(600));
        for _ in 0..10_000 {
            adaptive.record(&key("j:1"), Duration::from_millis(10));
        }
        for _ in 0..30_000 {
            adaptive.record(&key("j:1"), Duration::from_secs(1));
        }
        assert!(adaptive.ttl_for(&key("j:1")) >= Duration::from_millis(1400));
    }
}
