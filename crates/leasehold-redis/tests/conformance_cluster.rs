//! The conformance suite against a Redis Cluster of three masters, reached
//! with `redis+cluster://`. Or `LEASEHOLD_TEST_REDIS_CLUSTER_URL`.

mod cluster_support;

fn main() -> std::process::ExitCode {
    cluster_support::conformance_main("redis-cluster", 0, "")
}
