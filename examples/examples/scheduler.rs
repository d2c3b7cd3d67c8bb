//! A job that runs at most once per interval across several instances
//! (ShedLock's use case): each instance ticks often and runs the job only if
//! it takes the job's lock; the lock is not released after the run but left
//! to expire one interval later, so no other instance runs it again within
//! the interval.
//!
//! Run: `cargo run --example scheduler` (or set `LEASEHOLD_URL`).

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use leasehold::{LockError, Locker, Options, TtlPolicy};

const INTERVAL: Duration = Duration::from_millis(500);
const RUN_FOR: Duration = Duration::from_millis(2600);
const INSTANCES: usize = 4;

#[tokio::main]
async fn main() -> ExitCode {
    let url = std::env::var("LEASEHOLD_URL").unwrap_or_else(|_| "memory://scheduler".to_owned());
    let options = Options::new()
        .ttl(TtlPolicy::Fixed(INTERVAL))
        .auto_extend(false);
    let runs = Arc::new(AtomicU32::new(0));
    let started = tokio::time::Instant::now();
    let mut instances = Vec::new();
    for instance in 0..INSTANCES {
        let locker: Locker = match leasehold::connect_with(&url, options.clone()).await {
            Ok(locker) => locker,
            Err(e) => {
                eprintln!("connect {url}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let runs = runs.clone();
        instances.push(tokio::spawn(async move {
            let mut held = Vec::new();
            while started.elapsed() < RUN_FOR {
                match locker.try_lock("job:nightly-report").await {
                    Ok(guard) => {
                        runs.fetch_add(1, Ordering::SeqCst);
                        println!(
                            "{:>5} ms: instance {instance} runs the job (token {})",
                            started.elapsed().as_millis(),
                            guard.fencing_token()
                        );
                        held.push(guard); // kept until it expires: at most once per interval
                    }
                    Err(LockError::Contended { .. }) => {}
                    Err(e) => eprintln!("instance {instance}: {e}"),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // Dropping releases in the background; the leases have expired, so
            // that release is refused (NotHeld) and can never free someone else's.
            drop(held);
        }));
    }
    for instance in instances {
        instance.await.expect("instance task");
    }
    let runs = runs.load(Ordering::SeqCst);
    let most = (RUN_FOR.as_millis() / INTERVAL.as_millis()) as u32 + 1;
    println!(
        "{INSTANCES} instances over {RUN_FOR:?} with a {INTERVAL:?} interval ran the job {runs} times (at most {most} allowed)"
    );
    if runs >= 1 && runs <= most {
        println!("OK: at most once per interval");
        ExitCode::SUCCESS
    } else {
        println!("FAILED");
        ExitCode::FAILURE
    }
}
