//! The DynamoDB backend against the stand-in container (moto): the contract,
//! clock-independent expiry, malformed items, a killed holder, a paused and a
//! restarted store.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use common::{OP_TIMEOUT, assert_backend_error_naming, start, table};
use leasehold_conformance::Store;
use leasehold_core::{
    Key, LockBackend, LockError, Locker, OwnerToken, TestClock, TtlPolicy, WaitPolicy,
};
use leasehold_dynamodb::{DynamoDbBackend, DynamoDbConfig};
use tokio::time::Instant;

fn key(name: &str) -> Key {
    Key::new(name).expect("legal key")
}

#[tokio::test]
async fn acquire_release_fencing_and_ownership_follow_the_contract() {
    let store = start().await;
    let a = store.backend(&table("contract"), None).await;
    let k = key("orders:42");
    let ttl = Duration::from_secs(30);

    let first = a.try_acquire(&k, ttl).await.expect("free key is acquired");
    match a.try_acquire(&k, ttl).await {
        Err(LockError::Contended { holder, .. }) => {
            let holder = holder.expect("the holder is described");
            assert_eq!(holder.fencing_token, Some(first.fencing_token()));
            assert_eq!(
                holder.owner_hint.as_deref(),
                Some(first.owner().short().as_str())
            );
            // The shared `holder` option's default: "<host> pid <pid>".
            let pid = format!("pid {}", std::process::id());
            assert!(holder.metadata.unwrap_or_default().contains(&pid));
        }
        other => panic!("a held key must be Contended, got {other:?}"),
    }
    let info = a.inspect(&k).await.expect("inspect").expect("held");
    assert_eq!(info.fencing_token, Some(first.fencing_token()));

    let extended = a.extend(&first, ttl).await.expect("owner extends");
    a.release(&extended).await.expect("owner releases");
    assert!(
        a.inspect(&k).await.expect("inspect").is_none(),
        "released key shows no holder"
    );
    assert!(
        matches!(a.release(&first).await, Err(LockError::NotHeld { .. })),
        "double release is NotHeld"
    );
    assert!(
        matches!(a.extend(&first, ttl).await, Err(LockError::Lost { .. })),
        "extend after release is Lost"
    );

    let second = a
        .try_acquire(&k, ttl)
        .await
        .expect("released key is acquired again");
    assert!(
        second.fencing_token() > first.fencing_token(),
        "fencing must increase across release: {} then {}",
        first.fencing_token(),
        second.fencing_token()
    );
    // A lease object with the right key but someone else's owner token.
    let forged = leasehold_core::Lease::new(
        "dynamodb",
        k.clone(),
        OwnerToken::generate(),
        second.fencing_token(),
        Instant::now(),
        ttl,
        Default::default(),
    );
    assert!(matches!(
        a.release(&forged).await,
        Err(LockError::NotHeld { .. })
    ));
    assert!(matches!(
        a.extend(&forged, ttl).await,
        Err(LockError::Lost { .. })
    ));
    a.release(&second)
        .await
        .expect("the real owner still holds it");
}

/// The shared `holder` option is stored with each lease and shown to
/// whoever finds the key held.
#[tokio::test]
async fn the_holder_option_is_stored_with_each_lease() {
    let store = start().await;
    let name = table("holder");
    let a = DynamoDbBackend::connect_with(
        store
            .config(&name)
            .create_table(true)
            .holder("billing worker 7"),
    )
    .await
    .expect("connect");
    let k = key("holder");
    let lease = a
        .try_acquire(&k, Duration::from_secs(30))
        .await
        .expect("acquire");
    let info = a.inspect(&k).await.expect("inspect").expect("held");
    assert_eq!(
        info.metadata.as_deref(),
        Some("billing worker 7"),
        "expected the configured holder in the item"
    );
    a.release(&lease).await.expect("release");
}

