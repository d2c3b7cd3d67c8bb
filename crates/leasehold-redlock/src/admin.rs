//! Reading and evicting holders over the N servers: who holds a key
//! (`inspect`), the held keys (`list`) and the force release. A key is held
//! when a majority of servers agree on its owner.

use std::collections::{HashMap, HashSet};

use leasehold_core::{Key, ListPage, ListQuery, LockError, LockInfo, LockKind};
use leasehold_redis::{ScanCursor, ScanState};

use crate::NAME;
use crate::error::{NodeOutcome, holder_of};
use crate::quorum::{Quorum, indices};

/// What every server's answer says about one key.
enum Verdict {
    /// A majority of servers agree on this holder; these servers hold it.
    Held(LockInfo, Vec<usize>),
    /// No owner can have a majority.
    Free,
    /// Too few servers answered to tell.
    Unknown,
}

impl Quorum {
    /// The holder a majority of servers agree on; `None` when no owner can
    /// have a majority; `Unavailable` when too few answered to tell.
    pub(crate) async fn inspect(&self, key: &Key) -> Result<Option<LockInfo>, LockError> {
        let nodes = &self.nodes;
        let outcomes: Vec<NodeOutcome> = nodes
            .fan_out(&nodes.all(), self.timeout, |node| async move {
                node.inspect_raw(key).await
            })
            .await
            .into_iter()
            .map(holder_outcome)
            .collect();
        match self.verdict(&outcomes) {
            Verdict::Held(holder, _) => Ok(Some(holder)),
            Verdict::Free => Ok(None),
            Verdict::Unknown => Err(LockError::unavailable(
                NAME,
                self.report("inspect", key, outcomes, None),
            )),
        }
    }

    /// One page: a `SCAN` step on every server still scanning, then every
    /// key found read on every server. A key found by server `j` is shown
    /// when a majority agree on its holder and no lower-numbered server
    /// (whose scan has not been given up) holds it, so a key held on several
    /// servers is shown once, by the first one's scan. A server that fails
    /// has its scan given up for the rest of the listing (its keys are found
    /// through the others); once more than N − quorum have been given up a
    /// majority-held key could be missed, so the page is `Unavailable`. A
    /// key held on too few reachable servers to tell is left out.
    pub(crate) async fn list(&self, query: &ListQuery) -> Result<ListPage, LockError> {
        let nodes = &self.nodes;
        let limit = query.limit.max(1);
        let mut cursor = ScanCursor::parse(query.cursor.as_deref(), nodes.len())?;
        let given_up: Vec<bool> = cursor
            .scans
            .iter()
            .map(|s| *s == ScanState::Abandoned)
            .collect();
        let mut found = cursor.take_pending(limit);
        // Keys kept from an earlier page were shown-worthy then: no dedup.
        let kept = found.len();
        let starts: Vec<Option<u64>> = (0..nodes.len()).map(|i| cursor.scan_at(i)).collect();
        let scanning = indices(&starts, Option::is_some);
        let prefix = query.prefix.as_str();
        let scans = nodes
            .fan_out_each(&scanning, self.timeout, |i, node| {
                let at = starts[i].unwrap_or(0);
                async move { node.scan_raw(at, prefix, limit).await }
            })
            .await;
        let mut failed: Vec<Option<NodeOutcome>> = vec![None; nodes.len()];
        for (&i, scan) in scanning.iter().zip(scans) {
            match scan {
                Ok((next, keys)) => {
                    cursor.advance(i, next);
                    found.extend(keys.into_iter().map(|key| (i, key)));
                }
                Err(error) => failed[i] = Some(NodeOutcome::from_error(error)),
            }
        }
        let mut seen = HashSet::new();
        let keys: Vec<Key> = found
            .iter()
            .filter(|(_, key)| seen.insert(key.clone()))
            .map(|(_, key)| key.clone())
            .collect();
        let read = nodes
            .fan_out(&nodes.all(), self.timeout, |node| {
                let keys = &keys;
                async move { node.inspect_many_raw(keys).await }
            })
            .await;
        let mut holders: Vec<Result<Vec<Option<LockInfo>>, NodeOutcome>> = Vec::new();
        for (i, answer) in read.into_iter().enumerate() {
            holders.push(answer.map_err(|error| {
                let outcome = NodeOutcome::from_error(error);
                failed[i].get_or_insert(outcome).clone()
            }));
        }
        for (i, failure) in failed.iter().enumerate() {
            if let Some(failure) = failure {
                tracing::debug!(server = %nodes.addr(i), %failure, "redlock listing gives up on a server");
                cursor.abandon(i);
            }
        }
        let abandoned = indices(&cursor.scans, |s| *s == ScanState::Abandoned);
        if abandoned.len() > nodes.len() - nodes.quorum() {
            let outcomes = (0..nodes.len())
                .map(|i| match &failed[i] {
                    Some(failure) => failure.clone(),
                    None if given_up[i] => {
                        NodeOutcome::Unreachable("failed earlier in this listing".into())
                    }
                    None => NodeOutcome::Answered,
                })
                .collect();
            let note = "too many servers failed during the listing to find every held key";
            return Err(LockError::unavailable(
                NAME,
                nodes.report("list", &query.prefix, outcomes, Some(note.into())),
            ));
        }
        let position: HashMap<&Key, usize> = keys.iter().enumerate().map(|(x, k)| (k, x)).collect();
        let mut held = Vec::new();
        for (n, (j, key)) in found.iter().enumerate() {
            let x = position[key];
            let outcomes: Vec<NodeOutcome> = holders
                .iter()
                .map(|answer| match answer {
                    Ok(found) => holder_outcome(Ok(found.get(x).cloned().flatten())),
                    Err(failure) => failure.clone(),
                })
                .collect();
            match self.verdict(&outcomes) {
                Verdict::Held(holder, on) => {
                    let shown_by_lower = on.iter().any(|&h| h < *j && !given_up[h]);
                    if n < kept || !shown_by_lower {
                        held.push((*j, key.clone(), holder));
                    }
                }
                Verdict::Free => {}
                Verdict::Unknown => {
                    tracing::debug!(%key, "redlock listing leaves out a key too few servers could tell about")
                }
            }
        }
        Ok(cursor.finish(held, limit))
    }

