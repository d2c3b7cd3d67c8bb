//! Redlock-specific faults against real `redis:7.0` containers: servers down,
//! paused, paused past the TTL, and clients on different sides of a minority
//! partition (a userspace proxy per client and server).

mod support;

use std::sync::Arc;
use std::time::Duration;

use leasehold_conformance::fixtures;
use leasehold_conformance::history::{History, Holding};
use leasehold_conformance::proxy::Proxy;
use leasehold_core::config::BackendConfig;
use leasehold_core::{Key, LockBackend, LockError, LockInfo, Locker, TtlPolicy, WaitPolicy};
use leasehold_redis::{KeyLayout, RedisNode};
use leasehold_redlock::{NodeOutcome, QuorumReport, RedlockBackend, RedlockConfig};
use tokio::time::Instant;

async fn connect(url: &str) -> RedlockBackend {
    let config = RedlockConfig::from_url(url)
        .unwrap_or_else(|e| panic!("{url}: {e}"))
        .timeout(Duration::from_secs(1));
    RedlockBackend::connect_with(config)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

/// What one server alone says about `key` (default namespace).
async fn on_server(url: &str, key: &Key) -> Option<LockInfo> {
    let client = redis::Client::open(url).expect("redis url");
    let node = RedisNode::connect(
        client,
        KeyLayout::new(leasehold_redlock::DEFAULT_NAMESPACE).unwrap(),
        Duration::from_secs(2),
    )
    .await
    .expect("server answers");
    node.inspect_raw(key).await.expect("inspect")
}

fn key(name: &str) -> Key {
    Key::new(format!("faults/{}/{name}", rand_suffix())).unwrap()
}

fn rand_suffix() -> String {
    leasehold_core::OwnerToken::generate().short()
}

fn report_of(error: &LockError) -> &QuorumReport {
    let source =
        std::error::Error::source(error).unwrap_or_else(|| panic!("{error} has no source"));
    source
        .downcast_ref::<QuorumReport>()
        .unwrap_or_else(|| panic!("the source of {error} is not a QuorumReport"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_server_of_three_down_or_paused_still_locks_and_releases() {
    let Some(cluster) = support::cluster(3).await else {
        return;
    };
    // Down before the clients even connect: they connect to the quorum.
    cluster.stop(0).await;
    let (a, b) = (connect(&cluster.url).await, connect(&cluster.url).await);
    let k = key("one-down");
    let ttl = Duration::from_secs(10);
    let lease = a
        .try_acquire(&k, ttl)
        .await
        .expect("2 of 3 servers grant the lock");
    match b.try_acquire(&k, ttl).await {
        Err(LockError::Contended { holder, .. }) => {
            let listing = holder.and_then(|h| h.metadata).unwrap_or_default();
            println!("contended with one server down: {listing}");
            assert!(
                listing.contains("unreachable") && listing.contains("held by"),
                "the per-server listing should name the down server and the holders: {listing}"
            );
        }
        other => panic!("expected Contended while a holds the key, got {other:?}"),
    }
    a.release(&lease).await.expect("release on 2 of 3 servers");
    let theirs = b
        .try_acquire(&k, ttl)
        .await
        .expect("b takes the released key");
    b.release(&theirs).await.expect("b releases");

    // Back up, and another server paused instead (a server that hangs).
    // Once a's connection to the restarted server answers: with it still
    // reconnecting and another server paused, only one server could grant
    // (seen failing under load).
    cluster.start(0).await;
    support::answers(&a, 0, &k).await;
    cluster.pause(1).await;
    let started = Instant::now();
    let lease = a
        .try_acquire(&k, ttl)
        .await
        .expect("2 of 3 servers grant the lock while one is paused");
    a.release(&lease)
        .await
        .expect("release with one server paused");
    let elapsed = started.elapsed();
    println!("acquire + release with one of three servers paused: {elapsed:?}");
    assert!(
        elapsed < Duration::from_secs(5),
        "a paused server must cost at most its per-node timeout (500 ms here), took {elapsed:?}"
    );
    cluster.unpause(1).await;
    let lease = a.try_acquire(&k, ttl).await.expect("all three up again");
    a.release(&lease).await.expect("release");
}

/// A waiter is woken by a release's signal, with every server up and then
/// with one server down: the release subscription leaves the stopped
/// server and comes back up on the two that answer, and each time the
/// waiter gets the key long before its next poll (30 s away) or the
/// subscription's retry of the server left out (10 s away).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_hears_the_release_with_one_server_down() {
    let Some(cluster) = support::cluster(3).await else {
        return;
    };
    let (holder, waiter) = (connect(&cluster.url).await, connect(&cluster.url).await);
    waiter
        .subscribe_releases()
        .await
        .expect("the release channel is subscribed on every server");
    let k = key("woken");
    handoff(&holder, &waiter, &k, "every server up").await;
    cluster.stop(2).await;
    fixtures::eventually(
        Duration::from_secs(10),
        "the release subscription comes back up without the stopped server",
        || async { waiter.release_subscriptions() >= 2 },
    )
    .await;
    handoff(&holder, &waiter, &k, "one server down").await;
}

/// With one server stopped after it was connected, calls do not wait for
/// its reconnect: each call makes one attempt (refused at once) and counts
/// the server as a missing vote. With the client's default retries (pauses
/// of 100-200 ms and 200-400 ms) every call waited about 0.5 s, and these 20
/// lock+unlock pairs took over 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_with_one_server_stopped_do_not_wait_for_its_reconnect() {
    let Some(cluster) = support::cluster(3).await else {
        return;
    };
    let backend = connect(&cluster.url).await;
    let k = key("stopped-voter");
    let ttl = Duration::from_secs(30);
    let lease = backend.try_acquire(&k, ttl).await.expect("all three up");
    backend.release(&lease).await.expect("release");
    cluster.stop(2).await;
    let started = Instant::now();
    for _ in 0..20 {
        let lease = backend.try_acquire(&k, ttl).await.expect("2 of 3 grant");
        backend.release(&lease).await.expect("2 of 3 release");
    }
    let elapsed = started.elapsed();
    println!("20 lock+unlock pairs with one of three servers stopped: {elapsed:?}");
    assert!(
        elapsed < Duration::from_secs(4),
        "20 pairs took {elapsed:?}: calls waited for the stopped server's reconnect"
    );
}

/// `holder` takes `k`, `waiter` waits for it with its next poll 30 s away,
/// and must have it within 4 s of the release.
async fn handoff(holder: &RedlockBackend, waiter: &RedlockBackend, k: &Key, case: &str) {
    let ttl = Duration::from_secs(30);
    let lease = holder.try_acquire(k, ttl).await.expect("a quorum grants");
    let poll = Duration::from_secs(30);
    let wait = WaitPolicy::new(Duration::from_secs(60)).with_delays(poll, poll);
    let waiting = {
        let (waiter, k) = (waiter.clone(), k.clone());
        tokio::spawn(async move { waiter.acquire(&k, ttl, &wait).await })
    };
    // Let the waiter make its first attempt and start waiting (sooner, that
    // attempt is refused all the same: the key is held).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let released_at = Instant::now();
    holder.release(&lease).await.expect("release on a quorum");
    let taken = tokio::time::timeout(Duration::from_secs(4), waiting)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{case}: the waiter did not hear the release within 4 s (its poll was 30 s away)"
            )
        })
        .expect("waiter task")
        .expect("the waiter gets the key");
    println!(
        "{case}: the waiter had the key {:?} after the release",
        released_at.elapsed()
    );
    waiter.release(&taken).await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn majority_down_fails_in_bounded_time_and_leaves_nothing_locked() {
    let Some(cluster) = support::cluster(3).await else {
        return;
    };
    let backend = connect(&cluster.url).await;
    let k = key("majority-down");
    let ttl = Duration::from_secs(30);
    let warm = backend.try_acquire(&k, ttl).await.expect("warm-up acquire");
    backend.release(&warm).await.expect("warm-up release");

    cluster.pause(1).await; // hangs
    cluster.stop(2).await; // refuses
    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(20), backend.try_acquire(&k, ttl))
        .await
        .expect("try_acquire with a majority down must not hang");
    let elapsed = started.elapsed();
    let error = match result {
        Err(error @ LockError::Unavailable { .. }) => error,
        other => panic!("expected Unavailable with 2 of 3 servers down, got {other:?}"),
    };
    println!(
        "majority down after {elapsed:?}: {error}\n  {}",
        report_of(&error)
    );
    let report = report_of(&error);
    assert!(
        matches!(report.nodes[0].1, NodeOutcome::Acquired(_)),
        "the live server should have granted it: {report}"
    );
    assert!(
        report.nodes[1..].iter().all(|(_, o)| o.is_unknown()),
        "the paused and the stopped server should be listed unreachable: {report}"
    );
    assert!(
        on_server(&cluster.node_url(0), &k).await.is_none(),
        "the failed attempt left the key locked on the live server"
    );

    // Waiting does not turn it into a hang or a WaitTimedOut either.
    let wait = WaitPolicy::new(Duration::from_millis(800));
    let started = Instant::now();
    match backend.acquire(&k, ttl, &wait).await {
        Err(LockError::Unavailable { .. }) => {}
        other => panic!("acquire with a majority down should end Unavailable, got {other:?}"),
    }
    println!(
        "acquire (wait 800 ms) with a majority down gave up after {:?}",
        started.elapsed()
    );
    assert!(on_server(&cluster.node_url(0), &k).await.is_none());

    // The paused server ran the queued acquire when it woke, and then the
    // release this client sent after it: the key is free there long before
    // its 30 s TTL.
    cluster.unpause(1).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while on_server(&cluster.node_url(1), &k).await.is_some() {
        assert!(
            Instant::now() < deadline,
            "the woken server still holds the failed attempt's key"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.start(2).await;
    let lease = backend
        .try_acquire(&k, ttl)
        .await
        .expect("acquire once all servers are back");
    backend.release(&lease).await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_paused_past_the_ttl_while_a_lock_is_held() {
    let Some(cluster) = support::cluster(3).await else {
        return;
    };
    let backend = connect(&cluster.url).await;
    let other = connect(&cluster.url).await;
    let ttl = Duration::from_millis(1000);
    let locker = Locker::builder(backend.clone())
        .ttl(TtlPolicy::Fixed(ttl))
        .build();

    // One server paused for 2.5 TTLs: the watchdog renews on the other two;
    // the holder keeps the lock and nobody else gets it.
    let minority = key("minority-paused");
    let guard = locker.try_lock(&minority).await.expect("lock");
    cluster.pause(0).await;
    let until = Instant::now() + ttl * 5 / 2;
    while Instant::now() < until {
        tokio::time::sleep(ttl / 4).await;
        assert!(
            !guard.is_lost(),
            "one paused server of three cost the lease"
        );
        match other.try_acquire(&minority, ttl).await {
            Err(LockError::Contended { .. }) => {}
            got => panic!("the key must stay held while one server is paused, got {got:?}"),
        }
    }
    cluster.unpause(0).await;
    assert!(guard.valid_until() > Instant::now(), "validity was renewed");
    guard
        .release()
        .await
        .expect("release after the server woke");

    // Two servers paused past the TTL: extends cannot reach a quorum, are
    // Unavailable (not Lost: nothing says the key is someone else's), do not
    // release, and the guard's lost() fires when validity ends.
    let majority = key("majority-paused");
    let guard = locker.try_lock(&majority).await.expect("lock");
    let lease = backend
        .try_acquire(&key("raw"), ttl)
        .await
        .expect("raw lease");
    cluster.pause(0).await;
    cluster.pause(1).await;
    match backend.extend(&lease, ttl).await {
        Err(error @ LockError::Unavailable { .. }) => {
            let report = report_of(&error);
            assert_eq!(report.count(NodeOutcome::is_unknown), 2, "{report}");
            assert_eq!(report.count(|o| *o == NodeOutcome::Ours), 1, "{report}");
        }
        got => panic!("extend with a majority paused should be Unavailable, got {got:?}"),
    }
    // A batch renewal that no quorum answered fails as a whole, with one
    // report of the batch, not one copy of it per lease.
    let batch = [(lease.clone(), ttl), (lease.clone(), ttl)];
    match backend.extend_many(&batch).await {
        Err(error @ LockError::Unavailable { .. }) => {
            let report = report_of(&error);
            assert_eq!(report.step, "extend_many", "{report}");
            assert_eq!(report.count(NodeOutcome::is_unknown), 2, "{report}");
            assert_eq!(report.count(|o| *o == NodeOutcome::Answered), 1, "{report}");
        }
        got => panic!("extend_many with a majority paused should fail as a whole, got {got:?}"),
    }
    tokio::time::timeout(Duration::from_secs(10), guard.lost())
        .await
        .expect("lost() fires once validity ends without a quorum");
    let fired_at = Instant::now();
    assert!(
        fired_at >= guard.valid_until(),
        "lost() fired before validity ended"
    );
    println!(
        "lost() fired {:?} after validity ended",
        fired_at - guard.valid_until()
    );
    // Past the TTL by the servers' clocks too, then wake them: the keys have
    // expired everywhere; the old lease's extend is Lost, never a resurrection.
    tokio::time::sleep(ttl).await;
    cluster.unpause(0).await;
    cluster.unpause(1).await;
    match backend.extend(&lease, ttl).await {
        Err(LockError::Lost { .. }) => {}
        got => panic!("extend after the TTL passed should be Lost, got {got:?}"),
    }
    match backend.release(&lease).await {
        Err(LockError::NotHeld { .. } | LockError::Lost { .. }) => {}
        got => panic!("release after the TTL passed should be NotHeld, got {got:?}"),
    }
    let theirs = other
        .try_acquire(&majority, ttl)
        .await
        .expect("the key is free after its holder lost it");
    assert!(
        guard.release().await.is_err(),
        "releasing a lost guard succeeded"
    );
    other.release(&theirs).await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_clients_under_a_minority_partition_never_both_hold() {
    let Some(cluster) = support::cluster(3).await else {
        return;
    };
    // Each client reaches the servers through its own proxies; cutting one
    // proxy partitions that server from that client only.
    let mut links: Vec<Vec<Proxy>> = Vec::new();
    for _client in 0..2 {
        let mut proxies = Vec::new();
        for container in &cluster.containers {
            proxies.push(Proxy::start(container.port).await.expect("start a proxy"));
        }
        links.push(proxies);
    }
    let url = |proxies: &[Proxy]| {
        let hosts: Vec<String> = proxies.iter().map(Proxy::addr).collect();
        format!("redlock://{}?timeout=1s", hosts.join(","))
    };
    let clients = [
        connect(&url(&links[0])).await,
        connect(&url(&links[1])).await,
    ];
    // Partitions: client 0 loses server 2, client 1 loses server 0; then the
    // other way round. Each still sees a majority, and the majorities overlap
    // in server 1 only.
    let partitions = [[(0, 2), (1, 0)], [(0, 0), (1, 2)]];
    let links = Arc::new(links);
    let cut = |links: &[Vec<Proxy>], which: [(usize, usize); 2], on: bool| {
        for (client, server) in which {
            links[client][server].set_cut(on);
        }
    };
    cut(&links, partitions[0], true);

    let k = key("race");
    let ttl = Duration::from_secs(2);
    let history = Arc::new(History::new());
    let mut tasks = Vec::new();
    for (c, client) in clients.iter().enumerate() {
        let locker = Locker::builder(client.clone())
            .ttl(TtlPolicy::Fixed(ttl))
            .wait(
                WaitPolicy::new(Duration::from_secs(60))
                    .with_delays(Duration::from_millis(2), Duration::from_millis(50)),
            )
            .build();
        for t in 0..2 {
            let (locker, k, history) = (locker.clone(), k.clone(), history.clone());
            let holder = (c * 2 + t) as u64;
            tasks.push(tokio::spawn(async move {
                for _ in 0..12 {
                    let guard = locker.lock(&k).await?;
                    let start = Instant::now();
                    tokio::time::sleep(Duration::from_millis(3)).await;
                    let end = Instant::now().min(guard.valid_until());
                    history.record(Holding {
                        holder,
                        token: guard.fencing_token().get(),
                        start,
                        end,
                    });
                    // Under a partition a release may not reach a quorum
                    // (Unavailable): the holder has stopped acting already,
                    // and the rest of its keys expire with their TTL.
                    match guard.release().await {
                        Ok(()) | Err(LockError::Unavailable { .. }) => {}
                        Err(error) => return Err(error),
                    }
                }
                Ok::<_, LockError>(())
            }));
        }
    }
    // Flip the partition while they race.
    let flipper = {
        let links = links.clone();
        tokio::spawn(async move {
            for round in 0..6 {
                tokio::time::sleep(Duration::from_millis(400)).await;
                cut(&links, partitions[round % 2], false);
                cut(&links, partitions[(round + 1) % 2], true);
            }
        })
    };
    for task in tasks {
        task.await
            .expect("task panicked")
            .expect("lock/release under the partition");
    }
    flipper.abort();
    // Both clients (4 tasks, 12 rounds each) got the key every round.
    assert_eq!(history.len(), 48, "every task finished its rounds");
    let violations = history.violations(false);
    assert!(
        violations.is_empty(),
        "two clients held the key at once under the partition: {violations:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_tokens_keep_increasing_when_the_quorum_changes() {
    let Some(cluster) = support::cluster(3).await else {
        return;
    };
    let backend = connect(&cluster.url).await;
    let k = key("quorums");
    let ttl = Duration::from_secs(10);
    let mut tokens = Vec::new();
    let mut take = async |why: &str| {
        let lease = backend
            .try_acquire(&k, ttl)
            .await
            .unwrap_or_else(|e| panic!("{why}: {e}"));
        tokens.push(lease.fencing_token().get());
        backend.release(&lease).await.expect("release");
    };
    // Servers 0 and 1 count to 3 while server 2 is down (its counter: 0).
    cluster.stop(2).await;
    for _ in 0..3 {
        take("quorum {0, 1}").await;
    }
    // Quorum {1, 2}: counters 4 and 1, token 4; server 2 is raised to 4.
    cluster.start(2).await;
    support::answers(&backend, 2, &k).await;
    cluster.stop(0).await;
    take("quorum {1, 2}").await;
    // Quorum {0, 2}: counters 1 and 5, token 5. Without the raise server 2
    // would say 2: a token of 2 after 4.
    cluster.start(0).await; // without persistence: its counter is back at 0
    support::answers(&backend, 0, &k).await;
    cluster.stop(1).await;
    take("quorum {0, 2}").await;
    println!("tokens across changing quorums: {tokens:?}");
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "tokens did not strictly increase across quorums: {tokens:?}"
    );
}

/// The probe of issue 11: one server of three frozen, `lock()` dropped after
/// 300 ms, the server thawed. The acquisition went on in the store (the two
/// live servers granted it, the frozen one ran the queued script when it
/// woke); without cancel safety the key stayed held by nobody for its whole
/// TTL. Now the late grant is released in the background at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_lock_call_leaves_no_key_held_when_a_server_was_frozen() {
    let Some(cluster) = support::cluster(3).await else {
        return;
    };
    let ttl = Duration::from_secs(20);
    let locker = Locker::builder(connect(&cluster.url).await)
        .ttl(TtlPolicy::Fixed(ttl))
        .build();
    let other = connect(&cluster.url).await;
    let k = key("dropped-lock");
    cluster.pause(2).await;
    let dropped = tokio::time::timeout(Duration::from_millis(300), locker.lock(k.clone())).await;
    assert!(
        dropped.is_err(),
        "lock() should still be waiting for the frozen server after 300 ms, got {:?}",
        dropped.map(|r| r.map(|g| g.fencing_token()))
    );
    cluster.unpause(2).await;
    let started = Instant::now();
    fixtures::eventually(
        Duration::from_secs(10),
        "the dropped lock() call's key to be free again (well before its 20 s TTL)",
        || async {
            match other.try_acquire(&k, ttl).await {
                Ok(lease) => {
                    other
                        .release(&lease)
                        .await
                        .expect("release the probe lease");
                    true
                }
                Err(_) => false,
            }
        },
    )
    .await;
    println!("key free {:?} after the server thawed", started.elapsed());
    // The frozen server ran the queued acquire when it woke, and the
    // compare-and-delete queued behind it on the same connection.
    for i in 0..3 {
        let url = cluster.node_url(i);
        fixtures::eventually(
            Duration::from_secs(10),
            &format!("server {i} to hold nothing for the dropped call"),
            || async { on_server(&url, &k).await.is_none() },
        )
        .await;
    }
}

/// TTLs above one year (the bound every backend shares) are `InvalidTtl` on
/// every call, `Duration::MAX` included, and nothing panics (the per-node
/// timeout is a product of the TTL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ttl_beyond_one_year_is_invalid_on_every_call() {
    let Some(cluster) = support::cluster(3).await else {
        return;
    };
    let backend = connect(&cluster.url).await;
    let year = leasehold_core::config::MAX_DURATION;
    let lease = backend
        .try_acquire(&key("ttl-bounds"), year)
        .await
        .expect("one year is fine");
    for ttl in [year + Duration::from_millis(1), Duration::MAX] {
        let acquire = backend.try_acquire(&key("ttl-bounds-2"), ttl).await;
        assert!(
            matches!(acquire, Err(LockError::InvalidTtl { .. })),
            "try_acquire with {ttl:?}: expected InvalidTtl, got {acquire:?}"
        );
        let extend = backend.extend(&lease, ttl).await;
        assert!(
            matches!(extend, Err(LockError::InvalidTtl { .. })),
            "extend with {ttl:?}: expected InvalidTtl, got {extend:?}"
        );
        let many = backend
            .extend_many(&[(lease.clone(), ttl)])
            .await
            .expect("a batch of invalid TTLs sends nothing and fails nothing as a whole");
        assert!(
            matches!(many[..], [Err(LockError::InvalidTtl { .. })]),
            "extend_many with {ttl:?}: expected InvalidTtl, got {many:?}"
        );
    }
    backend.release(&lease).await.expect("release");
}

/// A release on links slower than the acquisition's per-node share (a 1 s
/// TTL gives each server 50 ms) still succeeds: a release has no validity to
/// protect, so each server gets the whole per-call timeout. Before, the
/// release used the TTL-sized share and a loaded server answering in 30 ms
/// turned it into `Unavailable` (seen in the conformance suite under load).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_on_slow_links_succeeds_within_the_call_timeout() {
    let Some(cluster) = support::cluster(3).await else {
        return;
    };
    let mut links = Vec::new();
    for container in &cluster.containers {
        links.push(Proxy::start(container.port).await.expect("start a proxy"));
    }
    let hosts: Vec<String> = links.iter().map(Proxy::addr).collect();
    let backend = connect(&format!("redlock://{}?timeout=1s", hosts.join(","))).await;
    let k = key("slow-release");
    let lease = backend
        .try_acquire(&k, Duration::from_secs(1))
        .await
        .expect("acquire on fast links");
    for link in &links {
        link.set_delay(Duration::from_millis(150));
    }
    backend
        .release(&lease)
        .await
        .expect("release on links slower than the TTL's per-node share");
    for link in &links {
        link.set_delay(Duration::ZERO);
    }
    // The release returned once a majority confirmed; the last server's
    // release lands in the background.
    for i in 0..3 {
        let url = cluster.node_url(i);
        fixtures::eventually(
            Duration::from_secs(5),
            "the key is gone from every server",
            || {
                let url = url.clone();
                let k = k.clone();
                async move { on_server(&url, &k).await.is_none() }
            },
        )
        .await;
    }
}

