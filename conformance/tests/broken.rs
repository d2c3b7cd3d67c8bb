//! Mutation testing of the conformance suite: a family of deliberately broken
//! backends, each a small in-memory backend with exactly one bug, must each
//! fail the suite, and the same backend without a bug (and the real
//! `MemoryBackend`) must pass it. A suite that passes a broken backend proves
//! nothing about a correct one.
//!
//! Each bug also names the case written to catch it; the test checks that
//! this case is among those that failed, and prints every case that did.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use leasehold_conformance::{CaseReport, Suite, Verdict, run_cases};
use leasehold_core::{
    Capabilities, Drift, Fencing, FencingToken, Key, Lease, LockBackend, LockError, LockInfo,
    MemoryBackend, OwnerToken, RetryPolicy, async_trait, wait_for_lock,
};
use tokio::time::Instant;

const NAME: &str = "toy";

/// How long a case may run before it counts as a hang. Short, so that a bug
/// that hangs a case (an acquire that ignores its deadline) does not stall
/// the run; every case finishes far sooner on a correct backend.
const CASE_TIMEOUT: Duration = Duration::from_secs(40);

/// How long the delaying bugs hold an answer back: far above the suite's
/// 5 ms validity slack, far below every TTL the cases use.
const REPLY_DELAY: Duration = Duration::from_millis(50);

/// Keys longer than this are cut to it by [`Bug::KeysTruncated`] (a
/// `VARCHAR(255)` column).
const TRUNCATED_KEY_BYTES: usize = 255;

/// One deliberate bug.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bug {
    /// `try_acquire` grants a held key.
    NoExclusion,
    /// `release` deletes the lock whoever's lease it is given.
    ReleaseByAnyOwner,
    /// `extend` renews the lock whoever's lease it is given.
    ExtendByAnyOwner,
    /// Every fencing token is 1.
    ConstantTokens,
    /// A key's token counter lives in its lock entry and is deleted with it:
    /// after a release tokens start at 1 again.
    TokensResetAfterRelease,
    /// Locks never expire.
    TtlIgnored,
    /// Keys are cut to their first 255 bytes.
    KeysTruncated,
    /// Keys are lower-cased.
    KeysCaseFolded,
    /// `extend` answers with a renewed lease but does not renew the lock.
    NoOpExtend,
    /// `acquire` waits until it gets the key, whatever its deadline.
    DeadlineIgnored,
    /// `acquire` with a zero deadline gives `Timeout` without trying.
    ZeroWaitNeverTries,
    /// The answer is delayed, and validity counted from when it arrived.
    ValidityFromReply,
    /// `extend` of a lease whose key is free re-creates the lock, even though
    /// someone else took and released the key in between.
    ExtendRevives,
    /// The grant is applied, then the answer is delayed with no cleanup: a
    /// caller that drops the acquisition meanwhile strands the lock until
    /// its TTL ends (a request on the wire, no `cancel_safe`).
    StrandsDroppedGrants,
}

impl Bug {
    const ALL: [Bug; 14] = [
        Bug::NoExclusion,
        Bug::ReleaseByAnyOwner,
        Bug::ExtendByAnyOwner,
        Bug::ConstantTokens,
        Bug::TokensResetAfterRelease,
        Bug::TtlIgnored,
        Bug::KeysTruncated,
        Bug::KeysCaseFolded,
        Bug::NoOpExtend,
        Bug::DeadlineIgnored,
        Bug::ZeroWaitNeverTries,
        Bug::ValidityFromReply,
        Bug::ExtendRevives,
        Bug::StrandsDroppedGrants,
    ];

    /// The case written to catch this bug (others may catch it too).
    fn caught_by(self) -> &'static str {
        match self {
            Bug::NoExclusion => "try_acquire_on_held_key_is_contended",
            Bug::ReleaseByAnyOwner => "release_by_non_owner_is_refused",
            Bug::ExtendByAnyOwner => "extend_by_non_owner_is_refused",
            Bug::ConstantTokens | Bug::TokensResetAfterRelease => {
                "fencing_tokens_strictly_increase"
            }
            Bug::TtlIgnored => "holder_that_stops_renewing_loses_lock_after_ttl",
            Bug::KeysTruncated => "long_keys_differing_in_the_last_byte_stay_distinct",
            Bug::KeysCaseFolded => "keys_differing_in_case_whitespace_or_escaping_stay_distinct",
            Bug::NoOpExtend => "extend_keeps_the_lock",
            Bug::DeadlineIgnored => "acquire_times_out_with_timeout",
            Bug::ZeroWaitNeverTries => "zero_wait_acquisition_of_a_free_key_succeeds",
            Bug::ValidityFromReply => "valid_until_is_never_later_than_call_start_plus_ttl",
            Bug::ExtendRevives => "extend_after_take_and_release_is_lost",
            Bug::StrandsDroppedGrants => "dropped_acquisition_leaves_the_key_free",
        }
    }
}

