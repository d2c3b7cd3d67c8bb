//! Acquisition latency with 5 servers is about that of the slowest server,
//! not the sum: the requests go out in parallel.
//!
//! Every link gets the same artificial delay (a userspace proxy holds each
//! client→server chunk for `DELAY`), so a one-by-one implementation would take
//! about 5 × `DELAY` with 5 servers and 1 × `DELAY` with one. The median
//! 5-server/1-server ratio is printed and asserted only loosely (< 3; a
//! sequential fan-out would be ≈ 5), since timings on a shared machine are
//! noisy. The same ratio without delay (plain loopback) is printed too.

mod support;

use std::time::Duration;

use leasehold_conformance::proxy::Proxy;
use leasehold_core::{Key, LockBackend};
use leasehold_redlock::RedlockBackend;
use tokio::time::Instant;

const DELAY: Duration = Duration::from_millis(20);
const SAMPLES: usize = 21;

async fn connect(hosts: &[String]) -> RedlockBackend {
    let url = format!("redlock://{}?timeout=2s", hosts.join(","));
    RedlockBackend::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"))
}

/// Median time of `try_acquire` (release not timed), alternating backends so
/// both see the same noise.
async fn medians(backends: &[&RedlockBackend]) -> Vec<Duration> {
    let ttl = Duration::from_secs(10);
    let mut samples = vec![Vec::new(); backends.len()];
    for round in 0..SAMPLES + 3 {
        for (b, backend) in backends.iter().enumerate() {
            let key = Key::new(format!("latency/{b}/{round}")).unwrap();
            let started = Instant::now();
            let lease = backend.try_acquire(&key, ttl).await.expect("acquire");
            let took = started.elapsed();
            backend.release(&lease).await.expect("release");
            if round >= 3 {
                samples[b].push(took); // the first rounds warm connections up
            }
        }
    }
    samples
        .into_iter()
        .map(|mut s| {
            s.sort();
            s[s.len() / 2]
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_servers_cost_about_the_slowest_server_not_the_sum() {
    let Some(cluster) = support::cluster(5).await else {
        return;
    };
    let mut proxies = Vec::new();
    for container in &cluster.containers {
        let proxy = Proxy::start(container.port).await.expect("start a proxy");
        proxy.set_delay(DELAY);
        proxies.push(proxy);
    }
    let delayed: Vec<String> = proxies.iter().map(Proxy::addr).collect();
    let direct: Vec<String> = cluster
        .containers
        .iter()
        .map(|c| format!("127.0.0.1:{}", c.port))
        .collect();
    let five_delayed = connect(&delayed).await;
    let one_delayed = connect(&delayed[..1]).await;
    let five_direct = connect(&direct).await;
    let one_direct = connect(&direct[..1]).await;

    let m = medians(&[&five_delayed, &one_delayed]).await;
    let delayed_ratio = m[0].as_secs_f64() / m[1].as_secs_f64();
    println!(
        "with {DELAY:?} per link: median acquire 5 servers {:?}, 1 server {:?}, ratio {delayed_ratio:.2} (one by one would be ~5)",
        m[0], m[1]
    );
    let d = medians(&[&five_direct, &one_direct]).await;
    let direct_ratio = d[0].as_secs_f64() / d[1].as_secs_f64();
    println!(
        "plain loopback: median acquire 5 servers {:?}, 1 server {:?}, ratio {direct_ratio:.2}",
        d[0], d[1]
    );
    assert!(
        m[1] >= DELAY,
        "the delay proxy did not delay ({:?} with one server)",
        m[1]
    );
    assert!(
        delayed_ratio < 3.0,
        "5 servers took {delayed_ratio:.2}x one server's time: the requests do not go out in parallel"
    );
}
