//! Serves leasehold's metrics for Prometheus on `http://ADDR/metrics` while a
//! small load runs on the in-memory store: two applications in one process
//! (lockers named `checkout` and `billing`), short locks on a few keys,
//! waiters piling up behind a hot key, waits that time out, dropped guards,
//! and every few seconds a lease that an operator forces free through
//! [`leasehold::Admin`] (a force release, then the holder's lost lease).
//!
//! Histograms are rendered with buckets (not as summaries), which the alert
//! rules and dashboard in `ops/` need: copy [`BUCKETS`] or your own.
//!
//! Run: `cargo run -p leasehold-examples --example metrics_exporter -- [SECONDS] [ADDR]`
//! (default 30 s on 127.0.0.1:9464; 0 runs until killed), then
//! `curl -s 127.0.0.1:9464/metrics | grep leasehold_`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use leasehold::{Admin, Key, LockBackend, LockError, Locker, MemoryBackend, TtlPolicy, WaitPolicy};
use metrics_exporter_prometheus::PrometheusBuilder;
use rand::Rng;

/// Histogram buckets in seconds, from sub-millisecond acquisitions to
/// minutes-long holds.
const BUCKETS: [f64; 17] = [
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0, 30.0, 60.0,
];

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(30);
    let addr: SocketAddr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:9464".to_owned())
        .parse()?;
    if !addr.ip().is_loopback() {
        return Err("serve the example's metrics on a loopback address".into());
    }
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets(&BUCKETS)?
        .install()?;
    println!("serving http://{addr}/metrics");

    let backend: Arc<dyn LockBackend> = Arc::new(MemoryBackend::new());
    let locker = |name: &str| {
        Locker::builder_from_arc(backend.clone())
            .name(name)
            .ttl(TtlPolicy::Fixed(Duration::from_millis(300)))
            .wait(WaitPolicy::new(Duration::from_millis(200)))
            .build()
    };
    let (checkout, billing) = (locker("checkout"), locker("billing"));

    let mut load = tokio::task::JoinSet::new();
    // Short locks on a few keys: mostly acquired, some contended waits.
    for worker in 0..4 {
        let locker = if worker % 2 == 0 { &checkout } else { &billing };
        load.spawn(short_locks(locker.clone(), worker));
    }
    // A hot key held for seconds at a time, with waiters piling up behind it
    // and some of them timing out.
    load.spawn(hot_holder(checkout.clone()));
    for _ in 0..3 {
        load.spawn(hot_waiter(checkout.clone()));
    }
    // An operator evicting a stuck holder: a force release, then a lost lease.
    load.spawn(evictions(billing.clone(), Admin::new(backend.clone())));

    if seconds == 0 {
        std::future::pending::<()>().await;
    } else {
        tokio::time::sleep(Duration::from_secs(seconds)).await;
    }
    load.abort_all();
    println!("load done after {seconds} s");
    Ok(())
}

/// Locks one of four keys, holds it a few milliseconds, and releases it (or
/// drops the guard, one time in ten).
async fn short_locks(locker: Locker, worker: usize) {
    loop {
        let (key, hold, drop_it) = {
            let mut rng = rand::rng();
            (
                format!("order:{}", rng.random_range(0..4)),
                Duration::from_millis(rng.random_range(1..20)),
                rng.random_range(0..10) == 0,
            )
        };
        match locker.lock(key.as_str()).await {
            Ok(guard) => {
                tokio::time::sleep(hold).await;
                if drop_it {
                    drop(guard);
                } else if let Err(error) = guard.release().await {
                    eprintln!("worker {worker}: release failed: {error}");
                }
            }
            Err(error) => eprintln!("worker {worker}: {error}"),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Holds `inventory:hot` for about three seconds at a time (renewed by its
/// watchdog), so hold times have a long tail.
async fn hot_holder(locker: Locker) {
    loop {
        if let Ok(guard) = locker.lock("inventory:hot").await {
            tokio::time::sleep(Duration::from_millis(2_500)).await;
            let _ = guard.release().await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits for `inventory:hot`: most waits time out behind the holder.
async fn hot_waiter(locker: Locker) {
    loop {
        match locker
            .lock_within("inventory:hot", Duration::from_millis(400))
            .await
        {
            Ok(guard) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                let _ = guard.release().await;
            }
            Err(LockError::WaitTimedOut { .. }) => {}
            Err(error) => eprintln!("hot waiter: {error}"),
        }
    }
}

/// Every two seconds takes `report:N`, and an operator forces it free: the
/// holder's next renewal finds the lease taken over, and its guard is lost.
async fn evictions(locker: Locker, admin: Admin) {
    for n in 0.. {
        let key = format!("report:{n}");
        if let Ok(guard) = locker.lock(key.as_str()).await {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let evicted = admin
                .force_release(
                    &Key::new(&key).expect("a valid key"),
                    "example: stuck report job",
                )
                .await;
            if let Err(error) = evicted {
                eprintln!("force release of {key} failed: {error}");
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), guard.lost()).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
