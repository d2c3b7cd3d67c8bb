//! The leasehold conformance suite against DynamoDB: the stand-in container
//! (moto on port 8000, published on 127.0.0.1) or the store named by
//! `LEASEHOLD_TEST_DYNAMODB_URL` (a full `dynamodb://` URL).

use std::sync::Arc;

use leasehold_conformance::{Suite, fixtures};
use leasehold_dynamodb::DynamoDbBackend;

fn main() -> std::process::ExitCode {
    leasehold_conformance::run_main(|| async {
        let spec = fixtures::dynamodb_spec();
        let store = fixtures::provision(&spec).await?;
        // The stand-in keeps its data in memory: not durable, and the table
        // is (re-)created when missing.
        let url = store.url(|port| {
            format!(
                "dynamodb://test:test@leasehold-conformance?region=us-east-1\
                 &endpoint=http://127.0.0.1:{port}&durable=false&create_table=true&timeout=2s"
            )
        });
        // Create the table once (the stand-in may still be starting).
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            match DynamoDbBackend::connect(&url).await {
                Ok(_) => break,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!("stand-in not ready yet: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                Err(e) => panic!("the DynamoDB store at {url} never answered: {e}"),
            }
        }
        let connect_to = url.clone();
        let suite = Suite::new("dynamodb", move || {
            let url = connect_to.clone();
            async move { Ok(Arc::new(DynamoDbBackend::connect(&url).await?) as _) }
        });
        Ok(suite.with_provisioned(&spec, store, &url))
    })
}
