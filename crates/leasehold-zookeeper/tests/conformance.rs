//! The leasehold conformance suite against ZooKeeper 3.8: a `zookeeper:3.8`
//! container (or the store named by `LEASEHOLD_TEST_ZOOKEEPER_URL`, as
//! `zk://host:port` or `host:port`), with pause/restart hooks, child-process
//! holders and a session ender (see `suite_support`).

mod suite_support;

use leasehold_conformance::{fixtures, run_main};
use suite_support::{Dialer, zookeeper_suite};

/// Sessions short enough that a killed holder frees its locks quickly.
const QUERY: &str = "session_timeout=3s&timeout=2s";

fn url_of(target: &str) -> String {
    let base = if target.starts_with("zk://") {
        target.to_owned()
    } else {
        format!("zk://{target}")
    };
    if base.contains('?') {
        base
    } else {
        format!("{base}?{QUERY}")
    }
}

fn main() -> std::process::ExitCode {
    run_main(|| async {
        let spec = fixtures::zookeeper_spec();
        zookeeper_suite(
            "zookeeper",
            &spec,
            |store| url_of(&store.url(|port| format!("127.0.0.1:{port}"))),
            Dialer::default(),
            |_| async {},
        )
        .await
    })
}
