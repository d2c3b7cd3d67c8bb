//! Named mode's session pool under more tasks than connections.

use std::time::{Duration, Instant};

use leasehold_conformance::fixtures;
use leasehold_core::{Key, LockBackend};
use leasehold_mysql::MysqlBackend;

const TTL: Duration = Duration::from_secs(30);

/// A named-mode backend on a MariaDB store of its own (kept while the
/// returned store is), `options` appended to its URL's query.
async fn named_backend(options: &str) -> (fixtures::Provisioned, MysqlBackend) {
    let spec = fixtures::mariadb_spec();
    let store = fixtures::provision(&spec).await.expect("a mariadb store");
    let url = store.url(|port| {
        format!(
            "mysql://root:{}@127.0.0.1:{port}/leasehold?mode=named{options}",
            fixtures::MARIADB_PASSWORD
        )
    });
    let backend = connect_when_ready(&url).await;
    (store, backend)
}

/// Connects (running the migration once) until the server answers.
async fn connect_when_ready(url: &str) -> MysqlBackend {
    let started = Instant::now();
    loop {
        match MysqlBackend::connect(url).await {
            Ok(backend) => return backend,
            Err(e) if started.elapsed() > Duration::from_secs(90) => {
                panic!("mariadb never became ready: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Four tasks share a backend of two sessions, each locking and unlocking
/// its own key: a session given back must reach a task already waiting for
/// one. (It did not: a kept session holds its pool slot, and a task
/// waiting on the full pool never saw it, so it failed `Unavailable` after
/// the timeout while sessions sat idle.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_tasks_than_sessions_all_get_one() {
    let (_store, backend) = named_backend("&max_connections=2&timeout=2s").await;
    let tasks: Vec<_> = (0..4)
        .map(|task| {
            let backend = backend.clone();
            tokio::spawn(async move {
                let key = Key::new(format!("pool-{task}")).unwrap();
                for round in 0..20 {
                    let lease = backend
                        .try_acquire(&key, TTL)
                        .await
                        .map_err(|e| format!("task {task}, round {round}: {e}"))?;
                    backend
                        .release(&lease)
                        .await
                        .map_err(|e| format!("task {task}, round {round}: release: {e}"))?;
                }
                Ok::<_, String>(())
            })
        })
        .collect();
    for task in tasks {
        task.await
            .expect("task")
            .expect("every attempt gets a session");
    }
}

/// This server's count of `SELECT` statements run so far, by every client.
async fn selects_run(backend: &MysqlBackend) -> u64 {
    let (_, count): (String, String) = sqlx::query_as("SHOW GLOBAL STATUS LIKE 'Com_select'")
        .fetch_one(backend.pool())
        .await
        .expect("the server's statement counters");
    count.parse().expect("a count")
}

/// A lease released at once starts no watcher. A watcher costs a connection
/// and two statements (`GET_LOCK` on the lease's alive lock, then
/// `RELEASE_LOCK` once granted); started with every lease, watchers of
/// released leases queued for connections ahead of live leases' watchers,
/// and at 64 tasks on the default 50 sessions calls failed `Unavailable`.
/// Counted on this test's own server: a lease's release is one `SELECT`
/// (a kept session's grant is an `INSERT ... SELECT`, counted apart), and
/// a watcher would add two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_released_at_once_starts_no_watcher() {
    const LEASES: u64 = 40;
    let (_store, backend) = named_backend("").await;
    let key = Key::new("short-leases").unwrap();
    // The first lease opens the session the others reuse (a new session
    // reads its id and `wait_timeout` with two statements of its own).
    let lease = backend.try_acquire(&key, TTL).await.expect("granted");
    backend.release(&lease).await.expect("released");
    let before = selects_run(&backend).await;
    for _ in 0..LEASES {
        let lease = backend.try_acquire(&key, TTL).await.expect("granted");
        backend.release(&lease).await.expect("released");
    }
    let run = selects_run(&backend).await - before;
    assert!(
        run < 2 * LEASES,
        "{LEASES} leases released at once ran {run} SELECTs: their watchers started"
    );
}
