//! The `leasehold` binary end to end: usage errors and exit codes on the
//! in-memory store, and the on-call flows (list, inspect, force release,
//! health, a paused store) against real stores in containers, with the lock
//! held by this test process and the binary run as a separate process.

mod common;

use std::time::Duration;

use common::{Run, leasehold};

/// Checks the exit code and that stderr is one `leasehold: error:` line.
fn assert_fails(run: &Run, code: i32, mentions: &str) {
    assert_eq!(run.code, Some(code), "stderr: {}", run.stderr);
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr, got {:?}", run.stderr);
    assert!(
        lines[0].starts_with("leasehold: error: ") && lines[0].contains(mentions),
        "{:?} should mention {mentions:?}",
        lines[0]
    );
}

#[tokio::test]
async fn usage_and_configuration_errors_exit_2_with_one_line() {
    assert_fails(&leasehold(None, &["list"]).await, 2, "LEASEHOLD_URL");
    let memory = Some("memory://cli");
    assert_fails(
        &leasehold(memory, &["release", "k", "--reason", "x"]).await,
        2,
        "--force",
    );
    assert_fails(
        &leasehold(memory, &["release", "--force", "k"]).await,
        2,
        "--reason",
    );
    assert_fails(
        &leasehold(memory, &["release", "--force", "k", "--reason", "  "]).await,
        2,
        "--reason",
    );
    assert_fails(&leasehold(Some("nope://h"), &["list"]).await, 2, "nope");
    assert_fails(
        &leasehold(Some("memory://x?tll=5s"), &["list"]).await,
        2,
        "ttl",
    );
    // A bare number is not a duration (clap reports it: exit 2).
    let run = leasehold(memory, &["--timeout", "5", "list"]).await;
    assert_eq!(run.code, Some(2), "stderr: {}", run.stderr);
    assert!(run.stderr.contains("unit"), "{}", run.stderr);
}

#[tokio::test]
async fn the_url_password_never_appears_in_output() {
    let url = "redis://user:hunter2@127.0.0.1:1?timeout=250ms";
    let run = leasehold(Some(url), &["--timeout", "2s", "list"]).await;
    assert!(!run.stderr.contains("hunter2") && !run.stdout.contains("hunter2"));
    let help = leasehold(Some(url), &["--help"]).await;
    assert!(!help.stdout.contains("hunter2"), "{}", help.stdout);
}

#[tokio::test]
async fn an_unconfirmed_force_release_exits_4() {
    let run = leasehold(
        Some("memory://cli"),
        &["release", "--force", "k", "--reason", "test"],
    )
    .await;
    assert_eq!(run.code, Some(4), "stderr: {}", run.stderr);
    assert!(run.stderr.contains("--yes"), "{}", run.stderr);
}

#[tokio::test]
async fn memory_is_healthy_and_free_keys_inspect_as_free() {
    let run = leasehold(Some("memory://cli"), &["health", "--json"]).await;
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    let report: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(report["status"], "healthy");
    assert_eq!(report["backend"], "memory");
    let run = leasehold(Some("memory://cli"), &["inspect", "k", "--json"]).await;
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    let line: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(line["held"], false);
}

/// The on-call flow against a real store at `url` (this process holds the
/// lock through a `Locker`; the binary is another process): list shows it
/// with its holder, inspect agrees, a force release evicts it and the
/// holder's guard reports the loss, health passes, and with `stores` paused
/// health fails with exit 3 within the timeout.
/// Waits (up to a minute) until `leasehold health` passes on `url`: a
/// store in a fresh container answers a moment after its port opens.
#[cfg(feature = "full")]
async fn until_healthy(url: &str) {
    leasehold_conformance::fixtures::eventually(
        Duration::from_secs(60),
        "the store answers",
        || async { leasehold(Some(url), &["health"]).await.code == Some(0) },
    )
    .await;
}

