//! What ZooKeeper's queue recipe costs over a bare ephemeral node, step by
//! step, in one run, interleaved: p50 of each as a ratio to the bare pair,
//! then operations per second with `--tasks` tasks (default 64, each on its
//! own key) as a ratio to the bare pair's, the median of five interleaved
//! rounds after a warm-up round:
//!
//! `cargo run --release -p leasehold-benches --bin zk_queue_cost [-- --samples N --tasks N]`
//!
//! - raw: create an ephemeral node, delete it (the benchmark's raw baseline);
//! - sequential: create an ephemeral *sequential* node under the key's
//!   container node, delete it (the queue's node, nothing read);
//! - sequential + listing: the same with the key's children listed in the
//!   same flight (sent right after the create, read after it): what the
//!   recipe needs to learn that its node heads the queue;
//! - backend: `try_acquire` + `release`;
//! - locker: `Locker::try_lock` + `release`.

use std::sync::Arc;
use std::time::Duration;

use leasehold_benches::harness::{self, Op};
use leasehold_benches::stores;
use leasehold_conformance::fixtures;
use leasehold_core::{Key, LockBackend, Locker};
use leasehold_zookeeper::zookeeper_client::{Acls, Client, CreateMode};

use stores::{ZK_RAW_PARENT as PARENT, err, op};

/// Create an ephemeral sequential node under the key's container node
/// (optionally listing the key's children in the same flight), then delete
/// it.
fn queue_node_pair(client: Client, list: bool) -> Op {
    op(move |key: String| {
        let client = client.clone();
        async move {
            let parent = format!("{PARENT}/{}", key.replace('/', "_"));
            let prefix = format!("{parent}/n-");
            let options = CreateMode::EphemeralSequential.with_acls(Acls::anyone_all());
            let sequence = loop {
                let created = client.create(&prefix, b"holder label", &options);
                let listed = list.then(|| client.list_children(&parent));
                match created.await {
                    Ok((_, sequence)) => {
                        if let Some(listed) = listed {
                            listed.await.map_err(err)?;
                        }
                        break sequence;
                    }
                    // The key's container node, made once (as the backend does).
                    Err(leasehold_zookeeper::zookeeper_client::Error::NoNode) => {
                        let container = CreateMode::Container.with_acls(Acls::anyone_all());
                        match client.create(&parent, &[], &container).await {
                            Ok(_)
                            | Err(leasehold_zookeeper::zookeeper_client::Error::NodeExists) => {}
                            Err(e) => return Err(err(e)),
                        }
                    }
                    Err(e) => return Err(err(e)),
                }
            };
            client
                .delete(&format!("{prefix}{sequence}"), None)
                .await
                .map_err(err)
        }
    })
}

fn backend_pair(backend: Arc<dyn LockBackend>) -> Op {
    op(move |key: String| {
        let backend = backend.clone();
        async move {
            let key = Key::new(format!("backend/{key}")).map_err(err)?;
            let lease = backend
                .try_acquire(&key, Duration::from_secs(10))
                .await
                .map_err(err)?;
            backend.release(&lease).await.map_err(err)
        }
    })
}

fn locker_pair(locker: Locker) -> Op {
    op(move |key: String| {
        let locker = locker.clone();
        async move {
            let guard = locker
                .try_lock(format!("locker/{key}"))
                .await
                .map_err(err)?;
            guard.release().await.map_err(err)
        }
    })
}

/// Throughput rounds: each runs every step once, in turn. The first is a
/// warm-up, not counted: the server's JIT and caches made the first
/// round's figures swing by a factor of two.
const ROUNDS: usize = 6;
/// Each step's throughput window.
const WINDOW: Duration = Duration::from_millis(2500);

async fn run(samples: usize, tasks: usize) -> Result<(), String> {
    let store = fixtures::start(&fixtures::zookeeper_spec()).await?;
    let url = format!("zk://127.0.0.1:{}", store.port);
    let backend = stores::retry_connect("zookeeper", Duration::from_secs(90), || async {
        leasehold_zookeeper::ZkBackend::connect(&url)
            .await
            .map_err(err)
    })
    .await?;
    let client = backend.client().await.map_err(err)?;
    stores::zk_prepare(&client).await?;
    let backend: Arc<dyn LockBackend> = Arc::new(backend);
    let locker = Locker::builder_from_arc(backend.clone()).build();
    let names = [
        "raw: ephemeral create + delete",
        "sequential create + delete",
        "sequential create + listing + delete",
        "backend try_acquire + release",
        "Locker try_lock + release",
    ];
    let ops = [
        stores::zk_raw(client.clone()),
        queue_node_pair(client.clone(), false),
        queue_node_pair(client, true),
        backend_pair(backend),
        locker_pair(locker),
    ];
    let p = harness::latency("zk-queue-cost", &ops, samples, samples / 10).await?;
    println!("ZooKeeper 3.8 stand-in (container, loopback), {samples} samples, interleaved");
    println!("| steps | p50 | p99 | p50 / raw p50 |");
    println!("|---|---|---|---|");
    let raw = p[0].p50;
    for (name, p) in names.iter().zip(&p) {
        println!(
            "| {name} | {:.0} µs | {:.0} µs | {:.2} |",
            p.p50,
            p.p99,
            p.p50 / raw
        );
    }
    let mut rates = vec![Vec::with_capacity(ROUNDS); ops.len()];
    for round in 0..ROUNDS {
        for (i, op) in ops.iter().enumerate() {
            // Keys of a step's own: the queue steps leave container nodes
            // behind (removed by the server later) where raw creates nodes.
            let label = format!("zk-queue-cost-{i}");
            let rate = harness::throughput(&label, op, tasks, WINDOW).await?;
            if round > 0 {
                rates[i].push(rate);
            }
        }
    }
    let medians: Vec<f64> = rates
        .iter_mut()
        .map(|rates| {
            rates.sort_by(f64::total_cmp);
            rates[rates.len() / 2]
        })
        .collect();
    println!();
    println!(
        "{tasks} tasks, each on its own key: median of {} interleaved {WINDOW:?} rounds \
         after a warm-up round",
        ROUNDS - 1
    );
    println!("| steps | ops/s | ops/s / raw ops/s |");
    println!("|---|---|---|");
    for (name, ops) in names.iter().zip(&medians) {
        println!("| {name} | {ops:.0} | {:.2} |", ops / medians[0]);
    }
    drop(store);
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let samples = leasehold_benches::flag("--samples").unwrap_or(1000);
    let tasks = leasehold_benches::flag("--tasks").unwrap_or(64);
    leasehold_benches::finish("zk_queue_cost", run(samples, tasks).await)
}
