//! The Redlock algorithm over the [`Nodes`](crate::store::Nodes): every step
//! goes to all N servers at once, and a quorum (N/2+1) of their answers
//! decides. Validity counts from the instant the requests were sent.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use leasehold_core::{
    Capabilities, Drift, FencingToken, Key, Lease, LockError, LockKind, OwnerToken, SharedClock,
};
use leasehold_redis::Ownership;
use tokio::time::Instant;

use crate::error::{NodeOutcome, QuorumReport, holder_of};
use crate::store::Nodes;
use crate::{MIN_TTL, NAME};

/// What every clone of a Redlock lease shares (its [`Lease::handle`]): that
/// a release of it already reached a quorum. That release returns while its
/// deletes on the remaining servers may still be landing, so a second
/// release can find the key still ours on a minority and free on the rest,
/// which without this mark reads as a lease that lapsed (`Lost`) instead of
/// the `NotHeld` a second release is.
#[derive(Debug, Default)]
struct Released(AtomicBool);

/// The Redlock steps over N servers, with the timings they run on.
#[derive(Debug)]
pub(crate) struct Quorum {
    pub(crate) nodes: Nodes,
    /// The per-call timeout: `inspect`, the admin steps, and the ceiling of
    /// the per-node one.
    pub(crate) timeout: Duration,
    node_timeout_factor: f64,
    min_node_timeout: Duration,
    drift: Drift,
    clock: SharedClock,
}

impl Quorum {
    /// The steps over `nodes`; `node_timeout_factor` must be below 1 (the
    /// backend checks it at connect).
    pub(crate) fn new(
        nodes: Nodes,
        timeout: Duration,
        node_timeout_factor: f64,
        min_node_timeout: Duration,
        drift: Drift,
        clock: SharedClock,
    ) -> Self {
        Quorum {
            nodes,
            timeout,
            node_timeout_factor,
            min_node_timeout,
            drift,
            clock,
        }
    }

    /// Each server's share of an operation on a lease of `ttl`:
    /// `ttl × factor`, clamped to the floor and the per-call timeout. Never
    /// panics: the factor is below 1, so the product is at most `ttl`.
    pub(crate) fn node_timeout(&self, ttl: Duration) -> Duration {
        ttl.mul_f64(self.node_timeout_factor)
            .max(self.min_node_timeout)
            .min(self.timeout)
    }

    /// At least [`MIN_TTL`], at most one year, through
    /// [`Capabilities::check_ttl`]: the same bounds and message as every
    /// backend, and no `Instant + ttl` that could overflow.
    pub(crate) fn check_ttl(&self, ttl: Duration) -> Result<(), LockError> {
        Capabilities::new().min_ttl(MIN_TTL).check_ttl(NAME, ttl)
    }

