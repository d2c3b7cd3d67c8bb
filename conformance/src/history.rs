//! A history checker: cases record who held a key when, with which fencing
//! token, and the checker reports overlapping validity windows and tokens
//! that went backwards. [`SharedHistory`] does the same for reader–writer
//! locks (a writer overlaps nobody) and semaphores (at most N at once).

use std::fmt;
use std::sync::Mutex;

use tokio::time::Instant;

/// One holding of a key, as its holder saw it.
#[derive(Clone, Copy, Debug)]
pub struct Holding {
    /// Which client or task held it.
    pub holder: u64,
    /// Its fencing token.
    pub token: u64,
    /// When the holder learned it held the lock (acquire returned).
    pub start: Instant,
    /// When it stopped acting as holder: the earlier of sending the release
    /// and the end of its lease's validity.
    pub end: Instant,
}

/// A violation the checker found.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Violation {
    /// Two holders' windows overlap.
    Overlap {
        /// The earlier holder.
        first: u64,
        /// The holder that started while the first still held.
        second: u64,
    },
    /// A writer's window overlaps another holder's (reader–writer lock).
    WriterOverlap {
        /// The writer.
        writer: u64,
        /// The reader or writer it overlapped.
        other: u64,
    },
    /// More holders at once than the semaphore admits.
    TooManyHolders {
        /// The semaphore's permits.
        permits: usize,
        /// How many held at once.
        seen: usize,
    },
    /// A later holding had a token no greater than an earlier one.
    TokenWentBackwards {
        /// The earlier token.
        earlier: u64,
        /// The later, smaller-or-equal token.
        later: u64,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::Overlap { first, second } => {
                write!(
                    f,
                    "holder {second} started while holder {first} still held the lock"
                )
            }
            Violation::WriterOverlap { writer, other } => {
                write!(f, "writer {writer} held the lock while holder {other} did")
            }
            Violation::TooManyHolders { permits, seen } => {
                write!(f, "{seen} holders at once on a semaphore of {permits}")
            }
            Violation::TokenWentBackwards { earlier, later } => {
                write!(f, "fencing token went from {earlier} to {later}")
            }
        }
    }
}

/// Holdings of one key, recorded from many tasks.
#[derive(Debug, Default)]
pub struct History {
    holdings: Mutex<Vec<Holding>>,
}

impl History {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one holding.
    pub fn record(&self, holding: Holding) {
        self.holdings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(holding);
    }

    /// How many holdings were recorded.
    pub fn len(&self) -> usize {
        self.holdings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every violation: windows that overlap (mutual exclusion broken) and,
    /// when `strict_tokens`, tokens that did not strictly increase in the
    /// order holders started.
    pub fn violations(&self, strict_tokens: bool) -> Vec<Violation> {
        let mut holdings = self
            .holdings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        holdings.sort_by_key(|h| h.start);
        let mut violations = Vec::new();
        let mut longest: Option<Holding> = None;
        let mut previous: Option<Holding> = None;
        for holding in holdings {
            if let Some(longest) = longest.filter(|l| holding.start < l.end) {
                violations.push(Violation::Overlap {
                    first: longest.holder,
                    second: holding.holder,
                });
            }
            if let Some(previous) = previous.filter(|p| strict_tokens && holding.token <= p.token) {
                violations.push(Violation::TokenWentBackwards {
                    earlier: previous.token,
                    later: holding.token,
                });
            }
            if longest.is_none_or(|l| holding.end > l.end) {
                longest = Some(holding);
            }
            previous = Some(holding);
        }
        violations
    }
}

/// Which side of a reader–writer lock a [`SharedHistory`] holding was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// A reader (or a semaphore permit: both may overlap their own kind).
    Shared,
    /// A writer: overlaps nobody.
    Exclusive,
}

/// Holdings of one reader–writer lock or semaphore, recorded from many
/// tasks.
#[derive(Debug, Default)]
pub struct SharedHistory {
    /// Each holding, its side, and when its holder asked for it.
    holdings: Mutex<Vec<(Holding, Side, Instant)>>,
}

