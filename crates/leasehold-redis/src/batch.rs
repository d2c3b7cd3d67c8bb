//! Group commit: the grants and releases that one node's callers ask for
//! while earlier ones are on the wire go to the server together, as one
//! [`BATCH_SRC`](crate::scripts::BATCH_SRC) call per hash slot, each caller
//! getting its own answer.
//!
//! A caller that finds fewer than [`MAX_IN_FLIGHT`] calls on the wire
//! starts one at once, from its own future, so a lone caller waits for
//! nobody and for no task; callers that arrive while that many are out
//! queue, and the next call to leave takes everyone queued (up to
//! [`MAX_PER_CALL`]) on a task of its own. Under load the script calls,
//! their parsing on both ends and their round trips are shared; the server
//! runs each ask exactly as the one-key scripts would, in the order asked.
//!
//! Cancel safety: a queued ask is sent whether or not its caller still
//! waits. A grant whose caller has gone (dropped, or timed out) is not
//! lost: its [`Claim`] gives the key back as soon as the answer is dropped
//! unread, and a caller that leaves while its own call is out gives its
//! grant back at once; either way the give-back runs behind the grant on
//! the same connection.

use std::sync::Mutex;

use leasehold_core::{FencingToken, Key, LockError, OwnerToken};
use tokio::sync::oneshot;

use crate::replicas::Confirmation;
use crate::scripts;
use crate::store::{AcquireOutcome, Ownership, RedisNode, holder_info};

/// Script calls a node keeps on the wire at once; further asks queue for
/// the next call. Several, so a handful of callers rarely wait behind each
/// other; few, so a crowd shares calls.
pub(crate) const MAX_IN_FLIGHT: usize = 2;

/// Asks per script call (a batch's keys all go in one call's `KEYS`).
pub(crate) const MAX_PER_CALL: usize = 256;

/// An acquisition's answer and, with a grant, the claim on it.
pub(crate) type Granted = Result<(AcquireOutcome, Confirmation, Option<Claim>), LockError>;

/// One caller's step.
pub(crate) enum Ask {
    Acquire {
        key: Key,
        owner: OwnerToken,
        ttl_ms: u64,
        reply: oneshot::Sender<Granted>,
    },
    Release {
        key: Key,
        owner: OwnerToken,
        /// `None`: nobody waits for the answer (a claim giving a key back).
        reply: Option<oneshot::Sender<Result<Ownership, LockError>>>,
    },
}

impl Ask {
    fn key(&self) -> &Key {
        match self {
            Ask::Acquire { key, .. } | Ask::Release { key, .. } => key,
        }
    }

    /// Tells the asker the call failed. An acquisition whose call may have
    /// run (`Unavailable`: no answer, or a lost connection) is given back
    /// as well, behind it on the same connection, whether or not its caller
    /// is still there (a frozen server that wakes runs the grant, then
    /// this).
    fn fail(self, error: &LockError, node: &RedisNode) {
        let backend = node.backend;
        let error = copy(error, backend);
        match self {
            Ask::Acquire {
                key, owner, reply, ..
            } => {
                if matches!(error, LockError::Unavailable { .. }) {
                    node.submit(Ask::Release {
                        key,
                        owner,
                        reply: None,
                    });
                }
                let _ = reply.send(Err(error));
            }
            Ask::Release { reply, .. } => {
                if let Some(reply) = reply {
                    let _ = reply.send(Err(error));
                }
            }
        }
    }
}

/// A grant not yet taken by its caller: dropped unclaimed, it gives the
/// key back (an ask queued behind the grant, so it runs after it).
pub(crate) struct Claim {
    give_back: Option<(RedisNode, Key, OwnerToken)>,
}

impl Claim {
    /// The caller has the grant: nothing to give back.
    pub(crate) fn take(mut self) {
        self.give_back = None;
    }

    /// Gives the key back now (the grant is refused after all).
    pub(crate) fn give_back(self) {
        drop(self);
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some((node, key, owner)) = self.give_back.take() {
            tracing::debug!(%key, owner = %owner.short(), "giving back a grant its caller did not take");
            node.submit(Ask::Release {
                key,
                owner,
                reply: None,
            });
        }
    }
}

/// A node's queue of asks not yet sent, shared by its clones.
#[derive(Debug, Default)]
pub(crate) struct Batches {
    state: Mutex<Queue>,
}

#[derive(Default)]
struct Queue {
    asks: Vec<Ask>,
    in_flight: usize,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("asks", &self.asks.len())
            .field("in_flight", &self.in_flight)
            .finish()
    }
}