    /// One acquisition attempt at a grant of `kind` on every server (see
    /// the crate docs); the caller checked the TTL and the kind. A refused
    /// writer attempt that names a `waiter` registers it as waiting on the
    /// servers that refused. Not cancel safe by itself: the backend's
    /// `try_acquire` runs it through [`leasehold_core::cancel_safe`].
    pub(crate) async fn attempt(
        &self,
        key: &Key,
        kind: LockKind,
        ttl: Duration,
        waiter: Option<OwnerToken>,
    ) -> Result<Lease, LockError> {
        let nodes = &self.nodes;
        let owner = OwnerToken::generate();
        let per_node = self.node_timeout(ttl);
        let sent_at = self.clock.now();
        let outcomes: Vec<NodeOutcome> = nodes
            .fan_out(&nodes.all(), per_node, |node| async move {
                node.acquire_kind_raw(key, kind, &owner, ttl, waiter.as_ref())
                    .await
            })
            .await
            .into_iter()
            .map(NodeOutcome::from_acquire)
            .collect();
        let quorum = nodes.quorum();
        let acquired = outcomes
            .iter()
            .filter(|o| matches!(o, NodeOutcome::Acquired(_)))
            .count();
        let token = outcomes
            .iter()
            .filter_map(|o| match o {
                NodeOutcome::Acquired(counter) => Some(*counter),
                _ => None,
            })
            .max()
            .unwrap_or(FencingToken(0));
        let mut note = None;
        if acquired >= quorum {
            let lagging = indices(&outcomes, |outcome| match outcome {
                NodeOutcome::Acquired(counter) => *counter < token,
                NodeOutcome::Held(info) => info.fencing_token.is_some_and(|c| c < token),
                _ => false,
            });
            self.raise_counters(key, kind, token, &lagging, per_node)
                .await;
            let lease = Lease::new(NAME, key.clone(), owner, token, sent_at, ttl, self.drift)
                .with_kind(kind)
                .with_handle(Arc::new(Released::default()));
            let now = self.clock.now();
            if lease.valid_until() > now {
                tracing::debug!(%key, owner = %owner.short(), %token, acquired, "redlock acquired");
                return Ok(lease);
            }
            note = Some(format!(
                "acquired on {acquired} servers, but only after {:?}: no validity left of a ttl of {ttl:?}",
                now - sent_at
            ));
        }
        // Give back what this attempt may hold: the servers that granted it
        // (awaited, so nothing is left locked on a server that answers) and
        // those that did not answer, which may have set the key (in the
        // background: they would only cost another timeout).
        let granted: Vec<usize> = indices(&outcomes, |o| matches!(o, NodeOutcome::Acquired(_)));
        let unknown: Vec<usize> = indices(&outcomes, NodeOutcome::is_unknown);
        if !unknown.is_empty() {
            let (nodes, key) = (self.nodes.clone(), key.clone());
            tokio::spawn(async move {
                let released = nodes
                    .release_on(&unknown, &key, kind, &owner, per_node)
                    .await;
                tracing::debug!(%key, owner = %owner.short(), ?released, "redlock gave back a failed attempt on silent servers");
            });
        }
        if !granted.is_empty() {
            let released = nodes
                .release_on(&granted, key, kind, &owner, per_node)
                .await;
            tracing::debug!(%key, owner = %owner.short(), acquired, ?released, "redlock attempt failed; gave back its keys");
        }
        let held = outcomes
            .iter()
            .filter(|o| matches!(o, NodeOutcome::Held(_)))
            .count();
        let answered = outcomes.iter().filter(|o| !o.is_unknown()).count();
        if note.is_none() && held >= quorum {
            let mut holder = holder_of(&outcomes);
            holder.metadata = Some(self.report("acquire", key, outcomes, None).to_string());
            return Err(LockError::contended(NAME, key.as_str(), Some(holder)));
        }
        if note.is_some() || answered < quorum {
            let note = note.or_else(|| Some("too few servers answered".into()));
            return Err(LockError::unavailable(
                NAME,
                self.report("acquire", key, outcomes, note),
            ));
        }
        // Enough servers answered, but the key is held on some of them and
        // not on a majority (a split vote, or a minority left-over): contention.
        let mut holder = holder_of(&outcomes);
        let note = Some("no owner has a majority".to_owned());
        holder.metadata = Some(self.report("acquire", key, outcomes, note).to_string());
        Err(LockError::contended(NAME, key.as_str(), Some(holder)))
    }

    /// Raises the counters of `kind`'s lock on the servers `lagging`
    /// (indices), which are below `token`, to it (so a later, different
    /// quorum counts past it). Best effort within `per_node`.
    pub(crate) async fn raise_counters(
        &self,
        key: &Key,
        kind: LockKind,
        token: FencingToken,
        lagging: &[usize],
        per_node: Duration,
    ) {
        if lagging.is_empty() {
            return;
        }
        let nodes = &self.nodes;
        let results = nodes
            .fan_out(lagging, per_node, |node| async move {
                node.raise_kind_raw(key, kind, token).await
            })
            .await;
        for (&i, result) in lagging.iter().zip(results) {
            if let Err(error) = result {
                tracing::debug!(%key, server = %nodes.addr(i), %error, "redlock counter raise failed");
            }
        }
    }

