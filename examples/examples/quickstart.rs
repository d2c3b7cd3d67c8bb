//! Acquire a lock, read its fencing token, keep it past its TTL by
//! auto-extension, and release it — on the embedded in-memory backend.
//!
//! Run: `cargo run --example quickstart`

use std::time::Duration;

use leasehold::LockError;

#[tokio::main]
async fn main() -> Result<(), LockError> {
    let ttl = Duration::from_millis(300);
    let locker = leasehold::connect("memory://?ttl=300ms").await?;

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
    match locker.try_lock("orders:42").await {
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
