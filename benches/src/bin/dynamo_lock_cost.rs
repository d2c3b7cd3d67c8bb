//! What the DynamoDB backend and a `Locker` over it cost over two bare
//! conditional `UpdateItem`s, and how much of it is the writes themselves,
//! in one run, interleaved (see `leasehold_benches::steps`):
//!
//! `cargo run --release -p leasehold-benches --bin dynamo_lock_cost [-- --samples N --tasks N]`
//!
//! - raw: the benchmark's raw baseline, two attributes set if free and
//!   removed if ours;
//! - raw, the backend's writes: the same two calls from the bare SDK with
//!   exactly what the backend writes: owner, lease, record version, holder,
//!   acquisition time and the fencing counter's increment, the new counter
//!   returned (and the item, when the condition fails); the release keeps
//!   the item (so the counter never resets) with a fresh record version;
//! - backend: `try_acquire` + `release`;
//! - locker: `Locker::try_lock` + `release`.
//!
//! On the moto stand-in every request is parsed and evaluated by a Python
//! server sharing the two cores, so the expressions' size is the cost.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};
use leasehold_benches::harness::Op;
use leasehold_benches::{steps, stores};
use leasehold_conformance::fixtures;
use leasehold_core::{LockBackend, OwnerToken};

/// The backend's acquire and release writes, sent from the bare SDK on
/// keys of their own.
fn backend_writes(client: aws_sdk_dynamodb::Client, table: String, pk: String) -> Op {
    stores::op(move |k| {
        let (client, table, pk) = (client.clone(), table.clone(), pk.clone());
        async move {
            let owner = AttributeValue::S(OwnerToken::generate().to_hex());
            let item = AttributeValue::S(format!("bench-writes#{k}"));
            let rvn = || AttributeValue::S(OwnerToken::generate().to_hex());
            let now = stores::unix_ms();
            client
                .update_item()
                .table_name(&table)
                .key(&pk, item.clone())
                .update_expression(
                    "SET #owner = :owner, #lease = :lease, #rvn = :rvn, #holder = :holder, \
                     #acquired = :acquired, #fence = if_not_exists(#fence, :zero) + :one",
                )
                .condition_expression("attribute_not_exists(#owner)")
                .expression_attribute_names("#owner", "owner")
                .expression_attribute_names("#lease", "lease_ms")
                .expression_attribute_names("#rvn", "rvn")
                .expression_attribute_names("#holder", "holder")
                .expression_attribute_names("#fence", "fence")
                .expression_attribute_names("#acquired", "acquired_ms")
                .expression_attribute_values(":owner", owner.clone())
                .expression_attribute_values(":lease", AttributeValue::N("30000".into()))
                .expression_attribute_values(":rvn", rvn())
                .expression_attribute_values(":holder", AttributeValue::S("bench".into()))
                .expression_attribute_values(":acquired", AttributeValue::N(now.to_string()))
                .expression_attribute_values(":zero", AttributeValue::N("0".into()))
                .expression_attribute_values(":one", AttributeValue::N("1".into()))
                .return_values(ReturnValue::UpdatedNew)
                .return_values_on_condition_check_failure(
                    ReturnValuesOnConditionCheckFailure::AllOld,
                )
                .send()
                .await
                .map_err(|e| format!("{e:?}"))?;
            client
                .update_item()
                .table_name(&table)
                .key(&pk, item)
                .update_expression("SET #rvn = :rvn REMOVE #owner, #lease, #holder, #acquired")
                .condition_expression("#owner = :owner")
                .expression_attribute_names("#owner", "owner")
                .expression_attribute_names("#lease", "lease_ms")
                .expression_attribute_names("#rvn", "rvn")
                .expression_attribute_names("#holder", "holder")
                .expression_attribute_names("#acquired", "acquired_ms")
                .expression_attribute_values(":owner", owner)
                .expression_attribute_values(":rvn", rvn())
                .send()
                .await
                .map_err(|e| format!("{e:?}"))?;
            Ok(())
        }
    })
}

async fn run(samples: usize, tasks: usize) -> Result<(), String> {
    let store = fixtures::start(&fixtures::dynamodb_spec()).await?;
    let url = stores::dynamo_url(store.port);
    let backend = stores::retry_connect("dynamodb", Duration::from_secs(90), || async {
        leasehold_dynamodb::DynamoDbBackend::connect(&url)
            .await
            .map_err(stores::err)
    })
    .await?;
    let (client, table) = (backend.client().clone(), backend.table().to_owned());
    let pk = leasehold_dynamodb::DEFAULT_PARTITION_KEY.to_owned();
    let raw = stores::dynamo_raw(client.clone(), table.clone(), pk.clone());
    let writes = backend_writes(client, table, pk);
    let backend: Arc<dyn LockBackend> = Arc::new(backend);
    steps::compare(
        "dynamo-lock-cost",
        "DynamoDB moto stand-in",
        vec![
            ("raw: 2 conditional UpdateItem", raw),
            ("raw, the backend's writes", writes),
        ],
        backend,
        samples,
        tasks,
    )
    .await?;
    drop(store);
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let (samples, tasks) = steps::options();
    leasehold_benches::finish("dynamo_lock_cost", run(samples, tasks).await)
}
