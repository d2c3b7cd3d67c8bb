//! One program, every store: the backend is chosen only by `LEASEHOLD_URL`.
//!
//! Run: `LEASEHOLD_URL=redis://127.0.0.1:6379 cargo run --features full --example swap_backends`
//! (default `memory://`). It prints the backend's capabilities, shows mutual
//! exclusion with a contending client, and that fencing tokens increase; it
//! exits non-zero if any claim fails.

use std::process::ExitCode;
use std::time::Duration;

use leasehold::{LockError, Locker};

fn yes_no(supported: bool) -> &'static str {
    if supported { "yes" } else { "no" }
}

async fn run(url: &str) -> Result<(), String> {
    let first: Locker = leasehold::connect(url)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let second: Locker = leasehold::connect(url)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let caps = first.backend().capabilities();
    println!("backend {} capabilities: {caps:?}", first.backend().name());
    // The row README.md's backend table must carry (a test compares them).
    println!(
        "capabilities-row: | {} | {:?} | {:?} | {:?} | {:?} | {:?} | {} | {} |",
        first.backend().name(),
        caps.fencing,
        caps.expiry,
        caps.waiting,
        caps.fairness,
        caps.min_ttl,
        yes_no(caps.rw_locks),
        yes_no(caps.semaphores)
    );

    let key = format!("swap-demo:{}", std::process::id());
    let guard = first
        .lock(key.as_str())
        .await
        .map_err(|e| format!("lock: {e}"))?;
    let token = guard.fencing_token();
    println!("first client holds {key} with fencing token {token}");
    match second.try_lock(key.as_str()).await {
        Err(LockError::Contended { .. }) => {
            println!("second client is refused while the first holds it")
        }
        Ok(_) => return Err("mutual exclusion broken: the second client also got the lock".into()),
        Err(e) => return Err(format!("second client: {e}")),
    }
    guard.release().await.map_err(|e| format!("release: {e}"))?;
    let next = second
        .lock_within(key.as_str(), Duration::from_secs(30))
        .await
        .map_err(|e| format!("lock: {e}"))?;
    println!(
        "second client holds it after the release, token {}",
        next.fencing_token()
    );
    if next.fencing_token() <= token && caps.fencing == leasehold::Fencing::Strict {
        return Err(format!(
            "fencing token did not increase: {token} then {}",
            next.fencing_token()
        ));
    }
    next.release().await.map_err(|e| format!("release: {e}"))?;
    println!("OK: {} works through the same code", first.backend().name());
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let url = std::env::var("LEASEHOLD_URL").unwrap_or_else(|_| "memory://".to_owned());
    match run(&url).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("FAILED on {url}: {e}");
            ExitCode::FAILURE
        }
    }
}
