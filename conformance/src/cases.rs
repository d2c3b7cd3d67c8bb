//! The cases. Each is an `async fn` taking the case context, with a doc line
//! saying what it proves; [`all_cases`] lists them with the capabilities each
//! needs.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use leasehold_core::{
    Capabilities, Expiry, Fencing, Key, Lease, LockBackend, LockError, LockInfo, Locker,
    OwnerToken, ReleaseListener, RetryPolicy, TtlPolicy, Waiting, async_trait,
};
use libtest_mimic::{Arguments, Trial};
use rand::Rng;
use tokio::sync::RwLock;
use tokio::time::Instant;

use crate::child::ChildHolder;
use crate::history::{History, Holding};
use crate::register::FencedRegister;
use crate::{BoxFuture, Factory, Store, Suite};

/// A case failed; the message says what was expected and what came instead.
#[derive(Debug)]
pub struct Failed(pub String);

impl From<LockError> for Failed {
    fn from(error: LockError) -> Self {
        Failed(format!("unexpected error: {error}"))
    }
}

impl From<String> for Failed {
    fn from(message: String) -> Self {
        Failed(message)
    }
}

type Outcome = Result<(), Failed>;

macro_rules! ensure {
    ($cond:expr, $($message:tt)+) => {
        if !$cond {
            return Err(Failed(format!($($message)+)));
        }
    };
}

/// What a case works with: the backend under test, a factory for more
/// clients, its capabilities, a random key prefix of its own, and the fault
/// hooks the suite has.
pub struct Ctx {
    /// A client shared by the case.
    pub backend: Arc<dyn LockBackend>,
    /// Makes more clients (their own connections).
    pub factory: Factory,
    /// The backend's capabilities.
    pub caps: Capabilities,
    prefix: String,
    store: Option<Arc<dyn Store>>,
    child_env: Option<Vec<(String, String)>>,
    session_ender: Option<crate::SessionEnder>,
}

impl Ctx {
    /// A key under this case's random prefix.
    pub fn key(&self, name: &str) -> Key {
        Key::new(format!("{}{name}", self.prefix)).expect("case keys are valid")
    }

    /// `wanted`, raised to the backend's minimum TTL and granularity.
    pub fn ttl(&self, wanted: Duration) -> Duration {
        let ttl = wanted.max(self.caps.min_ttl);
        let step = self
            .caps
            .ttl_granularity
            .max(Duration::from_millis(1))
            .as_nanos();
        Duration::from_nanos((ttl.as_nanos().div_ceil(step) * step) as u64)
    }

    /// A new client.
    pub async fn client(&self) -> Result<Arc<dyn LockBackend>, Failed> {
        (self.factory)()
            .await
            .map_err(|e| Failed(format!("could not make another client: {e}")))
    }

    /// A locker over `backend` with a fixed TTL and a wait deadline.
    pub fn locker(&self, backend: Arc<dyn LockBackend>, ttl: Duration, wait: Duration) -> Locker {
        Locker::builder_from_arc(backend)
            .ttl(TtlPolicy::Fixed(ttl))
            .retry(
                RetryPolicy::new(wait)
                    .with_delays(Duration::from_millis(5), Duration::from_millis(200)),
            )
            .build()
    }

    fn child(&self) -> Result<ChildHolder, Failed> {
        let env = self
            .child_env
            .as_ref()
            .ok_or_else(|| Failed("no child environment".into()))?;
        Ok(ChildHolder::spawn(env)?)
    }

    fn store(&self) -> Result<&Arc<dyn Store>, Failed> {
        self.store
            .as_ref()
            .ok_or_else(|| Failed("no store hooks".into()))
    }

    /// How long a dead holder may keep a key: its TTL for TTL backends; for
    /// session backends the session timeout, which the TTL maps onto.
    fn expiry_bound(&self, ttl: Duration) -> Duration {
        ttl * 3 + Duration::from_secs(10)
    }
}

/// One case: its name, what it needs, and its body.
pub struct Case {
    /// The test name: the property it proves.
    pub name: &'static str,
    select: fn(&Ctx) -> Result<(), &'static str>,
    exclusive: bool,
    body: fn(Arc<Ctx>) -> BoxFuture<Outcome>,
}

fn always(_: &Ctx) -> Result<(), &'static str> {
    Ok(())
}
fn ttl_expiry(ctx: &Ctx) -> Result<(), &'static str> {
    if ctx.caps.expiry == Expiry::Ttl {
        Ok(())
    } else {
        Err("the backend's leases end with a session, not a TTL")
    }
}
fn child_holders(ctx: &Ctx) -> Result<(), &'static str> {
    if ctx.child_env.is_some() {
        Ok(())
    } else {
        Err("the suite has no child-process environment")
    }
}
fn store_hooks(ctx: &Ctx) -> Result<(), &'static str> {
    if ctx.store.is_some() {
        Ok(())
    } else {
        Err("the suite has no store fault hooks")
    }
}
fn ordered_tokens(ctx: &Ctx) -> Result<(), &'static str> {
    if ctx.caps.fencing == Fencing::None {
        Err("the backend's fencing tokens carry no order")
    } else {
        Ok(())
    }
}
fn paused_holder(ctx: &Ctx) -> Result<(), &'static str> {
    if ctx.child_env.is_some() || ctx.caps.expiry == Expiry::Ttl {
        ordered_tokens(ctx)
    } else {
        Err(
            "a session backend's holder can only be paused in a child process, and the suite has none",
        )
    }
}

macro_rules! case {
    ($name:ident, $select:expr) => {
        Case {
            name: stringify!($name),
            select: $select,
            exclusive: false,
            body: |ctx| Box::pin($name(ctx)),
        }
    };
    ($name:ident, $select:expr, exclusive) => {
        Case {
            name: stringify!($name),
            select: $select,
            exclusive: true,
            body: |ctx| Box::pin($name(ctx)),
        }
    };
}

