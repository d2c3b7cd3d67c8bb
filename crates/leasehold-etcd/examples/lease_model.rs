//! Measures the raw etcd round trips behind the two lease models, in one run:
//!
//! - per-acquisition lease: `LeaseGrant` + acquire txn + `LeaseRevoke`
//!   (revoke deletes the key);
//! - shared session lease: acquire txn + compare-and-delete txn (the grant is
//!   paid once per session, and one keep-alive renews every lock on it).
//!
//! ```text
//! LEASEHOLD_TEST_ETCD_URL=etcd://127.0.0.1:2379 cargo run -p leasehold-etcd --example lease_model --release
//! ```
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url =
        std::env::var("LEASEHOLD_TEST_ETCD_URL").unwrap_or_else(|_| "etcd://127.0.0.1:2379".into());
    let endpoints: Vec<String> = url
        .trim_start_matches("etcd://")
        .split(',')
        .map(|h| format!("http://{h}"))
        .collect();
    let mut client = Client::connect(endpoints, None).await?;
    let rounds = 300;
    let acquire = |key: &str, lease: i64| {
        Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key,
                "",
                Some(PutOptions::new().with_lease(lease)),
            )])
    };
    // Warm up the connection.
    for _ in 0..20 {
        client.get("warmup", None).await?;
    }
    let mut get = Vec::new();
    let mut per_acquisition = Vec::new();
    let mut session = Vec::new();
    let shared = client.lease_grant(10, None).await?.id();
    for i in 0..rounds {
        let started = Instant::now();
        client.get("lease-model/probe", None).await?;
        get.push(started.elapsed());

        let key = format!("lease-model/a/{i}");
        let started = Instant::now();
        let lease = client.lease_grant(10, None).await?.id();
        client.txn(acquire(&key, lease)).await?;
        client.lease_revoke(lease).await?;
        per_acquisition.push(started.elapsed());

        let key = format!("lease-model/s/{i}");
        let started = Instant::now();
        let created = client.txn(acquire(&key, shared)).await?;
        let revision = created.header().map_or(0, |h| h.revision());
        client
            .txn(
                Txn::new()
                    .when([Compare::create_revision(
                        key.as_str(),
                        CompareOp::Equal,
                        revision,
                    )])
                    .and_then([TxnOp::delete(key.as_str(), None)]),
            )
            .await?;
        session.push(started.elapsed());
    }
    client.lease_revoke(shared).await?;
    for (name, samples) in [
        ("range get (1 RTT)", &mut get),
        ("grant + txn + revoke", &mut per_acquisition),
        ("txn + delete txn (session)", &mut session),
    ] {
        println!(
            "{name:28} p50 {:>8.3} ms  p90 {:>8.3} ms",
            percentile(samples, 0.5).as_secs_f64() * 1e3,
            percentile(samples, 0.9).as_secs_f64() * 1e3
        );
    }
    Ok(())
}
