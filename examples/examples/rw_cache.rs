//! A shared price cache guarded by a fenced reader–writer lock, and a report
//! export limited to two at a time by a semaphore, across "processes" (one
//! `Locker` each) on any store that has both (`LEASEHOLD_URL`, default
//! `memory://`).
//!
//! - Readers of the cache share the read lock; a refresher takes the write
//!   lock and rewrites the cache in two steps (price, then its checksum),
//!   with an await in between. A reader that saw a half-written cache would
//!   find the checksum wrong: under the lock none does.
//! - The cache accepts a write only with a fencing token above the last one
//!   it accepted, so a refresher paused past its lease could not overwrite a
//!   newer one.
//! - Six exports compete for a semaphore of two permits: never more than two
//!   run at once, and every permit's token is new.
//!
//! Run: `cargo run --example rw_cache` (or set `LEASEHOLD_URL`). Exits
//! non-zero if any claim fails.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use leasehold::{FencingToken, LockError};
use tokio::sync::Mutex;

/// The protected resource: a price and its checksum, written in two steps,
/// accepting writes only from the newest writer's token.
#[derive(Default)]
struct Cache {
    price: AtomicU64,
    checksum: AtomicU64,
    last_token: Mutex<u64>,
}

impl Cache {
    fn checksum_of(price: u64) -> u64 {
        price.wrapping_mul(31).wrapping_add(7)
    }

    async fn write(&self, token: FencingToken, price: u64) -> Result<(), String> {
        let mut last = self.last_token.lock().await;
        if token.get() <= *last {
            return Err(format!("stale write with token {token} (last {last})"));
        }
        *last = token.get();
        self.price.store(price, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(2)).await; // the torn moment
        self.checksum
            .store(Self::checksum_of(price), Ordering::SeqCst);
        Ok(())
    }

    fn read_consistent(&self) -> bool {
        let price = self.price.load(Ordering::SeqCst);
        self.checksum.load(Ordering::SeqCst) == Self::checksum_of(price)
    }
}

async fn run(url: &str) -> Result<(), String> {
    let mut lockers = Vec::new();
    for _ in 0..4 {
        lockers.push(
            leasehold::connect(url)
                .await
                .map_err(|e| format!("connect: {e}"))?,
        );
    }
    let caps = lockers[0].backend().capabilities();
    if !caps.rw_locks || !caps.semaphores {
        println!(
            "{} has rw_locks={} semaphores={}: nothing to show here",
            lockers[0].backend().name(),
            caps.rw_locks,
            caps.semaphores
        );
        return Ok(());
    }
    let run_id = std::process::id();
    let cache = Arc::new(Cache::default());
    cache.price.store(100, Ordering::SeqCst);
    cache
        .checksum
        .store(Cache::checksum_of(100), Ordering::SeqCst);

    // Readers and refreshers on the cache's reader–writer lock.
    let cache_key = format!("cache:prices:{run_id}");
    let torn = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for (i, locker) in lockers.iter().enumerate() {
        let (locker, cache, torn, key) = (
            locker.clone(),
            cache.clone(),
            torn.clone(),
            cache_key.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let lock = locker.rw_lock(key.as_str()).map_err(|e| e.to_string())?;
            for round in 0..10u64 {
                if (i as u64 + round).is_multiple_of(5) {
                    let guard = lock.write().await.map_err(|e| e.to_string())?;
                    cache
                        .write(guard.fencing_token(), 100 + round * 10 + i as u64)
                        .await?;
                    guard.release().await.map_err(|e| e.to_string())?;
                } else {
                    let guard = lock.read().await.map_err(|e| e.to_string())?;
                    if !cache.read_consistent() {
                        torn.fetch_add(1, Ordering::SeqCst);
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    guard.release().await.map_err(|e| e.to_string())?;
                }
            }
            Ok::<_, String>(())
        }));
    }
    for task in tasks {
        task.await.map_err(|e| e.to_string())??;
    }
    let torn = torn.load(Ordering::SeqCst);
    println!(
        "cache: 40 rounds of reads and refreshes, last writer token {}, torn reads {torn}",
        cache.last_token.lock().await
    );
    if torn > 0 {
        return Err(format!("{torn} readers saw a half-written cache"));
    }

    // Exports limited to two at a time.
    let export_key = format!("reports:export:{run_id}");
    let running = Arc::new(AtomicU32::new(0));
    let most = Arc::new(AtomicU32::new(0));
    let tokens = Arc::new(Mutex::new(Vec::new()));
    let mut exports = Vec::new();
    for export in 0..6 {
        let locker = lockers[export % lockers.len()].clone();
        let (key, running, most, tokens) = (
            export_key.clone(),
            running.clone(),
            most.clone(),
            tokens.clone(),
        );
        exports.push(tokio::spawn(async move {
            let permits = locker
                .semaphore(key.as_str(), 2)
                .map_err(|e| e.to_string())?;
            let permit = permits.acquire().await.map_err(|e| e.to_string())?;
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            tokens.lock().await.push(permit.fencing_token().get());
            tokio::time::sleep(Duration::from_millis(20)).await; // the export
            running.fetch_sub(1, Ordering::SeqCst);
            permit.release().await.map_err(|e: LockError| e.to_string())
        }));
    }
    for export in exports {
        export.await.map_err(|e| e.to_string())??;
    }
    let most = most.load(Ordering::SeqCst);
    let mut tokens = tokens.lock().await.clone();
    let issued = tokens.len();
    tokens.sort_unstable();
    tokens.dedup();
    println!(
        "exports: 6 done, at most {most} at once (semaphore of 2), {} distinct permit tokens",
        tokens.len()
    );
    if most > 2 {
        return Err(format!("{most} exports ran at once on a semaphore of 2"));
    }
    if tokens.len() != issued {
        return Err("two permits shared a fencing token".into());
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let url = std::env::var("LEASEHOLD_URL").unwrap_or_else(|_| "memory://rw-cache".to_owned());
    match run(&url).await {
        Ok(()) => {
            println!("OK: reader-writer lock and semaphore held on {url}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}
