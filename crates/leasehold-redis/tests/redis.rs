//! The Redis backend against a real server (a `redis:7.0` container, or
//! `LEASEHOLD_TEST_REDIS_URL`).

mod support;

use std::time::Duration;

use leasehold_conformance::Store;
use leasehold_core::{
    Drift, FencingToken, Key, Lease, LockBackend, LockError, OwnerToken, WaitPolicy, Wake,
};
use leasehold_redis::{NAME, RedisBackend};
use support::{config, evalsha_calls};

const TTL: Duration = Duration::from_secs(30);

/// A namespace of its own per test, so tests sharing a server never meet.
fn namespace(test: &str) -> String {
    format!("t-{test}-{}", OwnerToken::generate().short())
}

async fn backend(url: &str, test: &str) -> RedisBackend {
    RedisBackend::connect_with(config(url).namespace(namespace(test)))
        .await
        .expect("connect to the test server")
}

fn key(name: &str) -> Key {
    Key::new(name).expect("legal key")
}

/// A lease on `key` with a made-up owner token: what a non-owner would hold.
fn forged(lease: &Lease) -> Lease {
    Lease::new(
        NAME,
        lease.key().clone(),
        OwnerToken::generate(),
        lease.fencing_token(),
        tokio::time::Instant::now(),
        lease.ttl(),
        Drift::default(),
    )
}

async fn redis_cmd<T: redis::FromRedisValue>(backend: &RedisBackend, cmd: &redis::Cmd) -> T {
    cmd.query_async(&mut backend.node().connection())
        .await
        .expect("raw redis command")
}

#[tokio::test]
async fn awkward_keys_work_and_stay_distinct() {
    let Some(server) = support::server(&[], false).await else {
        return;
    };
    let backend = backend(&server.url, "awkward").await;
    let names = [
        "redis.call('del', KEYS[1])",
        "]]..'\"--[[",
        "{}",
        "{a}",
        "a}",
        "{a",
        "%7Ba%7D",
        "%",
        "with space",
        " ",
        "🔒émoji",
        "a:b",
        "a",
        "'; DROP TABLE locks; --",
        "a/b\\c",
    ];
    let mut leases = Vec::new();
    for name in names {
        let lease = backend
            .try_acquire(&key(name), TTL)
            .await
            .unwrap_or_else(|e| panic!("{name:?} should be free (a distinct lock), got {e}"));
        leases.push(lease);
    }
    for lease in &leases {
        let again = backend.try_acquire(lease.key(), TTL).await;
        assert!(
            matches!(again, Err(LockError::Contended { .. })),
            "{:?} was acquired twice: {again:?}",
            lease.key()
        );
        let info = backend.inspect(lease.key()).await.unwrap().expect("held");
        assert_eq!(info.owner_hint, Some(lease.owner().short()));
        assert_eq!(info.fencing_token, Some(lease.fencing_token()));
    }
    for lease in &leases {
        backend.release(lease).await.expect("release own lease");
    }
    for lease in &leases {
        assert_eq!(backend.inspect(lease.key()).await.unwrap(), None);
    }
}

#[tokio::test]
async fn scripts_are_reloaded_after_script_flush() {
    let Some(server) = support::server(&[], false).await else {
        return;
    };
    let backend = backend(&server.url, "noscript").await;
    let k = key("flushed");
    let lease = backend.try_acquire(&k, TTL).await.unwrap();
    let () = redis_cmd(&backend, redis::cmd("SCRIPT").arg("FLUSH")).await;
    let lease = backend
        .extend(&lease, TTL)
        .await
        .expect("extend after SCRIPT FLUSH");
    let () = redis_cmd(&backend, redis::cmd("SCRIPT").arg("FLUSH")).await;
    assert!(backend.inspect(&k).await.unwrap().is_some());
    let () = redis_cmd(&backend, redis::cmd("SCRIPT").arg("FLUSH")).await;
    backend
        .release(&lease)
        .await
        .expect("release after SCRIPT FLUSH");
    let () = redis_cmd(&backend, redis::cmd("SCRIPT").arg("FLUSH")).await;
    backend
        .try_acquire(&k, TTL)
        .await
        .expect("acquire after SCRIPT FLUSH");
}