/// The shared `poll` option caps a waiter's pauses: a waiter whose retry
/// policy would pause past its whole deadline still re-checks, and gets a key
/// released meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_poll_option_makes_a_waiter_recheck_at_least_that_often() {
    let store = start().await;
    let name = table("poll");
    let holder = store.backend(&name, None).await;
    let waiter =
        DynamoDbBackend::connect_with(store.config(&name).poll(Duration::from_millis(100)))
            .await
            .expect("connect");
    let k = key("polled");
    let ttl = Duration::from_secs(60);
    let lease = holder.try_acquire(&k, ttl).await.expect("acquire");
    // Pauses of 30 s against a 20 s deadline: uncapped, the first pause would
    // outlast the deadline and the wait would end in WaitTimedOut.
    let wait = WaitPolicy::default()
        .with_delays(Duration::from_secs(30), Duration::from_secs(30))
        .with_deadline(Duration::from_secs(20));
    let started = Instant::now();
    let waiting = {
        let (waiter, k) = (waiter.clone(), k.clone());
        tokio::spawn(async move { waiter.acquire(&k, ttl, &wait).await })
    };
    // Clones share observations: once the waiter has seen the key held, its
    // estimate of the time left drops below the whole lease.
    leasehold_conformance::fixtures::eventually(
        Duration::from_secs(10),
        "the waiter to have seen the key held",
        || async {
            matches!(
                waiter.inspect(&k).await,
                Ok(Some(info)) if info.remaining.is_some_and(|left| left < ttl)
            )
        },
    )
    .await;
    holder.release(&lease).await.expect("release");
    let acquired = waiting
        .await
        .expect("join")
        .expect("a waiter polling every 100 ms gets the released key within its deadline");
    println!("acquired {:?} after the wait began", started.elapsed());
    waiter.release(&acquired).await.expect("release");
}

#[tokio::test]
async fn awkward_keys_and_namespaces_never_share_a_lock() {
    let store = start().await;
    let name = table("keys");
    let a = store.backend(&name, None).await;
    let other_app = DynamoDbBackend::connect_with(store.config(&name).namespace("other-app"))
        .await
        .expect("connect");
    let names = [
        "a/b",
        "a#b",
        "#",
        "with space",
        "'; DROP TABLE locks; --",
        "%_\\",
        "redis.call('del', KEYS[1])",
        "🔒émoji",
        "\"quoted\"",
    ];
    let long = "x".repeat(1024);
    let mut leases = Vec::new();
    for name in names.iter().copied().chain([long.as_str()]) {
        let k = key(name);
        leases.push(
            a.try_acquire(&k, Duration::from_secs(30))
                .await
                .expect(name),
        );
        other_app
            .try_acquire(&k, Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("{name:?} in another namespace is a different lock: {e}"));
    }
    for lease in &leases {
        a.release(lease).await.expect("release");
    }
}