#[derive(Debug)]
struct Held {
    owner: OwnerToken,
    token: u64,
    expires: Instant,
}

#[derive(Debug, Default)]
struct State {
    holders: HashMap<String, Held>,
    last_token: u64,
}

/// A small in-memory backend, correct without a bug (the same behaviour as
/// `MemoryBackend`, but polled), broken by exactly one with it.
#[derive(Debug)]
struct Toy {
    bug: Option<Bug>,
    state: Mutex<State>,
}

const NO_DRIFT: Drift = Drift {
    factor: 0.0,
    fixed: Duration::ZERO,
};

impl Toy {
    fn new(bug: Option<Bug>) -> Self {
        Toy {
            bug,
            state: Mutex::new(State::default()),
        }
    }

    fn has(&self, bug: Bug) -> bool {
        self.bug == Some(bug)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The store's name for `key`.
    fn encode(&self, key: &Key) -> String {
        let name = key.as_str();
        if self.has(Bug::KeysCaseFolded) {
            return name.to_lowercase();
        }
        if self.has(Bug::KeysTruncated) && name.len() > TRUNCATED_KEY_BYTES {
            let mut end = TRUNCATED_KEY_BYTES;
            while !name.is_char_boundary(end) {
                end -= 1;
            }
            return name[..end].to_owned();
        }
        name.to_owned()
    }

    fn live(&self, held: &Held, now: Instant) -> bool {
        self.has(Bug::TtlIgnored) || held.expires > now
    }

    /// The instant a lease's validity counts from, given when the store
    /// applied the call; delays the answer where the bug says so.
    async fn answer_at(&self, applied: Instant) -> Instant {
        if self.has(Bug::ValidityFromReply) {
            tokio::time::sleep(REPLY_DELAY).await;
            return Instant::now();
        }
        if self.has(Bug::StrandsDroppedGrants) {
            tokio::time::sleep(REPLY_DELAY).await;
        }
        applied
    }
}

#[async_trait]
impl LockBackend for Toy {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            .fencing(Fencing::Strict)
            .holder_info(true)
    }

    async fn try_acquire(&self, key: &Key, ttl: Duration) -> Result<Lease, LockError> {
        self.capabilities().check_ttl(NAME, ttl)?;
        let name = self.encode(key);
        let (owner, token, applied) = {
            let mut state = self.state();
            let now = Instant::now();
            if let Some(held) = state.holders.get(&name).filter(|h| self.live(h, now))
                && !self.has(Bug::NoExclusion)
            {
                let info = LockInfo::new(
                    Some(FencingToken(held.token)),
                    Some(held.expires.saturating_duration_since(now)),
                );
                return Err(LockError::contended(NAME, key.as_str(), Some(info)));
            }
            let token = if self.has(Bug::ConstantTokens) {
                1
            } else if self.has(Bug::TokensResetAfterRelease) {
                state.holders.get(&name).map_or(1, |h| h.token + 1)
            } else {
                state.last_token += 1;
                state.last_token
            };
            let owner = OwnerToken::generate();
            state.holders.insert(
                name,
                Held {
                    owner,
                    token,
                    expires: now + ttl,
                },
            );
            (owner, token, now)
        };
        let from = self.answer_at(applied).await;
        Ok(Lease::new(
            NAME,
            key.clone(),
            owner,
            FencingToken(token),
            from,
            ttl,
            NO_DRIFT,
        ))
    }

    async fn acquire(
        &self,
        key: &Key,
        ttl: Duration,
        wait: &RetryPolicy,
    ) -> Result<Lease, LockError> {
        if self.has(Bug::ZeroWaitNeverTries) && wait.deadline.is_zero() {
            return Err(LockError::Timeout {
                backend: NAME,
                key: key.as_str().to_owned(),
                waited: Duration::ZERO,
            });
        }
        if self.has(Bug::DeadlineIgnored) {
            loop {
                match self.try_acquire(key, ttl).await {
                    Err(e) if e.is_retryable() => {
                        tokio::time::sleep(Duration::from_millis(5)).await
                    }
                    answer => return answer,
                }
            }
        }
        wait_for_lock(self, key, ttl, wait).await
    }

    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<Lease, LockError> {
        self.capabilities().check_ttl(NAME, ttl)?;
        let name = self.encode(lease.key());
        let applied = {
            let mut state = self.state();
            let now = Instant::now();
            let live = state.holders.get(&name).is_some_and(|h| self.live(h, now));
            match state.holders.get_mut(&name) {
                Some(held)
                    if live
                        && (held.owner == *lease.owner() || self.has(Bug::ExtendByAnyOwner)) =>
                {
                    if !self.has(Bug::NoOpExtend) {
                        held.expires = now + ttl;
                    }
                    now
                }
                None if self.has(Bug::ExtendRevives) => {
                    state.holders.insert(
                        name,
                        Held {
                            owner: *lease.owner(),
                            token: lease.fencing_token().get(),
                            expires: now + ttl,
                        },
                    );
                    now
                }
                _ => {
                    return Err(LockError::lost(
                        NAME,
                        lease.key().as_str(),
                        "the lease expired, or the key is free or held by another owner",
                    ));
                }
            }
        };
        let from = self.answer_at(applied).await;
        Ok(lease.renewed(from, ttl, NO_DRIFT))
    }

