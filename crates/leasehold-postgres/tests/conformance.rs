//! The leasehold conformance suite against Postgres, in both modes: advisory
//! first, then table (`LEASEHOLD_PG_MODES=table` or `=advisory` runs one).
//! Each mode gets its own `postgres:15` container (or the server named by
//! `LEASEHOLD_TEST_POSTGRES_URL`; a `mode=` in it is overridden per run).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use leasehold_conformance::{Skipped, Suite, child, fixtures};
use leasehold_core::{Lease, LockBackend};
use leasehold_postgres::sqlx::{self, Connection};
use leasehold_postgres::{Mode, PostgresBackend, PostgresConfig};

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Advisory => "advisory",
        Mode::Table => "table",
    }
}

/// `url` with `mode=<mode>` (replacing any mode already there).
fn with_mode(url: &str, mode: Mode) -> String {
    let mut parsed = url::Url::parse(url).expect("a postgres URL");
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
        match PostgresBackend::connect(url).await {
            Ok(_) => return Ok(()),
            Err(e) if started.elapsed() > Duration::from_secs(90) => {
                return Err(Skipped(format!("postgres never became ready: {e}")));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

async fn setup(mode: Option<Mode>) -> Result<Suite, Skipped> {
    let spec = fixtures::postgres_spec();
    let store = fixtures::provision(&spec).await?;
    let url = store.url(|port| {
        format!(
            "postgres://postgres:{}@127.0.0.1:{port}/postgres",
            fixtures::POSTGRES_PASSWORD
        )
    });
    // A child holder inherits the parent's URL, mode included.
    let url = match mode {
        Some(mode) => with_mode(&url, mode),
        None => url,
    };
    wait_ready(&url).await?;
    let config = PostgresConfig::from_url(&url).map_err(|e| Skipped(format!("bad URL: {e}")))?;
    let mode = config.mode_of();
    let connect_to = url.clone();
    let suite = Suite::new(format!("postgres-{}", mode_name(mode)), move || {
        let url = connect_to.clone();
        async move { Ok(Arc::new(PostgresBackend::connect(&url).await?) as Arc<dyn LockBackend>) }
    });
    let suite = match mode {
        Mode::Advisory => {
            let sqlx_url = config.sqlx_url().unwrap_or_default().to_owned();
            suite.with_session_ender(move |lease| end_session(sqlx_url.clone(), lease))
        }
        Mode::Table => suite,
    };
    Ok(suite.with_provisioned(&spec, store, &url))
}

/// Ends the session holding an advisory lease the way an administrator, a
/// restart or a dropped connection would: `pg_terminate_backend` on the
/// pinned connection's server process, from a connection of its own.
async fn end_session(sqlx_url: String, lease: Lease) -> Result<(), String> {
    let pid = leasehold_postgres::session_pid(&lease)
        .ok_or_else(|| format!("{:?} is not an advisory lease", lease.key()))?;
    let mut conn = sqlx::PgConnection::connect(&sqlx_url)
        .await
        .map_err(|e| format!("connect to terminate the holder: {e}"))?;
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&mut conn)
        .await
        .map_err(|e| format!("pg_terminate_backend({pid}): {e}"))?;
    let _ = conn.close().await;
    if killed {
        Ok(())
    } else {
        Err(format!("no server process {pid} to terminate"))
    }
}

fn main() -> ExitCode {
    if std::env::var_os(child::CHILD_ENV).is_some() {
        return leasehold_conformance::run_main(|| setup(None));
    }
    let modes = std::env::var("LEASEHOLD_PG_MODES").unwrap_or_else(|_| "advisory,table".into());
    let mut code = ExitCode::SUCCESS;
    for mode in modes.split(',').map(str::trim).filter(|m| !m.is_empty()) {
        let mode: Mode = match mode.parse() {
            Ok(mode) => mode,
            Err(e) => {
                eprintln!("LEASEHOLD_PG_MODES: {e}");
                return ExitCode::FAILURE;
            }
        };
        if leasehold_conformance::run_main(move || setup(Some(mode))) != ExitCode::SUCCESS {
            code = ExitCode::FAILURE;
        }
    }
    code
}
