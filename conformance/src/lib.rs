//! # leasehold-conformance
//!
//! The cases every leasehold backend must pass, chosen by the backend's
//! [`Capabilities`], never by its name; a history checker with negative
//! controls; fault hooks (pause, restart, kill a holder process);
//! testcontainers fixtures for the stores leasehold ships ([`fixtures`]); and
//! a TCP proxy that delays or cuts one client–server link ([`proxy`]).
//!
//! A third party certifies its own backend with a test target that has
//! `harness = false` and a `main` of a few lines:
//!
//! ```no_run
//! use std::sync::Arc;
//! use leasehold_core::{LockBackend, MemoryBackend};
//!
//! fn main() -> std::process::ExitCode {
//!     // Each call must return a new client of the store under test.
//!     leasehold_conformance::run("memory", || async {
//!         Ok(Arc::new(MemoryBackend::new()) as Arc<dyn LockBackend>)
//!     })
//! }
//! ```
//!
//! With fault hooks (a [`Store`] that can pause and restart the server) and
//! child-process holders (an environment that lets a child process reach the
//! same store), more cases run; see [`Suite`] and [`run_main`]. To run the
//! cases from your own test code and read each verdict (the suite's own
//! mutation test does this with deliberately broken backends), call
//! [`run_cases`].
//!
//! A store that leasehold has a fixture for (or any [`fixtures::ContainerSpec`])
//! is wired with [`Suite::provisioned`]: it reads `LEASEHOLD_TEST_<STORE>_URL`
//! or starts a container, builds the URL, and adds the fault hooks and the
//! child-process environment. A backend's conformance main
//! (`tests/conformance.rs`) is then a few lines:
//!
//! ```no_run
//! use std::sync::Arc;
//! use leasehold_conformance::{Suite, fixtures};
//! # use leasehold_core::{LockError, MemoryBackend};
//! # struct RedisBackend;
//! # impl RedisBackend {
//! #     async fn connect(_url: &str) -> Result<MemoryBackend, LockError> {
//! #         Ok(MemoryBackend::new())
//! #     }
//! # }
//!
//! fn main() -> std::process::ExitCode {
//!     leasehold_conformance::run_main(|| {
//!         Suite::provisioned(
//!             "redis",
//!             fixtures::redis_spec(true),
//!             |port| format!("redis://127.0.0.1:{port}"),
//!             |url| async move { Ok(Arc::new(RedisBackend::connect(&url).await?) as _) },
//!         )
//!     })
//! }
//! ```
//!
//! ## Layout
//!
//! - `lib.rs`: [`Suite`] (what the suite runs against), [`Store`] and
//!   [`SessionEnder`] (fault hooks), [`run`] and [`run_main`].
//! - `runner.rs`: the libtest-mimic trials behind [`run_main`] and
//!   [`run_cases`], over one runner: selection, a random key prefix per case,
//!   exclusive turns for the cases that pause or restart the store, and the
//!   case timeout.
//! - `case.rs`: the [`Case`] type, the case context [`Ctx`], the selectors
//!   (by [`Capabilities`] and the suite's hooks), [`Failed`] and
//!   [`expect_err!`].
//! - `cases/`: the cases by family (`exclusion`, `ownership`, `expiry`,
//!   `fencing`, `waiting`, `guard`, `keys`, `faults`), each file listing its
//!   cases at the top; [`all_cases`] concatenates them.
//! - [`support`]: the helpers the cases are written with (forged leases,
//!   [`support::acquire_eventually`], [`support::expect_contended`], awkward
//!   keys, [`support::LateAnswer`], the fenced register), for backend tests too.
//! - [`fixtures`]: containers and the stores' specs; [`proxy`]: a TCP proxy
//!   for network faults; [`child`]: holders in child processes; [`history`]:
//!   the history checker; [`register`]: the fenced register.
#![warn(missing_docs)]

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use leasehold_core::{Capabilities, LockBackend, LockError};

mod case;
mod cases;
pub mod child;
pub mod fixtures;
pub mod history;
pub mod proxy;
pub mod register;
mod runner;
pub mod support;

pub use case::{Case, Ctx, Failed};
pub use cases::all_cases;
pub use runner::{CaseReport, Verdict, run_cases};

/// A boxed future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Makes a new client of the store under test (its own connection).
pub type Factory =
    Arc<dyn Fn() -> BoxFuture<Result<Arc<dyn LockBackend>, LockError>> + Send + Sync>;

/// Fault hooks on the store server, for the fault cases.
pub trait Store: Send + Sync + 'static {
    /// Freezes the server (`docker pause`): connections stay open, nothing
    /// answers.
    fn pause(&self) -> BoxFuture<Result<(), String>>;
    /// Thaws it.
    fn unpause(&self) -> BoxFuture<Result<(), String>>;
    /// Stops and starts it at the same address; returns once the container
    /// runs (the store may need a moment more: callers retry).
    fn restart(&self) -> BoxFuture<Result<(), String>>;
}

/// Ends the store session that carries `lease`, the way a network drop, a
/// server-side kill or a session timeout would (terminate the Postgres
/// backend process, revoke the etcd lease, expire the ZooKeeper session).
/// Only for stores whose leases live in a session
/// ([`leasehold_core::Expiry::Session`] or a pinned connection); the suite's
/// session-end cases run where one is given.
pub type SessionEnder =
    Arc<dyn Fn(leasehold_core::Lease) -> BoxFuture<Result<(), String>> + Send + Sync>;

