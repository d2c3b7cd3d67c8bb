//! Test fixture: a DynamoDB stand-in in a container (or the store named by
//! `LEASEHOLD_TEST_DYNAMODB_URL`), published on 127.0.0.1 only.
#![allow(dead_code)]

use std::collections::HashMap;
use std::time::Duration;

use leasehold_core::{Drift, LockBackend, LockError, OwnerToken, SharedClock};
use leasehold_dynamodb::{DynamoDbBackend, DynamoDbBuilder};
use testcontainers::bollard::models::PortBinding;
use testcontainers::core::{ContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

pub const IMAGE: &str = "amazon/dynamodb-local";
pub const TAG: &str = "latest";
/// Short, so a paused store shows up quickly.
pub const OP_TIMEOUT: Duration = Duration::from_millis(1500);

pub struct Store {
    pub endpoint: String,
    /// `None` when the store came from `LEASEHOLD_TEST_DYNAMODB_URL`.
    pub container: Option<ContainerAsync<GenericImage>>,
}

fn free_loopback_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

fn run_id() -> String {
    std::env::var("LEASEHOLD_RUN_ID")
        .unwrap_or_else(|_| format!("dynamodb-{}", &OwnerToken::generate().to_hex()[..12]))
}

/// Starts the stand-in (or uses the URL's endpoint) and waits until it
/// answers.
pub async fn start() -> Store {
    if let Ok(url) = std::env::var("LEASEHOLD_TEST_DYNAMODB_URL") {
        let endpoint = DynamoDbBuilder::from_url(&url)
            .ok()
            .and_then(|b| b.endpoint_url().map(str::to_owned))
            .unwrap_or_else(|| panic!("LEASEHOLD_TEST_DYNAMODB_URL={url} needs ?endpoint="));
        return Store {
            endpoint,
            container: None,
        };
    }
    let port = free_loopback_port();
    let image = std::env::var("LEASEHOLD_DYNAMODB_IMAGE").unwrap_or_else(|_| IMAGE.into());
    let (name, tag) = image.split_once(':').unwrap_or((image.as_str(), TAG));
    let container = GenericImage::new(name, tag)
        .with_exposed_port(ContainerPort::Tcp(8000))
        .with_wait_for(WaitFor::Nothing)
        .with_label("leasehold.test", run_id())
        .with_host_config_modifier(move |host| {
            host.port_bindings = Some(HashMap::from([(
                "8000/tcp".to_string(),
                Some(vec![PortBinding {
                    host_ip: Some("127.0.0.1".into()),
                    host_port: Some(port.to_string()),
                }]),
            )]));
        })
        .start()
        .await
        .expect(
            "start the DynamoDB stand-in container (build it with conformance/images/build.sh)",
        );
    let store = Store {
        endpoint: format!("http://127.0.0.1:{port}"),
        container: Some(container),
    };
    store.wait_ready().await;
    store
}

impl Store {
    /// Options for a backend on this store with test credentials.
    pub fn builder(&self, table: &str) -> DynamoDbBuilder {
        DynamoDbBackend::builder(table)
            .endpoint(&self.endpoint)
            .region("us-east-1")
            .static_credentials("test", "test")
            .operation_timeout(OP_TIMEOUT)
            .durable_fencing(false)
            .drift(Drift {
                factor: 0.0,
                fixed: Duration::ZERO,
            })
    }

    /// A backend on a fresh table (created), on `clock`.
    pub async fn backend(&self, table: &str, clock: Option<SharedClock>) -> DynamoDbBackend {
        let mut builder = self.builder(table).create_table_if_missing(true);
        if let Some(clock) = clock {
            builder = builder.clock(clock);
        }
        builder.connect().await.expect("connect and create table")
    }

    /// Polls until the endpoint answers a ListTables (bounded: 60 s).
    pub async fn wait_ready(&self) {
        let backend = self
            .builder("ready-probe")
            .connect()
            .await
            .expect("build client");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let answered = backend.client().list_tables().send().await.is_ok();
            if answered {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "DynamoDB stand-in at {} did not answer within 60 s",
                self.endpoint
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn container_id(&self) -> &str {
        self.container
            .as_ref()
            .expect("this test needs a container it owns (unset LEASEHOLD_TEST_DYNAMODB_URL)")
            .id()
    }

    /// `docker <verb> <container>`.
    pub async fn docker(&self, verb: &str) {
        let status = tokio::process::Command::new("docker")
            .args([verb, self.container_id()])
            .status()
            .await
            .expect("run docker");
        assert!(status.success(), "docker {verb} failed: {status}");
    }
}

/// A unique table name per test.
pub fn table(test: &str) -> String {
    format!("t-{test}-{}", &OwnerToken::generate().to_hex()[..8])
}

/// Asserts a `Backend` error whose message names `needle`.
pub fn assert_backend_error_naming<T: std::fmt::Debug>(result: Result<T, LockError>, needle: &str) {
    match result {
        Err(err @ LockError::Backend { .. }) => {
            let text = err.to_string();
            assert!(
                text.contains(needle),
                "expected {needle:?} in the error, got {text:?}"
            );
        }
        other => panic!("expected a Backend error naming {needle:?}, got {other:?}"),
    }
}

/// Keeps the compiler quiet about unused trait imports in some test files.
pub fn _uses(_: &dyn LockBackend) {}