/// Wall clocks that disagree by far more than the lease change nothing: only
/// each client's monotonic clock counts, and only for RVNs it saw itself.
#[tokio::test]
async fn skewed_wall_clocks_neither_steal_a_live_lease_nor_keep_a_dead_one() {
    let store = start().await;
    let name = table("skew");
    let ttl = Duration::from_secs(10);
    let clock_a = Arc::new(TestClock::new());
    let clock_b = Arc::new(TestClock::new());
    clock_a.set_wall_skew(3_600 * 1_000_000_000); // an hour ahead
    clock_b.set_wall_skew(-3_600 * 1_000_000_000); // an hour behind
    let a = store.backend(&name, Some(clock_a.clone())).await;
    let b = store.backend(&name, Some(clock_b.clone())).await;
    let k = key("skewed");

    let mut lease = a.try_acquire(&k, ttl).await.expect("a acquires");
    for round in 0..3 {
        assert!(
            matches!(
                b.try_acquire(&k, ttl).await,
                Err(LockError::Contended { .. })
            ),
            "round {round}: b must see the lock held"
        );
        // b's monotonic clock moves past a whole lease; a keeps renewing.
        clock_b.jump(ttl + Duration::from_secs(1));
        lease = a
            .extend(&lease, ttl)
            .await
            .expect("a renews its live lease");
        assert!(
            matches!(
                b.try_acquire(&k, ttl).await,
                Err(LockError::Contended { .. })
            ),
            "round {round}: b stole a lease that a renewed"
        );
    }

    // a dies: it stops renewing. b has just observed a's last RVN.
    match b.try_acquire(&k, ttl).await {
        Err(LockError::Contended { .. }) => {}
        other => {
            panic!("within one observed lease the dead holder's lock is still held: {other:?}")
        }
    }
    clock_b.jump(ttl - Duration::from_secs(1));
    assert!(
        matches!(
            b.try_acquire(&k, ttl).await,
            Err(LockError::Contended { .. })
        ),
        "b took over before observing one whole lease duration"
    );
    clock_b.jump(Duration::from_secs(2));
    let taken = b
        .try_acquire(&k, ttl)
        .await
        .expect("after one observed lease duration the dead holder's lock is freed");
    assert!(taken.fencing_token() > lease.fencing_token());
    assert!(
        matches!(a.extend(&lease, ttl).await, Err(LockError::Lost { .. })),
        "the old holder's extend after takeover is Lost"
    );
    assert!(matches!(
        a.release(&lease).await,
        Err(LockError::NotHeld { .. })
    ));
    b.release(&taken).await.expect("b holds it");
}

/// A holder whose runtime dies (no release, no more renewals) keeps the lock
/// while alive and loses it one observed lease after it stops.
#[tokio::test]
async fn a_killed_holder_frees_the_lock_after_one_observed_lease() {
    let store = start().await;
    let name = table("killed");
    let ttl = Duration::from_millis(900);
    let k = key("jobs:nightly");

    // The holder lives on its own runtime, auto-extending through a Locker.
    let holder_backend = store.backend(&name, None).await;
    let holder_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let guard_token = {
        let locker = Locker::builder(holder_backend)
            .ttl(TtlPolicy::Fixed(ttl))
            .build();
        let key = k.clone();
        let guard = holder_runtime
            .spawn(async move { locker.lock(key).await })
            .await
            .expect("join")
            .expect("holder acquires");
        let token = guard.fencing_token();
        std::mem::forget(guard); // no release: the process "dies" below
        token
    };

    let waiter = store.backend(&name, None).await;
    // While the holder renews, three lease durations pass without a takeover.
    let alive_until = Instant::now() + ttl * 3;
    while Instant::now() < alive_until {
        match waiter.try_acquire(&k, ttl).await {
            Err(LockError::Contended { .. }) => {}
            other => panic!("a renewing holder's lock was taken: {other:?}"),
        }
        tokio::time::sleep(ttl / 4).await;
    }

    // Kill it: its watchdog stops, nothing is released.
    let killed_at = Instant::now();
    holder_runtime.shutdown_background();

    let lease = waiter
        .acquire(&k, ttl, &WaitPolicy::default().with_deadline(ttl * 10))
        .await
        .expect("the dead holder's lock is freed within a bounded wait");
    // The holder last rewrote its RVN at most a third of a lease before it
    // died (the watchdog's cadence), and a takeover needs that RVN unchanged
    // for a whole lease: so never earlier than two thirds of a lease after the
    // kill. (Measuring a whole lease from the kill was a test bug: it failed
    // whenever the kill came late in a renewal period.)
    assert!(
        killed_at.elapsed() >= ttl * 2 / 3,
        "taken over {:?} after the holder died, before its last renewal's lease could end ({ttl:?} lease)",
        killed_at.elapsed()
    );
    assert!(lease.fencing_token() > guard_token);
    waiter.release(&lease).await.expect("release");
}

