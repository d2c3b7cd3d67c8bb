//! The replica rule's types: what a grant or renewal needs from the
//! replicas ([`ReplicaRule`]) and what `WAIT` answered. Apart from
//! `replication.rs` (the `WAIT` itself, on [`RedisNode`](crate::RedisNode))
//! so the node and the rule do not import each other.

use std::time::Duration;

/// How many replicas must confirm each grant and renewal, and how long to
/// wait for them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicaRule {
    /// `min_replicas`: replicas that must have the write (at least 1).
    pub min_replicas: u32,
    /// `replica_timeout`: how long `WAIT` waits for them (below the per-call
    /// timeout).
    pub timeout: Duration,
}

impl ReplicaRule {
    /// The default `replica_timeout` when only `min_replicas` is given.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(500);
}

/// Whether the replicas confirmed a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Confirmation {
    /// No rule: nothing was asked.
    NotAsked,
    /// `WAIT` answered this many replicas, at least the rule's minimum.
    Confirmed,
    /// `WAIT` answered this many, fewer than the rule's minimum.
    Short(u32),
}