mod edges;
use edges::*;

fn session_ender(ctx: &Ctx) -> Result<(), &'static str> {
    if ctx.session_ender.is_some() {
        Ok(())
    } else {
        Err("the suite has no session ender (Suite::with_session_ender)")
    }
}

/// Every case, in the order they are listed.
pub fn all_cases() -> Vec<Case> {
    vec![
        case!(mutual_exclusion_has_no_lost_update, always),
        case!(history_checker_detects_unsafe_workload, always),
        case!(try_acquire_on_held_key_is_contended, always),
        case!(distinct_keys_are_independent, always),
        case!(release_by_non_owner_is_refused, always),
        case!(extend_by_non_owner_is_refused, always),
        case!(double_release_is_not_held, always),
        case!(extend_keeps_the_lock, always),
        case!(holder_that_stops_renewing_loses_lock_after_ttl, ttl_expiry),
        case!(extend_after_loss_is_lost, ttl_expiry),
        case!(extend_after_take_and_release_is_lost, ttl_expiry),
        case!(fencing_tokens_strictly_increase, ordered_tokens),
        case!(
            fenced_register_rejects_paused_holders_late_write,
            paused_holder
        ),
        case!(answer_after_validity_gives_lost_not_a_lock, always),
        case!(acquire_wakes_promptly_after_release, always),
        case!(acquire_times_out_with_timeout, always),
        case!(zero_wait_acquisition_of_a_free_key_succeeds, always),
        case!(valid_until_is_never_later_than_call_start_plus_ttl, always),
        case!(dropped_acquisition_leaves_the_key_free, always),
        case!(lost_fires_when_the_lease_expires_and_is_taken, ttl_expiry),
        case!(guard_auto_extends_past_several_ttls, always),
        case!(multi_lock_in_opposite_orders_does_not_deadlock, always),
        case!(failed_multi_lock_leaves_nothing_held, always),
        case!(awkward_keys_work_and_stay_distinct, always),
        case!(long_keys_differing_in_the_last_byte_stay_distinct, always),
        case!(
            keys_differing_in_case_whitespace_or_escaping_stay_distinct,
            always
        ),
        case!(invalid_keys_and_ttls_get_their_errors, always),
        case!(inspect_reports_the_holder_without_holding, always),
        case!(killed_holder_process_frees_the_lock, child_holders),
        case!(ending_the_holders_session_fires_lost, session_ender),
        case!(
            paused_store_gives_unavailable_and_recovers,
            store_hooks,
            exclusive
        ),
        case!(restarted_store_keeps_token_order, store_hooks, exclusive),
    ]
}

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
    let caps = crate::capabilities_of(&suite.factory)
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
    session_ender: Option<crate::SessionEnder>,
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
    let caps = match runtime.block_on(crate::capabilities_of(&suite.factory)) {
        Ok(caps) => caps,
        Err(e) => {
            eprintln!(
                "leasehold-conformance[{}]: cannot make a client: {e}",
                suite.name
            );
            return ExitCode::FAILURE;
        }
    };
    let env = RunEnv::new(suite, caps.clone(), Duration::from_secs(180));
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

#[allow(dead_code)]
enum ExclusiveTurn {
    Read(tokio::sync::OwnedRwLockReadGuard<()>),
    Write(tokio::sync::OwnedRwLockWriteGuard<()>),
}

// ---- helpers -----------------------------------------------------------------

fn forged(lease: &Lease) -> Lease {
    Lease::new(
        lease.backend(),
        lease.key().clone(),
        OwnerToken::generate(),
        lease.fencing_token(),
        Instant::now(),
        lease.ttl(),
        Default::default(),
    )
}

async fn expect_contended(
    backend: &Arc<dyn LockBackend>,
    key: &Key,
    ttl: Duration,
    why: &str,
) -> Outcome {
    match backend.try_acquire(key, ttl).await {
        Err(LockError::Contended { .. }) => Ok(()),
        Ok(lease) => {
            let _ = backend.release(&lease).await;
            Err(Failed(format!(
                "{why}: expected Contended on {key:?}, but it was acquired"
            )))
        }
        Err(e) => Err(Failed(format!(
            "{why}: expected Contended on {key:?}, got {e}"
        ))),
    }
}

/// Tries `try_acquire` until it succeeds or `within` passes.
async fn acquire_eventually(
    backend: &Arc<dyn LockBackend>,
    key: &Key,
    ttl: Duration,
    within: Duration,
) -> Result<Lease, Failed> {
    let deadline = Instant::now() + within;
    loop {
        match backend.try_acquire(key, ttl).await {
            Ok(lease) => return Ok(lease),
            Err(e) if e.is_retryable() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => {
                return Err(Failed(format!(
                    "{key:?} was not acquired within {within:?}: last error {e}"
                )));
            }
        }
    }
}

// ---- the cases ---------------------------------------------------------------

