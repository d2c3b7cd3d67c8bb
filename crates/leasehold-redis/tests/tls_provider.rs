//! The rustls provider rule: every Redis TLS URL (one server, Sentinel and
//! Cluster with `tls=true`, which the sharded pub/sub connection and the
//! Redlock servers share) installs rustls's process-default provider while
//! it is parsed, before redis-rs builds any rustls configuration with
//! `ClientConfig::builder()` (which panics in a build with two providers and
//! no default: `--all-features` with ZooKeeper's aws-lc-rs beside ring).
//!
//! The default is process-wide and stays once installed, so each URL is
//! checked in a process of its own: the test runs itself again, once per
//! URL, and the child first asserts that no default is installed yet.
//! Nothing is contacted.

use leasehold_core::config::BackendConfig;
use leasehold_redis::RedisConfig;
use rustls::crypto::CryptoProvider;

/// The variable that makes this test the child checking one URL.
const CHILD: &str = "LEASEHOLD_TLS_PROVIDER_URL";

const TEST: &str = "every_tls_url_installs_the_rustls_default_provider_when_parsed";

#[test]
fn every_tls_url_installs_the_rustls_default_provider_when_parsed() {
    if let Ok(url) = std::env::var(CHILD) {
        assert!(
            CryptoProvider::get_default().is_none(),
            "a fresh process has no default provider"
        );
        RedisConfig::from_url(&url).expect("the URL parses");
        assert!(
            CryptoProvider::get_default().is_some(),
            "{url}: parsed without installing the rustls default provider"
        );
        return;
    }
    for url in [
        "rediss://127.0.0.1:1",
        "redis+sentinel://127.0.0.1:1/mymaster?tls=true",
        "redis+cluster://127.0.0.1:1,127.0.0.1:2?tls=true",
    ] {
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
            .env(CHILD, url)
            .output()
            .expect("run the test binary again");
        assert!(
            output.status.success(),
            "{url}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            stdout.contains("1 passed"),
            "{url}: the child ran no test: {stdout}"
        );
    }
}
