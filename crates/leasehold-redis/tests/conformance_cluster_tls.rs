//! The conformance suite over TLS against a TLS-only Redis Cluster of three
//! masters (the cluster bus too), reached with
//! `redis+cluster://…?tls=true&ca=…` (certificates made at test time). Or
//! `LEASEHOLD_TEST_REDIS_CLUSTER_TLS_URL`.

mod cluster_support;

fn main() -> std::process::ExitCode {
    cluster_support::conformance_tls_main("redis-cluster-tls")
}
