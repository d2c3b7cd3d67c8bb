//! Test servers: a `redis:7.0` container from the conformance fixtures
//! (published on 127.0.0.1 only, labelled `leasehold.test`, removed on drop)
//! or `LEASEHOLD_TEST_REDIS_URL`.
#![allow(dead_code)]

use std::sync::Arc;

use leasehold_conformance::fixtures::{self, Container};
use leasehold_core::config::BackendConfig;
use leasehold_redis::RedisConfig;

/// A Redis server for one test.
pub struct Server {
    /// Where it listens.
    pub url: String,
    /// The container, when we started one (fault injection needs it).
    pub container: Option<Arc<Container>>,
}

/// A server: `LEASEHOLD_TEST_REDIS_URL` when set (then `args` are ignored and
/// `None` is returned if the test needs a container), else a fresh container
/// running `redis-server args..` (the server's defaults plus `args`).
pub async fn server(args: &[&str], needs_container: bool) -> Option<Server> {
    // The server's own defaults, not the suite's `--save ""`.
    let spec = fixtures::redis_spec(false)
        .cmd(["redis-server"])
        .args(args.iter().copied());
    if let Ok(url) = std::env::var(spec.url_env()) {
        if needs_container || !args.is_empty() {
            eprintln!(
                "SKIPPED: this test needs its own container; {} is set",
                spec.url_env()
            );
            return None;
        }
        return Some(Server {
            url,
            container: None,
        });
    }
    match fixtures::start(&spec).await {
        Ok(container) => Some(Server {
            url: format!("redis://127.0.0.1:{}", container.port),
            container: Some(Arc::new(container)),
        }),
        Err(error) => {
            let message = format!("SKIPPED: {error}");
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{message} (CI=true: a skipped store is a failure)");
            }
            eprintln!("{message}");
            None
        }
    }
}

/// The options of `url`, which must parse.
pub fn config(url: &str) -> RedisConfig {
    RedisConfig::from_url(url).expect("the test url parses")
}

/// How many EVALSHA calls the server behind `backend` has run (INFO
/// commandstats).
pub async fn evalsha_calls(backend: &leasehold_redis::RedisBackend) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut backend.node().connection())
        .await
        .expect("INFO commandstats");
    info.lines()
        .find_map(|line| line.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |calls| calls.parse().expect("a call count"))
}