/// A release returns once a majority confirmed its deletes; the rest may
/// still be landing when a second release of the same lease runs (seen in
/// CI: one server still "ours", four free, answered `Lost`). This builds that
/// state without racing: the first release goes through a client of three of
/// the five servers (a majority of its own), so servers 3 and 4 still hold
/// the key. The second, through the five-server client, must say `NotHeld`
/// and clear them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_release_while_the_first_ones_deletes_land_is_not_held() {
    let Some(cluster) = support::cluster(5).await else {
        return;
    };
    let all = connect(&cluster.url).await;
    let first_three = connect(&cluster.url_of(&[0, 1, 2])).await;
    let k = key("second-release");
    let lease = all
        .try_acquire(&k, Duration::from_secs(30))
        .await
        .expect("acquire on five servers");
    first_three
        .release(&lease)
        .await
        .expect("the release reaches a majority of the five");
    for i in [3, 4] {
        assert!(
            on_server(&cluster.node_url(i), &k).await.is_some(),
            "server {i} should still hold the key before the second release"
        );
    }
    match all.release(&lease).await {
        Err(LockError::NotHeld { .. }) => {}
        other => panic!("a second release should be NotHeld, got {other:?}"),
    }
    for i in 0..5 {
        assert_eq!(
            on_server(&cluster.node_url(i), &k).await,
            None,
            "server {i} still holds the key after the second release"
        );
    }
}