/// Many tasks on several clients do a non-atomic read-modify-write of one
/// counter under the lock: no update is lost and no two validity windows
/// overlap (the history checker), with tokens increasing where fencing is
/// ordered.
pub async fn mutual_exclusion_has_no_lost_update(ctx: Arc<Ctx>) -> Outcome {
    const CLIENTS: usize = 3;
    const TASKS_PER_CLIENT: usize = 3;
    const ROUNDS: usize = 5;
    let key = ctx.key("counter");
    let ttl = ctx.ttl(Duration::from_secs(10));
    let counter = Arc::new(AtomicU64::new(0));
    let history = Arc::new(History::new());
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let locker = ctx.locker(ctx.client().await?, ttl, Duration::from_secs(60));
        for task in 0..TASKS_PER_CLIENT {
            let (locker, key, counter, history) = (
                locker.clone(),
                key.clone(),
                counter.clone(),
                history.clone(),
            );
            let holder = (client * TASKS_PER_CLIENT + task) as u64;
            tasks.push(tokio::spawn(async move {
                for _ in 0..ROUNDS {
                    let guard = locker.lock(&key).await?;
                    let start = Instant::now();
                    let read = counter.load(Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    counter.store(read + 1, Ordering::SeqCst);
                    let end = Instant::now().min(guard.valid_until());
                    history.record(Holding {
                        holder,
                        token: guard.fencing_token().get(),
                        start,
                        end,
                    });
                    guard.release().await?;
                }
                Ok::<_, LockError>(())
            }));
        }
    }
    for task in tasks {
        task.await
            .map_err(|e| Failed(format!("a task panicked: {e}")))??;
    }
    let expected = (CLIENTS * TASKS_PER_CLIENT * ROUNDS) as u64;
    let got = counter.load(Ordering::SeqCst);
    ensure!(
        got == expected,
        "expected counter {expected} after locked increments, got {got} (lost updates)"
    );
    let violations = history.violations(ctx.caps.fencing == Fencing::Strict);
    ensure!(
        violations.is_empty(),
        "the history checker found violations: {violations:?}"
    );
    Ok(())
}

/// Negative control for the checker: the same workload without the lock must
/// make the history checker report an overlap, so a green run means
/// something.
pub async fn history_checker_detects_unsafe_workload(_ctx: Arc<Ctx>) -> Outcome {
    let history = Arc::new(History::new());
    let barrier = Arc::new(tokio::sync::Barrier::new(4));
    let mut tasks = Vec::new();
    for holder in 0..4u64 {
        let (history, barrier) = (history.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let start = Instant::now();
            tokio::time::sleep(Duration::from_millis(20)).await;
            history.record(Holding {
                holder,
                token: 4 - holder,
                start,
                end: Instant::now(),
            });
        }));
    }
    for task in tasks {
        task.await
            .map_err(|e| Failed(format!("a task panicked: {e}")))?;
    }
    let violations = history.violations(true);
    ensure!(
        !violations.is_empty(),
        "the checker passed a workload that ran without any lock"
    );
    Ok(())
}

/// `try_acquire` on a key someone holds fails with `Contended` at once.
pub async fn try_acquire_on_held_key_is_contended(ctx: Arc<Ctx>) -> Outcome {
    let key = ctx.key("held");
    let ttl = ctx.ttl(Duration::from_secs(30));
    let lease = ctx.backend.try_acquire(&key, ttl).await?;
    let other = ctx.client().await?;
    expect_contended(&other, &key, ttl, "another client").await?;
    expect_contended(
        &ctx.backend,
        &key,
        ttl,
        "the same client (locks are not reentrant)",
    )
    .await?;
    ctx.backend.release(&lease).await?;
    let again = other.try_acquire(&key, ttl).await?;
    other.release(&again).await?;
    Ok(())
}

/// Holding one key does not block another.
pub async fn distinct_keys_are_independent(ctx: Arc<Ctx>) -> Outcome {
    let ttl = ctx.ttl(Duration::from_secs(30));
    let a = ctx.backend.try_acquire(&ctx.key("a"), ttl).await?;
    let b = ctx.backend.try_acquire(&ctx.key("b"), ttl).await?;
    ensure!(a.key() != b.key(), "two keys gave one lease");
    ctx.backend.release(&a).await?;
    expect_contended(
        &ctx.backend,
        &ctx.key("b"),
        ttl,
        "releasing a must leave b held",
    )
    .await?;
    ctx.backend.release(&b).await?;
    Ok(())
}

/// Releasing with a lease whose owner token is not the holder's is refused,
/// and the holder keeps the lock.
pub async fn release_by_non_owner_is_refused(ctx: Arc<Ctx>) -> Outcome {
    let key = ctx.key("owned");
    let ttl = ctx.ttl(Duration::from_secs(30));
    let lease = ctx.backend.try_acquire(&key, ttl).await?;
    let other = ctx.client().await?;
    match other.release(&forged(&lease)).await {
        Err(LockError::NotHeld { .. } | LockError::Lost { .. }) => {}
        other => {
            return Err(Failed(format!(
                "a non-owner's release should be NotHeld, got {other:?}"
            )));
        }
    }
    expect_contended(&other, &key, ttl, "after a refused release").await?;
    ctx.backend.release(&lease).await?;
    Ok(())
}

/// Extending with a lease whose owner token is not the holder's is refused.
pub async fn extend_by_non_owner_is_refused(ctx: Arc<Ctx>) -> Outcome {
    let key = ctx.key("owned");
    let ttl = ctx.ttl(Duration::from_secs(30));
    let lease = ctx.backend.try_acquire(&key, ttl).await?;
    let other = ctx.client().await?;
    match other.extend(&forged(&lease), ttl).await {
        Err(LockError::Lost { .. } | LockError::NotHeld { .. }) => {}
        other => {
            return Err(Failed(format!(
                "a non-owner's extend should be Lost, got {other:?}"
            )));
        }
    }
    expect_contended(&other, &key, ttl, "after a refused extend").await?;
    ctx.backend.release(&lease).await?;
    Ok(())
}