#[tokio::test]
async fn release_and_extend_by_a_non_owner_are_refused() {
    let Some(server) = support::server(&[], false).await else {
        return;
    };
    let backend = backend(&server.url, "nonowner").await;
    let lease = backend.try_acquire(&key("mine"), TTL).await.unwrap();
    let intruder = forged(&lease);
    let release = backend.release(&intruder).await;
    assert!(
        matches!(release, Err(LockError::NotHeld { .. })),
        "a non-owner's release should be NotHeld, got {release:?}"
    );
    let extend = backend.extend(&intruder, TTL).await;
    assert!(
        matches!(extend, Err(LockError::Lost { .. })),
        "a non-owner's extend should be Lost, got {extend:?}"
    );
    let info = backend.inspect(lease.key()).await.unwrap();
    assert_eq!(
        info.and_then(|i| i.owner_hint),
        Some(lease.owner().short()),
        "the owner's lock must survive the intruder"
    );
    backend.release(&lease).await.unwrap();
    let twice = backend.release(&lease).await;
    assert!(
        matches!(twice, Err(LockError::NotHeld { .. })),
        "double release should be NotHeld, got {twice:?}"
    );
    let after = backend.extend(&lease, TTL).await;
    assert!(
        matches!(after, Err(LockError::Lost { .. })),
        "extend after release should be Lost, got {after:?}"
    );
    assert_eq!(
        backend.inspect(lease.key()).await.unwrap(),
        None,
        "extend must not re-create a released lock"
    );
}

#[tokio::test]
async fn contention_reports_the_holder() {
    let Some(server) = support::server(&[], false).await else {
        return;
    };
    let backend = backend(&server.url, "holder").await;
    let lease = backend.try_acquire(&key("held"), TTL).await.unwrap();
    match backend.try_acquire(&key("held"), TTL).await {
        Err(LockError::Contended {
            holder: Some(holder),
            ..
        }) => {
            assert_eq!(holder.fencing_token, Some(lease.fencing_token()));
            assert_eq!(holder.owner_hint, Some(lease.owner().short()));
            let remaining = holder.remaining.expect("a PTTL");
            assert!(
                remaining > Duration::ZERO && remaining <= TTL,
                "{remaining:?}"
            );
        }
        other => panic!("expected Contended with holder info, got {other:?}"),
    }
}

/// The batch script answers in lines of blank-separated fields: a held
/// key whose value someone else wrote with blanks and a newline in its
/// first eight bytes must still come back as contention, with those
/// blanks as `?`, and a grant asked beside it must come out unharmed.
#[tokio::test]
async fn a_holder_value_with_blanks_is_reported_as_contention() {
    let Some(server) = support::server(&[], false).await else {
        return;
    };
    let backend = backend(&server.url, "blanks").await;
    let odd = key("odd");
    let lock = backend.node().layout().lock_key(&odd);
    let mut set = redis::cmd("SET");
    set.arg(&lock).arg("a b\nc d e f g").arg("PX").arg(60_000);
    let () = redis_cmd(&backend, &set).await;
    let free = key("free");
    let (odd_answer, free_answer) = tokio::join!(
        backend.try_acquire(&odd, TTL),
        backend.try_acquire(&free, TTL)
    );
    match odd_answer {
        Err(LockError::Contended {
            holder: Some(holder),
            ..
        }) => assert_eq!(holder.owner_hint.as_deref(), Some("a?b?c?d?")),
        other => panic!("expected Contended with holder info, got {other:?}"),
    }
    free_answer.expect("the free key beside it is granted");
}

