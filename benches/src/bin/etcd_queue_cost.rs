//! What etcd's queue recipe costs over a bare create-if-absent key, step by
//! step, in one run, interleaved: p50 of each as a ratio to the bare pair
//! (from the main thread, then from a spawned task with the client's CPU
//! per pair), then operations per second with `--tasks` tasks (default 64, each on its
//! own key) as a ratio to the bare pair's (see `leasehold_benches::steps`):
//!
//! `cargo run --release -p leasehold-benches --bin etcd_queue_cost [-- --samples N --tasks N]`
//!
//! - raw: a txn that puts the key if absent, then a delete (the benchmark's
//!   raw baseline);
//! - raw under a lease: the same with the put under a session lease;
//! - queue entry + plain delete: a txn that puts an entry under the key's
//!   prefix, under the lease, only if nothing is under that prefix; then a
//!   plain delete of the entry;
//! - queue entry: the same txn; then a txn that deletes the entry if its
//!   create revision is still the one put (the backend's two txns, without
//!   the retirement marker's compare);
//! - queue entry + marker compare: the same with the acquiring txn also
//!   comparing that the entry's retirement marker is absent (exactly the
//!   backend's txns, sent straight from etcd-client);
//! - backend: `try_acquire` + `release`;
//! - locker: `Locker::try_lock` + `release`.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};
use leasehold_benches::harness::Op;
use leasehold_benches::{steps, stores};
use leasehold_conformance::fixtures;
use leasehold_core::{LockBackend, OwnerToken};

use stores::{err, op};

/// The session lease's TTL: longer than the whole run, so it needs no
/// keep-alive.
const LEASE_TTL_SECS: i64 = 600;

/// How [`queue_entry_pair`] sends its acquiring txn and its delete.
#[derive(Clone, Copy)]
struct Shape {
    /// The acquiring txn also compares that the entry's retirement marker
    /// is absent.
    marker: bool,
    /// The entry is deleted by a txn comparing its create revision (else by
    /// a plain delete).
    compare_delete: bool,
}

/// An entry under the key's queue prefix, under `lease`, put only if the
/// queue is empty, then deleted, as `shape` says.
fn queue_entry_pair(client: Client, lease: i64, shape: Shape) -> Op {
    op(move |key: String| {
        let mut client = client.clone();
        async move {
            let prefix = format!("bench-queue/{key}/");
            // The prefix's range end: its last byte ('/') plus one.
            let range_end = format!("bench-queue/{key}0");
            let owner = OwnerToken::generate().to_hex();
            let entry = format!("{prefix}{owner}");
            let mut compares =
                vec![Compare::create_revision(prefix, CompareOp::Equal, 0).with_range(range_end)];
            if shape.marker {
                compares.push(Compare::create_revision(
                    format!("bench-queue-retired/{key}/{owner}"),
                    CompareOp::Equal,
                    0,
                ));
            }
            let put = Txn::new().when(compares).and_then([TxnOp::put(
                entry.clone(),
                "holder label",
                Some(PutOptions::new().with_lease(lease)),
            )]);
            let put = client.txn(put).await.map_err(err)?;
            if !put.succeeded() {
                return Err(format!("queue of {key} not empty"));
            }
            if !shape.compare_delete {
                client.delete(entry, None).await.map_err(err)?;
                return Ok(());
            }
            let revision = put.header().map_or(0, |h| h.revision());
            let delete = Txn::new()
                .when([Compare::create_revision(
                    entry.clone(),
                    CompareOp::Equal,
                    revision,
                )])
                .and_then([TxnOp::delete(entry, None)]);
            let deleted = client.txn(delete).await.map_err(err)?;
            if !deleted.succeeded() {
                return Err(format!("entry of {key} changed"));
            }
            Ok(())
        }
    })
}

async fn run(samples: usize, tasks: usize) -> Result<(), String> {
    let store = fixtures::start(&fixtures::etcd_spec()).await?;
    let url = format!("etcd://127.0.0.1:{}", store.port);
    let backend = stores::retry_connect("etcd", Duration::from_secs(60), || async {
        leasehold_etcd::EtcdBackend::connect(&url)
            .await
            .map_err(err)
    })
    .await?;
    let mut client = backend.client().clone();
    let lease = client
        .lease_grant(LEASE_TTL_SECS, None)
        .await
        .map_err(err)?
        .id();
    let backend: Arc<dyn LockBackend> = Arc::new(backend);
    let pairs = vec![
        (
            "raw: txn put-if-absent + delete",
            stores::etcd_raw(client.clone(), None),
        ),
        (
            "raw with the put under a lease",
            stores::etcd_raw(client.clone(), Some(lease)),
        ),
        (
            "queue entry txn + plain delete",
            queue_entry_pair(
                client.clone(),
                lease,
                Shape {
                    marker: false,
                    compare_delete: false,
                },
            ),
        ),
        (
            "queue entry txn + compare-delete txn",
            queue_entry_pair(
                client.clone(),
                lease,
                Shape {
                    marker: false,
                    compare_delete: true,
                },
            ),
        ),
        (
            "the same + retirement marker compare",
            queue_entry_pair(
                client,
                lease,
                Shape {
                    marker: true,
                    compare_delete: true,
                },
            ),
        ),
    ];
    steps::compare(
        "etcd-queue-cost",
        "etcd 3.4 stand-in",
        pairs,
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
    leasehold_benches::finish("etcd_queue_cost", run(samples, tasks).await)
}