/// A second release of the same lease is `NotHeld`, even after someone else
/// took the key, whose lock stays.
pub async fn double_release_is_not_held(ctx: Arc<Ctx>) -> Outcome {
    let key = ctx.key("twice");
    let ttl = ctx.ttl(Duration::from_secs(30));
    let lease = ctx.backend.try_acquire(&key, ttl).await?;
    ctx.backend.release(&lease).await?;
    match ctx.backend.release(&lease).await {
        Err(LockError::NotHeld { .. }) => {}
        other => {
            return Err(Failed(format!(
                "second release should be NotHeld, got {other:?}"
            )));
        }
    }
    let other = ctx.client().await?;
    let theirs = other.try_acquire(&key, ttl).await?;
    match ctx.backend.release(&lease).await {
        Err(LockError::NotHeld { .. }) => {}
        other => {
            return Err(Failed(format!(
                "a stale release should be NotHeld, got {other:?}"
            )));
        }
    }
    expect_contended(
        &ctx.backend,
        &key,
        ttl,
        "a stale release must not free the new holder's lock",
    )
    .await?;
    other.release(&theirs).await?;
    Ok(())
}

/// Extending at a third of the TTL keeps the key held well past the first
/// TTL, and the new validity is later than the old.
pub async fn extend_keeps_the_lock(ctx: Arc<Ctx>) -> Outcome {
    let key = ctx.key("kept");
    let ttl = ctx.ttl(Duration::from_millis(1500));
    let mut lease = ctx.backend.try_acquire(&key, ttl).await?;
    let other = ctx.client().await?;
    let until = Instant::now() + ttl * 2;
    while Instant::now() < until {
        tokio::time::sleep(ttl / 4).await;
        let renewed = ctx.backend.extend(&lease, ttl).await?;
        ensure!(
            renewed.valid_until() > lease.valid_until(),
            "extend did not move validity forward"
        );
        ensure!(
            renewed.fencing_token() == lease.fencing_token(),
            "extend changed the fencing token"
        );
        lease = renewed;
        expect_contended(&other, &key, ttl, "while extended").await?;
    }
    ctx.backend.release(&lease).await?;
    Ok(())
}

/// The backend under test, with every granted lease handed over only after
/// its validity ended: the client stalls between sending the request and
/// reading the reply (a GC or VM pause, a slow link). A SIGSTOP cannot be
/// aimed at that moment; a delay can. (The delay runs to the lease's own
/// end of validity, not the TTL from the call: session backends count
/// validity from the session's last renewal, which can come later.)
#[derive(Debug)]
struct LateAnswer {
    inner: Arc<dyn LockBackend>,
}

#[async_trait]
impl LockBackend for LateAnswer {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn try_acquire(&self, key: &Key, ttl: Duration) -> Result<Lease, LockError> {
        let answer = self.inner.try_acquire(key, ttl).await;
        if let Ok(lease) = &answer {
            tokio::time::sleep_until(lease.valid_until() + Duration::from_millis(100)).await;
        }
        answer
    }
    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<Lease, LockError> {
        self.inner.extend(lease, ttl).await
    }
    async fn release(&self, lease: &Lease) -> Result<(), LockError> {
        self.inner.release(lease).await
    }
    async fn inspect(&self, key: &Key) -> Result<Option<LockInfo>, LockError> {
        self.inner.inspect(key).await
    }
    fn release_listener(&self, key: &Key) -> Option<ReleaseListener> {
        self.inner.release_listener(key)
    }
}

/// A client whose acquisition answer arrives after the lease's validity
/// ended (paused during acquisition) gets `Lost` from the `Locker`, never a
/// guard, and the key does not stay locked for it: on a session backend the
/// store still holds it for the stalled client, which must give it back.
pub async fn answer_after_validity_gives_lost_not_a_lock(ctx: Arc<Ctx>) -> Outcome {
    let key = ctx.key("late-answer");
    let ttl = ctx.ttl(Duration::from_millis(500));
    let late: Arc<dyn LockBackend> = Arc::new(LateAnswer {
        inner: ctx.client().await?,
    });
    match ctx
        .locker(late.clone(), ttl, Duration::ZERO)
        .try_lock(&key)
        .await
    {
        Err(LockError::Lost { .. }) => {}
        Ok(guard) => {
            let _ = guard.release().await;
            return Err(Failed(
                "a guard was handed out for a lease whose validity ended before the answer arrived"
                    .into(),
            ));
        }
        Err(e) => {
            return Err(Failed(format!(
                "an answer after validity should be Lost, got {e}"
            )));
        }
    }
    // `late` (and its session) stays alive until the key is free again.
    let other = ctx.client().await?;
    let lease = acquire_eventually(&other, &key, ttl, ctx.expiry_bound(ttl)).await?;
    other.release(&lease).await?;
    drop(late);
    Ok(())
}

/// A holder that stops renewing loses the key after its TTL, and another
/// client acquires it (liveness).
pub async fn holder_that_stops_renewing_loses_lock_after_ttl(ctx: Arc<Ctx>) -> Outcome {
    let key = ctx.key("abandoned");
    let ttl = ctx.ttl(Duration::from_millis(500));
    let lease = ctx.backend.try_acquire(&key, ttl).await?;
    let other = ctx.client().await?;
    let taken = acquire_eventually(&other, &key, ttl, ctx.expiry_bound(ttl)).await?;
    ensure!(
        Instant::now() >= lease.valid_until(),
        "another client acquired the key while the first lease was still valid"
    );
    other.release(&taken).await?;
    Ok(())
}

