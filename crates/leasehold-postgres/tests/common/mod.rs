//! A `postgres:15` container per test (or `LEASEHOLD_TEST_POSTGRES_URL`),
//! published on 127.0.0.1 only, and helpers shared by the integration tests.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use leasehold_core::Key;
use leasehold_postgres::{Mode, PostgresBackend, PostgresOptions};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use testcontainers::core::IntoContainerPort;
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

pub const PASSWORD: &str = "leasehold-test";

/// A running server: the container (None when an external URL was given).
pub struct Server {
    pub container: Option<ContainerAsync<GenericImage>>,
    pub url: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a probe port on 127.0.0.1")
        .local_addr()
        .unwrap()
        .port()
}

pub fn run_id() -> String {
    std::env::var("LEASEHOLD_RUN_ID").unwrap_or_else(|_| format!("pg-{}", std::process::id()))
}

impl Server {
    /// Starts a container, or uses `LEASEHOLD_TEST_POSTGRES_URL` when the test
    /// does not need to control the server (`needs_container` false).
    pub async fn start(needs_container: bool) -> Server {
        if !needs_container && let Ok(url) = std::env::var("LEASEHOLD_TEST_POSTGRES_URL") {
            return Server {
                container: None,
                url,
            };
        }
        let port = free_port();
        let container = GenericImage::new("postgres", "15")
            .with_env_var("POSTGRES_PASSWORD", PASSWORD)
            .with_mapped_port(port, 5432.tcp())
            .with_label("leasehold.test", run_id())
            .with_host_config_modifier(|config| {
                // Publish on loopback only.
                if let Some(bindings) = config.port_bindings.as_mut() {
                    for binding in bindings.values_mut().flatten().flatten() {
                        binding.host_ip = Some("127.0.0.1".into());
                    }
                }
            })
            .start()
            .await
            .expect("start the postgres:15 container");
        let server = Server {
            container: Some(container),
            url: format!("postgres://postgres:{PASSWORD}@127.0.0.1:{port}/postgres"),
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

    pub fn container_id(&self) -> &str {
        self.container
            .as_ref()
            .expect("this test needs its own container")
            .id()
    }

    /// `docker <verb> <id>` (restart, pause, unpause).
    pub fn docker(&self, verb: &str) {
        let status = std::process::Command::new("docker")
            .args([verb, self.container_id()])
            .stdout(std::process::Stdio::null())
            .status()
            .expect("run docker");
        assert!(status.success(), "docker {verb} failed: {status}");
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

    pub async fn backend(&self, options: PostgresOptions) -> PostgresBackend {
        PostgresBackend::connect_with(&self.url, options)
            .await
            .expect("connect the backend")
    }

    pub fn url_with(&self, query: &str) -> String {
        format!("{}?{query}", self.url)
    }
}

pub fn options(mode: Mode) -> PostgresOptions {
    PostgresOptions::new(mode)
        .namespace(format!("t{}", rand_suffix()))
        .operation_timeout(Duration::from_secs(2))
}

pub fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now())
}

pub fn key(name: &str) -> Key {
    Key::new(name).expect("a legal key")
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

/// Polls `check` every 50 ms until it is true or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < limit,
            "{what}: not true after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
