//! A 3-node etcd cluster (three containers on a private docker network made
//! by the test, client ports published on 127.0.0.1): the leader is stopped
//! while locks are held and contended. No two holders may ever be valid at
//! once, and locks can be taken again after recovery.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

use common::key;
use leasehold_conformance::fixtures::{self, ContainerSpec, Network};
use leasehold_core::{LockBackend, LockError, WaitPolicy};
use leasehold_etcd::{EtcdBackend, EtcdConfig};

/// A node of the cluster: its client port published on 127.0.0.1:`host_port`
/// and advertised there; the cluster's flags follow.
fn cluster_node(host_port: u16) -> ContainerSpec {
    fixtures::etcd_spec()
        .cmd([
            "etcd",
            "--listen-client-urls",
            "http://0.0.0.0:2379",
            "--advertise-client-urls",
            &format!("http://127.0.0.1:{host_port}"),
        ])
        .host_port(host_port)
}

#[derive(Clone, Copy, Debug)]
struct Window {
    token: u64,
    start: Instant,
    end: Instant,
}

async fn leader_index(ports: &[u16], stopped: Option<usize>) -> Option<usize> {
    for (i, port) in ports.iter().enumerate() {
        if Some(i) == stopped {
            continue;
        }
        let Ok(Ok(mut client)) = tokio::time::timeout(
            Duration::from_secs(2),
            etcd_client::Client::connect([format!("http://127.0.0.1:{port}")], None),
        )
        .await
        else {
            continue;
        };
        if let Ok(Ok(status)) = tokio::time::timeout(Duration::from_secs(2), client.status()).await
            && status.header().map(|h| h.member_id()) == Some(status.leader())
        {
            return Some(i);
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_leader_never_yields_two_valid_holders() {
    if std::env::var("LEASEHOLD_TEST_ETCD_URL").is_ok() {
        println!("skipped: the cluster test starts its own containers");
        return;
    }
    let run = fixtures::run_id();
    let network = Network::create("etcd").expect("create the cluster's docker network");
    let ports: Vec<u16> = (0..3).map(|_| fixtures::free_port().unwrap()).collect();
    let names: Vec<String> = (1..=3)
        .map(|i| format!("{}-n{i}", network.name()))
        .collect();
    let initial_cluster = names
        .iter()
        .enumerate()
        .map(|(i, name)| format!("n{}=http://{name}:2380", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let specs: Vec<ContainerSpec> = (0..3)
        .map(|i| {
            cluster_node(ports[i])
                .args([
                    "--name",
                    &format!("n{}", i + 1),
                    "--data-dir",
                    "/etcd-data",
                    "--listen-peer-urls",
                    "http://0.0.0.0:2380",
                    "--initial-advertise-peer-urls",
                    &format!("http://{}:2380", names[i]),
                    "--initial-cluster",
                    &initial_cluster,
                    "--initial-cluster-token",
                    run,
                    "--initial-cluster-state",
                    "new",
                ])
                .on_network(&network, names[i].clone())
        })
        .collect();
    // Each node reports ready only once a quorum exists: start all at once.
    let (a, b, c) = tokio::join!(
        fixtures::start(&specs[0]),
        fixtures::start(&specs[1]),
        fixtures::start(&specs[2])
    );
    let nodes = [a.unwrap(), b.unwrap(), c.unwrap()];
    let url = format!(
        "etcd://{}",
        ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let namespace = format!("lh-test/{run}/");
    let options = EtcdConfig::default()
        .namespace(namespace)
        .timeout(Duration::from_secs(2));

    let windows = Arc::new(Mutex::new(Vec::<Window>::new()));
    let errors = Arc::new(Mutex::new(
        std::collections::BTreeMap::<&'static str, u64>::new(),
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let acquired = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..4 {
        // One backend (client and sessions) per worker, as separate processes.
        let backend = EtcdBackend::connect_with(common::at(&url, options.clone()))
            .await
            .unwrap();
        let (windows, errors, stop, acquired) = (
            windows.clone(),
            errors.clone(),
            stop.clone(),
            acquired.clone(),
        );
        workers.push(tokio::spawn(async move {
            let k = key("contended");
            while !stop.load(Ordering::SeqCst) {
                match backend
                    .acquire(
                        &k,
                        Duration::from_secs(3),
                        &WaitPolicy::new(Duration::from_secs(5)),
                    )
                    .await
                {
                    Ok(lease) => {
                        let start = Instant::now();
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        let end = Instant::now().min(lease.valid_until());
                        windows.lock().unwrap().push(Window {
                            token: lease.fencing_token().get(),
                            start,
                            end,
                        });
                        acquired.fetch_add(1, Ordering::SeqCst);
                        if let Err(error) = backend.release(&lease).await {
                            *errors.lock().unwrap().entry(kind(&error)).or_default() += 1;
                        }
                    }
                    Err(error) => {
                        *errors.lock().unwrap().entry(kind(&error)).or_default() += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }));
    }
    let wait_for_progress = |from: u64, what: &'static str| {
        let acquired = acquired.clone();
        async move {
            let until = Instant::now() + Duration::from_secs(30);
            while acquired.load(Ordering::SeqCst) < from + 20 {
                assert!(Instant::now() < until, "no progress {what}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_for_progress(0, "before the leader stopped").await;
    let leader = leader_index(&ports, None).await.expect("a leader");
    let before_stop = acquired.load(Ordering::SeqCst);
    let stopped_at = Instant::now();
    nodes[leader].stop(None).await.unwrap();
    println!(
        "stopped the leader n{} after {before_stop} acquisitions",
        leader + 1
    );
    wait_for_progress(acquired.load(Ordering::SeqCst), "after the leader stopped").await;
    let new_leader = leader_index(&ports, Some(leader)).await;
    println!(
        "locks were taken again {:?} after the leader stopped; new leader {:?}",
        stopped_at.elapsed(),
        new_leader.map(|i| format!("n{}", i + 1))
    );
    nodes[leader].start().await.unwrap();
    wait_for_progress(
        acquired.load(Ordering::SeqCst),
        "after the old leader returned",
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    for worker in workers {
        tokio::time::timeout(Duration::from_secs(30), worker)
            .await
            .unwrap()
            .unwrap();
    }

    let mut windows = windows.lock().unwrap().clone();
    windows.sort_by_key(|w| w.start);
    for pair in windows.windows(2) {
        assert!(
            pair[0].end <= pair[1].start,
            "two valid holders at once: {:?} and {:?}",
            pair[0],
            pair[1]
        );
        assert!(
            pair[0].token < pair[1].token,
            "fencing tokens went backwards: {:?} then {:?}",
            pair[0],
            pair[1]
        );
    }
    println!(
        "{} holder windows, none overlapping, tokens increasing; errors seen by workers: {:?}",
        windows.len(),
        errors.lock().unwrap()
    );
    // Recovery: a new client takes the lock at once.
    let backend = EtcdBackend::connect_with(common::at(&url, options))
        .await
        .unwrap();
    let lease = backend
        .try_acquire(&key("contended"), Duration::from_secs(3))
        .await
        .unwrap();
    assert!(lease.fencing_token().get() > windows.last().unwrap().token);
    backend.release(&lease).await.unwrap();
}

fn kind(error: &LockError) -> &'static str {
    error.kind()
}
