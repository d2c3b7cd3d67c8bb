//! Running the cases: the libtest-mimic trials of a conformance test binary
//! ([`run_trials`], behind [`crate::run_main`]) and the programmatic
//! [`run_cases`]. Both go through one internal runner, so selection, key
//! prefixes, exclusive turns (the fault cases that take the store to
//! themselves) and the case timeout are the same in both.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use leasehold_core::{Capabilities, LockBackend};
use libtest_mimic::{Arguments, Trial};
use rand::Rng;
use tokio::sync::RwLock;

use crate::case::{Case, Ctx, Failed};
use crate::cases::all_cases;
use crate::hooks::{Factory, SessionEnder, Store, capabilities_of};
use crate::suite::Suite;

/// How long a case may run under the test harness before it fails as a hang.
const TRIAL_TIMEOUT: Duration = Duration::from_secs(180);

/// How one case ended in a [`run_cases`] run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The case passed.
    Passed,
    /// The case failed (or panicked, or hung past the case timeout); the
    /// message says what was expected and what came instead.
    Failed(String),
    /// The backend's capabilities or the suite's hooks did not select the
    /// case; the message says why.
    Skipped(String),
}

/// One case's outcome in a [`run_cases`] run.
#[derive(Clone, Debug)]
pub struct CaseReport {
    /// The case's name (the property it proves).
    pub name: &'static str,
    /// How it ended.
    pub verdict: Verdict,
}

/// Runs every case the backend's capabilities and the suite's hooks select,
/// all at once (the fault cases that need the store to themselves take turns,
/// as under [`crate::run_main`]), and returns each case's verdict in the order
/// of [`all_cases`]. A case that runs longer than `case_timeout` fails as a
/// hang. Selection, key prefixes and isolation are the ones the test harness
/// uses; this is the programmatic way in, for mutation testing a suite
/// against deliberately broken backends. Needs a multi-threaded Tokio runtime.
///
/// Fails only when no client can be made to read the capabilities.
pub async fn run_cases(suite: &Suite, case_timeout: Duration) -> Result<Vec<CaseReport>, String> {
    let caps = capabilities_of(&suite.factory)
        .await
        .map_err(|e| format!("cannot make a client: {e}"))?;
    let env = RunEnv::new(suite, caps, case_timeout);
    let runs = all_cases().into_iter().map(|case| {
        let env = env.clone();
        async move {
            let name = case.name;
            let verdict = match env.selection(&case) {
                Err(why) => Verdict::Skipped(why.to_owned()),
                Ok(()) => match env.run(case).await {
                    Ok(()) => Verdict::Passed,
                    Err(message) => Verdict::Failed(message),
                },
            };
            CaseReport { name, verdict }
        }
    });
    Ok(futures_util::future::join_all(runs).await)
}

/// What every case of one run shares: how to make clients, the hooks, the
/// capabilities, the run's key namespace and the turn-taking of exclusive
/// cases. Both [`run_trials`] and [`run_cases`] go through it, so selection
/// and isolation are the same in both.
#[derive(Clone)]
struct RunEnv {
    factory: Factory,
    store: Option<Arc<dyn Store>>,
    child_env: Option<Vec<(String, String)>>,
    session_ender: Option<SessionEnder>,
    caps: Capabilities,
    exclusive: Arc<RwLock<()>>,
    run_id: u32,
    case_timeout: Duration,
}

impl RunEnv {
    fn new(suite: &Suite, caps: Capabilities, case_timeout: Duration) -> Self {
        RunEnv {
            factory: suite.factory.clone(),
            store: suite.store.clone(),
            child_env: suite.child_env.clone(),
            session_ender: suite.session_ender.clone(),
            caps,
            exclusive: Arc::new(RwLock::new(())),
            run_id: rand::rng().random(),
            case_timeout,
        }
    }