#[tokio::test]
async fn extend_many_renews_each_lease_and_reports_lost_ones() {
    let Some(server) = support::server(&[], false).await else {
        return;
    };
    let backend = backend(&server.url, "many").await;
    let a = backend.try_acquire(&key("a"), TTL).await.unwrap();
    let b = backend.try_acquire(&key("b"), TTL).await.unwrap();
    let stranger = forged(&b);
    let gone = backend.try_acquire(&key("gone"), TTL).await.unwrap();
    backend.release(&gone).await.unwrap();
    let long = Duration::from_secs(120);
    let results = backend
        .extend_many(&[
            (a.clone(), long),
            (stranger, long),
            (b.clone(), long),
            (gone, long),
            (a.clone(), Duration::ZERO),
        ])
        .await
        .expect("the batch call succeeds");
    assert!(results[0].is_ok(), "{:?}", results[0]);
    assert!(
        matches!(results[1], Err(LockError::Lost { .. })),
        "{:?}",
        results[1]
    );
    assert!(results[2].is_ok(), "{:?}", results[2]);
    assert!(
        matches!(results[3], Err(LockError::Lost { .. })),
        "{:?}",
        results[3]
    );
    assert!(
        matches!(results[4], Err(LockError::InvalidTtl { .. })),
        "{:?}",
        results[4]
    );
    let remaining = backend
        .inspect(b.key())
        .await
        .unwrap()
        .unwrap()
        .remaining
        .unwrap();
    assert!(remaining > TTL, "b was not renewed to 120 s: {remaining:?}");
}

#[tokio::test]
async fn fencing_tokens_keep_increasing_after_release_and_expiry() {
    let Some(server) = support::server(&[], false).await else {
        return;
    };
    let backend = backend(&server.url, "fencing").await;
    let k = key("fenced");
    let first = backend.try_acquire(&k, TTL).await.unwrap();
    backend.release(&first).await.unwrap();
    let second = backend.try_acquire(&k, TTL).await.unwrap();
    assert!(second.fencing_token() > first.fencing_token());
    backend.release(&second).await.unwrap();
    let short = backend
        .try_acquire(&k, Duration::from_millis(20))
        .await
        .unwrap();
    assert!(short.fencing_token() > second.fencing_token());
    // Bounded wait for the server to expire it (no release).
    let mut expired = None;
    for _ in 0..200 {
        match backend.try_acquire(&k, TTL).await {
            Ok(lease) => {
                expired = Some(lease);
                break;
            }
            Err(LockError::Contended { .. }) => tokio::time::sleep(Duration::from_millis(10)).await,
            Err(e) => panic!("{e}"),
        }
    }
    let after_expiry = expired.expect("the 20 ms lease never expired within 2 s");
    assert!(
        after_expiry.fencing_token() > short.fencing_token(),
        "{} after expiry of {}",
        after_expiry.fencing_token(),
        short.fencing_token()
    );
    let extend = backend.extend(&short, TTL).await;
    assert!(
        matches!(extend, Err(LockError::Lost { .. })),
        "extend of an expired lease taken over should be Lost, got {extend:?}"
    );
    assert_ne!(after_expiry.fencing_token(), FencingToken(0));
}

#[tokio::test]
async fn a_release_wakes_listeners_of_that_key_only() {
    let Some(server) = support::server(&[], false).await else {
        return;
    };
    let backend = backend(&server.url, "pubsub").await;
    backend.subscribe_releases().await.expect("subscription up");
    let (k, other) = (key("wake me"), key("not me"));
    let lease = backend.try_acquire(&k, TTL).await.unwrap();
    let mut listener = backend.release_listener(&k).expect("notified waiting");
    let mut bystander = backend.release_listener(&other).expect("notified waiting");
    backend.release(&lease).await.unwrap();
    assert_eq!(
        listener.wait(Duration::from_secs(10)).await,
        Wake::Notified,
        "the release's PUBLISH did not reach the listener"
    );
    assert_eq!(
        bystander.wait(Duration::from_millis(300)).await,
        Wake::TimedOut,
        "a release of another key woke this listener"
    );
}

