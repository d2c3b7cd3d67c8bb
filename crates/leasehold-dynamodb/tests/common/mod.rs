//! Test fixture: a DynamoDB stand-in in a container (or the store named by
//! `LEASEHOLD_TEST_DYNAMODB_URL`), published on 127.0.0.1 only.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use leasehold_conformance::fixtures::{self, Container};
use leasehold_core::{Drift, LockBackend, LockError, OwnerToken, SharedClock};
use leasehold_dynamodb::{BackendConfig, DynamoDbBackend, DynamoDbConfig};

/// Short, so a paused store shows up quickly.
pub const OP_TIMEOUT: Duration = Duration::from_millis(1500);

pub struct Store {
    pub endpoint: String,
    /// `None` when the store came from `LEASEHOLD_TEST_DYNAMODB_URL`.
    pub container: Option<Arc<Container>>,
}

/// Starts the stand-in (or uses the URL's endpoint) and waits until it
/// answers.
pub async fn start() -> Store {
    let spec = fixtures::dynamodb_spec();
    if let Ok(url) = std::env::var(spec.url_env()) {
        let endpoint = DynamoDbConfig::from_url(&url)
            .ok()
            .and_then(|c| c.endpoint_url().map(str::to_owned))
            .unwrap_or_else(|| panic!("{}={url} needs ?endpoint=", spec.url_env()));
        return Store {
            endpoint,
            container: None,
        };
    }
    let container = fixtures::start(&spec).await.expect(
        "start the DynamoDB stand-in container (build it with conformance/images/build.sh)",
    );
    let store = Store {
        endpoint: format!("http://127.0.0.1:{}", container.port),
        container: Some(Arc::new(container)),
    };
    store.wait_ready().await;
    store
}

impl Store {
    /// The configuration of a backend on this store with test credentials.
    pub fn config(&self, table: &str) -> DynamoDbConfig {
        DynamoDbConfig::new(table)
            .endpoint(&self.endpoint)
            .region("us-east-1")
            .credentials("test", "test")
            .timeout(OP_TIMEOUT)
            .durable(false)
            .drift(Drift {
                factor: 0.0,
                fixed: Duration::ZERO,
            })
    }

    /// A backend on a fresh table (created), on `clock`.
    pub async fn backend(&self, table: &str, clock: Option<SharedClock>) -> DynamoDbBackend {
        let mut config = self.config(table).create_table(true);
        if let Some(clock) = clock {
            config = config.clock(clock);
        }
        DynamoDbBackend::connect_with(config)
            .await
            .expect("connect and create table")
    }

    /// Polls until the endpoint answers a ListTables (bounded: 60 s).
    pub async fn wait_ready(&self) {
        let backend = DynamoDbBackend::connect_with(self.config("ready-probe"))
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

    /// The container, for faults (pause, restart: [`leasehold_conformance::Store`]).
    pub fn container(&self) -> &Container {
        self.container
            .as_deref()
            .expect("this test needs a container it owns (unset LEASEHOLD_TEST_DYNAMODB_URL)")
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
