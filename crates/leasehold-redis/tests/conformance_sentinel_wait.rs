//! The conformance suite against Redis Sentinel with the replica rule
//! `min_replicas=2`: every grant and renewal waits until both replicas have
//! it (fencing `Strict`), so a failover to either keeps it.

mod sentinel_support;

fn main() -> std::process::ExitCode {
    sentinel_support::conformance_main(
        "redis-sentinel-wait",
        "min_replicas=2&replica_timeout=500ms",
    )
}