    /// A quorum of compare-and-`PEXPIRE`s, validity from the send instant.
    pub(crate) async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<Lease, LockError> {
        self.check_ttl(ttl)?;
        let nodes = &self.nodes;
        let per_node = self.node_timeout(ttl);
        let (key, kind, owner) = (lease.key(), lease.kind(), lease.owner());
        let sent_at = self.clock.now();
        let outcomes = nodes
            .fan_out(&nodes.all(), per_node, |node| async move {
                node.extend_kind_raw(key, kind, owner, ttl).await
            })
            .await
            .into_iter()
            .map(NodeOutcome::from_ownership)
            .collect();
        self.renewal(lease, outcomes, sent_at, ttl)
    }

    /// One batch script call per server, all servers at once; each lease's
    /// result from every server's answer for it. A TTL out of range fails
    /// its own renewal; fewer than a quorum of servers answering the batch
    /// fails the whole call.
    pub(crate) async fn extend_many(
        &self,
        renewals: &[(Lease, Duration)],
    ) -> Result<Vec<Result<Lease, LockError>>, LockError> {
        let nodes = &self.nodes;
        let checked: Vec<Result<(), LockError>> = renewals
            .iter()
            .map(|(_, ttl)| self.check_ttl(*ttl))
            .collect();
        let valid: Vec<_> = renewals
            .iter()
            .zip(&checked)
            .filter(|(_, checked)| checked.is_ok())
            .map(|((lease, ttl), _)| (lease.key(), lease.owner(), *ttl))
            .collect();
        let Some(shortest) = valid.iter().map(|(_, _, ttl)| *ttl).min() else {
            // Every TTL was out of range: nothing to send.
            return Ok(checked
                .into_iter()
                .filter_map(Result::err)
                .map(Err)
                .collect());
        };
        let per_node = self.node_timeout(shortest);
        let raw = &valid;
        let sent_at = self.clock.now();
        let per_server: Vec<Result<Vec<Ownership>, NodeOutcome>> = nodes
            .fan_out(&nodes.all(), per_node, |node| async move {
                node.extend_many_raw(raw).await
            })
            .await
            .into_iter()
            .map(|r| r.map_err(NodeOutcome::from_error))
            .collect();
        let answered = per_server.iter().filter(|r| r.is_ok()).count();
        if answered < nodes.quorum() {
            let outcomes = per_server
                .into_iter()
                .map(|r| r.map_or_else(|outcome| outcome, |_| NodeOutcome::Answered))
                .collect();
            let note = Some(format!("a batch of {} renewals", valid.len()));
            return Err(LockError::unavailable(
                NAME,
                nodes.report("extend_many", "", outcomes, note),
            ));
        }
        let mut j = 0;
        Ok(renewals
            .iter()
            .zip(checked)
            .map(|((lease, ttl), checked)| {
                checked?;
                let outcomes = per_server
                    .iter()
                    .map(|server| match server {
                        Ok(found) => match found.get(j) {
                            Some(found) => NodeOutcome::from_ownership(Ok(*found)),
                            None => NodeOutcome::Failed("missing extend result".into()),
                        },
                        Err(outcome) => outcome.clone(),
                    })
                    .collect();
                j += 1;
                self.renewal(lease, outcomes, sent_at, *ttl)
            })
            .collect())
    }

