//! A 3-node ZooKeeper ensemble (containers on a private docker network made
//! by this test, client ports published on 127.0.0.1) whose leader is killed
//! while locks are held and contended: no two valid holders ever overlap,
//! tokens keep increasing, and the locks work again after the ensemble
//! recovers.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use leasehold_conformance::fixtures::{self, Container, Network};
use leasehold_core::{FencingToken, Key, LockBackend, WaitPolicy};
use leasehold_zookeeper::ZkBackend;
use tokio::time::Instant;

const CLIENTS: usize = 3;

/// One holding: from the moment acquire returned to the moment the holder
/// stopped acting (release started, or validity ended, whichever is first).
#[derive(Clone, Debug)]
struct Window {
    start: Instant,
    end: Instant,
    token: FencingToken,
    client: usize,
}

async fn until(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Which server leads now (index into `ports`), asking each with `srvr`.
async fn leader(ports: &[u16]) -> Option<usize> {
    for (i, port) in ports.iter().enumerate() {
        if common::four_letter(*port, "srvr")
            .await
            .contains("Mode: leader")
        {
            return Some(i);
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_never_lets_two_holders_overlap_and_locks_recover() {
    let network = Network::create("zk").expect("create the ensemble's docker network");
    let names: Vec<String> = (1..=3)
        .map(|i| format!("{}-zk{i}", network.name()))
        .collect();
    let servers = names
        .iter()
        .enumerate()
        .map(|(i, name)| format!("server.{}={name}:2888:3888;2181", i + 1))
        .collect::<Vec<_>>()
        .join(" ");
    let mut starting = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let spec = common::spec()
            .env("ZOO_MY_ID", (i + 1).to_string())
            .env("ZOO_SERVERS", servers.clone())
            .on_network(&network, name.clone());
        starting.push(tokio::spawn(async move { fixtures::start(&spec).await }));
    }
    let mut nodes: Vec<Container> = Vec::new();
    for task in starting {
        nodes.push(task.await.unwrap().expect("start an ensemble member"));
    }
    let ports: Vec<u16> = nodes.iter().map(|node| node.port).collect();
    for port in &ports {
        common::wait_serving(*port, Duration::from_secs(120)).await;
    }
    let hosts = ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");

    let keys = [
        (
            Key::new("ensemble/short").unwrap(),
            Duration::from_millis(20),
        ),
        (
            Key::new("ensemble/long").unwrap(),
            Duration::from_millis(1500),
        ),
    ];
    let windows: Arc<Mutex<Vec<Vec<Window>>>> = Arc::new(Mutex::new(vec![Vec::new(); keys.len()]));
    let acquired: Arc<Vec<AtomicUsize>> =
        Arc::new((0..keys.len()).map(|_| AtomicUsize::new(0)).collect());
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for client in 0..CLIENTS {
        let backend = Arc::new(
            ZkBackend::connect_with(common::test_options(&hosts))
                .await
                .unwrap(),
        );
        for (k, (key, hold)) in keys.iter().cloned().enumerate() {
            let (backend, windows, acquired, errors, stop) = (
                backend.clone(),
                windows.clone(),
                acquired.clone(),
                errors.clone(),
                stop.clone(),
            );
            workers.push(tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let wait = WaitPolicy::new(Duration::from_secs(10));
                    let lease = match backend.acquire(&key, Duration::from_secs(4), &wait).await {
                        Ok(lease) => lease,
                        Err(error) => {
                            errors.lock().unwrap().push(format!("acquire: {error}"));
                            continue;
                        }
                    };
                    let start = Instant::now();
                    tokio::time::sleep(hold).await;
                    let end = Instant::now().min(lease.valid_until());
                    windows.lock().unwrap()[k].push(Window {
                        start,
                        end,
                        token: lease.fencing_token(),
                        client,
                    });
                    acquired[k].fetch_add(1, Ordering::SeqCst);
                    if let Err(error) = backend.release(&lease).await {
                        errors.lock().unwrap().push(format!("release: {error}"));
                    }
                }
            }));
        }
    }

    let progress = |want: usize| {
        let acquired = acquired.clone();
        move || acquired.iter().all(|n| n.load(Ordering::SeqCst) >= want)
    };
    until(
        Duration::from_secs(60),
        "locks taken before the fault",
        progress(3),
    )
    .await;

    let old_leader = leader(&ports).await.expect("the ensemble has a leader");
    let before: Vec<usize> = acquired.iter().map(|n| n.load(Ordering::SeqCst)).collect();
    let killed_at = Instant::now();
    nodes[old_leader].stop(Some(0)).await.unwrap();
    let survivors: Vec<u16> = ports
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != old_leader)
        .map(|(_, p)| *p)
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let new_leader = loop {
        if let Some(i) = leader(&survivors).await {
            break i;
        }
        assert!(Instant::now() < deadline, "no new leader within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let elected_after = killed_at.elapsed();
    until(
        Duration::from_secs(60),
        "locks taken again after the leader died",
        || {
            acquired
                .iter()
                .zip(&before)
                .all(|(n, b)| n.load(Ordering::SeqCst) >= b + 3)
        },
    )
    .await;
    let recovered_after = killed_at.elapsed();

    nodes[old_leader].start().await.unwrap();
    common::wait_serving(ports[old_leader], Duration::from_secs(120)).await;
    let rejoined: Vec<usize> = acquired.iter().map(|n| n.load(Ordering::SeqCst)).collect();
    until(
        Duration::from_secs(60),
        "locks taken after the old leader rejoined",
        || {
            acquired
                .iter()
                .zip(&rejoined)
                .all(|(n, b)| n.load(Ordering::SeqCst) >= b + 3)
        },
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    for worker in workers {
        tokio::time::timeout(Duration::from_secs(30), worker)
            .await
            .expect("workers stop")
            .unwrap();
    }

    let windows = windows.lock().unwrap().clone();
    for (k, mut windows) in windows.into_iter().enumerate() {
        windows.sort_by_key(|w| w.start);
        for pair in windows.windows(2) {
            assert!(
                pair[0].end <= pair[1].start,
                "key {k}: two valid holders overlapped: {:?} and {:?}",
                pair[0],
                pair[1]
            );
            assert!(
                pair[0].token < pair[1].token,
                "key {k}: token went backwards: {:?} then {:?}",
                pair[0],
                pair[1]
            );
        }
        let by_client: Vec<usize> = (0..CLIENTS)
            .map(|c| windows.iter().filter(|w| w.client == c).count())
            .collect();
        println!(
            "key {k}: {} holdings without overlap, per client {by_client:?}",
            windows.len()
        );
    }
    let errors = errors.lock().unwrap().clone();
    println!(
        "leader {old_leader} killed; server {} of the survivors leads after {elected_after:?}; locks taken again {recovered_after:?} after the kill; {} transient errors: {:?}",
        new_leader,
        errors.len(),
        errors.iter().take(5).collect::<Vec<_>>()
    );
    // Removes the nodes still on it, then the network itself.
    drop(network);
}
