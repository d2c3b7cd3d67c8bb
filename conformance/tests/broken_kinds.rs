//! Mutation testing of the reader–writer and semaphore cases: the real
//! `MemoryBackend` with one bug spliced in (through `testing::Spy`) must fail
//! the suite, each caught by the case written for it, while the unmodified
//! backend passes. The mutex cases have their own family in `broken.rs`.

use std::sync::Arc;
use std::time::Duration;

use leasehold_conformance::{Suite, Verdict, run_cases};
use leasehold_core::testing::{Hooks, Spy};
use leasehold_core::{
    FencingToken, Key, Lease, LockBackend, LockError, LockKind, MemoryBackend, WaitPolicy,
    async_trait, wait_for_grant,
};

const CASE_TIMEOUT: Duration = Duration::from_secs(60);

/// One deliberate bug in granting shared kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bug {
    /// A semaphore admits one holder more than its permits.
    SemaphoreAdmitsOneMore,
    /// Writers are counted apart from readers, so they overlap.
    WritersIgnoreReaders,
    /// A waiting writer does not hold new readers back (writers starve).
    WaitingWriterNotRegistered,
    /// Every read grant's token is 1.
    ReadTokensConstant,
    /// A permit granted to a caller that stopped waiting stays held for an
    /// hour (the grant is not cancel-safe and ignores the TTL).
    DroppedPermitStranded,
}

impl Bug {
    const ALL: [Bug; 5] = [
        Bug::SemaphoreAdmitsOneMore,
        Bug::WritersIgnoreReaders,
        Bug::WaitingWriterNotRegistered,
        Bug::ReadTokensConstant,
        Bug::DroppedPermitStranded,
    ];

    fn caught_by(self) -> &'static str {
        match self {
            Bug::SemaphoreAdmitsOneMore => "semaphore_admits_at_most_its_permits",
            Bug::WritersIgnoreReaders => "readers_share_and_a_writer_excludes",
            Bug::WaitingWriterNotRegistered => {
                "waiting_writer_is_served_while_readers_keep_arriving"
            }
            Bug::ReadTokensConstant => "readers_share_and_a_writer_excludes",
            Bug::DroppedPermitStranded => "permits_never_leak",
        }
    }

    /// The kind the inner backend is asked for instead of `kind`.
    fn mutate(self, kind: LockKind) -> LockKind {
        match (self, kind) {
            (Bug::SemaphoreAdmitsOneMore, LockKind::Permit { permits }) => LockKind::Permit {
                permits: permits + 1,
            },
            (Bug::WritersIgnoreReaders, LockKind::Write) => LockKind::Permit { permits: 1 },
            _ => kind,
        }
    }

    /// The lease the caller sees instead of `lease`.
    fn disguise(self, lease: Lease) -> Lease {
        if self == Bug::ReadTokensConstant && lease.kind() == LockKind::Read {
            return Lease::new(
                lease.backend(),
                lease.key().clone(),
                *lease.owner(),
                FencingToken(1),
                tokio::time::Instant::now(),
                lease.ttl(),
                Default::default(),
            )
            .with_kind(LockKind::Read);
        }
        lease
    }
}

#[derive(Debug)]
struct Mutant(Bug);

#[async_trait]
impl Hooks for Mutant {
    async fn try_acquire_kind(
        &self,
        inner: &dyn LockBackend,
        key: &Key,
        kind: LockKind,
        ttl: Duration,
    ) -> Result<Lease, LockError> {
        let lease = inner
            .try_acquire_kind(key, self.0.mutate(kind), ttl)
            .await?;
        Ok(self.0.disguise(lease))
    }

    async fn acquire_kind(
        &self,
        inner: &dyn LockBackend,
        key: &Key,
        kind: LockKind,
        ttl: Duration,
        wait: &WaitPolicy,
    ) -> Result<Lease, LockError> {
        let lease = match (self.0, kind) {
            (Bug::WaitingWriterNotRegistered, LockKind::Write) => {
                wait_for_grant(inner, key, wait, || inner.try_acquire_kind(key, kind, ttl)).await?
            }
            (Bug::DroppedPermitStranded, LockKind::Permit { .. }) => {
                let lease = inner
                    .acquire_kind(key, kind, Duration::from_secs(3600), wait)
                    .await?;
                // The answer is still on its way when a caller gives up.
                tokio::time::sleep(Duration::from_millis(1)).await;
                lease
            }
            _ => {
                inner
                    .acquire_kind(key, self.0.mutate(kind), ttl, wait)
                    .await?
            }
        };
        Ok(self.0.disguise(lease))
    }
}

fn suite_over(name: String, backend: Arc<dyn LockBackend>) -> Suite {
    Suite::new(name, move || {
        let backend = backend.clone();
        async move { Ok(backend) }
    })
}

#[test]
fn every_broken_shared_kind_fails_the_suite_and_memory_passes() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let mut subjects: Vec<(String, Option<Bug>, Suite)> = vec![(
        "memory".into(),
        None,
        suite_over("memory".into(), Arc::new(MemoryBackend::new())),
    )];
    for bug in Bug::ALL {
        let name = format!("{bug:?}");
        let inner: Arc<dyn LockBackend> = Arc::new(MemoryBackend::new());
        let backend = Arc::new(Spy::new(inner, Mutant(bug)));
        subjects.push((name.clone(), Some(bug), suite_over(name, backend)));
    }
    let results = runtime.block_on(futures_util::future::join_all(subjects.into_iter().map(
        |(name, bug, suite)| async move { (name, bug, run_cases(&suite, CASE_TIMEOUT).await) },
    )));
    let mut problems = Vec::new();
    for (name, bug, reports) in results {
        let reports = match reports {
            Ok(reports) => reports,
            Err(e) => {
                problems.push(format!("{name}: the suite did not run: {e}"));
                continue;
            }
        };
        let failures: Vec<(&str, &str)> = reports
            .iter()
            .filter_map(|r| match &r.verdict {
                Verdict::Failed(message) => Some((r.name, message.as_str())),
                _ => None,
            })
            .collect();
        eprintln!(
            "{name}: failed {:?}",
            failures.iter().map(|f| f.0).collect::<Vec<_>>()
        );
        match bug {
            None => problems.extend(
                failures
                    .iter()
                    .map(|(case, message)| format!("correct {name} failed {case}: {message}")),
            ),
            Some(bug) if !failures.iter().any(|(case, _)| *case == bug.caught_by()) => problems
                .push(format!(
                    "broken {name} was not caught by {} (failed: {failures:?})",
                    bug.caught_by()
                )),
            Some(_) => {}
        }
    }
    runtime.shutdown_timeout(Duration::from_secs(5));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