impl Batches {
    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The next asks to send (`None`: the queue is empty, and the sender's
/// place on the wire is given up in the same step, so no ask is left
/// queued with nobody to send it).
fn next_call(queue: &mut Queue) -> Option<Vec<Ask>> {
    if queue.asks.is_empty() {
        queue.in_flight -= 1;
        return None;
    }
    let n = queue.asks.len().min(MAX_PER_CALL);
    Some(queue.asks.drain(..n).collect())
}

/// A sender's place on the wire. Normally given up by [`next_call`]; if
/// the sender is dropped instead (its runtime shut down), the place is
/// given up here, and when no sender is left the queued asks are failed
/// (their callers see `Unavailable`) rather than left waiting.
struct Place {
    node: RedisNode,
    held: bool,
}

impl Drop for Place {
    fn drop(&mut self) {
        if !self.held {
            return;
        }
        let stranded = {
            let mut queue = self.node.batches.queue();
            queue.in_flight -= 1;
            if queue.in_flight == 0 {
                std::mem::take(&mut queue.asks)
            } else {
                Vec::new()
            }
        };
        let error = LockError::unavailable(
            self.node.backend,
            "the task sending this call stopped (its tokio runtime shut down)",
        );
        for ask in stranded {
            ask.fail(&error, &self.node);
        }
    }
}

impl RedisNode {
    /// Queues `ask` and, when fewer than [`MAX_IN_FLIGHT`] calls are out,
    /// sends it at once from the caller's own future: a lone caller spawns
    /// no task and waits for no other thread (each hand-off was a thread
    /// wake-up: `redis_lock_cost`'s thread runs). Asks that queued behind
    /// it go on in a task of their own, so a caller carries only its own.
    /// Otherwise it returns at once, and a call already out takes the ask
    /// next.
    ///
    /// Cancel safety: a caller dropped (or timed out) while its call is out
    /// gives its grant back, an ask queued behind the call on the same
    /// connection; anything else queued goes on without it.
    pub(crate) async fn ask(&self, ask: Ask) {
        let give_back = match &ask {
            Ask::Acquire { key, owner, .. } => Some((key.clone(), *owner)),
            Ask::Release { .. } => None,
        };
        let Some(first) = self.enqueue(ask) else {
            return;
        };
        let mut call = InlineCall {
            node: self,
            give_back,
        };
        self.send(first).await;
        // Answered: the answer's own claim covers the grant from here.
        call.give_back = None;
    }

    /// Queues `ask`, and starts a call with the queue on a task of its own
    /// if fewer than [`MAX_IN_FLIGHT`] are out: for asks nobody waits on
    /// (a grant given back). Never waits. Outside a tokio runtime nothing
    /// can be sent: the ask fails at once.
    pub(crate) fn submit(&self, ask: Ask) {
        if let Some(first) = self.enqueue(ask) {
            let place = Place {
                node: self.clone(),
                held: true,
            };
            spawn_sender(place, first);
        }
    }

    /// Queues `ask`; with fewer than [`MAX_IN_FLIGHT`] calls out, takes a
    /// place on the wire and returns what to send in it.
    fn enqueue(&self, ask: Ask) -> Option<Vec<Ask>> {
        let mut queue = self.batches.queue();
        queue.asks.push(ask);
        if queue.in_flight >= MAX_IN_FLIGHT {
            return None;
        }
        queue.in_flight += 1;
        next_call(&mut queue)
    }

    /// One script call per hash slot for `asks`, answering each.
    async fn send(&self, asks: Vec<Ask>) {
        let asks: Vec<(String, Ask)> = asks
            .into_iter()
            .map(|ask| (self.layout().lock_key(ask.key()), ask))
            .collect();
        // Outside a cluster every key is on the one server: one call, with
        // no grouping or join to pay for. Boxed, as `join_all` boxes: the
        // call's future is large, and inline it made every future that
        // holds this one larger, and every move of them a copy (callgrind:
        // 23,000 more instructions per lock+unlock, all in `memcpy`).
        if !self.is_cluster() {
            return Box::pin(self.send_one_slot(asks)).await;
        }
        let names: Vec<String> = asks.iter().map(|(name, _)| name.clone()).collect();
        let groups = self.slot_groups(&names);
        let mut asks: Vec<Option<(String, Ask)>> = asks.into_iter().map(Some).collect();
        let calls = groups.into_iter().map(|group| {
            let asks: Vec<(String, Ask)> = group.iter().filter_map(|&i| asks[i].take()).collect();
            self.send_one_slot(asks)
        });
        futures_util::future::join_all(calls).await;
    }

    /// One script call for `asks` (each with its lock key), all in one
    /// hash slot.
    async fn send_one_slot(&self, asks: Vec<(String, Ask)>) {
        let Some((slot_key, _)) = asks.first() else {
            return;
        };
        let slot_key = slot_key.clone();
        let mut invocation = scripts::batch().prepare_invoke();
        invocation.arg(self.holder());
        let asks: Vec<Ask> = asks
            .into_iter()
            .map(|(lock, ask)| {
                let key = ask.key();
                invocation.key(lock).key(self.layout().fence_key(key));
                match &ask {
                    Ask::Acquire { owner, ttl_ms, .. } => {
                        invocation.arg("a").arg(owner.to_hex()).arg(*ttl_ms);
                    }
                    Ask::Release { owner, .. } => {
                        invocation
                            .arg("r")
                            .arg(owner.to_hex())
                            .arg(self.release_channel(key));
                    }
                }
                ask
            })
            .collect();
        let answered: Result<(String, Confirmation), LockError> =
            self.invoke(&slot_key, invocation).await;
        let (reply, confirmed) = match answered {
            Ok(answer) => answer,
            Err(error) => {
                for ask in asks {
                    ask.fail(&error, self);
                }
                return;
            }
        };
        let Some(replies) = parse_answers(&reply, asks.len()) else {
            let error = LockError::backend(
                self.backend,
                format!(
                    "the batch script's answer to {} asks is not one line of four fields per ask",
                    asks.len()
                ),
            );
            for ask in asks {
                ask.fail(&error, self);
            }
            return;
        };
        for (ask, (won, counter, pttl, prefix)) in asks.into_iter().zip(replies) {
            match ask {
                Ask::Acquire {
                    key, owner, reply, ..
                } => {
                    let answer = if won == 1 {
                        let token = FencingToken(counter.max(0) as u64);
                        let claim = Claim {
                            give_back: Some((self.clone(), key, owner)),
                        };
                        (AcquireOutcome::Acquired(token), confirmed, Some(claim))
                    } else {
                        let held = holder_info(prefix.to_owned(), pttl, counter);
                        (AcquireOutcome::Held(held), confirmed, None)
                    };
                    // Unsent, the answer (and its claim) is dropped here,
                    // giving the grant back.
                    let _ = reply.send(Ok(answer));
                }
                Ask::Release { reply, .. } => {
                    if let Some(reply) = reply {
                        let _ = reply.send(Ok(Ownership::from_reply(won)));
                    }
                }
            }
        }
    }
}

/// The batch script's answer ([`BATCH_SRC`](crate::scripts::BATCH_SRC)):
/// per ask a line `result counter pttl owner_prefix`, as numbers and the
/// (possibly empty) prefix; `None` unless there is one well-formed line
/// per ask.
fn parse_answers(reply: &str, asks: usize) -> Option<Vec<(i64, i64, i64, &str)>> {
    let answers = reply
        .split('\n')
        .map(|line| {
            let mut fields = line.splitn(4, ' ');
            Some((
                fields.next()?.parse().ok()?,
                fields.next()?.parse().ok()?,
                fields.next()?.parse().ok()?,
                fields.next()?,
            ))
        })
        .collect::<Option<Vec<_>>>()?;
    (answers.len() == asks).then_some(answers)
}

/// A call sent from its caller's future ([`RedisNode::ask`]), holding its
/// place on the wire. When it ends, answered or dropped, what queued behind
/// it goes on in a task of its own, or the place is given up; dropped
/// unanswered, it first gives its grant back.
struct InlineCall<'a> {
    node: &'a RedisNode,
    /// The key and owner of the acquisition in the call, until answered.
    give_back: Option<(Key, OwnerToken)>,
}

impl Drop for InlineCall<'_> {
    fn drop(&mut self) {
        if let Some((key, owner)) = self.give_back.take() {
            tracing::debug!(%key, owner = %owner.short(), "giving back a grant whose caller left mid-call");
            self.node.submit(Ask::Release {
                key,
                owner,
                reply: None,
            });
        }
        if let Some(more) = next_call(&mut self.node.batches.queue()) {
            let place = Place {
                node: self.node.clone(),
                held: true,
            };
            spawn_sender(place, more);
        }
    }
}

