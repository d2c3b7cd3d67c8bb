//! The leasehold conformance suite against MariaDB (the stand-in
//! `leasehold-standin/mariadb:10.11`, Debian's `mariadb-server`), in both
//! modes: named first, then table (`LEASEHOLD_MYSQL_MODES=table` or
//! `=named` runs one). Each mode gets its own container (or the server named
//! by `LEASEHOLD_TEST_MARIADB_URL`, MySQL included; a `mode=` in it is
//! overridden per run).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use leasehold_conformance::{Skipped, Suite, child, fixtures};
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

async fn setup(mode: Option<Mode>) -> Result<Suite, Skipped> {
    let spec = fixtures::mariadb_spec();
    let store = fixtures::provision(&spec).await?;
    let url = store.url(|port| {
        format!(
            "mysql://root:{}@127.0.0.1:{port}/leasehold",
            fixtures::MARIADB_PASSWORD
        )
    });
    // A child holder inherits the parent's URL, mode included.
    let url = match mode {
        Some(mode) => with_mode(&url, mode),
        None => url,
    };
    wait_ready(&url).await?;
    let config = MysqlConfig::from_url(&url).map_err(|e| Skipped(format!("bad URL: {e}")))?;
    let mode = config.mode_of();
    let connect_to = url.clone();
    let suite = Suite::new(format!("mysql-{}", mode_name(mode)), move || {
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

fn main() -> ExitCode {
    if std::env::var_os(child::CHILD_ENV).is_some() {
        return leasehold_conformance::run_main(|| setup(None));
    }
    let modes = std::env::var("LEASEHOLD_MYSQL_MODES").unwrap_or_else(|_| "named,table".into());
    let mut code = ExitCode::SUCCESS;
    for mode in modes.split(',').map(str::trim).filter(|m| !m.is_empty()) {
        let mode: Mode = match mode.parse() {
            Ok(mode) => mode,
            Err(e) => {
                eprintln!("LEASEHOLD_MYSQL_MODES: {e}");
                return ExitCode::FAILURE;
            }
        };
        if leasehold_conformance::run_main(move || setup(Some(mode))) != ExitCode::SUCCESS {
            code = ExitCode::FAILURE;
        }
    }
    code
}
