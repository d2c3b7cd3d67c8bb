//! The conformance suite's setup for Redis, shared by the plain and the AOF
//! test targets.

use std::process::ExitCode;
use std::sync::Arc;

use leasehold_conformance::{Suite, fixtures};
use leasehold_core::LockBackend;
use leasehold_redis::RedisBackend;

/// Runs the suite against a `redis:7.0` container, with AOF + fsync always
/// (`persistent`: fencing counted durable, the restart case checks token
/// order) or without persistence; or against `LEASEHOLD_TEST_REDIS_URL`.
pub fn main(name: &'static str, persistent: bool) -> ExitCode {
    leasehold_conformance::run_main(move || {
        Suite::provisioned(
            name,
            fixtures::redis_spec(persistent),
            |port| format!("redis://127.0.0.1:{port}"),
            |url| async move {
                Ok(Arc::new(RedisBackend::connect(&url).await?) as Arc<dyn LockBackend>)
            },
        )
    })
}