/// Sends `asks` and what queues after them on a task of their own; outside
/// a tokio runtime they fail at once.
fn spawn_sender(place: Place, asks: Vec<Ask>) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn(send_until_empty(place, asks));
        }
        Err(_) => {
            let error =
                LockError::unavailable(place.node.backend, "called outside a tokio runtime");
            for ask in asks {
                ask.fail(&error, &place.node);
            }
            drop(place);
        }
    }
}

/// Sends `asks`, then whatever queued meanwhile, until the queue is empty.
async fn send_until_empty(mut place: Place, mut asks: Vec<Ask>) {
    loop {
        place.node.send(asks).await;
        let next = next_call(&mut place.node.batches.queue());
        match next {
            Some(more) => asks = more,
            None => {
                place.held = false;
                return;
            }
        }
    }
}

/// `error` for another asker of the same failed call.
fn copy(error: &LockError, backend: &'static str) -> LockError {
    match error {
        LockError::Unavailable { source, .. } => {
            LockError::unavailable(backend, source.to_string())
        }
        other => LockError::backend(backend, other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_answers;

    #[test]
    fn a_batch_answer_is_one_line_of_four_fields_per_ask() {
        assert_eq!(
            parse_answers("1 7 -1 \n0 6 2500 ab12cd34\n-1 0 0 ", 3),
            Some(vec![
                (1, 7, -1, ""),
                (0, 6, 2500, "ab12cd34"),
                (-1, 0, 0, "")
            ])
        );
        // Too few or too many lines, a missing field, a field not a number.
        assert_eq!(parse_answers("1 7 -1 ", 2), None);
        assert_eq!(parse_answers("1 7 -1 \n1 8 -1 ", 1), None);
        assert_eq!(parse_answers("1 7 -1", 1), None);
        assert_eq!(parse_answers("1 x -1 ", 1), None);
        assert_eq!(parse_answers("", 1), None);
    }
}