impl SharedHistory {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one holding whose holder asked for it when it started.
    pub fn record(&self, holding: Holding, side: Side) {
        self.record_asked(holding, side, holding.start);
    }

    /// Records one holding, and when its holder sent the request (the grant
    /// happened between `asked` and `holding.start`). Token order is checked
    /// only between grants this bounds: concurrent permits or readers may
    /// learn of their grants in another order than the store made them.
    pub fn record_asked(&self, holding: Holding, side: Side, asked: Instant) {
        self.holdings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((holding, side, asked));
    }

    fn sorted(&self) -> Vec<(Holding, Side)> {
        self.sorted_asked()
            .into_iter()
            .map(|(h, side, _)| (h, side))
            .collect()
    }

    fn sorted_asked(&self) -> Vec<(Holding, Side, Instant)> {
        let mut holdings = self
            .holdings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        holdings.sort_by_key(|(h, ..)| h.start);
        holdings
    }

    /// How many were recorded.
    pub fn len(&self) -> usize {
        self.holdings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most holders whose windows overlapped at one instant (a window
    /// ending exactly when another starts does not overlap it).
    pub fn max_overlap(&self) -> usize {
        let mut edges: Vec<(Instant, i32)> = self
            .sorted()
            .iter()
            .flat_map(|(h, _)| [(h.start, 1), (h.end, -1)])
            .collect();
        // Ends before starts at the same instant.
        edges.sort();
        let mut now = 0i32;
        let mut most = 0i32;
        for (_, step) in edges {
            now += step;
            most = most.max(now);
        }
        most as usize
    }

    /// Every violation of a reader–writer lock's rules: a writer overlapping
    /// anyone, and tokens out of the order [`LockKind`](leasehold_core::LockKind)
    /// promises (when `strict_tokens`): a writer's token above every holding
    /// that ended before it started, a reader's above every such writer's.
    pub fn rw_violations(&self, strict_tokens: bool) -> Vec<Violation> {
        let holdings = self.sorted();
        let mut violations = Vec::new();
        for (i, (a, side_a)) in holdings.iter().enumerate() {
            for (b, side_b) in &holdings[i + 1..] {
                if b.start >= a.end {
                    continue;
                }
                match (side_a, side_b) {
                    (Side::Exclusive, _) => violations.push(Violation::WriterOverlap {
                        writer: a.holder,
                        other: b.holder,
                    }),
                    (_, Side::Exclusive) => violations.push(Violation::WriterOverlap {
                        writer: b.holder,
                        other: a.holder,
                    }),
                    _ => {}
                }
            }
        }
        if strict_tokens {
            violations.extend(self.token_order(|earlier, later| {
                later == Side::Exclusive || earlier == Side::Exclusive
            }));
        }
        violations
    }

    /// Every violation of a semaphore of `permits`: more holders at once, and
    /// (when `strict_tokens`) a permit's token not above every permit that
    /// ended before it started.
    pub fn semaphore_violations(&self, permits: usize, strict_tokens: bool) -> Vec<Violation> {
        let mut violations = Vec::new();
        let seen = self.max_overlap();
        if seen > permits {
            violations.push(Violation::TooManyHolders { permits, seen });
        }
        if strict_tokens {
            violations.extend(self.token_order(|_, _| true));
        }
        violations
    }

    /// Tokens that went backwards: for each pair where `earlier`'s holder
    /// knew of its grant before `later`'s asked (so the store granted
    /// `earlier` first) and `ordered(earlier side, later side)`, the later
    /// token must be greater.
    fn token_order(&self, ordered: impl Fn(Side, Side) -> bool) -> Vec<Violation> {
        let holdings = self.sorted_asked();
        let mut violations = Vec::new();
        for (later, later_side, asked) in &holdings {
            let highest_before = holdings
                .iter()
                .filter(|(h, side, _)| h.start <= *asked && ordered(*side, *later_side))
                .filter(|(h, ..)| h.holder != later.holder || h.token != later.token)
                .map(|(h, ..)| h.token)
                .max();
            if let Some(earlier) = highest_before.filter(|t| *t >= later.token) {
                violations.push(Violation::TokenWentBackwards {
                    earlier,
                    later: later.token,
                });
            }
        }
        violations
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    #[test]
    fn disjoint_increasing_history_is_clean() {
        let history = History::new();
        let t = Instant::now();
        history.record(Holding {
            holder: 1,
            token: 1,
            start: at(t, 0),
            end: at(t, 10),
        });
        history.record(Holding {
            holder: 2,
            token: 2,
            start: at(t, 10),
            end: at(t, 20),
        });
        assert!(history.violations(true).is_empty());
    }

    #[test]
    fn overlap_is_reported() {
        let history = History::new();
        let t = Instant::now();
        history.record(Holding {
            holder: 1,
            token: 1,
            start: at(t, 0),
            end: at(t, 10),
        });
        history.record(Holding {
            holder: 2,
            token: 2,
            start: at(t, 5),
            end: at(t, 20),
        });
        assert_eq!(
            history.violations(true),
            vec![Violation::Overlap {
                first: 1,
                second: 2
            }]
        );
    }

    fn holding(holder: u64, token: u64, base: Instant, from: u64, to: u64) -> Holding {
        Holding {
            holder,
            token,
            start: at(base, from),
            end: at(base, to),
        }
    }

    #[test]
    fn readers_may_overlap_but_a_writer_may_not() {
        let t = Instant::now();
        let history = SharedHistory::new();
        history.record(holding(1, 1, t, 0, 10), Side::Shared);
        history.record(holding(2, 2, t, 5, 15), Side::Shared);
        history.record(holding(3, 3, t, 15, 20), Side::Exclusive);
        assert!(history.rw_violations(true).is_empty());
        assert_eq!(history.max_overlap(), 2);
        history.record(holding(4, 4, t, 18, 30), Side::Shared);
        assert_eq!(
            history.rw_violations(true),
            vec![Violation::WriterOverlap {
                writer: 3,
                other: 4
            }]
        );
    }

    #[test]
    fn a_writer_token_below_an_earlier_reader_is_reported() {
        let t = Instant::now();
        let history = SharedHistory::new();
        history.record(holding(1, 5, t, 0, 10), Side::Shared);
        history.record(holding(2, 4, t, 10, 20), Side::Exclusive);
        assert_eq!(
            history.rw_violations(true),
            vec![Violation::TokenWentBackwards {
                earlier: 5,
                later: 4
            }]
        );
        // Two readers' tokens carry no order between themselves.
        let readers = SharedHistory::new();
        readers.record(holding(1, 5, t, 0, 10), Side::Shared);
        readers.record(holding(2, 4, t, 10, 20), Side::Shared);
        assert!(readers.rw_violations(true).is_empty());
    }

    #[test]
    fn a_semaphore_counts_holders_at_once() {
        let t = Instant::now();
        let history = SharedHistory::new();
        history.record(holding(1, 1, t, 0, 10), Side::Shared);
        history.record(holding(2, 2, t, 2, 12), Side::Shared);
        history.record(holding(3, 3, t, 10, 20), Side::Shared);
        assert!(history.semaphore_violations(2, true).is_empty());
        history.record(holding(4, 4, t, 11, 20), Side::Shared);
        assert_eq!(
            history.semaphore_violations(2, true),
            vec![Violation::TooManyHolders {
                permits: 2,
                seen: 3
            }]
        );
    }

    #[test]
    fn token_going_backwards_is_reported_only_when_strict() {
        let history = History::new();
        let t = Instant::now();
        history.record(Holding {
            holder: 1,
            token: 5,
            start: at(t, 0),
            end: at(t, 10),
        });
        history.record(Holding {
            holder: 2,
            token: 3,
            start: at(t, 10),
            end: at(t, 20),
        });
        assert_eq!(
            history.violations(true),
            vec![Violation::TokenWentBackwards {
                earlier: 5,
                later: 3
            }]
        );
        assert!(history.violations(false).is_empty());
    }
}
