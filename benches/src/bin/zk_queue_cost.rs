//! What ZooKeeper's queue recipe costs over a bare ephemeral node, step by
//! step, in one run, interleaved: p50 of each as a ratio to the bare pair
//! (from the main thread, then from a spawned task with the client's CPU
//! per pair), then operations per second with `--tasks` tasks (default 64, each on its
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

use leasehold_benches::harness::Op;
use leasehold_benches::{steps, stores};
use leasehold_conformance::fixtures;
use leasehold_core::LockBackend;
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
    let pairs = vec![
        (
            "raw: ephemeral create + delete",
            stores::zk_raw(client.clone()),
        ),
        (
            "sequential create + delete",
            queue_node_pair(client.clone(), false),
        ),
        (
            "sequential create + listing + delete",
            queue_node_pair(client, true),
        ),
    ];
    steps::compare(
        "zk-queue-cost",
        "ZooKeeper 3.8 stand-in",
        pairs,
        backend,
        samples,
        tasks,
    )
    .await?;
    drop(store);
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let (samples, tasks) = steps::options();
    leasehold_benches::finish("zk_queue_cost", run(samples, tasks).await)
}