#[tokio::test]
async fn malformed_items_give_a_clear_error_naming_the_attribute() {
    let store = start().await;
    let name = table("malformed");
    let backend = store.backend(&name, None).await;
    let s = |v: &str| AttributeValue::S(v.into());
    let n = |v: &str| AttributeValue::N(v.into());
    let owner = OwnerToken::generate().to_hex();
    type Case<'a> = (&'a str, Vec<(&'a str, AttributeValue)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            "no-rvn",
            vec![
                ("owner", s(&owner)),
                ("lease_ms", n("1000")),
                ("fence", n("1")),
            ],
            "`rvn`",
        ),
        (
            "no-fence",
            vec![
                ("owner", s(&owner)),
                ("lease_ms", n("1000")),
                ("rvn", s("r")),
            ],
            "`fence`",
        ),
        (
            "no-lease",
            vec![("owner", s(&owner)), ("rvn", s("r")), ("fence", n("1"))],
            "`lease_ms`",
        ),
        (
            "owner-bool",
            vec![
                ("owner", AttributeValue::Bool(true)),
                ("lease_ms", n("1")),
                ("rvn", s("r")),
                ("fence", n("1")),
            ],
            "`owner`",
        ),
        (
            "owner-not-hex",
            vec![
                ("owner", s("someone")),
                ("lease_ms", n("1")),
                ("rvn", s("r")),
                ("fence", n("1")),
            ],
            "`owner`",
        ),
        (
            "lease-string",
            vec![
                ("owner", s(&owner)),
                ("lease_ms", s("soon")),
                ("rvn", s("r")),
                ("fence", n("1")),
            ],
            "`lease_ms`",
        ),
        (
            "fence-string-held",
            vec![
                ("owner", s(&owner)),
                ("lease_ms", n("1000")),
                ("rvn", s("r")),
                ("fence", s("7")),
            ],
            "`fence`",
        ),
        (
            "fence-string-free",
            vec![("rvn", s("r")), ("fence", s("7"))],
            "`fence`",
        ),
        (
            "fence-negative-free",
            vec![("rvn", s("r")), ("fence", n("-3"))],
            "`fence`",
        ),
    ];
    for (name_suffix, attributes, needle) in cases {
        let k = key(&format!("bad:{name_suffix}"));
        let mut item: HashMap<String, AttributeValue> = attributes
            .into_iter()
            .map(|(n, v)| (n.to_owned(), v))
            .collect();
        item.insert("pk".into(), s(&backend.partition_key_for(&k)));
        backend
            .client()
            .put_item()
            .table_name(&name)
            .set_item(Some(item))
            .send()
            .await
            .expect("put a malformed item");
        let inspected = backend.inspect(&k).await;
        assert_backend_error_naming(inspected, needle);
        let acquired = backend.try_acquire(&k, Duration::from_secs(5)).await;
        assert_backend_error_naming(acquired, needle);
    }
}

#[tokio::test]
async fn a_paused_store_is_unavailable_within_the_timeout_and_the_client_recovers() {
    let store = start().await;
    let backend = store.backend(&table("paused"), None).await;
    let k = key("paused");
    let lease = backend
        .try_acquire(&k, Duration::from_secs(60))
        .await
        .expect("acquire");

    store.container().pause().await.expect("docker pause");
    for what in ["try_acquire", "extend", "inspect"] {
        let started = Instant::now();
        let result = match what {
            "try_acquire" => backend
                .try_acquire(&key("other"), Duration::from_secs(5))
                .await
                .map(|_| ()),
            "extend" => backend
                .extend(&lease, Duration::from_secs(60))
                .await
                .map(|_| ()),
            _ => backend.inspect(&k).await.map(|_| ()),
        };
        let took = started.elapsed();
        match result {
            Err(err @ LockError::Unavailable { .. }) => assert!(err.is_retryable()),
            other => panic!("{what} on a paused store must be Unavailable, got {other:?}"),
        }
        assert!(
            took < OP_TIMEOUT + Duration::from_secs(3),
            "a paused store held {what} for {took:?}, the bound is {OP_TIMEOUT:?}"
        );
    }
    store.container().unpause().await.expect("docker unpause");

    // The requests sent while paused may still be applied after unpause
    // (a timeout says nothing about the outcome); an extend by the owner is
    // harmless either way, so the holder simply extends again.
    let extended = backend
        .extend(&lease, Duration::from_secs(60))
        .await
        .expect("after unpause the holder extends again");
    assert!(
        backend
            .inspect(&k)
            .await
            .expect("inspect works again")
            .is_some()
    );
    backend.release(&extended).await.expect("and releases");
}

