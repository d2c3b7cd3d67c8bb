//! The conformance suite against a Redis Cluster of three masters with one
//! replica each, with the replica rule `min_replicas=1`: every grant and
//! renewal waits until its key's master's replica has it (fencing
//! `Strict`), so a failover of that shard keeps it. Or
//! `LEASEHOLD_TEST_REDIS_CLUSTER_URL`.

mod cluster_support;

fn main() -> std::process::ExitCode {
    cluster_support::conformance_main(
        "redis-cluster-wait",
        1,
        "min_replicas=1&replica_timeout=500ms",
    )
}