    fn ctx(&self, backend: Arc<dyn LockBackend>, prefix: String) -> Ctx {
        Ctx {
            backend,
            factory: self.factory.clone(),
            caps: self.caps.clone(),
            prefix,
            store: self.store.clone(),
            child_env: self.child_env.clone(),
            session_ender: self.session_ender.clone(),
        }
    }

    /// Whether `case` runs here, or why not.
    fn selection(&self, case: &Case) -> Result<(), &'static str> {
        let probe = self.ctx(
            Arc::new(leasehold_core::MemoryBackend::new()),
            String::new(),
        );
        (case.select)(&probe)
    }

    /// Runs `case` on its own task (a panic is a failure, not a crash of the
    /// run) under the case timeout, with a fresh client and key prefix.
    async fn run(self, case: Case) -> Result<(), String> {
        let _turn = if case.exclusive {
            ExclusiveTurn::Write(self.exclusive.clone().write_owned().await)
        } else {
            ExclusiveTurn::Read(self.exclusive.clone().read_owned().await)
        };
        let backend = (self.factory)()
            .await
            .map_err(|e| format!("could not make a client: {e}"))?;
        let prefix = format!("lhc{:08x}/{}/", self.run_id, case.name);
        let ctx = Arc::new(self.ctx(backend, prefix));
        let mut task = tokio::spawn((case.body)(ctx));
        match tokio::time::timeout(self.case_timeout, &mut task).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(Failed(message)))) => Err(message),
            Ok(Err(e)) if e.is_panic() => Err(format!("the case panicked: {}", panic_message(e))),
            Ok(Err(e)) => Err(format!("the case's task ended: {e}")),
            Err(_) => {
                task.abort();
                Err(format!(
                    "the case did not finish within {:?} (a hang)",
                    self.case_timeout
                ))
            }
        }
    }
}

fn panic_message(error: tokio::task::JoinError) -> String {
    let payload = error.into_panic();
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}

pub(crate) fn run_trials(runtime: &tokio::runtime::Runtime, suite: &Suite) -> ExitCode {
    let args = Arguments::from_args();
    let caps = match runtime.block_on(capabilities_of(&suite.factory)) {
        Ok(caps) => caps,
        Err(e) => {
            eprintln!(
                "leasehold-conformance[{}]: cannot make a client: {e}",
                suite.name
            );
            return ExitCode::FAILURE;
        }
    };
    let env = RunEnv::new(suite, caps.clone(), TRIAL_TIMEOUT);
    let mut trials = Vec::new();
    let (mut selected, mut skipped) = (0, 0);
    for case in all_cases() {
        let name = format!("{}::{}", suite.name, case.name);
        if let Err(why) = env.selection(&case) {
            eprintln!(
                "leasehold-conformance[{}]: skipping {}: {why}",
                suite.name, case.name
            );
            skipped += 1;
            trials.push(Trial::test(name, || Ok(())).with_ignored_flag(true));
            continue;
        }
        selected += 1;
        let handle = runtime.handle().clone();
        let env = env.clone();
        trials.push(Trial::test(name, move || {
            handle.block_on(env.run(case)).map_err(Into::into)
        }));
    }
    eprintln!(
        "leasehold-conformance[{}]: {selected} cases selected by capabilities, {skipped} skipped ({caps:?})",
        suite.name
    );
    let conclusion = libtest_mimic::run(&args, trials);
    eprintln!(
        "leasehold-conformance[{}]: {} passed, {} failed, {} skipped",
        suite.name, conclusion.num_passed, conclusion.num_failed, conclusion.num_ignored
    );
    conclusion.exit_code()
}

/// A case's turn, held (never read) until the case ends: shared among the
/// ordinary cases, the store to itself for an exclusive one.
#[allow(dead_code)]
enum ExclusiveTurn {
    Read(tokio::sync::OwnedRwLockReadGuard<()>),
    Write(tokio::sync::OwnedRwLockWriteGuard<()>),
}
