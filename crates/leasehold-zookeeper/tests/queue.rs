//! The lock queue against a real ZooKeeper 3.8 server in a container.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{SESSION, children, key};
use leasehold_conformance::fixtures::eventually;
use leasehold_conformance::proxy::Proxy;
use leasehold_core::{LockBackend, LockError, WaitPolicy};
use leasehold_zookeeper::ZkBackend;
use tokio::time::Instant;

const TTL: Duration = Duration::from_secs(4);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_acquire_in_the_order_they_queued() {
    let zk = common::start().await;
    let holder = zk.backend().await;
    let k = key("fifo/queue");
    let path = holder.key_path(&k);
    let lease = holder.try_acquire(&k, TTL).await.unwrap();

    const N: usize = 6;
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..N {
        let backend = Arc::new(zk.backend().await);
        let (k, order) = (k.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            let lease = backend
                .acquire(&k, TTL, &WaitPolicy::new(Duration::from_secs(60)))
                .await
                .unwrap();
            order.lock().unwrap().push(i);
            backend.release(&lease).await.unwrap();
        }));
        // The next waiter starts only once this one's node is in the queue.
        eventually(Duration::from_secs(10), "waiter queued", || async {
            children(&holder, &path).await == i + 2
        })
        .await;
    }
    holder.release(&lease).await.unwrap();
    for task in tasks {
        task.await.unwrap();
    }
    let order = order.lock().unwrap().clone();
    assert_eq!(
        order,
        (0..N).collect::<Vec<_>>(),
        "waiters must get the lock in queue order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handoff_is_woken_by_the_watch_and_costs_a_few_round_trips() {
    let zk = common::start().await;
    // A re-check timer far longer than the test: only the watch can wake the waiter.
    let options = zk.options().poll(Duration::from_secs(60));
    let holder = ZkBackend::connect_with(options.clone()).await.unwrap();
    let waiter = Arc::new(ZkBackend::connect_with(options).await.unwrap());
    let k = key("handoff");
    let path = holder.key_path(&k);

    // One raw round trip, measured in the same run.
    let raw = holder.client().await.unwrap();
    let mut rtts = Vec::new();
    for _ in 0..200 {
        let start = Instant::now();
        raw.check_stat("/").await.unwrap();
        rtts.push(start.elapsed());
    }
    rtts.sort();
    let rtt = rtts[rtts.len() / 2];

    const ROUNDS: usize = 30;
    let mut handoffs = Vec::new();
    for _ in 0..ROUNDS {
        let lease = holder.try_acquire(&k, TTL).await.unwrap();
        let holder_token = lease.fencing_token();
        let task = {
            let (waiter, k) = (waiter.clone(), k.clone());
            tokio::spawn(async move {
                let lease = waiter
                    .acquire(&k, TTL, &WaitPolicy::new(Duration::from_secs(30)))
                    .await
                    .unwrap();
                (Instant::now(), lease)
            })
        };
        // Queued and watching its predecessor (the server counts the watch).
        eventually(Duration::from_secs(10), "waiter watching", || async {
            children(&holder, &path).await == 2 && common::watch_count(zk.port).await >= 1
        })
        .await;
        let released_at = Instant::now();
        holder.release(&lease).await.unwrap();
        let (acquired_at, lease) = task.await.unwrap();
        handoffs.push(acquired_at - released_at);
        assert!(lease.fencing_token() > holder_token);
        waiter.release(&lease).await.unwrap();
    }
    let wakes = waiter.wake_counts();
    assert_eq!(
        wakes.poll, 0,
        "no waiter may have been woken by the re-check timer: {wakes:?}"
    );
    assert_eq!(
        wakes.watch, ROUNDS as u64,
        "every handoff must be a watch wake: {wakes:?}"
    );
    handoffs.sort();
    let p50 = handoffs[ROUNDS / 2];
    let p90 = handoffs[ROUNDS * 9 / 10];
    println!(
        "zookeeper handoff (release call start -> waiter holds): p50 {p50:?} = {:.1} RTT, p90 {p90:?} = {:.1} RTT; raw exists RTT p50 {rtt:?}",
        p50.as_secs_f64() / rtt.as_secs_f64(),
        p90.as_secs_f64() / rtt.as_secs_f64(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contention_tokens_release_and_extend_follow_the_contract() {
    let zk = common::start().await;
    let a = zk.backend().await;
    let b = zk.backend().await;
    let k = key("contract");
    let path = a.key_path(&k);

    let held = a.try_acquire(&k, TTL).await.unwrap();
    match b.try_acquire(&k, TTL).await {
        Err(LockError::Contended {
            holder: Some(info), ..
        }) => assert_eq!(
            info.fencing_token,
            Some(held.fencing_token()),
            "holder info must carry the holder's czxid"
        ),
        other => panic!("expected Contended with holder info, got {other:?}"),
    }
    assert_eq!(
        children(&a, &path).await,
        1,
        "a failed try_acquire must leave no node behind"
    );
    let info = b.inspect(&k).await.unwrap().expect("held key has a holder");
    assert_eq!(info.fencing_token, Some(held.fencing_token()));
    assert_eq!(info.owner_hint, Some(held.owner().short()));

    let extended = a.extend(&held, TTL).await.unwrap();
    assert!(extended.valid_until() >= held.valid_until());
    a.release(&held).await.unwrap();
    assert!(matches!(
        a.release(&held).await,
        Err(LockError::NotHeld { .. })
    ));
    assert!(matches!(
        a.extend(&held, TTL).await,
        Err(LockError::Lost { .. })
    ));
    assert_eq!(b.inspect(&k).await.unwrap(), None);

    let mut last = held.fencing_token();
    for _ in 0..5 {
        let lease = b.try_acquire(&k, TTL).await.unwrap();
        assert!(
            lease.fencing_token() > last,
            "token {} after {last}",
            lease.fencing_token()
        );
        last = lease.fencing_token();
        b.release(&lease).await.unwrap();
    }

    // Validity never exceeds the lease's session timeout (the server's
    // maximum, 10 s here, for a 600 s TTL), whatever the TTL.
    let sent = Instant::now();
    let long = a.try_acquire(&k, Duration::from_secs(600)).await.unwrap();
    let class = a.session_class(Duration::from_secs(600));
    assert!(class <= Duration::from_secs(10), "class {class:?}");
    assert!(long.valid_until() <= Instant::now() + class);
    assert!(long.valid_until() >= sent);
    a.release(&long).await.unwrap();
    // A TTL below the server's minimum session timeout is raised to it; zero
    // is refused.
    let short = a.try_acquire(&k, Duration::from_millis(10)).await.unwrap();
    assert_eq!(short.ttl(), a.capabilities().min_ttl);
    a.release(&short).await.unwrap();
    assert!(matches!(
        a.try_acquire(&k, Duration::ZERO).await,
        Err(LockError::InvalidTtl { .. })
    ));

    // Several leases of one session renew in one multi-read.
    let k2 = key("contract/2");
    let one = a.try_acquire(&k, TTL).await.unwrap();
    let two = a.try_acquire(&k2, TTL).await.unwrap();
    // Someone else removes a's node behind its back.
    let raw = b.client().await.unwrap();
    for child in raw.list_children(&path).await.unwrap() {
        raw.delete(&format!("{path}/{child}"), None).await.unwrap();
    }
    let results = a
        .extend_many(&[(one.clone(), TTL), (two.clone(), TTL)])
        .await
        .expect("the multi-read as a whole was answered");
    assert!(
        matches!(results[0], Err(LockError::Lost { .. })),
        "{:?}",
        results[0]
    );
    assert!(results[1].is_ok(), "{:?}", results[1]);
    a.release(&two).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awkward_keys_work_and_never_share_a_lock() {
    let zk = common::start().await;
    let backend = zk.backend().await;
    let names = [
        "/",
        ".",
        "..",
        "a/b",
        "a%2Fb",
        " ",
        "🔒",
        "%41",
        "A",
        "'; DROP TABLE locks; --",
        "\u{fff0}\u{e000}",
    ];
    let long = "é".repeat(512);
    let mut leases = Vec::new();
    for name in names.iter().copied().chain([long.as_str()]) {
        let lease = backend
            .try_acquire(&key(name), TTL)
            .await
            .unwrap_or_else(|e| panic!("key {name:?}: {e}"));
        leases.push(lease);
    }
    for lease in &leases {
        let info = backend.inspect(lease.key()).await.unwrap().unwrap();
        assert_eq!(
            info.fencing_token,
            Some(lease.fencing_token()),
            "{:?}",
            lease.key()
        );
        backend.release(lease).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_waiters_remove_their_nodes() {
    let zk = common::start().await;
    let holder = zk.backend().await;
    let waiter = zk.backend().await;
    let k = key("abandoned");
    let path = holder.key_path(&k);
    let lease = holder.try_acquire(&k, TTL).await.unwrap();

    // Timed out by the policy: the node is gone when acquire returns.
    let started = Instant::now();
    let result = waiter
        .acquire(&k, TTL, &WaitPolicy::new(Duration::from_millis(300)))
        .await;
    match result {
        Err(LockError::WaitTimedOut { waited, .. }) => assert!(waited <= started.elapsed()),
        other => panic!("expected WaitTimedOut, got {other:?}"),
    }
    assert_eq!(children(&holder, &path).await, 1);

    // Future dropped by the caller: the drop guard removes the node.
    let dropped = tokio::time::timeout(
        Duration::from_millis(300),
        waiter.acquire(&k, TTL, &WaitPolicy::new(Duration::from_secs(60))),
    )
    .await;
    assert!(dropped.is_err(), "the waiter cannot have acquired");
    eventually(
        Duration::from_secs(10),
        "dropped waiter's node removed",
        || async { children(&holder, &path).await == 1 },
    )
    .await;
    holder.release(&lease).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_holder_frees_the_lock_when_its_session_expires() {
    let zk = common::start().await;
    // A detached client never closes its session: dropping it is a crash.
    let client = zookeeper_client::Client::connector()
        .with_detached()
        .with_session_timeout(SESSION)
        .with_connection_timeout(SESSION)
        .connect(&zk.hosts())
        .await
        .unwrap();
    let crashed = ZkBackend::from_client(client, zk.options()).unwrap();
    let k = key("killed");
    let lease = crashed.try_acquire(&k, TTL).await.unwrap();
    let crashed_token = lease.fencing_token();
    // The lease holds the session too: drop both, like a crash would.
    drop((lease, crashed));

    let other = zk.backend().await;
    assert!(
        matches!(
            other.try_acquire(&k, TTL).await,
            Err(LockError::Contended { .. })
        ),
        "the lock stays held until the crashed session expires"
    );
    let next = other
        .acquire(&k, TTL, &WaitPolicy::new(SESSION * 5))
        .await
        .expect("the lock frees after the session timeout");
    assert!(next.fencing_token() > crashed_token);
    other.release(&next).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_expiry_signals_loss_and_the_backend_opens_a_new_session() {
    let zk = common::start().await;
    // The holder reaches the server through a proxy, so its link can be cut
    // for longer than the session timeout: the server expires the session and
    // frees the lock. (Stealing the session from a second connection raced
    // with the holder's own reconnects and failed CI twice.)
    let link = Proxy::start(zk.port).await.unwrap();
    let holder = ZkBackend::connect_with(common::test_options(&link.addr()))
        .await
        .unwrap();
    let k = key("expired");
    let lease = holder.try_acquire(&k, TTL).await.unwrap();
    let signal = lease
        .loss_signal()
        .expect("zookeeper leases carry a loss signal")
        .clone();
    assert!(!signal.is_cancelled());

    link.set_cut(true);
    let other = zk.backend().await;
    let taken = other
        .acquire(&k, TTL, &WaitPolicy::new(SESSION * 5))
        .await
        .expect("the server expires the cut-off session and frees the lock");
    assert!(taken.fencing_token() > lease.fencing_token());
    other.release(&taken).await.unwrap();
    link.set_cut(false);
    tokio::time::timeout(SESSION * 3, signal.cancelled())
        .await
        .expect("the loss signal fires once the holder learns its session expired");
    assert!(matches!(
        holder.extend(&lease, TTL).await,
        Err(LockError::Lost { .. })
    ));
    assert!(matches!(
        holder.release(&lease).await,
        Err(LockError::NotHeld { .. })
    ));

    // The same backend opens a new session and works again.
    let again = holder.try_acquire(&k, TTL).await.unwrap();
    assert!(again.fencing_token() > lease.fencing_token());
    holder.release(&again).await.unwrap();
}