/// moto keeps everything in memory: a restart loses the table and with it the
/// fencing counters. The backend says so (`durable_fencing` false when
/// configured for the stand-in), reports the missing table clearly, and works
/// again once the table is re-created; tokens start over, which is exactly
/// why the capability must say "not durable" for this store. Configured as
/// durable, the same loss is a final error and nothing is re-created.
#[tokio::test]
async fn a_restarted_in_memory_stand_in_loses_the_table_and_the_backend_says_so() {
    let store = start().await;
    let name = table("restart");
    let backend = store.backend(&name, None).await;
    assert!(!backend.capabilities().durable_fencing);
    let k = key("restart");
    let before = backend
        .try_acquire(&k, Duration::from_secs(30))
        .await
        .expect("acquire");
    backend.release(&before).await.expect("release");

    store.container().restart().await.expect("docker restart");
    store.wait_ready().await;

    // Configured as for real DynamoDB (durable): a missing table is a loud,
    // final error, and it is not re-created behind the caller's back.
    let durable =
        DynamoDbBackend::connect_with(store.config(&name).durable(true).create_table(false))
            .await
            .expect("connect");
    let err = durable
        .try_acquire(&k, Duration::from_secs(30))
        .await
        .expect_err("the table is gone after a restart of the in-memory stand-in");
    assert!(
        !err.is_retryable(),
        "a missing table is not transient: {err}"
    );
    assert!(err.to_string().contains("does not exist"), "{err}");

    // Configured for the stand-in (not durable, create_table): the backend
    // re-creates the table and says to try again.
    let err = backend
        .try_acquire(&k, Duration::from_secs(30))
        .await
        .expect_err("the first call finds the table missing");
    assert!(err.is_retryable(), "{err}");
    assert!(err.to_string().contains("re-created"), "{err}");
    let after = backend
        .try_acquire(&k, Duration::from_secs(30))
        .await
        .expect("acquire again");
    assert!(
        after.fencing_token() <= before.fencing_token(),
        "expected the counter to start over on a store that lost its data"
    );
    backend.release(&after).await.expect("release");
}

#[tokio::test]
async fn connect_by_url_and_from_an_existing_sdk_client() {
    let store = start().await;
    let name = table("url");
    let url = format!(
        "dynamodb://test:test@{name}?region=us-east-1&endpoint={}&create_table=true&durable=false&timeout=2s",
        store.endpoint
    );
    let by_url = DynamoDbBackend::connect(&url)
        .await
        .expect("connect by URL");
    let k = key("shared");
    let lease = by_url
        .try_acquire(&k, Duration::from_secs(30))
        .await
        .expect("acquire");

    let sdk = by_url.client().clone();
    let from_client = DynamoDbBackend::connect_with_client(DynamoDbConfig::new(&name), sdk)
        .await
        .expect("wrap an existing client");
    assert!(
        matches!(
            from_client.try_acquire(&k, Duration::from_secs(30)).await,
            Err(LockError::Contended { .. })
        ),
        "both backends see the same table"
    );
    by_url.release(&lease).await.expect("release");
    let lease = from_client
        .try_acquire(&k, Duration::from_secs(30))
        .await
        .expect("acquire");
    from_client.release(&lease).await.expect("release");

    // Creating the table again is fine (idempotent).
    by_url.create_table().await.expect("idempotent create");
}