    /// The force-release script on every server at once, then the servers
    /// whose counter lags the highest evicted token raised to it, so the
    /// next grant's token is above it whichever majority grants it. The
    /// evicted holder is the one most servers named, with the highest token
    /// reported; `None` when no server held the key. Fewer than a majority
    /// answering is `Unavailable` (the key may still be held on the others).
    pub(crate) async fn force_release(
        &self,
        key: &Key,
        reason: &str,
    ) -> Result<Option<LockInfo>, LockError> {
        let nodes = &self.nodes;
        let outcomes: Vec<NodeOutcome> = nodes
            .fan_out(&nodes.all(), self.timeout, |node| async move {
                node.force_release_raw(key, reason).await
            })
            .await
            .into_iter()
            .map(holder_outcome)
            .collect();
        let evicted = outcomes
            .iter()
            .any(|o| matches!(o, NodeOutcome::Held(_)))
            .then(|| holder_of(&outcomes));
        if let Some(token) = evicted.as_ref().and_then(|holder| holder.fencing_token) {
            // A server that held the key now counts one past its own token;
            // one that did not may lag behind the highest.
            let lagging = indices(&outcomes, |outcome| match outcome {
                NodeOutcome::Held(info) => info.fencing_token.is_none_or(|t| t < token),
                NodeOutcome::Free => true,
                _ => false,
            });
            self.raise_counters(key, LockKind::Exclusive, token, &lagging, self.timeout)
                .await;
        }
        let answered = outcomes.iter().filter(|o| !o.is_unknown()).count();
        if answered < nodes.quorum() {
            let note = "deleted only on the servers that answered; force release again";
            return Err(LockError::unavailable(
                NAME,
                self.report("force_release", key, outcomes, Some(note.into())),
            ));
        }
        Ok(evicted)
    }

    /// Whether a majority of `outcomes` agree on one holder.
    fn verdict(&self, outcomes: &[NodeOutcome]) -> Verdict {
        let owner = holder_of(outcomes).owner_hint;
        let on = indices(
            outcomes,
            |o| matches!(o, NodeOutcome::Held(info) if owner.is_some() && info.owner_hint == owner),
        );
        let unknown = outcomes.iter().filter(|o| o.is_unknown()).count();
        let quorum = self.nodes.quorum();
        if on.len() >= quorum {
            // Only the majority holder's servers describe it.
            let theirs: Vec<NodeOutcome> = on.iter().map(|&i| outcomes[i].clone()).collect();
            Verdict::Held(holder_of(&theirs), on)
        } else if on.len() + unknown < quorum {
            Verdict::Free
        } else {
            Verdict::Unknown
        }
    }
}

/// One server's answer about a holder.
fn holder_outcome(answer: Result<Option<LockInfo>, LockError>) -> NodeOutcome {
    match answer {
        Ok(Some(info)) => NodeOutcome::Held(info),
        Ok(None) => NodeOutcome::Free,
        Err(error) => NodeOutcome::from_error(error),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use leasehold_core::FencingToken;

    use super::*;
    use crate::error::tests::held;

    #[test]
    fn the_majority_holder_is_reported_with_its_highest_token_and_least_time() {
        let info = holder_of(&[
            held("aaaa", 3, 900),
            NodeOutcome::Unreachable("x".into()),
            held("aaaa", 5, 700),
            held("bbbb", 9, 100),
        ]);
        assert_eq!(info.owner_hint.as_deref(), Some("aaaa"));
        assert_eq!(info.fencing_token, Some(FencingToken(9)));
        assert_eq!(info.remaining, Some(Duration::from_millis(100)));
    }

    #[test]
    fn the_majority_holders_label_and_earliest_grant_are_reported() {
        let at = |secs| Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs));
        let labelled = |owner, label: &str, secs| match held(owner, 1, 100) {
            NodeOutcome::Held(info) => NodeOutcome::Held(
                info.with_metadata(Some(label.into()))
                    .with_acquired_at(at(secs)),
            ),
            other => other,
        };
        let info = holder_of(&[
            labelled("bbbb", "other", 1),
            labelled("aaaa", "web-1", 7),
            labelled("aaaa", "web-1", 5),
        ]);
        assert_eq!(info.metadata.as_deref(), Some("web-1"));
        assert_eq!(info.acquired_at, at(5));
    }
}
