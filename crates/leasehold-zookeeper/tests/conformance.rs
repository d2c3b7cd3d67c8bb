//! The leasehold conformance suite against ZooKeeper 3.8: a `zookeeper:3.8`
//! container (or the store named by `LEASEHOLD_TEST_ZOOKEEPER_URL`, as
//! `zk://host:port` or `host:port`), with pause/restart hooks and
//! child-process holders.

use std::sync::Arc;

use leasehold_conformance::fixtures::{self, Provisioned};
use leasehold_conformance::{Suite, run_main};
use leasehold_core::LockBackend;
use leasehold_zookeeper::ZkBackend;

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
        let (url, container) = match fixtures::provision(&spec).await? {
            Provisioned::External(url) => (url_of(&url), None),
            Provisioned::Container(container) => (
                url_of(&format!("127.0.0.1:{}", container.port)),
                Some(container),
            ),
        };
        let factory_url = url.clone();
        let mut suite = Suite::new("zookeeper", move || {
            let url = factory_url.clone();
            async move { Ok(Arc::new(ZkBackend::connect_url(&url).await?) as Arc<dyn LockBackend>) }
        })
        .with_child_env(vec![(spec.url_env(), url)]);
        if let Some(container) = container {
            suite = suite.with_store(container.clone()).keep(container);
        }
        Ok(suite)
    })
}