#[cfg(feature = "full")]
async fn on_call_flow(url: &str, stores: &[&leasehold_conformance::fixtures::Container]) {
    use leasehold::config::default_holder;
    use leasehold_conformance::Store;

    let locker = leasehold::connect(&format!("{url}&ttl=3s")).await.unwrap();
    let key = format!("cli:{}:order-7", leasehold::OwnerToken::generate().short());
    let prefix = key.trim_end_matches("order-7");
    let guard = locker.try_lock(key.as_str()).await.unwrap();

    let run = leasehold(Some(url), &["list", "--json", "--prefix", prefix]).await;
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    let listed: Vec<serde_json::Value> = run
        .stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(listed.len(), 1, "{}", run.stdout);
    assert_eq!(listed[0]["key"], key.as_str());
    assert_eq!(listed[0]["fencing_token"], guard.fencing_token().get());
    let holder = listed[0]["holder"].as_str().unwrap_or_default();
    assert!(holder.contains(&default_holder()), "holder {holder:?}");

    let run = leasehold(Some(url), &["list", "--prefix", prefix]).await;
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    assert!(run.stdout.contains(&key), "{}", run.stdout);
    println!("$ leasehold list --prefix {prefix}\n{}", run.stdout);

    let run = leasehold(Some(url), &["inspect", &key]).await;
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    assert!(run.stdout.contains("held") && run.stdout.contains(&guard.fencing_token().to_string()));
    println!("$ leasehold inspect {key}\n{}", run.stdout);

    let run = leasehold(
        Some(url),
        &[
            "release",
            "--force",
            &key,
            "--reason",
            "cli e2e test",
            "--yes",
        ],
    )
    .await;
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    println!("$ leasehold release --force {key} ...\n{}", run.stdout);
    tokio::time::timeout(Duration::from_secs(10), guard.lost())
        .await
        .expect("the evicted holder's guard reports the loss");
    let run = leasehold(Some(url), &["list", "--count", "--prefix", prefix]).await;
    assert_eq!(run.stdout.trim(), "0", "stderr: {}", run.stderr);

    let run = leasehold(Some(url), &["health"]).await;
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    println!("$ leasehold health\n{}", run.stdout);

    if stores.is_empty() {
        return; // nothing to pause: a store without a server
    }
    for store in stores {
        store.pause().await.unwrap();
    }
    let run = leasehold(Some(url), &["--timeout", "2s", "health", "--json"]).await;
    for store in stores {
        store.unpause().await.unwrap();
    }
    assert_eq!(run.code, Some(3), "{}{}", run.stdout, run.stderr);
    let report: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(report["status"], "unhealthy");
}

#[cfg(feature = "full")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_call_flow_against_redis() {
    let spec = leasehold_conformance::fixtures::redis_spec(false);
    let store = leasehold_conformance::fixtures::start(&spec)
        .await
        .expect("a redis container");
    on_call_flow(
        &format!("redis://127.0.0.1:{}/?timeout=2s", store.port),
        &[&store],
    )
    .await;
}

#[cfg(feature = "full")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_call_flow_against_postgres() {
    use leasehold_conformance::fixtures;
    let store = fixtures::start(&fixtures::postgres_spec())
        .await
        .expect("a postgres container");
    let base = format!(
        "postgres://postgres:{}@127.0.0.1:{}/postgres",
        fixtures::POSTGRES_PASSWORD,
        store.port
    );
    // The server accepts connections a moment after the port opens.
    until_healthy(&base).await;
    for mode in ["advisory", "table"] {
        on_call_flow(&format!("{base}?mode={mode}"), &[&store]).await;
    }
}

#[cfg(feature = "full")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_call_flow_against_redlock() {
    use leasehold_conformance::fixtures;
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(
            fixtures::start(&fixtures::redis_spec(false))
                .await
                .expect("a redis container"),
        );
    }
    let hosts: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    let url = format!("redlock://{}?timeout=1s", hosts.join(","));
    on_call_flow(&url, &nodes.iter().collect::<Vec<_>>()).await;
}

#[cfg(feature = "full")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_call_flow_against_etcd() {
    use leasehold_conformance::fixtures;
    let store = fixtures::start(&fixtures::etcd_spec())
        .await
        .expect("an etcd container");
    on_call_flow(
        &format!("etcd://127.0.0.1:{}?timeout=2s", store.port),
        &[&store],
    )
    .await;
}

#[cfg(feature = "full")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_call_flow_against_zookeeper() {
    use leasehold_conformance::fixtures;
    let store = fixtures::start(&fixtures::zookeeper_spec())
        .await
        .expect("a zookeeper container");
    let url = format!(
        "zk://127.0.0.1:{}/cli?session_timeout=3s&timeout=2s",
        store.port
    );
    until_healthy(&url).await;
    on_call_flow(&url, &[&store]).await;
}

#[cfg(feature = "full")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_call_flow_against_dynamodb() {
    use leasehold_conformance::fixtures;
    let store = fixtures::start(&fixtures::dynamodb_spec())
        .await
        .expect("a dynamodb stand-in container");
    let url = format!(
        "dynamodb://test:test@cli?region=us-east-1&endpoint=http://127.0.0.1:{}&create_table=true&durable=false&timeout=2s",
        store.port
    );
    until_healthy(&url).await;
    on_call_flow(&url, &[&store]).await;
}

#[cfg(feature = "full")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_call_flow_against_the_file_store() {
    let dir = std::env::temp_dir().join(format!(
        "leasehold-cli-{}",
        leasehold::OwnerToken::generate().short()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    on_call_flow(&format!("file://{}?timeout=2s", dir.display()), &[]).await;
    let _ = std::fs::remove_dir_all(&dir);
}
