//! # leasehold-conformance
//!
//! The cases every leasehold backend must pass, chosen by the backend's
//! [`Capabilities`](leasehold_core::Capabilities), never by its name; a history checker with negative
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
//! - `lib.rs`: [`run`] and [`run_main`], the entry points.
//! - `suite.rs`: [`Suite`], what the suite runs against, and
//!   [`Suite::provisioned`].
//! - `hooks.rs`: the client [`Factory`], the fault hooks ([`Store`],
//!   [`SessionEnder`]) and [`Skipped`].
//! - `runner.rs`: the libtest-mimic trials behind [`run_main`] and
//!   [`run_cases`], over one runner: selection, a random key prefix per case,
//!   exclusive turns for the cases that pause or restart the store, and the
//!   case timeout.
//! - `case.rs`: the [`Case`] type, the case context [`Ctx`], the selectors
//!   (by [`Capabilities`](leasehold_core::Capabilities) and the suite's hooks), [`Failed`] and
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

use std::future::Future;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use leasehold_core::{LockBackend, LockError};

mod case;
mod cases;
pub mod child;
pub mod fixtures;
pub mod history;
mod hooks;
pub mod proxy;
pub mod register;
mod runner;
mod suite;
pub mod support;

pub use case::{Case, Ctx, Failed};
pub use cases::all_cases;
pub use hooks::{BoxFuture, Factory, SessionEnder, Skipped, Store, capabilities_of};
pub use runner::{CaseReport, Verdict, run_cases};
pub use suite::Suite;

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
