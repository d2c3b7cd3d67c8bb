//! A `postgres:15` container per test (or `LEASEHOLD_TEST_POSTGRES_URL`),
//! published on 127.0.0.1 only, and helpers shared by the integration tests.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use leasehold_conformance::fixtures::{self, Container};
use leasehold_core::{Key, LockError};
use leasehold_postgres::{Mode, PostgresBackend, PostgresConfig};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

/// A running server: the container (None when an external URL was given).
pub struct Server {
    pub container: Option<Arc<Container>>,
    pub url: String,
}

impl Server {
    /// Starts a container, or uses `LEASEHOLD_TEST_POSTGRES_URL` when the test
    /// does not need to control the server (`needs_container` false).
    pub async fn start(needs_container: bool) -> Server {
        let spec = fixtures::postgres_spec();
        if !needs_container && let Ok(url) = std::env::var(spec.url_env()) {
            return Server {
                container: None,
                url,
            };
        }
        Server::start_spec(spec).await
    }

    /// Starts a container of `spec` (e.g. [`fixtures::postgres_spec`] with
    /// server settings as `-c name=value` arguments).
    pub async fn start_spec(spec: fixtures::ContainerSpec) -> Server {
        let container = fixtures::start(&spec)
            .await
            .expect("start the postgres:15 container");
        let server = Server {
            url: format!(
                "postgres://postgres:{}@127.0.0.1:{}/postgres",
                fixtures::POSTGRES_PASSWORD,
                container.port
            ),
            container: Some(Arc::new(container)),
        };
        server.wait_ready(Duration::from_secs(90)).await;
        server
    }

    /// Tries to connect and run a query until it works or `limit` passes.
    pub async fn wait_ready(&self, limit: Duration) {
        let started = Instant::now();
        loop {
            let attempt = tokio::time::timeout(Duration::from_secs(2), async {
                let pool = PgPoolOptions::new()
                    .max_connections(1)
                    .acquire_timeout(Duration::from_secs(2))
                    .connect(&self.url)
                    .await?;
                sqlx::query("SELECT 1").execute(&pool).await?;
                pool.close().await;
                Ok::<_, sqlx::Error>(())
            })
            .await;
            match attempt {
                Ok(Ok(())) => return,
                other if started.elapsed() > limit => {
                    panic!("postgres not ready after {limit:?}: {other:?}")
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// The container, for faults (pause, restart: [`leasehold_conformance::Store`]).
    pub fn container(&self) -> &Container {
        self.container
            .as_deref()
            .expect("this test needs its own container")
    }

    /// A plain pool for looking at the server from outside the backend.
    pub async fn observer(&self) -> PgPool {
        PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .connect(&self.url)
            .await
            .expect("observer pool")
    }

    pub async fn backend(&self, options: PostgresConfig) -> PostgresBackend {
        PostgresBackend::connect_with(options.url(&self.url))
            .await
            .expect("connect the backend")
    }

    pub fn url_with(&self, query: &str) -> String {
        format!("{}?{query}", self.url)
    }
}

pub fn options(mode: Mode) -> PostgresConfig {
    PostgresConfig::new(mode)
        .namespace(format!("t{}", rand_suffix()))
        .timeout(Duration::from_secs(2))
}

pub fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now())
}

pub fn key(name: &str) -> Key {
    Key::new(name).expect("a legal key")
}

/// Retries `attempt` (bounded) while it fails retryably: the store coming
/// back, or a pooled connection the store ended (the first call after a
/// restart may meet one).
pub async fn when_back<T>(mut attempt: impl AsyncFnMut() -> Result<T, LockError>) -> T {
    let started = Instant::now();
    loop {
        match attempt().await {
            Ok(done) => return done,
            Err(error) if error.is_retryable() && started.elapsed() < Duration::from_secs(60) => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(error) => panic!("store did not come back: {error}"),
        }
    }
}

/// The backend pid holding the advisory lock `id`, if any.
pub async fn advisory_holder_pid(observer: &PgPool, id: i64) -> Option<i32> {
    let id = id as u64;
    sqlx::query_scalar(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 \
         AND classid::int8 = $1 AND objid::int8 = $2",
    )
    .bind((id >> 32) as i64)
    .bind((id & 0xffff_ffff) as i64)
    .fetch_optional(observer)
    .await
    .expect("query pg_locks")
}

/// Runs `attempt` on a runtime of its own, so its live tasks can be counted
/// alone: waits until `while_waiting` are alive, aborts it, then waits until
/// `after` are (what the abandoned attempt leaves running; `what` names it
/// in the failure).
pub async fn abandon_and_count<F>(attempt: F, while_waiting: usize, after: usize, what: &str)
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let side = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a side runtime");
    let metrics = side.metrics();
    let abandoned = side.spawn(attempt);
    fixtures::eventually(Duration::from_secs(10), "the attempt waits", || async {
        metrics.num_alive_tasks() == while_waiting
    })
    .await;
    abandoned.abort();
    assert!(abandoned.await.is_err_and(|e| e.is_cancelled()));
    fixtures::eventually(Duration::from_secs(10), what, || async {
        metrics.num_alive_tasks() == after
    })
    .await;
    side.shutdown_background();
}