/// Extending a lease after it expired (and someone else took the key) is
/// `Lost`, and does not take the key back.
pub async fn extend_after_loss_is_lost(ctx: Arc<Ctx>) -> Outcome {
    let key = ctx.key("expired");
    let ttl = ctx.ttl(Duration::from_millis(500));
    let lease = ctx.backend.try_acquire(&key, ttl).await?;
    let other = ctx.client().await?;
    let theirs = acquire_eventually(&other, &key, ttl * 20, ctx.expiry_bound(ttl)).await?;
    match ctx.backend.extend(&lease, ttl).await {
        Err(LockError::Lost { .. }) => {}
        other => {
            return Err(Failed(format!(
                "extend after loss should be Lost, got {other:?}"
            )));
        }
    }
    expect_contended(
        &ctx.backend,
        &key,
        ttl,
        "the failed extend must leave the new holder's lock",
    )
    .await?;
    match ctx.backend.release(&lease).await {
        Err(LockError::NotHeld { .. } | LockError::Lost { .. }) => {}
        other => {
            return Err(Failed(format!(
                "release after loss should be NotHeld, got {other:?}"
            )));
        }
    }
    other.release(&theirs).await?;
    Ok(())
}

/// Fencing tokens of one key strictly increase across acquisitions by
/// different clients, releases and expiries.
pub async fn fencing_tokens_strictly_increase(ctx: Arc<Ctx>) -> Outcome {
    let key = ctx.key("tokens");
    let ttl = ctx.ttl(Duration::from_millis(500));
    let clients = [ctx.backend.clone(), ctx.client().await?];
    let mut tokens = Vec::new();
    for round in 0..6 {
        let client = &clients[round % 2];
        let lease = acquire_eventually(client, &key, ttl, ctx.expiry_bound(ttl)).await?;
        tokens.push(lease.fencing_token().get());
        if round % 3 != 2 || ctx.caps.expiry != Expiry::Ttl {
            client.release(&lease).await?;
        } // else: left to expire
    }
    if ctx.caps.fencing == Fencing::Strict {
        ensure!(
            tokens.windows(2).all(|w| w[0] < w[1]),
            "tokens did not strictly increase: {tokens:?}"
        );
    } else {
        ensure!(
            tokens.windows(2).all(|w| w[0] <= w[1]),
            "best-effort tokens went backwards: {tokens:?}"
        );
    }
    Ok(())
}

