//! A history checker: cases record who held a key when, with which fencing
//! token, and the checker reports overlapping validity windows and tokens
//! that went backwards.

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
pub enum Violation {
    /// Two holders' windows overlap.
    Overlap {
        /// The earlier holder.
        first: u64,
        /// The holder that started while the first still held.
        second: u64,
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
