//! The classic oversell: many buyers race for the last units of one item.
//! Without a lock the stock record is read-modified-written concurrently and
//! more units are sold than exist; with the lock, never. The stock record is
//! fenced: it rejects a write carrying an older fencing token, so a buyer
//! that was paused past its lease cannot write a stale value.
//!
//! Run: `cargo run --example inventory` (or set `LEASEHOLD_URL`).

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use leasehold::{LockError, Locker};

const UNITS: u64 = 5;
const BUYERS: u64 = 20;

/// A stock record in "the database": remembers the highest fencing token it
/// accepted and rejects writes with a lower one.
struct FencedStock {
    state: Mutex<(u64, u64)>, // (units left, highest token accepted)
}

impl FencedStock {
    fn new(units: u64) -> Self {
        FencedStock {
            state: Mutex::new((units, 0)),
        }
    }
    fn read(&self) -> u64 {
        self.state.lock().unwrap().0
    }
    fn write(&self, token: u64, left: u64) -> Result<(), u64> {
        let mut state = self.state.lock().unwrap();
        if token < state.1 {
            return Err(state.1);
        }
        *state = (left, token);
        Ok(())
    }
}

async fn buy(stock: &FencedStock, token: u64) -> bool {
    let left = stock.read();
    tokio::time::sleep(Duration::from_millis(5)).await; // the payment call
    if left == 0 {
        return false;
    }
    // A successful write is a unit promised to a customer.
    stock.write(token, left - 1).is_ok()
}

async fn race(locker: Option<Locker>) -> u64 {
    let stock = Arc::new(FencedStock::new(UNITS));
    let mut buyers = Vec::new();
    for _ in 0..BUYERS {
        let (stock, locker) = (stock.clone(), locker.clone());
        buyers.push(tokio::spawn(async move {
            match locker {
                None => buy(&stock, u64::MAX).await,
                Some(locker) => {
                    let guard = locker.lock("stock:sku-42").await.expect("lock");
                    let bought = buy(&stock, guard.fencing_token().get()).await;
                    guard.release().await.expect("release");
                    bought
                }
            }
        }));
    }
    let mut sold = 0;
    for buyer in buyers {
        sold += u64::from(buyer.await.expect("buyer task"));
    }
    sold
}

async fn paused_buyer_is_fenced(url: &str) -> Result<bool, LockError> {
    let locker = leasehold::connect_with(url, leasehold::Options::new().auto_extend(false)).await?;
    let stock = FencedStock::new(UNITS);
    let ttl = Duration::from_millis(300);
    let slow = Locker::builder_from_arc(locker.backend().clone())
        .ttl(leasehold::TtlPolicy::Fixed(ttl))
        .auto_extend(false)
        .build();
    let paused = slow.lock("stock:sku-7").await?;
    let stale_read = stock.read();
    // The buyer pauses (a GC pause, a stalled VM) past its TTL...
    paused.lost().await;
    // ...someone else takes the lock and writes...
    let fresh = locker.lock("stock:sku-7").await?;
    stock
        .write(fresh.fencing_token().get(), stock.read() - 1)
        .expect("fresh write");
    fresh.release().await?;
    // ...and the paused buyer wakes up and writes its stale value.
    let rejected = stock
        .write(paused.fencing_token().get(), stale_read - 1)
        .is_err();
    println!(
        "paused buyer (token {}) wrote after a newer holder: {}",
        paused.fencing_token(),
        if rejected {
            "REJECTED by the fenced record"
        } else {
            "accepted (stale write!)"
        }
    );
    Ok(rejected)
}

#[tokio::main]
async fn main() -> ExitCode {
    let url = std::env::var("LEASEHOLD_URL").unwrap_or_else(|_| "memory://inventory".to_owned());
    let unlocked = race(None).await;
    println!("without a lock: {BUYERS} buyers sold {unlocked} of {UNITS} units");
    let locker = match leasehold::connect(&url).await {
        Ok(locker) => locker,
        Err(e) => {
            eprintln!("connect {url}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let locked = race(Some(locker)).await;
    println!("with the lock:  {BUYERS} buyers sold {locked} of {UNITS} units");
    let fenced = match paused_buyer_is_fenced(&url).await {
        Ok(fenced) => fenced,
        Err(e) => {
            eprintln!("paused buyer demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    if locked == UNITS && fenced {
        println!("OK: never oversold with the lock, and the stale write was rejected");
        ExitCode::SUCCESS
    } else {
        println!("FAILED: sold {locked} of {UNITS} with the lock, stale write rejected: {fenced}");
        ExitCode::FAILURE
    }
}
