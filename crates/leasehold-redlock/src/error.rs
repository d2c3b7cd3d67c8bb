//! What each server answered to one step, and the error that lists it.

use std::fmt;

use leasehold_core::{FencingToken, LockError, LockInfo};
use leasehold_redis::{AcquireOutcome, Ownership};

/// What one server answered to one step of a Redlock operation.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NodeOutcome {
    /// Acquire: the key was free there and is now ours, with this counter.
    Acquired(FencingToken),
    /// Acquire: another owner holds the key there.
    Held(LockInfo),
    /// Extend / release: the key was ours there and the step was applied.
    Ours,
    /// Extend / release: the key is free there (expired or released).
    Free,
    /// Extend / release: another owner holds the key there.
    Other,
    /// No answer within the per-node timeout, or no connection.
    Unreachable(String),
    /// The server answered with an error.
    Failed(String),
}

impl NodeOutcome {
    pub(crate) fn from_error(error: LockError) -> Self {
        match error {
            LockError::Unavailable { source, .. } => NodeOutcome::Unreachable(source.to_string()),
            other => NodeOutcome::Failed(other.to_string()),
        }
    }

    pub(crate) fn from_acquire(result: Result<AcquireOutcome, LockError>) -> Self {
        match result {
            Ok(AcquireOutcome::Acquired(token)) => NodeOutcome::Acquired(token),
            Ok(AcquireOutcome::Held(info)) => NodeOutcome::Held(info),
            Err(error) => Self::from_error(error),
        }
    }

    pub(crate) fn from_ownership(result: Result<Ownership, LockError>) -> Self {
        match result {
            Ok(Ownership::Ours) => NodeOutcome::Ours,
            Ok(Ownership::Free) => NodeOutcome::Free,
            Ok(Ownership::Other) => NodeOutcome::Other,
            Err(error) => Self::from_error(error),
        }
    }

    /// Whether the server gave no usable answer (so it may or may not have
    /// applied the step).
    pub fn is_unknown(&self) -> bool {
        matches!(self, NodeOutcome::Unreachable(_) | NodeOutcome::Failed(_))
    }
}

impl fmt::Display for NodeOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeOutcome::Acquired(token) => write!(f, "acquired (counter {token})"),
            NodeOutcome::Held(info) => {
                write!(f, "held")?;
                if let Some(owner) = &info.owner_hint {
                    write!(f, " by {owner}")?;
                }
                if let Some(token) = info.fencing_token {
                    write!(f, " (token {token}")?;
                    if let Some(left) = info.remaining {
                        write!(f, ", {} ms left", left.as_millis())?;
                    }
                    write!(f, ")")?;
                }
                Ok(())
            }
            NodeOutcome::Ours => write!(f, "ours"),
            NodeOutcome::Free => write!(f, "free"),
            NodeOutcome::Other => write!(f, "held by another owner"),
            NodeOutcome::Unreachable(why) => write!(f, "unreachable: {why}"),
            NodeOutcome::Failed(why) => write!(f, "error: {why}"),
        }
    }
}

/// Every server's answer to one Redlock step: the source of
/// [`LockError::Unavailable`] and the `metadata` of a `Contended` error's
/// holder, so a failure says which servers failed and why. Downcast an
/// `Unavailable` source to it for the details.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuorumReport {
    /// The step: `acquire`, `extend`, `release`, `inspect`.
    pub step: &'static str,
    /// The lock key.
    pub key: String,
    /// How many servers must agree.
    pub quorum: usize,
    /// `(host:port, outcome)` per server, in configuration order.
    pub nodes: Vec<(String, NodeOutcome)>,
    /// Why the step failed although the answers may look fine (validity ran
    /// out, for example).
    pub note: Option<String>,
}

impl QuorumReport {
    /// How many servers answered `pred`.
    pub fn count(&self, pred: impl Fn(&NodeOutcome) -> bool) -> usize {
        self.nodes.iter().filter(|(_, o)| pred(o)).count()
    }
}

impl fmt::Display for QuorumReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of {:?} needs {} of {} servers",
            self.step,
            self.key,
            self.quorum,
            self.nodes.len()
        )?;
        if let Some(note) = &self.note {
            write!(f, " ({note})")?;
        }
        write!(f, ":")?;
        for (i, (addr, outcome)) in self.nodes.iter().enumerate() {
            let sep = if i == 0 { " " } else { "; " };
            write!(f, "{sep}{addr} {outcome}")?;
        }
        Ok(())
    }
}

impl std::error::Error for QuorumReport {}
