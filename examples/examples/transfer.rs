//! Wallet transfers A→B and B→A at the same time: the textbook distributed
//! deadlock when each transfer locks its source, then its destination.
//! `lock_all` takes both accounts in one canonical order, so every transfer
//! finishes and the total balance is conserved.
//!
//! Run: `cargo run --example transfer` (or set `LEASEHOLD_URL`).

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const TRANSFERS_PER_TASK: usize = 25;

#[tokio::main]
async fn main() -> ExitCode {
    let url =
        std::env::var("LEASEHOLD_URL").unwrap_or_else(|_| "memory://transfer?wait=30s".to_owned());
    let locker = match leasehold::connect(&url).await {
        Ok(locker) => locker,
        Err(e) => {
            eprintln!("connect {url}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let balances: Arc<Mutex<HashMap<&'static str, i64>>> = Arc::new(Mutex::new(HashMap::from([
        ("wallet:A", 1_000),
        ("wallet:B", 1_000),
    ])));
    let mut tasks = Vec::new();
    for task in 0..8 {
        let (locker, balances) = (locker.clone(), balances.clone());
        let (from, to) = if task % 2 == 0 {
            ("wallet:A", "wallet:B")
        } else {
            ("wallet:B", "wallet:A")
        };
        tasks.push(tokio::spawn(async move {
            for _ in 0..TRANSFERS_PER_TASK {
                // Locks both wallets, in canonical order whatever the direction.
                let guards = locker.lock_all([from, to]).await?;
                let (source, target) = {
                    let balances = balances.lock().unwrap();
                    (balances[from], balances[to])
                };
                tokio::time::sleep(Duration::from_millis(1)).await; // the ledger round trip
                {
                    let mut balances = balances.lock().unwrap();
                    balances.insert(from, source - 10);
                    balances.insert(to, target + 10);
                }
                guards.release().await?;
            }
            Ok::<_, leasehold::LockError>(())
        }));
    }
    let all = async {
        for task in tasks {
            task.await.expect("transfer task")?;
        }
        Ok::<_, leasehold::LockError>(())
    };
    match tokio::time::timeout(Duration::from_secs(120), all).await {
        Err(_) => {
            println!("FAILED: transfers did not finish in 120 s (deadlock?)");
            return ExitCode::FAILURE;
        }
        Ok(Err(e)) => {
            println!("FAILED: {e}");
            return ExitCode::FAILURE;
        }
        Ok(Ok(())) => {}
    }
    let balances = balances.lock().unwrap();
    let total: i64 = balances.values().sum();
    println!(
        "{} transfers in both directions finished; A = {}, B = {}, total = {total}",
        8 * TRANSFERS_PER_TASK,
        balances["wallet:A"],
        balances["wallet:B"]
    );
    if total == 2_000 {
        println!("OK: no deadlock, balances conserved");
        ExitCode::SUCCESS
    } else {
        println!("FAILED: money was created or destroyed");
        ExitCode::FAILURE
    }
}
