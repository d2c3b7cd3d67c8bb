//! The leasehold conformance suite against DynamoDB: the stand-in container
//! (published on 127.0.0.1) or the store named by
//! `LEASEHOLD_TEST_DYNAMODB_URL` (a full `dynamodb://` URL).

use std::sync::Arc;

use leasehold_conformance::{Suite, fixtures};
use leasehold_dynamodb::DynamoDbBackend;

fn main() -> std::process::ExitCode {
    leasehold_conformance::run_main(|| {
        Suite::provisioned(
            "dynamodb",
            fixtures::dynamodb_spec(),
            // The stand-in keeps its data in memory: not durable, and the
            // table is (re-)created when missing, idempotently by every client.
            |port| {
                format!(
                    "dynamodb://test:test@leasehold-conformance?region=us-east-1\
                     &endpoint=http://127.0.0.1:{port}&durable=false&create_table=true&timeout=2s"
                )
            },
            |url| async move { Ok(Arc::new(DynamoDbBackend::connect(&url).await?) as _) },
        )
    })
}