/// The probe of issue 11: the endpoint frozen, `lock()` dropped after 300 ms,
/// the endpoint thawed. The stand-in applied the write stuck in its socket,
/// and nobody owned the lease: the key stayed "held by another owner" for
/// its whole TTL. Now the acquisition runs on to its end and a grant nobody
/// waits for is released at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_lock_call_leaves_no_key_held_when_the_store_was_frozen() {
    let store = start().await;
    let backend = Arc::new(store.backend(&table("dropped"), None).await);
    let ttl = Duration::from_secs(20);
    let locker = Locker::builder_from_arc(backend.clone())
        .ttl(TtlPolicy::Fixed(ttl))
        .build();
    let k = key("dropped-lock");
    store.container().pause().await.expect("docker pause");
    let dropped = tokio::time::timeout(Duration::from_millis(300), locker.lock(k.clone())).await;
    assert!(
        dropped.is_err(),
        "lock() on a frozen store should still wait after 300 ms, got {:?}",
        dropped.map(|r| r.map(|g| g.fencing_token()))
    );
    store.container().unpause().await.expect("docker unpause");
    let started = Instant::now();
    leasehold_conformance::fixtures::eventually(
        Duration::from_secs(10),
        "the dropped lock() call's key to be free again (well before its 20 s TTL)",
        || async { matches!(backend.inspect(&k).await, Ok(None)) },
    )
    .await;
    println!("key free {:?} after the store thawed", started.elapsed());
    let lease = backend.try_acquire(&k, ttl).await.expect("the key is free");
    backend.release(&lease).await.expect("release");
}

/// An acquisition that timed out on a frozen store may still be applied
/// when the store wakes (the request sits in its socket); the backend gives
/// such a grant back in the background instead of leaving it to expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acquisition_that_timed_out_on_a_frozen_store_is_given_back_after_it_thaws() {
    let store = start().await;
    let backend = store.backend(&table("timedout"), None).await;
    let ttl = Duration::from_secs(20);
    let k = key("timed-out");
    store.container().pause().await.expect("docker pause");
    match backend.try_acquire(&k, ttl).await {
        Err(LockError::Unavailable { .. }) => {}
        other => panic!("try_acquire on a frozen store must be Unavailable, got {other:?}"),
    }
    store.container().unpause().await.expect("docker unpause");
    let started = Instant::now();
    leasehold_conformance::fixtures::eventually(
        Duration::from_secs(10),
        "the timed-out acquisition's key to be free again (well before its 20 s TTL)",
        || async { matches!(backend.inspect(&k).await, Ok(None)) },
    )
    .await;
    println!("key free {:?} after the store thawed", started.elapsed());
}

/// TTLs above one year (the bound every backend shares) are `InvalidTtl` on
/// every call, `Duration::MAX` and the largest millisecond count the item can
/// store included, and nothing panics.
#[tokio::test]
async fn a_ttl_beyond_one_year_is_invalid_on_every_call() {
    let store = start().await;
    let backend = store.backend(&table("ttlbounds"), None).await;
    let year = leasehold_core::config::MAX_DURATION;
    let k = key("ttl-bounds");
    let lease = backend
        .try_acquire(&k, year)
        .await
        .expect("one year is fine");
    for ttl in [
        year + Duration::from_millis(1),
        Duration::from_millis(i64::MAX as u64),
        Duration::MAX,
    ] {
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
        let many = backend.extend_many(&[(lease.clone(), ttl)]).await;
        assert!(
            matches!(many.as_deref(), Ok([Err(LockError::InvalidTtl { .. })])),
            "extend_many with {ttl:?}: expected InvalidTtl, got {many:?}"
        );
    }
    backend.release(&lease).await.expect("release");
}
