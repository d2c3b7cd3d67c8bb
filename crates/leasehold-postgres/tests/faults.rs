//! Store restart and store pause, each on its own container.

mod common;

use std::time::{Duration, Instant};

use common::{Server, key, options};
use leasehold_conformance::Store;
use leasehold_core::{Lease, LockBackend, LockError};
use leasehold_postgres::{Mode, PostgresBackend};

const TTL: Duration = Duration::from_secs(60);

/// Retries `try_acquire` (bounded) while the store comes back.
async fn acquire_when_back(backend: &PostgresBackend, name: &str) -> Lease {
    common::when_back(async || backend.try_acquire(&key(name), TTL).await).await
}

async fn tokens_survive_a_restart(mode: Mode) {
    let server = Server::start(true).await;
    let backend = server.backend(options(mode)).await;
    let mut last = 0;
    for _ in 0..3 {
        let lease = backend.try_acquire(&key("restart"), TTL).await.unwrap();
        assert!(lease.fencing_token().get() > last);
        last = lease.fencing_token().get();
        backend.release(&lease).await.unwrap();
    }
    server.container().restart().await.expect("docker restart");
    server.wait_ready(Duration::from_secs(60)).await;
    let lease = acquire_when_back(&backend, "restart").await;
    assert!(
        lease.fencing_token().get() > last,
        "{mode:?}: token went from {last} to {} across a restart",
        lease.fencing_token()
    );
    backend.release(&lease).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_fencing_tokens_keep_increasing_across_a_store_restart() {
    tokens_survive_a_restart(Mode::Table).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advisory_fencing_tokens_keep_increasing_across_a_store_restart() {
    tokens_survive_a_restart(Mode::Advisory).await;
}

/// Advisory grants commit without waiting for their flush (the store epoch
/// makes that safe): a server killed right after a grant loses the grant's
/// counter bump, and the next grant must still get a greater token. The WAL
/// writer is told to wait 10 s and never to flush early, so the last bumps
/// are surely lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advisory_fencing_tokens_keep_increasing_across_a_store_crash() {
    let spec = leasehold_conformance::fixtures::postgres_spec().args([
        "-c",
        "wal_writer_delay=10s",
        "-c",
        "wal_writer_flush_after=1GB",
    ]);
    let server = Server::start_spec(spec).await;
    let backend = server.backend(options(Mode::Advisory)).await;
    let mut last = 0;
    for _ in 0..20 {
        let lease = backend.try_acquire(&key("crash"), TTL).await.unwrap();
        assert!(lease.fencing_token().get() > last);
        last = lease.fencing_token().get();
        backend.release(&lease).await.unwrap();
    }
    // SIGKILL at once: no shutdown checkpoint, crash recovery at start.
    server.container().stop(Some(0)).await.expect("docker kill");
    server.container().start().await.expect("docker start");
    server.wait_ready(Duration::from_secs(60)).await;
    let lease = acquire_when_back(&backend, "crash").await;
    assert!(
        lease.fencing_token().get() > last,
        "token went from {last} to {} across a crash",
        lease.fencing_token()
    );
    backend.release(&lease).await.unwrap();
}

async fn paused_store_is_unavailable_in_bounded_time_then_recovers(mode: Mode) {
    let server = Server::start(true).await;
    let timeout = Duration::from_millis(500);
    let backend = server.backend(options(mode).timeout(timeout)).await;
    let held = backend.try_acquire(&key("held"), TTL).await.unwrap();
    // Warm a second pooled connection so the paused case is a hung query,
    // not only a hung connect.
    let warm = backend.try_acquire(&key("warm"), TTL).await.unwrap();
    backend.release(&warm).await.unwrap();

    server.container().pause().await.expect("docker pause");
    let bound = timeout * 10;
    let started = Instant::now();
    let acquired = backend.try_acquire(&key("other"), TTL).await;
    assert!(
        matches!(acquired, Err(LockError::Unavailable { .. })),
        "{mode:?}: acquire on a paused store gave {acquired:?}"
    );
    let extended = backend.extend(&held, TTL).await;
    assert!(
        matches!(extended, Err(LockError::Unavailable { .. })),
        "{mode:?}: extend on a paused store gave {extended:?}"
    );
    let inspected = backend.inspect(&key("held")).await;
    assert!(matches!(inspected, Err(LockError::Unavailable { .. })));
    assert!(
        started.elapsed() < bound * 3,
        "{mode:?}: three calls on a paused store took {:?}",
        started.elapsed()
    );
    server.container().unpause().await.expect("docker unpause");

    // Recovery: the held lease is still ours, new calls work.
    let started = Instant::now();
    let held = loop {
        match backend.extend(&held, TTL).await {
            Ok(lease) => break lease,
            Err(LockError::Unavailable { .. }) if started.elapsed() < Duration::from_secs(30) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(error) => panic!("{mode:?}: extend after unpause: {error}"),
        }
    };
    // A fresh key: the timed-out acquire of "other" may still have run on
    // the server after the thaw (table mode: a ghost lease that expires after
    // its TTL; advisory mode frees it when its closed connection is noticed).
    let other = acquire_when_back(&backend, "after-unpause").await;
    backend.release(&other).await.unwrap();
    backend.release(&held).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_paused_store_gives_unavailable_in_bounded_time_and_recovers() {
    paused_store_is_unavailable_in_bounded_time_then_recovers(Mode::Table).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advisory_paused_store_gives_unavailable_in_bounded_time_and_recovers() {
    paused_store_is_unavailable_in_bounded_time_then_recovers(Mode::Advisory).await;
}
