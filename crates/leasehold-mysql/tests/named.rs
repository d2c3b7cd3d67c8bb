//! Named mode's session pool under more tasks than connections.

use std::time::{Duration, Instant};

use leasehold_conformance::fixtures;
use leasehold_core::{Key, LockBackend};
use leasehold_mysql::MysqlBackend;

const TTL: Duration = Duration::from_secs(30);

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
    let spec = fixtures::mariadb_spec();
    let store = fixtures::provision(&spec).await.expect("a mariadb store");
    let url = store.url(|port| {
        format!(
            "mysql://root:{}@127.0.0.1:{port}/leasehold?mode=named&max_connections=2&timeout=2s",
            fixtures::MARIADB_PASSWORD
        )
    });
    let backend = connect_when_ready(&url).await;
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
