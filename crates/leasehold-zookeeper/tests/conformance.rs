//! The leasehold conformance suite against ZooKeeper 3.8: a `zookeeper:3.8`
//! container (or the store named by `LEASEHOLD_TEST_ZOOKEEPER_URL`, as
//! `zk://host:port` or `host:port`), with pause/restart hooks, child-process
//! holders and a session ender.
//!
//! The session ender takes the holder's session over from a second
//! connection ([`leasehold_zookeeper::session_of`]) and closes it, which
//! expires it on the server at once, as a server-side session kill would.
//! The holder's client may win its session back before the close arrives (it
//! reconnects as soon as the server drops its connection), so the ender
//! repeats until the lease's node is gone.

use std::sync::Arc;
use std::time::Duration;

use leasehold_conformance::fixtures;
use leasehold_conformance::{Suite, run_main};
use leasehold_core::LockBackend;
use leasehold_zookeeper::ZkBackend;
use leasehold_zookeeper::zookeeper_client::Client;

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

/// Ends the session carrying `lease` on the ensemble at `hosts`.
async fn end_session(hosts: String, lease: leasehold_core::Lease) -> Result<(), String> {
    let session = leasehold_zookeeper::session_of(&lease)
        .ok_or_else(|| "not a lease of the zookeeper backend".to_owned())?;
    let node = leasehold_zookeeper::node_path(&lease)
        .ok_or_else(|| "not a lease of the zookeeper backend".to_owned())?
        .to_owned();
    let observer = Client::connector()
        .connect(&hosts)
        .await
        .map_err(|e| format!("connect an observer: {e}"))?;
    for _ in 0..20 {
        match observer.check_stat(&node).await {
            Ok(None) => return Ok(()),
            Ok(Some(stat)) if stat.ephemeral_owner != session.id().0 => return Ok(()),
            Ok(Some(_)) => {}
            Err(e) => return Err(format!("stat {node}: {e}")),
        }
        let thief = Client::connector()
            .with_session(session.clone())
            .connect(&hosts)
            .await;
        // Dropping the only handle closes the session on the server; a
        // failed connect means it expired already (the node is gone then).
        if let Ok(thief) = thief {
            let mut states = thief.state_watcher();
            drop(thief);
            let _ = tokio::time::timeout(Duration::from_secs(2), states.changed()).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("the session of {node} survived 20 takeovers"))
}

fn main() -> std::process::ExitCode {
    run_main(|| async {
        let spec = fixtures::zookeeper_spec();
        let store = fixtures::provision(&spec).await?;
        let url = url_of(&store.url(|port| format!("127.0.0.1:{port}")));
        let hosts = url
            .trim_start_matches("zk://")
            .split(['/', '?'])
            .next()
            .unwrap_or_default()
            .to_owned();
        let factory_url = url.clone();
        let suite = Suite::new("zookeeper", move || {
            let url = factory_url.clone();
            async move { Ok(Arc::new(ZkBackend::connect(&url).await?) as Arc<dyn LockBackend>) }
        })
        .with_session_ender(move |lease| end_session(hosts.clone(), lease));
        Ok(suite.with_provisioned(&spec, store, &url))
    })
}
