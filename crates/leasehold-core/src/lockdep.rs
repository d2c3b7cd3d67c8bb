//! Lock-order inversion detection ("lockdep" for named locks), in process.
//!
//! A [`Locker`](crate::Locker) learns, per key *class* (the key up to its
//! first `:` unless [`LockerBuilder::key_class`](crate::LockerBuilder::key_class)
//! says otherwise), the order in which its tasks take classes: a task that
//! holds a `partner:` key and waits for a `restaurant:` key teaches
//! "partner before restaurant". A later task that holds a `restaurant:` key
//! and asks for a `partner:` key inverts it: two such tasks can deadlock,
//! whether or not they happen to this time. The inverted acquisition is
//! reported before it waits, with both call sites: a `WARN` (once per pair
//! of classes), `leasehold_order_inversions_total`, and under
//! [`LockOrder::Strict`] a refusal ([`LockError::OrderInversion`]).
//!
//! Only waiting acquisitions (`lock`, `lock_within`, `lock_with`,
//! `with_lock`) are checked and teach: `try_lock` never waits, so it cannot
//! deadlock, and `lock_all` takes its keys in one canonical order. The first
//! order seen wins; an inverted one is never learned. Keys of one class never
//! order each other (`account:1` then `account:2` is for `lock_all`).
//!
//! Memory is bounded: at most [`MAX_CLASSES`] classes and [`MAX_ORDERS`]
//! learned pairs per locker; past that, new classes and pairs are not learned
//! (logged once), while the pairs already learned keep being checked.

use std::collections::HashMap;
use std::panic::Location;
use std::sync::Mutex;

use crate::error::LockError;
use crate::key::Key;
use crate::metrics::Meter;

/// The most key classes one locker learns orders between.
pub const MAX_CLASSES: usize = 1024;
/// The most ordered pairs of classes one locker learns.
pub const MAX_ORDERS: usize = 16_384;

/// What a [`Locker`](crate::Locker) does about lock-order inversions
/// ([`LockerBuilder::lock_order`](crate::LockerBuilder::lock_order)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum LockOrder {
    /// Neither learns nor checks.
    Off,
    /// Learns orders; an inverted acquisition logs a warning (once per pair
    /// of classes) and counts in `leasehold_order_inversions_total`, then
    /// proceeds. The default: it costs no store call, only a lookup of what
    /// the task holds per waiting acquisition, and one of the learned orders
    /// per key it holds.
    #[default]
    Warn,
    /// As `Warn`, and the inverted acquisition fails with
    /// [`LockError::OrderInversion`] without touching the store: for tests
    /// and staging, where an inversion should fail the build.
    Strict,
}

/// The order learned from one acquisition: where it was made.
#[derive(Debug)]
struct Learned {
    site: &'static Location<'static>,
    warned: bool,
}

#[derive(Debug, Default)]
struct Orders {
    ids: HashMap<Box<str>, u32>,
    names: Vec<Box<str>>,
    /// (earlier, later): a task held `earlier` when it asked for `later`.
    learned: HashMap<(u32, u32), Learned>,
    full_warned: bool,
}

impl Orders {
    /// The class's id, learning it if there is room.
    fn id(&mut self, class: &str) -> Option<u32> {
        if let Some(&id) = self.ids.get(class) {
            return Some(id);
        }
        if self.names.len() >= MAX_CLASSES {
            self.warn_full();
            return None;
        }
        let id = u32::try_from(self.names.len()).ok()?;
        self.names.push(class.into());
        self.ids.insert(class.into(), id);
        Some(id)
    }

    fn warn_full(&mut self) {
        if !self.full_warned {
            self.full_warned = true;
            tracing::warn!(
                max_classes = MAX_CLASSES,
                max_orders = MAX_ORDERS,
                "lock-order check: too many key classes or orders; new ones are not learned (set LockerBuilder::key_class to a coarser class)"
            );
        }
    }
}

/// A locker's lock-order check.
#[derive(Debug)]
pub(crate) struct Lockdep {
    mode: LockOrder,
    class_of: fn(&Key) -> &str,
    orders: Mutex<Orders>,
}

impl Lockdep {
    pub(crate) fn new(mode: LockOrder, class_of: fn(&Key) -> &str) -> Self {
        Lockdep {
            mode,
            class_of,
            orders: Mutex::default(),
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.mode != LockOrder::Off
    }

    /// Checks (and learns from) a waiting acquisition of `key` at `site` by
    /// a task holding `holds`.
    pub(crate) fn check<'k>(
        &self,
        key: &Key,
        holds: impl IntoIterator<Item = &'k Key>,
        site: &'static Location<'static>,
        meter: &Meter,
    ) -> Result<(), LockError> {
        if self.mode == LockOrder::Off {
            return Ok(());
        }
        let class = (self.class_of)(key);
        let mut orders = self.orders.lock().unwrap_or_else(|e| e.into_inner());
        let mut to_learn = Vec::new();
        let mut inversion = None;
        for held in holds {
            let held_class = (self.class_of)(held);
            if held_class == class {
                continue;
            }
            let (Some(later), Some(earlier)) = (orders.id(class), orders.id(held_class)) else {
                continue;
            };
            match orders.learned.get_mut(&(later, earlier)) {
                Some(learned) => {
                    meter.order_inversion();
                    if !learned.warned {
                        learned.warned = true;
                        tracing::warn!(
                            backend = meter.backend(),
                            key = key.as_str(),
                            held = held.as_str(),
                            class,
                            held_class,
                            at = %site,
                            learned_at = %learned.site,
                            "lock-order inversion: taking a `{class}` key while holding a `{held_class}` key; \
                             a task took them the other way round at {}, so two such tasks can deadlock",
                            learned.site
                        );
                    }
                    inversion.get_or_insert_with(|| LockError::OrderInversion {
                        backend: meter.backend(),
                        key: key.as_str().to_owned(),
                        held: held.as_str().to_owned(),
                        learned: format!(
                            "`{class}` before `{held_class}` at {}; this acquisition at {site}",
                            learned.site
                        ),
                    });
                }
                None => to_learn.push((earlier, later)),
            }
        }
        if let (LockOrder::Strict, Some(inversion)) = (self.mode, inversion) {
            return Err(inversion);
        }
        for pair in to_learn {
            if orders.learned.contains_key(&pair) {
                continue;
            }
            if orders.learned.len() >= MAX_ORDERS {
                orders.warn_full();
                break;
            }
            orders.learned.insert(
                pair,
                Learned {
                    site,
                    warned: false,
                },
            );
        }
        Ok(())
    }

