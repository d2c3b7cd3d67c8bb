//! What the plain and the TLS conformance targets share: a store per mode
//! (named, table) provisioned from a container spec, the suite over it, and
//! the session ender for named leases.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use leasehold_conformance::fixtures::{self, ContainerSpec};
use leasehold_conformance::{Skipped, Suite, child};
use leasehold_core::{Lease, LockBackend};
use leasehold_mysql::sqlx::{self, Connection};
use leasehold_mysql::{Mode, MysqlBackend, MysqlConfig};

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Named => "named",
        Mode::Table => "table",
    }
}

/// `url` with `mode=<mode>` (replacing any mode already there).
fn with_mode(url: &str, mode: Mode) -> String {
    let mut parsed = url::Url::parse(url).expect("a mysql URL");
    let rest: Vec<(String, String)> = parsed
        .query_pairs()
        .filter(|(name, _)| name != "mode")
        .map(|(n, v)| (n.into_owned(), v.into_owned()))
        .collect();
    parsed
        .query_pairs_mut()
        .clear()
        .extend_pairs(rest)
        .append_pair("mode", mode_name(mode))
        .append_pair("timeout", "2s");
    parsed.into()
}

/// Connects (running the migration once) until the server answers.
async fn wait_ready(url: &str) -> Result<(), Skipped> {
    let started = Instant::now();
    loop {
        match MysqlBackend::connect(url).await {
            Ok(_) => return Ok(()),
            Err(e) if started.elapsed() > Duration::from_secs(90) => {
                return Err(Skipped(format!("mariadb never became ready: {e}")));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// The suite `<name>-<mode>` over the store of `spec` (a container, or the
/// server its `LEASEHOLD_TEST_<STORE>_URL` names), reached at
/// `url_from_port(port)` with `mode` (`None`: the mode the URL says, for a
/// child holder, which inherits its parent's URL).
pub async fn setup(
    name: &str,
    spec: ContainerSpec,
    url_from_port: impl FnOnce(u16) -> String,
    mode: Option<Mode>,
) -> Result<Suite, Skipped> {
    let store = fixtures::provision(&spec).await?;
    let url = store.url(url_from_port);
    let url = match mode {
        Some(mode) => with_mode(&url, mode),
        None => url,
    };
    wait_ready(&url).await?;
    let config = MysqlConfig::from_url(&url).map_err(|e| Skipped(format!("bad URL: {e}")))?;
    let mode = config.mode_of();
    let connect_to = url.clone();
    let suite = Suite::new(format!("{name}-{}", mode_name(mode)), move || {
        let url = connect_to.clone();
        async move { Ok(Arc::new(MysqlBackend::connect(&url).await?) as Arc<dyn LockBackend>) }
    });
    let suite = match mode {
        Mode::Named => {
            let sqlx_url = config.sqlx_url().unwrap_or_default().to_owned();
            suite.with_session_ender(move |lease| end_session(sqlx_url.clone(), lease))
        }
        Mode::Table => suite,
    };
    Ok(suite.with_provisioned(&spec, store, &url))
}

/// Ends the session holding a named lease the way an administrator, a
/// restart or a dropped connection would: `KILL CONNECTION` of the pinned
/// connection, from a connection of its own.
async fn end_session(sqlx_url: String, lease: Lease) -> Result<(), String> {
    let id = leasehold_mysql::session_id(&lease)
        .ok_or_else(|| format!("{:?} is not a named lease", lease.key()))?;
    let mut conn = sqlx::MySqlConnection::connect(&sqlx_url)
        .await
        .map_err(|e| format!("connect to kill the holder: {e}"))?;
    let kill = format!("KILL CONNECTION {id}");
    sqlx::Executor::execute(&mut conn, kill.as_str())
        .await
        .map_err(|e| format!("KILL CONNECTION {id}: {e}"))?;
    let _ = conn.close().await;
    Ok(())
}

/// Runs the suite once per mode of `LEASEHOLD_MYSQL_MODES` (`default_modes`
/// when unset; comma-separated), each on a store of its own from `setup`;
/// a child holder runs `setup(None)`.
pub fn run_modes<F, Fut>(default_modes: &str, setup: F) -> ExitCode
where
    F: Fn(Option<Mode>) -> Fut,
    Fut: Future<Output = Result<Suite, Skipped>>,
{
    if std::env::var_os(child::CHILD_ENV).is_some() {
        return leasehold_conformance::run_main(|| setup(None));
    }
    let modes = std::env::var("LEASEHOLD_MYSQL_MODES").unwrap_or_else(|_| default_modes.into());
    let mut code = ExitCode::SUCCESS;
    for mode in modes.split(',').map(str::trim).filter(|m| !m.is_empty()) {
        let mode: Mode = match mode.parse() {
            Ok(mode) => mode,
            Err(e) => {
                eprintln!("LEASEHOLD_MYSQL_MODES: {e}");
                return ExitCode::FAILURE;
            }
        };
        if leasehold_conformance::run_main(|| setup(Some(mode))) != ExitCode::SUCCESS {
            code = ExitCode::FAILURE;
        }
    }
    code
}