/// What the suite runs against: a client factory, and optionally fault hooks,
/// child-process support and resources (containers) to drop at the end.
pub struct Suite {
    name: String,
    factory: Factory,
    store: Option<Arc<dyn Store>>,
    child_env: Option<Vec<(String, String)>>,
    session_ender: Option<SessionEnder>,
    resources: Vec<Box<dyn Any + Send>>,
}

impl Suite {
    /// A suite named `name` over clients made by `factory`.
    pub fn new<F, Fut>(name: impl Into<String>, factory: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Arc<dyn LockBackend>, LockError>> + Send + 'static,
    {
        let factory: Factory = Arc::new(move || Box::pin(factory()));
        Suite {
            name: name.into(),
            factory,
            store: None,
            child_env: None,
            session_ender: None,
            resources: Vec::new(),
        }
    }

    /// A suite named `name` over the store `spec` describes, provisioned the
    /// way every leasehold backend's conformance main does it:
    /// `LEASEHOLD_TEST_<STORE>_URL` if set, else a container started from
    /// `spec` ([`fixtures::provision`]); its URL from `url_from_port` (given
    /// the container's port on 127.0.0.1; an external URL is used as it is);
    /// clients from `connect(url)`; then [`Suite::with_provisioned`] (child
    /// processes reach the same store; a container adds the pause and restart
    /// hooks and lives until the run ends). With neither Docker nor a URL,
    /// `Skipped`. More hooks (a session ender) can be added to the result.
    pub async fn provisioned<F, Fut>(
        name: impl Into<String>,
        spec: fixtures::ContainerSpec,
        url_from_port: impl FnOnce(u16) -> String,
        connect: F,
    ) -> Result<Suite, Skipped>
    where
        F: Fn(String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Arc<dyn LockBackend>, LockError>> + Send + 'static,
    {
        let store = fixtures::provision(&spec).await?;
        let url = store.url(url_from_port);
        let connect_to = url.clone();
        let suite = Suite::new(name, move || connect(connect_to.clone()));
        Ok(suite.with_provisioned(&spec, store, &url))
    }

    /// Enables the fault cases that pause and restart the store.
    pub fn with_store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Enables the child-process cases (killed and paused holders): `env` is
    /// what a child process of this test binary needs to reach the same store
    /// through the same factory (e.g. `LEASEHOLD_TEST_REDIS_URL=...`).
    pub fn with_child_env(mut self, env: Vec<(String, String)>) -> Self {
        self.child_env = Some(env);
        self
    }

    /// Enables the cases that end a holder's store session (see
    /// [`SessionEnder`]).
    pub fn with_session_ender<F, Fut>(mut self, end: F) -> Self
    where
        F: Fn(leasehold_core::Lease) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.session_ender = Some(Arc::new(move |lease| Box::pin(end(lease))));
        self
    }

    /// Keeps `resource` (a container) alive until the run ends.
    pub fn keep(mut self, resource: impl Any + Send) -> Self {
        self.resources.push(Box::new(resource));
        self
    }

    /// Wires a provisioned store in: child processes get `url` through the
    /// spec's `LEASEHOLD_TEST_<STORE>_URL` (so their setup connects to the same
    /// store instead of starting a container), and a container adds the pause
    /// and restart hooks and lives until the run ends.
    pub fn with_provisioned(
        self,
        spec: &fixtures::ContainerSpec,
        store: fixtures::Provisioned,
        url: &str,
    ) -> Self {
        let suite = self.with_child_env(vec![(spec.url_env(), url.to_owned())]);
        match store {
            fixtures::Provisioned::External(_) => suite,
            fixtures::Provisioned::Container(container) => {
                suite.with_store(container.clone()).keep(container)
            }
        }
    }

    /// The suite's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Why a suite did not run.
#[derive(Debug)]
pub struct Skipped(pub String);

/// Runs the whole suite against clients from `factory`, with no fault hooks.
/// For a third party's backend; see the crate docs.
pub fn run<F, Fut>(name: &str, factory: F) -> ExitCode
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Arc<dyn LockBackend>, LockError>> + Send + 'static,
{
    let name = name.to_owned();
    run_main(move || async move { Ok(Suite::new(name, factory)) })
}

/// The `main` of a conformance test binary: builds a runtime, calls `setup`
/// (which starts containers or reads `LEASEHOLD_TEST_<STORE>_URL`), runs every
/// case the backend's capabilities select, then drops the suite (removing its
/// containers). A `Skipped` setup prints why; under `CI=true` it fails.
///
/// When the binary is started as a child holder (by the child-process cases)
/// it serves the child protocol instead.
pub fn run_main<F, Fut>(setup: F) -> ExitCode
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Suite, Skipped>>,
{
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("LEASEHOLD_LOG"))
        .with_writer(std::io::stderr)
        .try_init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("leasehold-conformance: cannot build a tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let suite = match runtime.block_on(setup()) {
        Ok(suite) => suite,
        Err(Skipped(why)) => {
            eprintln!("\n*** leasehold-conformance: SKIPPED: {why} ***\n");
            let in_ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
            return if in_ci {
                eprintln!("CI=true: a skipped conformance suite is a failure");
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    if std::env::var_os(child::CHILD_ENV).is_some() {
        return match runtime.block_on(child::serve(suite.factory.clone())) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("child holder: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let code = runner::run_trials(&runtime, &suite);
    runtime.block_on(async move { drop(suite) });
    runtime.shutdown_timeout(Duration::from_secs(10));
    fixtures::remove_run_containers();
    code
}

/// The capabilities a backend made by `factory` reports.
pub async fn capabilities_of(factory: &Factory) -> Result<Capabilities, LockError> {
    Ok(factory().await?.capabilities())
}
