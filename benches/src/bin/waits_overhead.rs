//! What the deadlock tooling costs on Redis: the same workloads through a
//! `Locker` with the waiters registry and the lock-order check on (the
//! defaults) and one with both off, in one run, interleaved, as ratios.
//!
//! `cargo run --release -p leasehold-benches --bin waits_overhead [-- --seconds N]`
//!
//! - lock+unlock p50 on a free key (neither feature touches the store);
//! - nested lock+unlock p50 (`outer:` then `inner:`: the order check looks
//!   at what the task holds);
//! - 64 tasks, each on its own key: throughput;
//! - 64 tasks on one hot key (every acquisition waits; each wait that
//!   lasts past `waits::RECORD_AFTER` records, renews and removes an
//!   entry): throughput.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use leasehold_benches::harness::{self, Op};
use leasehold_conformance::fixtures;
use leasehold_core::{LockBackend, LockOrder, Locker, TtlPolicy, WaitPolicy};

fn locker(backend: &Arc<dyn LockBackend>, on: bool) -> Locker {
    let builder = Locker::builder_from_arc(backend.clone())
        .ttl(TtlPolicy::Fixed(Duration::from_secs(10)))
        .wait(WaitPolicy::new(Duration::from_secs(60)));
    if on {
        builder.build()
    } else {
        builder
            .record_waits(false)
            .lock_order(LockOrder::Off)
            .build()
    }
}

/// `lock` then release, on `key` or, when `hot` is set, on that one key.
fn lock_unlock(locker: Locker, hot: Option<&'static str>) -> Op {
    Arc::new(move |key: String| {
        let locker = locker.clone();
        Box::pin(async move {
            let key = hot.map_or(key, str::to_owned);
            let guard = locker.lock(key).await.map_err(|e| e.to_string())?;
            guard.release().await.map_err(|e| e.to_string())
        }) as BoxFuture<'static, _>
    })
}

/// `outer:<key>` then `inner:<key>`, released in reverse.
fn nested(locker: Locker) -> Op {
    Arc::new(move |key: String| {
        let locker = locker.clone();
        Box::pin(async move {
            let outer = locker
                .lock(format!("outer:{key}"))
                .await
                .map_err(|e| e.to_string())?;
            let inner = locker
                .lock(format!("inner:{key}"))
                .await
                .map_err(|e| e.to_string())?;
            inner.release().await.map_err(|e| e.to_string())?;
            outer.release().await.map_err(|e| e.to_string())
        }) as BoxFuture<'static, _>
    })
}

async fn throughputs(label: &str, on: &Op, off: &Op, seconds: u64) -> Result<(f64, f64), String> {
    let (mut sum_on, mut sum_off) = (0.0, 0.0);
    // Alternate, three rounds each, so drift hits both alike.
    for round in 0..3 {
        let each = Duration::from_secs(seconds);
        sum_on += harness::throughput(&format!("{label}-on-{round}"), on, 64, each).await?;
        sum_off += harness::throughput(&format!("{label}-off-{round}"), off, 64, each).await?;
    }
    Ok((sum_on / 3.0, sum_off / 3.0))
}

async fn run(seconds: u64) -> Result<(), String> {
    let store = fixtures::start(&fixtures::redis_spec(false)).await?;
    let url = format!("redis://127.0.0.1:{}", store.port);
    let backend: Arc<dyn LockBackend> = Arc::new(
        leasehold_redis::RedisBackend::connect(&url)
            .await
            .map_err(|e| e.to_string())?,
    );
    let (on, off) = (locker(&backend, true), locker(&backend, false));

    let ops = [
        lock_unlock(on.clone(), None),
        lock_unlock(off.clone(), None),
    ];
    let flat = harness::latency("waits-flat", &ops, 3000, 300).await?;
    let ops = [nested(on.clone()), nested(off.clone())];
    let deep = harness::latency("waits-nested", &ops, 2000, 200).await?;
    let own = throughputs(
        "waits-own",
        &lock_unlock(on.clone(), None),
        &lock_unlock(off.clone(), None),
        seconds,
    )
    .await?;
    let hot = throughputs(
        "waits-hot",
        &lock_unlock(on, Some("hot:1")),
        &lock_unlock(off, Some("hot:1")),
        seconds,
    )
    .await?;

    println!(
        "Redis 7 (container, loopback); on = record_waits + LockOrder::Warn (defaults), off = both off"
    );
    println!("| workload | on | off | on/off |");
    println!("|---|---|---|---|");
    for (name, p) in [
        ("lock+unlock p50, free key (µs)", &flat),
        ("nested lock+unlock p50 (µs)", &deep),
    ] {
        println!(
            "| {name} | {:.0} | {:.0} | {:.3} |",
            p[0].p50,
            p[1].p50,
            p[0].p50 / p[1].p50
        );
    }
    for (name, (a, b)) in [
        ("64 tasks, own keys (ops/s)", own),
        ("64 tasks, one hot key (ops/s)", hot),
    ] {
        println!("| {name} | {a:.0} | {b:.0} | {:.3} |", a / b);
    }
    drop(store);
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let seconds = leasehold_benches::flag("--seconds").unwrap_or(3);
    leasehold_benches::finish("waits_overhead", run(seconds).await)
}
