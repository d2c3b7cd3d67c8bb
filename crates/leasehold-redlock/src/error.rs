//! Redlock's errors: what each server answered to one step
//! ([`NodeOutcome`]), and the report that lists them ([`QuorumReport`]), the
//! source of every `Unavailable` and the metadata of every `Contended`. The
//! Redis client's own errors are mapped once, by
//! [`leasehold_redis::map_error`] under the name `redlock`, before they
//! become a server's outcome here.

use std::collections::HashMap;
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
    /// Batch renewal: the server answered the batch (each lease's renewal
    /// then has its own outcome).
    Answered,
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
            NodeOutcome::Answered => write!(f, "answered"),
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
    /// The step: `connect`, `acquire`, `extend`, `extend_many`, `release`,
    /// `inspect`, `list`, `force_release`.
    pub step: &'static str,
    /// The lock key (empty for a step over no one key: `connect`, a batch
    /// renewal; the prefix for `list`).
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
        write!(f, "{}", self.step)?;
        if !self.key.is_empty() {
            write!(f, " of {:?}", self.key)?;
        }
        write!(f, " needs {} of {} servers", self.quorum, self.nodes.len())?;
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

/// What the holders that answered `Held` have in common: the owner most
/// servers name, with its label and earliest grant time (the servers'
/// clocks differ), the highest token and the least time left.
pub(crate) fn holder_of(outcomes: &[NodeOutcome]) -> LockInfo {
    let mut owners: HashMap<&str, usize> = HashMap::new();
    let mut info = LockInfo::default();
    for outcome in outcomes {
        if let NodeOutcome::Held(held) = outcome {
            if let Some(owner) = &held.owner_hint {
                *owners.entry(owner).or_default() += 1;
            }
            info.fencing_token = info.fencing_token.max(held.fencing_token);
            info.remaining = match (info.remaining, held.remaining) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
    }
    info.owner_hint = owners
        .into_iter()
        .max_by_key(|(_, count)| *count)
        .map(|(owner, _)| owner.to_owned());
    for outcome in outcomes {
        if let NodeOutcome::Held(held) = outcome
            && held.owner_hint == info.owner_hint
        {
            info.metadata = info.metadata.or_else(|| held.metadata.clone());
            info.acquired_at = match (info.acquired_at, held.acquired_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
    }
    info
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use super::*;

    /// A server's answer that `owner` holds the key with `token`, `left_ms`
    /// to go.
    pub(crate) fn held(owner: &str, token: u64, left_ms: u64) -> NodeOutcome {
        let mut info = LockInfo::new(
            Some(FencingToken(token)),
            Some(Duration::from_millis(left_ms)),
        );
        info.owner_hint = Some(owner.into());
        NodeOutcome::Held(info)
    }

    #[test]
    fn a_report_names_every_server_and_its_answer() {
        let report = QuorumReport {
            step: "acquire",
            key: "k".into(),
            quorum: 2,
            nodes: vec![
                ("127.0.0.1:1".into(), NodeOutcome::Acquired(FencingToken(4))),
                ("127.0.0.1:2".into(), held("aaaa", 3, 1200)),
                (
                    "127.0.0.1:3".into(),
                    NodeOutcome::Unreachable("no answer within 25ms".into()),
                ),
            ],
            note: None,
        };
        assert_eq!(
            report.to_string(),
            "acquire of \"k\" needs 2 of 3 servers: 127.0.0.1:1 acquired (counter 4); \
             127.0.0.1:2 held by aaaa (token 3, 1200 ms left); \
             127.0.0.1:3 unreachable: no answer within 25ms"
        );
        assert_eq!(report.count(NodeOutcome::is_unknown), 1);
    }

    #[test]
    fn a_report_over_no_one_key_names_none() {
        let report = QuorumReport {
            step: "connect",
            key: String::new(),
            quorum: 2,
            nodes: vec![("127.0.0.1:1".into(), NodeOutcome::Free)],
            note: Some("fewer than a quorum of servers could be connected".into()),
        };
        assert_eq!(
            report.to_string(),
            "connect needs 2 of 1 servers (fewer than a quorum of servers could be connected): \
             127.0.0.1:1 free"
        );
    }
}
