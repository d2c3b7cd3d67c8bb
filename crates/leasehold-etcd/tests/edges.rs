//! Safety at the edges (issue 11): zero waits, namespaces that could alias,
//! retirement markers that must not pile up, dropped acquisitions, secrets.
//! Each test names the property it proves and runs against a real etcd.

mod common;

use std::time::{Duration, Instant};

use common::{Store, key, options, queue_len};
use leasehold_conformance::fixtures::{self, eventually};
use leasehold_core::{LockBackend, LockError, Locker, OwnerToken, WaitPolicy};
use leasehold_etcd::EtcdConfig;

const TTL: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_zero_wait_acquire_takes_a_free_key() {
    let store = Store::start().await;
    let backend = store.backend(options()).await;
    let k = key("zero-wait");
    let lease = backend
        .acquire(&k, TTL, &WaitPolicy::no_wait())
        .await
        .expect("acquire with WaitPolicy::no_wait() on a free key should take it");
    match backend.acquire(&k, TTL, &WaitPolicy::no_wait()).await {
        Err(LockError::WaitTimedOut { .. }) => {}
        other => panic!("a zero wait on a held key should be WaitTimedOut, got {other:?}"),
    }
    assert_eq!(
        queue_len(&backend, "zero-wait").await,
        1,
        "the zero-wait attempt on a held key left an entry"
    );
    backend.release(&lease).await.unwrap();
    let locker = Locker::new(backend.clone());
    let guard = locker
        .lock_within("zero-wait", Duration::ZERO)
        .await
        .expect("lock_within(key, 0) on a free key should take it");
    guard.release().await.unwrap();
}

#[tokio::test]
async fn namespaces_whose_concatenations_meet_never_share_a_queue() {
    let store = Store::start().await;
    let base = format!(
        "lh-test/{}/{}/",
        fixtures::run_id(),
        OwnerToken::generate().short()
    );
    // `app` + `2:x` and `app2` + `:x` used to be one etcd prefix.
    let app = store
        .backend(options().namespace(format!("{base}app")))
        .await;
    let app2 = store
        .backend(options().namespace(format!("{base}app2")))
        .await;
    assert_ne!(
        app.lock_prefix(&key("2:x")),
        app2.lock_prefix(&key(":x")),
        "two (namespace, key) pairs map to one etcd prefix"
    );
    let held = app.try_acquire(&key("2:x"), TTL).await.unwrap();
    let other = app2
        .try_acquire(&key(":x"), TTL)
        .await
        .expect("namespace app2's key :x is not namespace app's key 2:x");
    app.release(&held).await.unwrap();
    app2.release(&other).await.unwrap();
}

/// Keys in the backend's namespace that are retirement markers (a NUL after
/// the encoded key; a NUL right after the namespace is a session key), with
/// the lease each is attached to.
async fn markers(backend: &leasehold_etcd::EtcdBackend, namespace: &str) -> Vec<(Vec<u8>, i64)> {
    let mut kv = backend.client().kv_client();
    let found = kv
        .get(
            namespace,
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_keys_only(),
            ),
        )
        .await
        .expect("list the namespace");
    found
        .kvs()
        .iter()
        .filter(|kv| kv.key().contains(&0) && kv.key().get(namespace.len()) != Some(&0))
        .map(|kv| (kv.key().to_vec(), kv.lease()))
        .collect()
}

#[tokio::test]
async fn waiters_that_time_out_leave_no_retirement_markers_behind() {
    let store = Store::start().await;
    let opts = options();
    let namespace = opts.namespace_str().to_owned();
    let backend = store.backend(opts).await;
    let k = key("many-timeouts");
    let holder = backend.try_acquire(&k, TTL).await.unwrap();
    let started = Instant::now();
    let waiters: Vec<_> = (0..200)
        .map(|_| {
            let backend = backend.clone();
            let k = k.clone();
            tokio::spawn(async move {
                backend
                    .acquire(&k, TTL, &WaitPolicy::new(Duration::from_millis(300)))
                    .await
            })
        })
        .collect();
    let mut timed_out = 0;
    for waiter in waiters {
        match waiter.await.unwrap() {
            Err(LockError::WaitTimedOut { .. }) => timed_out += 1,
            other => panic!("a waiter behind a holder should time out, got {other:?}"),
        }
    }
    println!(
        "200 waiters timed out behind a holder in {:?}",
        started.elapsed()
    );
    assert_eq!(timed_out, 200);
    let left = markers(&backend, &namespace).await;
    println!(
        "retirement markers after 200 timed-out waiters: {}",
        left.len()
    );
    // A marker is written only when a txn's answer never came: none here
    // (or a handful, should the store be slow under this load).
    assert!(
        left.len() <= 10,
        "expected at most a handful of retirement markers after 200 waiters timed out, found {}",
        left.len()
    );
    eventually(
        Duration::from_secs(10),
        "the waiters' entries to go",
        || async { queue_len(&backend, "many-timeouts").await == 1 },
    )
    .await;
    backend.release(&holder).await.unwrap();
}