    /// How many classes and ordered pairs are learned (for tests).
    #[cfg(test)]
    fn learned(&self) -> (usize, usize) {
        let orders = self.orders.lock().unwrap();
        (orders.names.len(), orders.learned.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    use crate::{LockBackend, Locker, MemoryBackend, TtlPolicy, WaitPolicy};

    fn locker(mode: LockOrder) -> Locker {
        let backend: Arc<dyn LockBackend> = Arc::new(MemoryBackend::new());
        Locker::builder_from_arc(backend)
            .ttl(TtlPolicy::Fixed(Duration::from_secs(30)))
            .wait(WaitPolicy::new(Duration::from_secs(1)))
            .lock_order(mode)
            .build()
    }

    /// In a new task (holding nothing else): locks `first`, then `second`.
    async fn in_new_task(
        locker: &Locker,
        first: &'static str,
        second: &'static str,
    ) -> Result<(), LockError> {
        let locker = locker.clone();
        tokio::spawn(async move {
            let _first = locker.lock(first).await.unwrap();
            locker.lock(second).await.map(drop)
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn the_first_inverted_acquisition_is_refused_in_strict_mode_before_any_deadlock() {
        let locker = locker(LockOrder::Strict);
        let partner = locker.lock("partner:ravi").await.unwrap();
        let restaurant = locker.lock("restaurant:1").await.unwrap();
        drop((restaurant, partner));
        // Another task, alone (nothing contends): restaurant, then partner.
        let inverted = in_new_task(&locker, "restaurant:2", "partner:asha").await;
        let Err(LockError::OrderInversion {
            key, held, learned, ..
        }) = inverted
        else {
            panic!("expected OrderInversion, got {inverted:?}");
        };
        assert_eq!(
            (key.as_str(), held.as_str()),
            ("partner:asha", "restaurant:2")
        );
        assert!(
            learned.contains("`partner` before `restaurant`")
                && learned.matches("lockdep.rs").count() == 2,
            "both sites named: {learned}"
        );
    }

    #[tokio::test]
    async fn consistent_orders_and_lock_all_never_report() {
        let locker = locker(LockOrder::Strict);
        for round in 0..3 {
            let a = locker.lock(format!("partner:{round}")).await.unwrap();
            let b = locker.lock(format!("restaurant:{round}")).await.unwrap();
            let c = locker.try_lock(format!("courier:{round}")).await.unwrap();
            drop((c, b, a));
        }
        // try_lock never waits: it neither teaches nor is checked.
        let restaurant = locker.lock("restaurant:9").await.unwrap();
        let partner = locker.try_lock("partner:9").await.unwrap();
        drop((partner, restaurant));
        // lock_all takes its keys in canonical order: never checked, even
        // while the task holds a key of a later class.
        let restaurant = locker.lock("restaurant:3").await.unwrap();
        let all = locker
            .lock_all(["restaurant:7", "partner:7"])
            .await
            .unwrap();
        drop(all);
        let all = locker.lock_all(["partner:3"]).await.unwrap();
        drop((all, restaurant));
    }

    #[tokio::test]
    async fn warn_mode_reports_and_proceeds() {
        // The counter is checked with the other metrics (tests/metrics.rs).
        let locker = locker(LockOrder::Warn);
        let a = locker.lock("a:1").await.unwrap();
        let b = locker.lock("b:1").await.unwrap();
        drop((b, a));
        for _ in 0..2 {
            let b = locker.lock("b:2").await.unwrap();
            let a = locker.lock("a:2").await.expect("warn mode proceeds");
            drop((a, b));
        }
    }

    #[tokio::test]
    async fn memory_stays_bounded_with_ten_thousand_classes() {
        let locker = locker(LockOrder::Strict);
        let base = locker.lock("base:0").await.unwrap();
        for class in 0..10_000 {
            let guard = locker.lock(format!("class{class}:x")).await.unwrap();
            let inner = locker.lock(format!("inner{class}:y")).await.unwrap();
            drop((inner, guard));
        }
        drop(base);
        let (classes, orders) = locker.lock_order_learned();
        assert!(
            classes <= MAX_CLASSES && orders <= MAX_ORDERS,
            "{classes} classes, {orders} orders"
        );
        assert_eq!(classes, MAX_CLASSES, "learning stops at the bound");
        // What was learned first is still checked.
        let inverted = in_new_task(&locker, "inner0:y", "class0:x").await;
        assert!(
            matches!(inverted, Err(LockError::OrderInversion { .. })),
            "{inverted:?}"
        );
    }

    impl Locker {
        fn lock_order_learned(&self) -> (usize, usize) {
            self.lockdep().learned()
        }
    }
}