    /// The outcome of a renewal from every server's answer.
    fn renewal(
        &self,
        lease: &Lease,
        outcomes: Vec<NodeOutcome>,
        sent_at: Instant,
        ttl: Duration,
    ) -> Result<Lease, LockError> {
        let quorum = self.nodes.quorum();
        let ours = outcomes.iter().filter(|o| **o == NodeOutcome::Ours).count();
        let not_ours = outcomes
            .iter()
            .filter(|o| matches!(o, NodeOutcome::Free | NodeOutcome::Other))
            .count();
        let key = lease.key();
        if ours >= quorum {
            let renewed = lease.renewed(sent_at, ttl, self.drift);
            if renewed.valid_until() > self.clock.now() {
                return Ok(renewed);
            }
            let note = format!(
                "renewed on a quorum, but only after {:?}: no validity left of a ttl of {ttl:?}",
                self.clock.now() - sent_at
            );
            return Err(LockError::unavailable(
                NAME,
                self.report("extend", key, outcomes, Some(note)),
            ));
        }
        if not_ours >= quorum {
            let report = self.report("extend", key, outcomes, None);
            return Err(LockError::lost(
                NAME,
                key.as_str(),
                format!("the key is no longer ours on a majority of servers: {report}"),
            ));
        }
        Err(LockError::unavailable(
            NAME,
            self.report("extend", key, outcomes, None),
        ))
    }

    /// Compare-and-delete on every server: `Ok` as soon as a majority
    /// confirms, `NotHeld` when none held it or when this lease (any clone
    /// of it) was already released, `Lost` when only a minority still did.
    /// A second release still sends its deletes, so it clears what a first
    /// release's unanswered deletes may have left. Each server gets the whole per-call timeout, not the
    /// acquisition's TTL-sized share: a release has no validity to protect,
    /// and a loaded server that answers in 30 ms must not turn a release into
    /// `Unavailable`. Returning on a majority keeps one slow or paused server
    /// from slowing every release down to that timeout.
    pub(crate) async fn release(&self, lease: &Lease) -> Result<(), LockError> {
        let nodes = &self.nodes;
        let quorum = nodes.quorum();
        let (key, owner) = (lease.key(), lease.owner());
        let outcomes = nodes
            .release_until(key, lease.kind(), owner, self.timeout, quorum)
            .await;
        let ours = outcomes.iter().filter(|o| **o == NodeOutcome::Ours).count();
        let unknown = outcomes.iter().filter(|o| o.is_unknown()).count();
        let not_ours = outcomes.len() - ours - unknown;
        let released = lease.handle::<Released>();
        if ours >= quorum {
            if let Some(released) = released {
                released.0.store(true, Ordering::Release);
            }
            tracing::debug!(%key, owner = %owner.short(), ours, "redlock released");
            return Ok(());
        }
        // Read after our own deletes answered, so a release of a clone that
        // finished meanwhile counts too.
        if released.is_some_and(|released| released.0.load(Ordering::Acquire)) {
            tracing::debug!(%key, owner = %owner.short(), ours, "redlock lease was already released");
            return Err(LockError::not_held(NAME, key.as_str()));
        }
        if unknown == 0 || not_ours >= quorum {
            if ours == 0 {
                return Err(LockError::not_held(NAME, key.as_str()));
            }
            let report = self.report("release", key, outcomes, None);
            return Err(LockError::lost(
                NAME,
                key.as_str(),
                format!("the lease had lapsed on a majority of servers: {report}"),
            ));
        }
        Err(LockError::unavailable(
            NAME,
            self.report("release", key, outcomes, None),
        ))
    }

    pub(crate) fn report(
        &self,
        step: &'static str,
        key: &Key,
        outcomes: Vec<NodeOutcome>,
        note: Option<String>,
    ) -> QuorumReport {
        self.nodes.report(step, key.as_str(), outcomes, note)
    }
}

/// The positions of the items (outcomes, scans) that match `pred`.
pub(crate) fn indices<T>(items: &[T], pred: impl Fn(&T) -> bool) -> Vec<usize> {
    (0..items.len()).filter(|&i| pred(&items[i])).collect()
}
