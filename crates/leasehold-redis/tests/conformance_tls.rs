//! The conformance suite over mutual TLS: a TLS-only Redis container that
//! requires client certificates, reached with `rediss://` and the `ca`,
//! `cert` and `key` options (certificates made at test time). Or
//! `LEASEHOLD_TEST_REDIS_TLS_URL` (a `rediss://` URL with its options).

mod tls_support;

use std::process::ExitCode;
use std::sync::Arc;

use leasehold_conformance::Suite;
use leasehold_core::LockBackend;
use leasehold_redis::RedisBackend;
use tls_support::{Pki, redis_tls_spec};

fn main() -> ExitCode {
    leasehold_conformance::run_main(|| async {
        // Child holders get the parent's URL (and so its files) from the
        // environment; the PKI made here is then unused.
        let pki = Pki::new(&["127.0.0.1"]);
        let query = pki.mtls_query();
        let spec = pki.tls_spec(redis_tls_spec(), true);
        let suite = Suite::provisioned(
            "redis-tls",
            spec,
            |port| format!("rediss://127.0.0.1:{port}?{query}"),
            |url| async move {
                Ok(Arc::new(RedisBackend::connect(&url).await?) as Arc<dyn LockBackend>)
            },
        )
        .await?;
        Ok(suite.keep(pki))
    })
}