/// A holder paused past its lease (a frozen process, or one that stopped
/// renewing) is overtaken; its late write with the old token is rejected by
/// a fenced register, and its own view reports the loss.
pub async fn fenced_register_rejects_paused_holders_late_write(ctx: Arc<Ctx>) -> Outcome {
    let key = ctx.key("fenced");
    let ttl = ctx.ttl(Duration::from_millis(800));
    let register = FencedRegister::new();
    let other = ctx.client().await?;
    let old_token = if ctx.child_env.is_some() {
        let mut child = ctx.child()?;
        let token = child.acquire(&key, ttl).await?;
        register
            .write(token, "old holder, before the pause")
            .map_err(|t| Failed(format!("fresh token refused below {t}")))?;
        child.pause()?;
        let theirs = acquire_eventually(&other, &key, ttl, ctx.expiry_bound(ttl)).await;
        child.resume()?;
        let theirs = theirs?;
        register
            .write(theirs.fencing_token().get(), "new holder")
            .map_err(|t| Failed(format!("the new holder's token was refused below {t}")))?;
        // The old holder must find out it lost the lock.
        let deadline = Instant::now() + ctx.expiry_bound(ttl);
        loop {
            let status = child.status().await?;
            if status == "lost" {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "the resumed child still believes it holds the lock ({status})"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let answer = child.release().await?;
        ensure!(
            answer.starts_with("error"),
            "the overtaken child's release succeeded: {answer}"
        );
        other.release(&theirs).await?;
        token
    } else {
        let lease = ctx.backend.try_acquire(&key, ttl).await?;
        register
            .write(lease.fencing_token().get(), "old")
            .map_err(|t| Failed(format!("refused below {t}")))?;
        // The holder "pauses": it stops renewing; time passes without it.
        let theirs = acquire_eventually(&other, &key, ttl, ctx.expiry_bound(ttl)).await?;
        register
            .write(theirs.fencing_token().get(), "new holder")
            .map_err(|t| Failed(format!("the new holder's token was refused below {t}")))?;
        match ctx.backend.extend(&lease, ttl).await {
            Err(LockError::Lost { .. }) => {}
            other => {
                return Err(Failed(format!(
                    "the paused holder's extend should be Lost, got {other:?}"
                )));
            }
        }
        match ctx.backend.release(&lease).await {
            Err(LockError::NotHeld { .. } | LockError::Lost { .. }) => {}
            other => {
                return Err(Failed(format!(
                    "the paused holder's release should fail, got {other:?}"
                )));
            }
        }
        other.release(&theirs).await?;
        lease.fencing_token().get()
    };
    ensure!(
        register.write(old_token, "late write").is_err(),
        "the register accepted the paused holder's late write"
    );
    ensure!(
        register.value().as_deref() == Some("new holder"),
        "the register lost the new holder's value"
    );
    Ok(())
}

/// A waiter in `acquire` gets the key soon after the holder releases it;
/// where waiting is `Notified` it wakes on the release signal, well before
/// its next poll (its backoff is set to 5 s).
pub async fn acquire_wakes_promptly_after_release(ctx: Arc<Ctx>) -> Outcome {
    let key = ctx.key("handoff");
    let ttl = ctx.ttl(Duration::from_secs(30));
    let lease = ctx.backend.try_acquire(&key, ttl).await?;
    let waiter = ctx.client().await?;
    let poll = if ctx.caps.waiting == Waiting::Notified {
        Duration::from_secs(5)
    } else {
        Duration::from_millis(100)
    };
    let wait = RetryPolicy::new(Duration::from_secs(30)).with_delays(poll, poll);
    let waiting = {
        let key = key.clone();
        tokio::spawn(async move {
            let lease = waiter.acquire(&key, ttl, &wait).await;
            (lease, Instant::now(), waiter)
        })
    };
    // Let the waiter make its first attempt and start waiting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let released_at = Instant::now();
    ctx.backend.release(&lease).await?;
    let (acquired, acquired_at, waiter) = waiting
        .await
        .map_err(|e| Failed(format!("waiter panicked: {e}")))?;
    let acquired = acquired?;
    let handoff = acquired_at.saturating_duration_since(released_at);
    if ctx.caps.waiting == Waiting::Notified {
        ensure!(
            handoff < Duration::from_secs(4),
            "a notified waiter took {handoff:?} after the release (its next poll was 5 s away)"
        );
    }
    waiter.release(&acquired).await?;
    Ok(())
}

/// `acquire` on a key that stays held gives `Timeout` after its wait (and
/// within 20 s of it: an acquire that ignores its deadline fails here, not
/// by hanging the run).
pub async fn acquire_times_out_with_timeout(ctx: Arc<Ctx>) -> Outcome {
    let key = ctx.key("busy");
    let ttl = ctx.ttl(Duration::from_secs(30));
    let lease = ctx.backend.try_acquire(&key, ttl).await?;
    let other = ctx.client().await?;
    let wait = Duration::from_millis(600);
    let started = Instant::now();
    let answer = tokio::time::timeout(
        wait + Duration::from_secs(20),
        other.acquire(&key, ttl, &RetryPolicy::new(wait)),
    )
    .await
    .map_err(|_| {
        Failed(format!(
            "acquire ignored its wait of {wait:?}: still waiting after {:?}",
            started.elapsed()
        ))
    })?;
    match answer {
        Err(LockError::Timeout { .. }) => {}
        Ok(lease) => {
            let _ = other.release(&lease).await;
            return Err(Failed("acquire of a held key succeeded".into()));
        }
        Err(e) => return Err(Failed(format!("expected Timeout, got {e}"))),
    }
    ensure!(
        started.elapsed() >= wait,
        "Timeout came before the wait of {wait:?} ({:?})",
        started.elapsed()
    );
    ctx.backend.release(&lease).await?;
    Ok(())
}

/// A guard that cannot renew (auto-extend off) fires `lost()` when its
/// validity ends, and another client then takes the key.
pub async fn lost_fires_when_the_lease_expires_and_is_taken(ctx: Arc<Ctx>) -> Outcome {
    let key = ctx.key("lost");
    let ttl = ctx.ttl(Duration::from_millis(600));
    let locker = Locker::builder_from_arc(ctx.backend.clone())
        .ttl(TtlPolicy::Fixed(ttl))
        .auto_extend(false)
        .build();
    let guard = locker.try_lock(&key).await?;
    tokio::time::timeout(ctx.expiry_bound(ttl), guard.lost())
        .await
        .map_err(|_| Failed("lost() never fired for a lease that could not renew".into()))?;
    ensure!(guard.is_lost(), "lost() fired but is_lost() is false");
    ensure!(
        Instant::now() >= guard.valid_until(),
        "lost() fired before validity ended"
    );
    let other = ctx.client().await?;
    let theirs = acquire_eventually(&other, &key, ttl, ctx.expiry_bound(ttl)).await?;
    ensure!(
        guard.release().await.is_err(),
        "releasing a lost guard succeeded"
    );
    other.release(&theirs).await?;
    Ok(())
}

/// A guard's watchdog keeps the key held across several TTLs.
pub async fn guard_auto_extends_past_several_ttls(ctx: Arc<Ctx>) -> Outcome {
    let key = ctx.key("watchdog");
    let ttl = ctx.ttl(Duration::from_millis(900));
    let locker = ctx.locker(ctx.backend.clone(), ttl, Duration::from_secs(5));
    let guard = locker.try_lock(&key).await?;
    let other = ctx.client().await?;
    let until = Instant::now() + ttl * 3;
    while Instant::now() < until {
        tokio::time::sleep(ttl / 3).await;
        ensure!(
            !guard.is_lost(),
            "the guard reported loss while its watchdog should extend it"
        );
        expect_contended(&other, &key, ttl, "while the guard extends itself").await?;
    }
    ensure!(
        guard.valid_until() > Instant::now(),
        "the guard's validity was not extended"
    );
    guard.release().await?;
    Ok(())
}

/// Tasks taking {A, B} and {B, A} at once all finish (ordered acquisition
/// prevents deadlock).
pub async fn multi_lock_in_opposite_orders_does_not_deadlock(ctx: Arc<Ctx>) -> Outcome {
    let (a, b) = (ctx.key("A"), ctx.key("B"));
    let ttl = ctx.ttl(Duration::from_secs(10));
    let mut tasks = Vec::new();
    for task in 0..6 {
        let locker = ctx.locker(ctx.client().await?, ttl, Duration::from_secs(60));
        let keys = if task % 2 == 0 {
            vec![a.clone(), b.clone()]
        } else {
            vec![b.clone(), a.clone()]
        };
        tasks.push(tokio::spawn(async move {
            for _ in 0..3 {
                let guards = locker.lock_all(keys.iter()).await?;
                tokio::time::sleep(Duration::from_millis(2)).await;
                guards.release().await?;
            }
            Ok::<_, LockError>(())
        }));
    }
    for task in tasks {
        task.await
            .map_err(|e| Failed(format!("a task panicked: {e}")))??;
    }
    Ok(())
}

/// A multi-lock that cannot take one of its keys times out and leaves none
/// of the others held.
pub async fn failed_multi_lock_leaves_nothing_held(ctx: Arc<Ctx>) -> Outcome {
    let (a, b, c) = (ctx.key("1-first"), ctx.key("2-taken"), ctx.key("3-last"));
    let ttl = ctx.ttl(Duration::from_secs(30));
    let blocker = ctx.backend.try_acquire(&b, ttl).await?;
    let other = ctx.client().await?;
    let locker = ctx.locker(other.clone(), ttl, Duration::from_millis(500));
    match locker.lock_all([c.clone(), b.clone(), a.clone()]).await {
        Err(LockError::Timeout { .. }) => {}
        Ok(_) => return Err(Failed("lock_all took a key somebody else holds".into())),
        Err(e) => return Err(Failed(format!("expected Timeout, got {e}"))),
    }
    for key in [&a, &c] {
        let lease = ctx.backend.try_acquire(key, ttl).await.map_err(|e| {
            Failed(format!(
                "{key:?} was left held after the failed multi-lock: {e}"
            ))
        })?;
        ctx.backend.release(&lease).await?;
    }
    ctx.backend.release(&blocker).await?;
    Ok(())
}

/// Keys with slashes, quotes, `%`, braces, metacharacters, emoji and the
/// maximum length all lock, and near-identical keys stay distinct.
pub async fn awkward_keys_work_and_stay_distinct(ctx: Arc<Ctx>) -> Outcome {
    let ttl = ctx.ttl(Duration::from_secs(30));
    let names = [
        "a/b",
        "a%2Fb",
        "a_b",
        "a%b",
        "A/B",
        "a/b/",
        "/",
        "..",
        ".",
        " ",
        "  ",
        "x ",
        "x",
        "'; DROP TABLE locks; --",
        "\"quoted\"",
        "back\\slash",
        "{tag}",
        "{tag}x",
        "*",
        "?",
        "[abc]",
        "redis.call('del', KEYS[1])",
        "$1",
        "🔒émoji",
        "e\u{301}",
        "é",
        "%00",
        "\\0",
        "a:b:c",
    ];
    let mut keys: Vec<Key> = names.iter().map(|n| ctx.key(n)).collect();
    let long = format!(
        "{}{}",
        ctx.key("").as_str(),
        "L".repeat(leasehold_core::MAX_KEY_BYTES - ctx.key("").as_str().len())
    );
    keys.push(Key::new(long).map_err(|e| Failed(e.to_string()))?);
    let mut leases = Vec::new();
    for key in &keys {
        let lease = ctx.backend.try_acquire(key, ttl).await.map_err(|e| {
            Failed(format!(
                "{key:?} could not be locked while the other keys were held: {e}"
            ))
        })?;
        leases.push(lease);
    }
    let other = ctx.client().await?;
    for key in &keys {
        expect_contended(&other, key, ttl, "each awkward key is held").await?;
    }
    for lease in &leases {
        ctx.backend.release(lease).await?;
    }
    Ok(())
}

/// An invalid key is `InvalidKey` before any store call; a zero TTL is
/// `InvalidTtl`; a TTL above one year (`Duration::MAX` included) is
/// `InvalidTtl` from `try_acquire`, `acquire`, `extend` and a `Locker`,
/// never a panic.
pub async fn invalid_keys_and_ttls_get_their_errors(ctx: Arc<Ctx>) -> Outcome {
    let locker = Locker::from_arc(ctx.backend.clone());
    for bad in ["", "nul\0byte", "line\nbreak"] {
        match locker.try_lock(bad).await {
            Err(LockError::InvalidKey(_)) => {}
            other => {
                return Err(Failed(format!(
                    "key {bad:?} should be InvalidKey, got {other:?}"
                )));
            }
        }
    }
    let key = ctx.key("ttl");
    match ctx.backend.try_acquire(&key, Duration::ZERO).await {
        Err(LockError::InvalidTtl { .. }) => {}
        other => {
            return Err(Failed(format!(
                "a zero TTL should be InvalidTtl, got {other:?}"
            )));
        }
    }
    // Above the library-wide maximum of one year: `InvalidTtl` from every
    // operation that takes a TTL, never a panic or an overflow.
    let held = ctx
        .backend
        .try_acquire(&key, ctx.ttl(Duration::from_secs(30)))
        .await?;
    for huge in [
        Duration::MAX,
        Duration::from_secs(100 * 365 * 24 * 3600),
        leasehold_core::config::MAX_DURATION + Duration::from_secs(1),
    ] {
        let other = ctx.key("ttl-huge");
        match ctx.backend.try_acquire(&other, huge).await {
            Err(LockError::InvalidTtl { .. }) => {}
            Ok(lease) => {
                ctx.backend.release(&lease).await?;
                return Err(Failed(format!(
                    "try_acquire with a TTL of {huge:?} (above one year) should be InvalidTtl, \
                     it was granted"
                )));
            }
            Err(e) => {
                return Err(Failed(format!(
                    "try_acquire with a TTL of {huge:?} should be InvalidTtl, got {e}"
                )));
            }
        }
        match ctx
            .backend
            .acquire(&other, huge, &RetryPolicy::no_wait())
            .await
        {
            Err(LockError::InvalidTtl { .. }) => {}
            Ok(lease) => {
                ctx.backend.release(&lease).await?;
                return Err(Failed(format!(
                    "acquire with a TTL of {huge:?} should be InvalidTtl, it was granted"
                )));
            }
            Err(e) => {
                return Err(Failed(format!(
                    "acquire with a TTL of {huge:?} should be InvalidTtl, got {e}"
                )));
            }
        }
        match ctx.backend.extend(&held, huge).await {
            Err(LockError::InvalidTtl { .. }) => {}
            other => {
                return Err(Failed(format!(
                    "extend with a TTL of {huge:?} should be InvalidTtl, got {other:?}"
                )));
            }
        }
        let locker = Locker::builder_from_arc(ctx.backend.clone())
            .ttl(TtlPolicy::Fixed(huge))
            .build();
        match locker.try_lock(&other).await {
            Err(LockError::InvalidTtl { .. }) => {}
            Ok(guard) => {
                let _ = guard.release().await;
                return Err(Failed(format!(
                    "a Locker with a fixed TTL of {huge:?} should give InvalidTtl, it locked"
                )));
            }
            Err(e) => {
                return Err(Failed(format!(
                    "a Locker with a fixed TTL of {huge:?} should give InvalidTtl, got {e}"
                )));
            }
        }
    }
    ctx.backend.release(&held).await?;
    Ok(())
}

/// `inspect` reports a holder's fencing token (where the backend can tell)
/// without holding the key, and `None` for a free key.
pub async fn inspect_reports_the_holder_without_holding(ctx: Arc<Ctx>) -> Outcome {
    let key = ctx.key("inspected");
    let ttl = ctx.ttl(Duration::from_secs(30));
    let other = ctx.client().await?;
    ensure!(
        other.inspect(&key).await?.is_none(),
        "a free key was reported held"
    );
    let lease = ctx.backend.try_acquire(&key, ttl).await?;
    let info = other.inspect(&key).await?;
    ensure!(info.is_some(), "inspect did not see the holder");
    if ctx.caps.holder_info {
        let token = info.and_then(|i| i.fencing_token);
        ensure!(
            token == Some(lease.fencing_token()),
            "inspect reported token {token:?}, the holder has {}",
            lease.fencing_token()
        );
    }
    ctx.backend.release(&lease).await?;
    ensure!(
        other.inspect(&key).await?.is_none(),
        "a released key was reported held"
    );
    Ok(())
}

/// A holder process killed (SIGKILL) without releasing frees the key within
/// its TTL + 5 s of slack (`KILLED_HOLDER_SLACK`: the time for the store to
/// notice on a loaded 2-core machine) on every backend, session backends
/// included: a session must time out with the TTL its holder asked for. The
/// next holder's token is higher where fencing is strict. Prints the measured
/// time from the kill to the next acquisition.
pub async fn killed_holder_process_frees_the_lock(ctx: Arc<Ctx>) -> Outcome {
    let key = ctx.key("killed");
    let ttl = ctx.ttl(Duration::from_millis(800));
    let bound = ttl + edges::KILLED_HOLDER_SLACK;
    let mut child = ctx.child()?;
    let token = child.acquire(&key, ttl).await?;
    expect_contended(&ctx.backend, &key, ttl, "while the child holds it").await?;
    let killed_at = Instant::now();
    child.kill().await?;
    let lease = acquire_eventually(&ctx.backend, &key, ttl, bound)
        .await
        .map_err(|Failed(m)| {
            Failed(format!(
                "a killed holder's key was not free within its TTL {ttl:?} + {:?}: {m}",
                edges::KILLED_HOLDER_SLACK
            ))
        })?;
    let freed = killed_at.elapsed();
    eprintln!(
        "leasehold-conformance: a killed holder's key was free {freed:?} after the kill (TTL {ttl:?}, bound {bound:?})"
    );
    ensure!(
        freed <= bound,
        "a killed holder's key was free only {freed:?} after the kill, past its TTL {ttl:?} + {:?}",
        edges::KILLED_HOLDER_SLACK
    );
    if ctx.caps.fencing == Fencing::Strict {
        ensure!(
            lease.fencing_token().get() > token,
            "token {} after the killed holder's {token}",
            lease.fencing_token()
        );
    }
    ctx.backend.release(&lease).await?;
    Ok(())
}

/// With the store paused, operations fail with `Unavailable` in bounded time
/// (no hang); after it resumes, the client recovers on its own.
pub async fn paused_store_gives_unavailable_and_recovers(ctx: Arc<Ctx>) -> Outcome {
    let key = ctx.key("paused");
    let ttl = ctx.ttl(Duration::from_secs(30));
    // Warm the connection first, so the pause hits an established client.
    let lease = ctx.backend.try_acquire(&key, ttl).await?;
    ctx.backend.release(&lease).await?;
    let store = ctx.store()?;
    store.pause().await?;
    let started = Instant::now();
    let during =
        tokio::time::timeout(Duration::from_secs(60), ctx.backend.try_acquire(&key, ttl)).await;
    let elapsed = started.elapsed();
    store.unpause().await?;
    match during {
        Err(_) => {
            return Err(Failed(
                "try_acquire against a paused store hung for 60 s".into(),
            ));
        }
        Ok(Err(LockError::Unavailable { .. })) => {}
        Ok(other) => {
            return Err(Failed(format!(
                "expected Unavailable from a paused store after {elapsed:?}, got {other:?}"
            )));
        }
    }
    let lease = acquire_eventually(&ctx.backend, &key, ttl, Duration::from_secs(60)).await?;
    ctx.backend.release(&lease).await?;
    Ok(())
}

/// After the store restarts, clients reconnect by themselves; where the
/// backend says its fencing is durable, tokens keep increasing across it.
pub async fn restarted_store_keeps_token_order(ctx: Arc<Ctx>) -> Outcome {
    let key = ctx.key("restart");
    let ttl = ctx.ttl(Duration::from_secs(30));
    let before = ctx.backend.try_acquire(&key, ttl).await?;
    ctx.backend.release(&before).await?;
    ctx.store()?.restart().await?;
    let after = acquire_eventually(&ctx.backend, &key, ttl, Duration::from_secs(90)).await?;
    if ctx.caps.durable_fencing {
        ensure!(
            after.fencing_token() > before.fencing_token(),
            "durable fencing went from {} to {} across a restart",
            before.fencing_token(),
            after.fencing_token()
        );
    }
    ctx.backend.release(&after).await?;
    Ok(())
}
