//! The conformance suite against Redis Sentinel: one master, two replicas
//! and three sentinels in containers, reached with `redis+sentinel://`. Or
//! `LEASEHOLD_TEST_REDIS_SENTINEL_URL`. Writes count when the master has
//! them (fencing `BestEffort`).

mod sentinel_support;

fn main() -> std::process::ExitCode {
    sentinel_support::conformance_main("redis-sentinel", "")
}