    async fn release(&self, lease: &Lease) -> Result<(), LockError> {
        let name = self.encode(lease.key());
        let mut state = self.state();
        let now = Instant::now();
        let ours = state.holders.get(&name).is_some_and(|h| {
            self.live(h, now) && (h.owner == *lease.owner() || self.has(Bug::ReleaseByAnyOwner))
        });
        if ours {
            state.holders.remove(&name);
            Ok(())
        } else {
            Err(LockError::not_held(NAME, lease.key().as_str()))
        }
    }

    async fn inspect(&self, key: &Key) -> Result<Option<LockInfo>, LockError> {
        let name = self.encode(key);
        let state = self.state();
        let now = Instant::now();
        Ok(state
            .holders
            .get(&name)
            .filter(|h| self.live(h, now))
            .map(|h| {
                LockInfo::new(
                    Some(FencingToken(h.token)),
                    Some(h.expires.saturating_duration_since(now)),
                )
                .with_owner(&h.owner)
            }))
    }
}

/// A suite whose clients all share `backend` (one store).
fn suite_over(name: String, backend: Arc<dyn LockBackend>) -> Suite {
    Suite::new(name, move || {
        let backend = backend.clone();
        async move { Ok(backend) }
    })
}

/// Prints past the test harness's output capture: the table of which case
/// caught which bug is the point of the run, also when it passes.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// The first `max` characters of `text`.
fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

fn failed(reports: &[CaseReport]) -> Vec<(&'static str, &str)> {
    reports
        .iter()
        .filter_map(|r| match &r.verdict {
            Verdict::Failed(message) => Some((r.name, message.as_str())),
            _ => None,
        })
        .collect()
}

#[test]
fn every_broken_backend_fails_the_suite_and_correct_ones_pass() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let started = std::time::Instant::now();
    let mut subjects: Vec<(String, Option<Bug>, Arc<dyn LockBackend>)> = vec![
        ("memory".into(), None, Arc::new(MemoryBackend::new())),
        ("toy".into(), None, Arc::new(Toy::new(None))),
    ];
    for bug in Bug::ALL {
        subjects.push((format!("{bug:?}"), Some(bug), Arc::new(Toy::new(Some(bug)))));
    }
    let results = runtime.block_on(async {
        let runs = subjects.into_iter().map(|(name, bug, backend)| async move {
            let suite = suite_over(name.clone(), backend);
            let reports = run_cases(&suite, CASE_TIMEOUT).await;
            (name, bug, reports)
        });
        futures_util::future::join_all(runs).await
    });
    let mut problems = Vec::new();
    for (name, bug, reports) in &results {
        let reports = match reports {
            Ok(reports) => reports,
            Err(e) => {
                problems.push(format!("{name}: the suite did not run: {e}"));
                continue;
            }
        };
        let failures = failed(reports);
        let passed = reports
            .iter()
            .filter(|r| r.verdict == Verdict::Passed)
            .count();
        match bug {
            None => {
                say(&format!(
                    "correct {name}: {passed} passed, {} failed",
                    failures.len()
                ));
                for (case, message) in &failures {
                    problems.push(format!("correct backend {name} failed {case}: {message}"));
                }
            }
            Some(bug) => {
                let names: Vec<&str> = failures.iter().map(|(case, _)| *case).collect();
                say(&format!("broken {name}: caught by {} cases", names.len()));
                for (case, message) in &failures {
                    say(&format!("    {case}: {}", clip(message, 150)));
                }
                if failures.is_empty() {
                    problems.push(format!("broken backend {name} passed the whole suite"));
                } else if !names.contains(&bug.caught_by()) {
                    problems.push(format!(
                        "broken backend {name} was not caught by {}, the case meant for it \
                         (caught by {names:?})",
                        bug.caught_by()
                    ));
                }
            }
        }
    }
    say(&format!(
        "{} backends through the suite in {:?}",
        results.len(),
        started.elapsed()
    ));
    runtime.shutdown_timeout(Duration::from_secs(5));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