#[tokio::test]
async fn a_waiter_is_handed_the_lock_by_notification_not_polling() {
    let Some(server) = support::server(&[], false).await else {
        return;
    };
    let backend = backend(&server.url, "handoff").await;
    backend.subscribe_releases().await.expect("subscription up");
    let k = key("handoff");
    let lease = backend.try_acquire(&k, TTL).await.unwrap();
    // Polls at most once a minute: within the 30 s deadline only a release
    // notification can wake it after its first attempt.
    let policy = WaitPolicy::new(Duration::from_secs(30))
        .with_delays(Duration::from_secs(60), Duration::from_secs(60));
    let before = evalsha_calls(&backend).await;
    let waiter = {
        let (backend, k) = (backend.clone(), k.clone());
        tokio::spawn(async move { backend.acquire(&k, TTL, &policy).await })
    };
    // Wait (bounded) until the server has run the waiter's first attempt; no
    // other script runs meanwhile. From then on it sleeps for 30 s unless woken.
    let mut attempted = false;
    for _ in 0..1000 {
        if evalsha_calls(&backend).await > before {
            attempted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(attempted, "the waiter never made its first attempt");
    backend.release(&lease).await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(20), waiter)
        .await
        .expect("the waiter was not woken by the release")
        .unwrap()
        .expect("the waiter should hold the lock");
    assert!(next.fencing_token() > lease.fencing_token());
}

/// The shared `poll` option caps a waiter's pauses: with notifications off
/// and a wait policy that would sleep a minute (past its 30 s deadline), a
/// waiter still takes the lock after its release, by polling.
#[tokio::test]
async fn poll_caps_a_waiters_pauses_when_no_notification_comes() {
    let Some(server) = support::server(&[], false).await else {
        return;
    };
    let backend = RedisBackend::connect_with(
        config(&server.url)
            .namespace(namespace("poll"))
            .notifications(false)
            .poll(Duration::from_millis(20)),
    )
    .await
    .unwrap();
    let k = key("polled");
    let lease = backend.try_acquire(&k, TTL).await.unwrap();
    let policy = WaitPolicy::new(Duration::from_secs(30))
        .with_delays(Duration::from_secs(60), Duration::from_secs(60));
    let before = evalsha_calls(&backend).await;
    let waiter = {
        let (backend, k) = (backend.clone(), k.clone());
        tokio::spawn(async move { backend.acquire(&k, TTL, &policy).await })
    };
    // Release only once the waiter has tried (and found the key held).
    let mut attempted = false;
    for _ in 0..1000 {
        if evalsha_calls(&backend).await > before {
            attempted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(attempted, "the waiter never made its first attempt");
    backend.release(&lease).await.unwrap();
    let released = tokio::time::Instant::now();
    let next = tokio::time::timeout(Duration::from_secs(20), waiter)
        .await
        .expect("a waiter polling every 20 ms never took the released lock")
        .unwrap()
        .expect("the polling waiter should hold the lock");
    println!(
        "the polling waiter took the lock {:?} after the release",
        released.elapsed()
    );
    assert!(next.fencing_token() > lease.fencing_token());
}

/// Retries `call` while the store is `Unavailable` (bounded: ~60 tries, 250 ms
/// apart, each bounded by the backend's timeout); any other error fails.
async fn until_available<T, F, Fut>(mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, LockError>>,
{
    for _ in 0..60 {
        match call().await {
            Ok(value) => return value,
            Err(LockError::Unavailable { .. }) => {
                tokio::time::sleep(Duration::from_millis(250)).await
            }
            Err(e) => panic!("unexpected error while waiting for recovery: {e}"),
        }
    }
    panic!("the store did not come back within 60 tries after docker unpause");
}

#[tokio::test]
async fn a_lost_subscription_reconnects_and_wakes_every_waiter() {
    let Some(server) = support::server(&[], false).await else {
        return;
    };
    let backend = backend(&server.url, "resub").await;
    backend.subscribe_releases().await.expect("subscription up");
    assert_eq!(backend.release_subscriptions(), 1);
    let mut listener = backend.release_listener(&key("anything")).unwrap();
    let killed: i64 = redis_cmd(
        &backend,
        redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub"),
    )
    .await;
    assert!(killed >= 1, "no pub/sub client to kill");
    assert_eq!(
        listener.wait(Duration::from_secs(10)).await,
        Wake::Notified,
        "waiters must be woken after a resubscription (messages may have been missed)"
    );
    assert!(backend.release_subscriptions() >= 2);
}

#[tokio::test]
async fn a_paused_server_is_unavailable_within_the_timeout_and_recovers() {
    let Some(server) = support::server(&[], true).await else {
        return;
    };
    let container = server.container.as_ref().unwrap();
    let timeout = Duration::from_millis(500);
    let backend = RedisBackend::connect_with(
        config(&server.url)
            .namespace(namespace("pause"))
            .timeout(timeout),
    )
    .await
    .unwrap();
    let held = backend.try_acquire(&key("held"), TTL).await.unwrap();
    container.pause().await.expect("docker pause");
    // Bounded: 10x the per-call timeout is "never a hang", not a latency claim.
    let bound = timeout * 10;
    let acquire = tokio::time::timeout(bound, backend.try_acquire(&key("other"), TTL))
        .await
        .expect("try_acquire hung on a paused server");
    assert!(
        matches!(acquire, Err(LockError::Unavailable { .. })),
        "expected Unavailable, got {acquire:?}"
    );
    let extend = tokio::time::timeout(bound, backend.extend(&held, TTL))
        .await
        .expect("extend hung on a paused server");
    assert!(
        matches!(extend, Err(LockError::Unavailable { .. })),
        "{extend:?}"
    );
    let batch = [(held.clone(), TTL), (held.clone(), TTL)];
    let many = tokio::time::timeout(bound, backend.extend_many(&batch))
        .await
        .expect("extend_many hung on a paused server");
    assert!(
        matches!(many, Err(LockError::Unavailable { .. })),
        "a batch on a paused server fails as a whole (one error, not one per lease): {many:?}"
    );
    let inspect = tokio::time::timeout(bound, backend.inspect(held.key()))
        .await
        .expect("inspect hung on a paused server");
    assert!(
        matches!(inspect, Err(LockError::Unavailable { .. })),
        "{inspect:?}"
    );
    container.unpause().await.expect("docker unpause");
    let held = until_available(|| backend.extend(&held, TTL)).await;
    backend
        .release(&held)
        .await
        .expect("release after recovery");
}

#[tokio::test]
async fn a_stopped_server_is_unavailable_not_a_hang() {
    let Some(server) = support::server(&[], true).await else {
        return;
    };
    let backend = RedisBackend::connect_with(
        config(&server.url)
            .namespace(namespace("stop"))
            .timeout(Duration::from_millis(500)),
    )
    .await
    .unwrap();
    server.container.as_ref().unwrap().stop(None).await.unwrap();
    let acquire =
        tokio::time::timeout(Duration::from_secs(10), backend.try_acquire(&key("k"), TTL))
            .await
            .expect("try_acquire hung on a stopped server");
    assert!(
        matches!(acquire, Err(LockError::Unavailable { .. })),
        "{acquire:?}"
    );
    let refused =
        RedisBackend::connect_with(config(&server.url).timeout(Duration::from_millis(500))).await;
    assert!(
        matches!(refused, Err(LockError::Unavailable { .. })),
        "{refused:?}"
    );
}

#[tokio::test]
async fn fencing_is_durable_only_with_aof_fsync_always() {
    let Some(plain) = support::server(&["--appendonly", "no"], true).await else {
        return;
    };
    let plain_backend = backend(&plain.url, "durable").await;
    assert!(!plain_backend.capabilities().durable_fencing);
    let Some(aof) =
        support::server(&["--appendonly", "yes", "--appendfsync", "always"], true).await
    else {
        return;
    };
    let aof_backend = backend(&aof.url, "durable").await;
    assert!(
        aof_backend.capabilities().durable_fencing,
        "AOF + fsync always should count as durable: {:?}",
        aof_backend.persistence()
    );
    let Some(refusing) = support::server(
        &[
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--rename-command",
            "CONFIG",
            "CONFIG-hidden-by-test",
        ],
        true,
    )
    .await
    else {
        return;
    };
    let refusing_backend = backend(&refusing.url, "durable").await;
    assert!(
        !refusing_backend.capabilities().durable_fencing,
        "a server that refuses CONFIG must count as not durable"
    );
}

#[tokio::test]
async fn urls_carry_password_and_database() {
    let Some(server) = support::server(&["--requirepass", "s3cret"], true).await else {
        return;
    };
    let addr = server.url.trim_start_matches("redis://");
    let backend =
        RedisBackend::connect_with(config(&format!("redis://:s3cret@{addr}/3")).namespace("urls"))
            .await
            .expect("password and db from the url");
    let shown = format!("{backend:?}");
    assert!(
        !shown.contains("s3cret"),
        "a connected backend's Debug shows its password: {shown}"
    );
    let lease = backend.try_acquire(&key("in db 3"), TTL).await.unwrap();
    let in_db: i64 = redis_cmd(&backend, &redis::cmd("DBSIZE")).await;
    assert_eq!(in_db, 2, "lock and counter keys should be in db 3");
    let db0 =
        RedisBackend::connect_with(config(&format!("redis://:s3cret@{addr}/0")).namespace("urls"))
            .await
            .unwrap();
    assert_eq!(
        db0.inspect(lease.key()).await.unwrap(),
        None,
        "db 0 is another keyspace"
    );
    let wrong = RedisBackend::connect(&format!("redis://:wrong@{addr}")).await;
    assert!(
        matches!(
            wrong,
            Err(LockError::Backend {
                retryable: false,
                ..
            })
        ),
        "a wrong password is a final backend error, got {wrong:?}"
    );
    let bad = RedisBackend::connect("notredis://x").await;
    assert!(matches!(bad, Err(LockError::Config(_))), "{bad:?}");
}

#[tokio::test]
async fn a_lazy_node_to_a_dead_server_is_unavailable_then_works_once_it_is_up() {
    let Some(server) = support::server(&[], true).await else {
        return;
    };
    let client = redis::Client::open(server.url.as_str()).unwrap();
    let layout = leasehold_redis::KeyLayout::new(&namespace("lazy")).unwrap();
    let container = server.container.as_ref().unwrap();
    container.pause().await.unwrap();
    let node = leasehold_redis::RedisNode::lazy(client, layout, Duration::from_millis(300), NAME)
        .expect("a lazy node never connects up front");
    let owner = OwnerToken::generate();
    let down = tokio::time::timeout(
        Duration::from_secs(5),
        node.try_acquire_raw(&key("k"), &owner, TTL),
    )
    .await
    .expect("a call to a paused server hung");
    assert!(
        matches!(down, Err(LockError::Unavailable { .. })),
        "{down:?}"
    );
    container.unpause().await.unwrap();
    let k = key("k");
    let outcome = until_available(|| node.try_acquire_raw(&k, &owner, TTL)).await;
    // The timed-out first attempt may have run once the server thawed: then
    // the key is held by this same owner (Held with our prefix), else ours now.
    match outcome {
        leasehold_redis::AcquireOutcome::Acquired(token) => assert!(token.get() >= 1),
        leasehold_redis::AcquireOutcome::Held(info) => {
            assert_eq!(info.owner_hint, Some(owner.short()))
        }
    }
    assert_eq!(
        node.release_raw(&key("k"), &owner).await.unwrap(),
        leasehold_redis::Ownership::Ours
    );
    assert_eq!(
        node.release_raw(&key("k"), &owner).await.unwrap(),
        leasehold_redis::Ownership::Free
    );
}

/// The probe of issue 11 on a single server: the server frozen, `lock()`
/// dropped after 300 ms, the server thawed. The acquire script sits in the
/// frozen server's socket and runs when it wakes; the key must not stay held
/// by nobody until its TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_lock_call_leaves_no_key_held_when_the_server_was_frozen() {
    let Some(server) = support::server(&[], true).await else {
        return;
    };
    let container = server.container.as_ref().unwrap();
    let backend = RedisBackend::connect_with(
        config(&server.url)
            .namespace(namespace("dropped"))
            .timeout(Duration::from_secs(1)),
    )
    .await
    .unwrap();
    let ttl = Duration::from_secs(20);
    let locker = leasehold_core::Locker::builder(backend.clone())
        .ttl(leasehold_core::TtlPolicy::Fixed(ttl))
        .build();
    let k = key("dropped-lock");
    container.pause().await.expect("docker pause");
    let dropped = tokio::time::timeout(Duration::from_millis(300), locker.lock(k.clone())).await;
    assert!(
        dropped.is_err(),
        "lock() on a frozen server should still wait after 300 ms, got {:?}",
        dropped.map(|r| r.map(|g| g.fencing_token()))
    );
    container.unpause().await.expect("docker unpause");
    let started = tokio::time::Instant::now();
    leasehold_conformance::fixtures::eventually(
        Duration::from_secs(10),
        "the dropped lock() call's key to be free again (well before its 20 s TTL)",
        || async { matches!(backend.inspect(&k).await, Ok(None)) },
    )
    .await;
    println!("key free {:?} after the server thawed", started.elapsed());
}

/// A lone caller's acquisition goes out from its own future; a caller
/// that leaves while it is out (here: timed out on a frozen server) gives
/// the grant back behind it, so when the server wakes and runs the grant,
/// the key is free again at once, not at its 60 s TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_leaves_while_its_own_call_is_out_gives_the_grant_back() {
    let Some(server) = support::server(&[], true).await else {
        return;
    };
    let container = server.container.as_ref().unwrap();
    let backend = RedisBackend::connect_with(
        config(&server.url)
            .namespace(namespace("left-mid-call"))
            .timeout(Duration::from_secs(5)),
    )
    .await
    .unwrap();
    let node = backend.node().clone();
    let k = key("left-mid-call");
    // Scripts loaded, so the frozen call is the grant itself.
    let warm = backend.try_acquire(&key("warm"), TTL).await.unwrap();
    backend.release(&warm).await.unwrap();
    container.pause().await.expect("docker pause");
    let left = tokio::time::timeout(
        Duration::from_millis(300),
        node.try_acquire_raw(&k, &OwnerToken::generate(), Duration::from_secs(60)),
    )
    .await;
    container.unpause().await.expect("docker unpause");
    assert!(left.is_err(), "a frozen server answered: {left:?}");
    let fence = node.layout().fence_key(&k);
    leasehold_conformance::fixtures::eventually(
        Duration::from_secs(10),
        "the grant of the caller that left to be given back (well before its 60 s TTL)",
        || async { matches!(backend.inspect(&k).await, Ok(None)) },
    )
    .await;
    let counter: Option<u64> = redis_cmd(&backend, redis::cmd("GET").arg(&fence)).await;
    assert_eq!(
        counter,
        Some(1),
        "the acquisition of the caller that left never ran: this proves nothing"
    );
}

/// TTLs above one year (the bound every backend shares) are `InvalidTtl` on
/// every call, `Duration::MAX` included, and nothing panics.
#[tokio::test]
async fn a_ttl_beyond_one_year_is_invalid_on_every_call() {
    let Some(server) = support::server(&[], false).await else {
        return;
    };
    let backend = backend(&server.url, "ttl-bounds").await;
    let year = leasehold_core::config::MAX_DURATION;
    let k = key("ttl-bounds");
    let lease = backend
        .try_acquire(&k, year)
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

/// Group commit: acquisitions and releases asked for at once share script
/// calls, and each caller still gets its own answer: every free key is
/// granted with its own token, one hot key has exactly one winner, and a
/// release answers for its own lease only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_steps_share_script_calls_and_each_gets_its_own_answer() {
    // A server of its own: the call count must be this test's alone.
    let Some(server) = support::server(&[], true).await else {
        return;
    };
    let backend = backend(&server.url, "batch").await;
    let (free, hot) = (48, 16);
    let keys: Vec<Key> = (0..free)
        .map(|i| key(&format!("batch-{i}")))
        .chain((0..hot).map(|_| key("batch-hot")))
        .collect();
    let before = evalsha_calls(&backend).await;
    let answers =
        futures_util::future::join_all(keys.iter().map(|k| backend.try_acquire(k, TTL))).await;
    // (A first call per script may be answered NOSCRIPT and sent again.)
    let calls = evalsha_calls(&backend).await - before;
    assert!(
        calls < (free + hot) as u64 / 4,
        "{} acquisitions asked at once took {calls} script calls",
        free + hot
    );
    let mut leases = Vec::new();
    let mut tokens = std::collections::HashSet::new();
    for (k, answer) in keys.iter().zip(answers) {
        match answer {
            Ok(lease) => {
                assert_eq!(lease.key(), k, "a caller got another caller's lease");
                assert!(tokens.insert((k.clone(), lease.fencing_token())));
                leases.push(lease);
            }
            Err(LockError::Contended { key: held, .. }) => {
                assert_eq!(held, "batch-hot", "a free key was refused");
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(leases.len(), free + 1, "the hot key must have one winner");
    // Each release answers for its own lease: a forged owner's is refused,
    // the real ones succeed, and a second release finds nothing.
    let forgeries: Vec<Lease> = leases.iter().map(forged).collect();
    let refused =
        futures_util::future::join_all(forgeries.iter().map(|l| backend.release(l))).await;
    assert!(
        refused
            .iter()
            .all(|r| matches!(r, Err(LockError::NotHeld { .. })))
    );
    let released = futures_util::future::join_all(leases.iter().map(|l| backend.release(l))).await;
    assert!(released.iter().all(Result::is_ok), "{released:?}");
    let again = futures_util::future::join_all(leases.iter().map(|l| backend.release(l))).await;
    assert!(
        again
            .iter()
            .all(|r| matches!(r, Err(LockError::NotHeld { .. })))
    );
}

/// A caller that leaves once its acquisition is queued (behind the two
/// calls a node keeps out at once) does not strand the grant it still gets:
/// the node gives the key back, and the grant did happen (the next holder's
/// token is the one after it).
///
/// On one thread: with a second worker, the connection's task could send
/// a call and read its answer while the test's thread, preempted on a
/// loaded machine, was still inside the call's first poll, which then
/// answered at once (seen once in a CI rehearsal: "a store call answered
/// without a round trip"). Here nothing else runs while the test polls.
#[tokio::test(flavor = "current_thread")]
async fn a_grant_whose_caller_left_is_given_back() {
    let Some(server) = support::server(&[], false).await else {
        return;
    };
    let backend = backend(&server.url, "left").await;
    let node = backend.node().clone();
    let k = key("left");
    let owner = OwnerToken::generate();
    // Two callers whose calls are out, each sent from its own future.
    let mut busy: Vec<_> = ["busy-1", "busy-2"]
        .into_iter()
        .map(|name| {
            let (node, k) = (node.clone(), key(name));
            Box::pin(async move { node.try_acquire_raw(&k, &OwnerToken::generate(), TTL).await })
        })
        .collect();
    for call in &mut busy {
        assert!(
            futures_util::poll!(call.as_mut()).is_pending(),
            "a store call answered without a round trip"
        );
    }
    let started = {
        use futures_util::FutureExt;
        node.try_acquire_raw(&k, &owner, Duration::from_secs(60))
            .now_or_never()
    };
    assert!(
        started.is_none(),
        "a store call answered without a round trip"
    );
    // The first call back hands the queued ask to a task of its own.
    for call in busy {
        call.await.expect("the calls ahead are granted");
    }
    let fence = node.layout().fence_key(&k);
    leasehold_conformance::fixtures::eventually(
        Duration::from_secs(10),
        "the queued acquisition of the caller that left to run",
        || async {
            let counter: Option<u64> = redis_cmd(&backend, redis::cmd("GET").arg(&fence)).await;
            counter == Some(1)
        },
    )
    .await;
    leasehold_conformance::fixtures::eventually(
        Duration::from_secs(10),
        "the grant of the caller that left to be given back (well before its 60 s TTL)",
        || async { matches!(backend.inspect(&k).await, Ok(None)) },
    )
    .await;
    let next = backend.try_acquire(&k, TTL).await.unwrap();
    assert_eq!(
        next.fencing_token(),
        FencingToken(2),
        "the caller that left was never granted the key"
    );
}
