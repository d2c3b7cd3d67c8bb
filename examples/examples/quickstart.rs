//! Acquire a lock, read its fencing token, keep it past its TTL by
//! auto-extension, and release it — on the embedded in-memory backend, or on
//! the store `LEASEHOLD_URL` names.
//!
//! Run: `cargo run --example quickstart`, or with a Redis:
//! `LEASEHOLD_URL='redis://127.0.0.1:6379?ttl=1s' cargo run -p leasehold-examples --features redis --example quickstart`

use std::time::Duration;

use leasehold::{LockError, TtlPolicy};

#[tokio::main]
async fn main() -> Result<(), LockError> {
    let url = std::env::var(leasehold::URL_ENV)
        .unwrap_or_else(|_| "memory://quickstart?ttl=300ms".to_owned());
    let locker = leasehold::connect(&url).await?;
    let ttl = match locker.ttl_policy() {
        TtlPolicy::Fixed(ttl) => *ttl,
        TtlPolicy::Adaptive(_) => Duration::from_secs(30),
    };

    let guard = locker.lock("orders:42").await?;
    println!(
        "acquired orders:42 with fencing token {}",
        guard.fencing_token()
    );

    // Hold it for three TTLs: the guard's watchdog extends it at a third of the TTL.
    tokio::select! {
        () = tokio::time::sleep(ttl * 3) => println!("still held after {:?} (3 x TTL): auto-extended", ttl * 3),
        () = guard.lost() => println!("lost the lock; stopping work"),
    }
    // Not re-entrant: this task asking again is told so at once.
    match locker.try_lock("orders:42").await {
        Err(LockError::AlreadyHeld { .. }) => {
            println!("asking again from the same task: AlreadyHeld (not re-entrant)")
        }
        other => println!("unexpected: {other:?}"),
    }
    // Another client (another process, in real life) is refused.
    let other = leasehold::connect(&url).await?;
    match other.try_lock("orders:42").await {
        Err(LockError::Contended { holder, .. }) => {
            let token = holder
                .and_then(|h| h.fencing_token)
                .map(|t| t.to_string())
                .unwrap_or_default();
            println!("a second try_lock is refused: held by token {token}");
        }
        other => println!("unexpected: {other:?}"),
    }

    guard.release().await?;
    println!("released");

    let next = locker.lock("orders:42").await?;
    println!(
        "re-acquired with a higher fencing token {}",
        next.fencing_token()
    );
    next.release().await?;
    Ok(())
}
