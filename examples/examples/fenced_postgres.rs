//! Fencing applied to a Postgres row: a holder that stalled past its lease
//! (a GC pause, a VM migration) wakes up and tries its write after a newer
//! holder wrote; the row accepts writes only from the newest token, so the
//! stale write changes nothing and the stale holder learns it must stop.
//!
//! ```sql
//! UPDATE fenced_accounts SET balance = balance + $1, fence = $2
//!  WHERE id = $3 AND fence <= $2      -- zero rows: a newer holder wrote
//! ```
//!
//! The fence column belongs to one lock store: another store, or the other
//! Postgres mode, counts its tokens apart, so a resource whose lock moves
//! there needs its fences reset, with its writers stopped.
//!
//! Run against Postgres (the lock store and the protected table may be the
//! same database or different ones):
//! `LEASEHOLD_URL=postgres://user:pass@127.0.0.1:5432/app cargo run --example fenced_postgres --features postgres`

use std::process::ExitCode;
use std::time::Duration;

use leasehold::postgres::sqlx::{self, PgPool};
use leasehold::{FencingToken, LockOptions};

/// Adds `amount` to account 1 if `token` is not older than the last writer's.
/// `Ok(false)`: a newer holder wrote; this one is stale.
async fn fenced_deposit(db: &PgPool, token: FencingToken, amount: i64) -> sqlx::Result<bool> {
    let fence = token
        .as_i64()
        .expect("tokens stay far below i64::MAX (see FencingToken::as_i64)");
    let updated = sqlx::query(
        "UPDATE fenced_accounts SET balance = balance + $1, fence = $2 \
         WHERE id = 1 AND fence <= $2",
    )
    .bind(amount)
    .bind(fence)
    .execute(db)
    .await?;
    Ok(updated.rows_affected() == 1)
}

#[tokio::main]
async fn main() -> ExitCode {
    let Ok(url) = std::env::var("LEASEHOLD_URL") else {
        eprintln!("set LEASEHOLD_URL to a postgres:// URL");
        return ExitCode::FAILURE;
    };
    match run(&url).await {
        Ok(true) => {
            println!("OK: the stale holder's write was rejected by the fenced row");
            ExitCode::SUCCESS
        }
        Ok(false) => {
            println!("FAILED: the stale write went through");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("fenced_postgres: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(url: &str) -> Result<bool, Box<dyn std::error::Error>> {
    // The protected data; sqlx gets the URL without leasehold's options.
    let db = PgPool::connect(url.split('?').next().unwrap_or(url)).await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS fenced_accounts \
         (id INT PRIMARY KEY, balance BIGINT NOT NULL, fence BIGINT NOT NULL DEFAULT 0)",
    )
    .execute(&db)
    .await?;
    sqlx::query("INSERT INTO fenced_accounts (id, balance) VALUES (1, 100) ON CONFLICT DO NOTHING")
        .execute(&db)
        .await?;

    // Two workers, each with its own client of the lock store.
    let (slow, fast) = (
        leasehold::connect(url).await?,
        leasehold::connect(url).await?,
    );
    let short = LockOptions::new()
        .ttl(Duration::from_secs(2))
        .auto_extend(false);
    let stalled = slow.lock_with("account:1", &short).await?;
    let stale_token = stalled.fencing_token();
    println!("worker A holds account:1 with token {stale_token}, then stalls");
    stalled.lost().await;
    println!("worker A's lease ran out while it stalled");

    let guard = fast
        .lock_within("account:1", Duration::from_secs(30))
        .await?;
    let accepted = fenced_deposit(&db, guard.fencing_token(), 10).await?;
    println!(
        "worker B holds it with token {} and deposits 10: {}",
        guard.fencing_token(),
        if accepted { "written" } else { "REJECTED" }
    );
    guard.release().await?;

    // A wakes up and, not knowing, tries its write with the old token.
    let stale_accepted = fenced_deposit(&db, stale_token, 1_000).await?;
    println!(
        "worker A wakes and deposits 1000 with token {stale_token}: {}",
        if stale_accepted {
            "written"
        } else {
            "REJECTED (stale token): A stops"
        }
    );
    let (balance, fence): (i64, i64) =
        sqlx::query_as("SELECT balance, fence FROM fenced_accounts WHERE id = 1")
            .fetch_one(&db)
            .await?;
    println!("account 1: balance {balance}, last writer's token {fence}");
    Ok(accepted && !stale_accepted)
}