#[tokio::test]
async fn an_acquire_dropped_while_queued_leaves_no_entry() {
    let store = Store::start().await;
    let backend = store.backend(options()).await;
    let k = key("dropped");
    let ttl = Duration::from_secs(60);
    let holder = backend.try_acquire(&k, ttl).await.unwrap();
    let waiter = {
        let backend = backend.clone();
        let k = k.clone();
        tokio::spawn(async move {
            backend
                .acquire(&k, ttl, &WaitPolicy::new(Duration::from_secs(60)))
                .await
        })
    };
    eventually(Duration::from_secs(10), "the waiter to queue", || async {
        queue_len(&backend, "dropped").await == 2
    })
    .await;
    waiter.abort();
    let _ = waiter.await;
    backend.release(&holder).await.unwrap();
    // The key frees long before the 60 s TTL could free it: the dropped
    // waiter's entry was removed, not left to expire.
    let released = Instant::now();
    let mut attempts = 0;
    let lease = loop {
        attempts += 1;
        match backend.try_acquire(&k, ttl).await {
            Ok(lease) => break lease,
            Err(LockError::Contended { .. }) if released.elapsed() < Duration::from_secs(20) => {
                tokio::task::yield_now().await
            }
            other => panic!(
                "the key should be free once the holder released (the dropped waiter's entry gone), got {other:?}"
            ),
        }
    };
    println!(
        "free {:?} after the holder's release ({attempts} attempts)",
        released.elapsed()
    );
    backend.release(&lease).await.unwrap();
    assert_eq!(queue_len(&backend, "dropped").await, 0);
}

const SENTINEL: &str = "S3ntinelPw";

#[tokio::test]
async fn passwords_never_appear_in_debug_or_errors() {
    let options = EtcdConfig::default().user("root", SENTINEL);
    let debug = format!("{options:?}");
    assert!(
        !debug.contains(SENTINEL),
        "Debug of EtcdConfig shows the password: {debug}"
    );
    for url in [
        format!("etcd://root:{SENTINEL}@127.0.0.1:1?timeout=fast"),
        format!("etcd://root:{SENTINEL}@127.0.0.1:1?nope=1"),
        format!("etcd://root:{SENTINEL}@127.0.0.1:notaport"),
        format!("etcd://root:{SENTINEL}@"),
        format!("etcd://root:{SENTINEL}@127.0.0.1:1/path"),
        format!("etcd://root:{SENTINEL}%zz@127.0.0.1:1"),
        format!("etcdx://root:{SENTINEL}@127.0.0.1:1"),
        format!("root:{SENTINEL}@127.0.0.1:1"),
        "etcd://root:S3nt?inelPw@127.0.0.1:1".to_owned(),
        "etcd://root:S3nt/inelPw@127.0.0.1:1".to_owned(),
        "etcd://root:S3nt@inelPw@127.0.0.1:notaport".to_owned(),
        "etcd://root:S3nt,inelPw@127.0.0.1:1".to_owned(),
        format!("etcd://root:{SENTINEL}@127.0.0.1:1?timeout=10"),
    ] {
        let connected = match <EtcdConfig as leasehold_core::config::BackendConfig>::from_url(&url)
        {
            Ok(config) => {
                leasehold_etcd::EtcdBackend::connect_with(
                    config.timeout(Duration::from_millis(500)),
                )
                .await
            }
            Err(error) => Err(error),
        };
        match connected {
            Ok(_) => panic!("{url:?} should not connect"),
            Err(error) => {
                let shown = format!("{error} / {error:?}");
                for part in [SENTINEL, "S3nt", "inelPw"] {
                    assert!(
                        !shown.contains(part),
                        "an error for a URL with a password shows it ({part}): {shown}"
                    );
                }
            }
        }
    }
}

#[tokio::test]
async fn revoking_the_session_lease_fires_the_loss_signal_without_waiting_for_a_keep_alive() {
    let store = Store::start().await;
    let backend = store.backend(options()).await;
    let other = store.backend(options()).await;
    // A minute-long TTL: the next keep-alive (a third of it) and the expiry
    // are far away, so only the store telling us can fire the signal soon.
    let ttl = Duration::from_secs(60);
    let lease = backend.try_acquire(&key("revoked"), ttl).await.unwrap();
    let signal = lease
        .loss_signal()
        .expect("etcd leases carry a loss signal");
    let id = leasehold_etcd::lease_id(&lease).expect("an etcd lease has a lease id");
    let revoked = Instant::now();
    other.client().lease_client().revoke(id).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), signal.cancelled())
        .await
        .expect(
            "the loss signal should fire within 10 s of the session lease's revocation (TTL 60 s)",
        );
    println!(
        "loss signal {:?} after the session lease was revoked",
        revoked.elapsed()
    );
    assert!(matches!(
        backend.extend(&lease, ttl).await,
        Err(LockError::Lost { .. })
    ));
}
