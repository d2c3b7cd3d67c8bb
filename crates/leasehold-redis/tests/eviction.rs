//! Eviction policies against real servers with a small `maxmemory`: only
//! `noeviction` keeps a held lock; the backend reports any other policy.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use leasehold_core::{Key, LockBackend, OwnerToken};
use leasehold_redis::{RedisBackend, SafetyFinding};
use support::config;

/// Log lines written while the guard lives (this thread only: the tests run
/// on a current-thread runtime, so the backend's connect logs here).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

async fn connect(url: &str, namespace: &str) -> RedisBackend {
    RedisBackend::connect_with(config(url).namespace(namespace))
        .await
        .expect("connect to the test server")
}

/// Writes 8 KiB values with a one-day TTL until `done` says stop or 4,000 of
/// them (32 MiB, eight times `maxmemory`) were written; returns how many
/// writes the server refused (out of memory).
async fn fill(backend: &RedisBackend, mut done: impl AsyncFnMut() -> bool) -> usize {
    let mut conn = backend.node().connection();
    let value = "x".repeat(8 * 1024);
    let mut refused = 0;
    for i in 0..4000 {
        let set: redis::RedisResult<()> = redis::cmd("SET")
            .arg(format!("filler:{i}"))
            .arg(&value)
            .arg("EX")
            .arg(86_400)
            .query_async(&mut conn)
            .await;
        if set.is_err() {
            refused += 1;
        }
        if i % 50 == 49 && done().await {
            break;
        }
    }
    refused
}

/// The hazard of issue 11, reproduced: under `volatile-ttl` a held lock's key
/// (it has a TTL, shorter than the filler's) is evicted when memory runs
/// out, and a second client acquires the lock while the first lease is still
/// valid. The backend warned about exactly this at connect.
#[tokio::test]
async fn volatile_ttl_eviction_takes_a_held_lock_and_the_backend_warns() {
    let Some(server) = support::server(
        &["--maxmemory", "4mb", "--maxmemory-policy", "volatile-ttl"],
        true,
    )
    .await
    else {
        return;
    };
    let (logs, _guard) = Logs::capture();
    let namespace = format!("evict-{}", OwnerToken::generate().short());
    let holder = connect(&server.url, &namespace).await;
    let findings = holder.safety_findings();
    assert_eq!(
        findings,
        [SafetyFinding::EvictionPolicy {
            policy: "volatile-ttl".into(),
            maxmemory: Some(4 * 1024 * 1024)
        }],
        "expected the unsafe policy to be reported"
    );
    assert_eq!(holder.eviction_policy(), Some("volatile-ttl"));
    let logged = logs.text();
    assert!(
        logged.contains("WARN") && logged.contains("maxmemory-policy volatile-ttl"),
        "expected a warning naming the policy at connect, got: {logged:?}"
    );
    println!("connect logged: {}", logged.trim());

    let key = Key::new("invoice:evicted").unwrap();
    let lease = holder
        .try_acquire(&key, Duration::from_secs(600))
        .await
        .expect("acquire");
    let refused = fill(&holder, async || {
        matches!(holder.inspect(&key).await, Ok(None))
    })
    .await;
    println!("filled the server ({refused} writes refused)");
    assert!(
        lease.valid_until() > tokio::time::Instant::now(),
        "the lease is still valid by its own clock"
    );
    let intruder = connect(&server.url, &namespace).await;
    let second = intruder.try_acquire(&key, Duration::from_secs(600)).await;
    assert!(
        second.is_ok(),
        "expected the eviction to hand a held lock to a second client (the hazard \
         the warning is about), got {second:?}"
    );
}

/// Under `noeviction` there is nothing to report, and a full server refuses
/// writes instead of evicting: the held lock stays held.
#[tokio::test]
async fn noeviction_reports_nothing_and_a_full_server_keeps_the_lock() {
    let Some(server) = support::server(
        &["--maxmemory", "4mb", "--maxmemory-policy", "noeviction"],
        true,
    )
    .await
    else {
        return;
    };
    let (logs, _guard) = Logs::capture();
    let namespace = format!("noevict-{}", OwnerToken::generate().short());
    let holder = connect(&server.url, &namespace).await;
    assert_eq!(holder.safety_findings(), []);
    assert_eq!(holder.check_safety().await, []);
    assert_eq!(holder.eviction_policy(), Some("noeviction"));
    let logged = logs.text();
    assert!(
        !logged.contains("WARN"),
        "nothing to warn about, got: {logged:?}"
    );

    let key = Key::new("invoice:kept").unwrap();
    let lease = holder
        .try_acquire(&key, Duration::from_secs(600))
        .await
        .expect("acquire");
    let refused = fill(&holder, async || false).await;
    println!("filled the server ({refused} writes refused)");
    assert!(refused > 0, "a 4 MiB server should refuse some of 32 MiB");
    let holder_info = holder
        .inspect(&key)
        .await
        .expect("inspect on a full server");
    assert!(
        holder_info.is_some(),
        "the held lock must survive a full server"
    );
    let intruder = connect(&server.url, &namespace).await;
    let second = intruder.try_acquire(&key, Duration::from_secs(600)).await;
    assert!(second.is_err(), "the lock is held: {second:?}");
    holder.release(&lease).await.expect("release");
}

/// A policy changed at run time shows up in `check_safety`.
#[tokio::test]
async fn check_safety_sees_a_policy_changed_at_run_time() {
    let Some(server) = support::server(&[], true).await else {
        return;
    };
    let backend = connect(&server.url, "safety").await;
    assert_eq!(backend.check_safety().await, []);
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("allkeys-lru")
        .query_async(&mut backend.node().connection())
        .await
        .expect("CONFIG SET");
    let now = backend.check_safety().await;
    assert!(
        matches!(&now[..], [SafetyFinding::EvictionPolicy { policy, maxmemory: Some(0) }] if policy == "allkeys-lru"),
        "{now:?}"
    );
    assert!(
        now[0].to_string().contains("fencing counters"),
        "{}",
        now[0]
    );
}
