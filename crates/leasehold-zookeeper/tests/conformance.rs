//! The leasehold conformance suite against ZooKeeper 3.8: a `zookeeper:3.8`
//! container (or the store named by `LEASEHOLD_TEST_ZOOKEEPER_URL`, as
//! `zk://host:port` or `host:port`), with pause/restart hooks, child-process
//! holders and a session ender.
//!
//! Every client of the suite reaches the server through a conformance
//! [`Proxy`], so the session ender can end a holder's session the way a
//! network partition followed by a server-side expiry would, without races:
//! it cuts the proxy (the holder's client loses its connection and its
//! reconnects hang), takes the session over on a direct connection
//! ([`leasehold_zookeeper::session_of`]) and closes it, which expires it on
//! the server at once, and heals the proxy once the lease's node is gone.
//! The holder's client then reconnects and hears that its session expired.
//! (Taking the session over without the cut raced the holder's client, which
//! reconnects at once and won the session back under load.)

use std::sync::Arc;
use std::time::Duration;

use leasehold_conformance::fixtures;
use leasehold_conformance::proxy::Proxy;
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

/// Ends the session carrying `lease`: cut the clients' link, close the
/// session from a direct connection to `hosts`, heal the link.
async fn end_session(
    link: Arc<Proxy>,
    hosts: String,
    lease: leasehold_core::Lease,
) -> Result<(), String> {
    let session = leasehold_zookeeper::session_of(&lease)
        .ok_or_else(|| "not a lease of the zookeeper backend".to_owned())?;
    let node = leasehold_zookeeper::node_path(&lease)
        .ok_or_else(|| "not a lease of the zookeeper backend".to_owned())?
        .to_owned();
    let observer = Client::connector()
        .connect(&hosts)
        .await
        .map_err(|e| format!("connect an observer: {e}"))?;
    link.set_cut(true);
    let ended = async {
        // A failed connect means the session expired already.
        if let Ok(thief) = Client::connector()
            .with_session(session.clone())
            .connect(&hosts)
            .await
        {
            let mut states = thief.state_watcher();
            // Dropping the only handle closes the session on the server.
            drop(thief);
            let _ = tokio::time::timeout(Duration::from_secs(5), states.changed()).await;
        }
        loop {
            match observer.check_stat(&node).await {
                Ok(None) => return,
                Ok(Some(stat)) if stat.ephemeral_owner != session.id().0 => return,
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    };
    // Healed whatever happens, so a failure here fails only this case.
    let outcome = tokio::time::timeout(Duration::from_secs(20), ended).await;
    link.set_cut(false);
    outcome.map_err(|_| format!("the session of {node} did not end within 20 s"))
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
        // The proxy reaches loopback stores only: without it there is no
        // race-free ender, and its case is skipped.
        let link = match hosts
            .strip_prefix("127.0.0.1:")
            .and_then(|p| p.parse().ok())
        {
            Some(port) => Some(Arc::new(
                Proxy::start(port).await.expect("a proxy on 127.0.0.1"),
            )),
            None => {
                eprintln!("zookeeper conformance: {hosts} is not on 127.0.0.1: no session ender");
                None
            }
        };
        let url = match &link {
            Some(link) => url.replacen(&hosts, &link.addr(), 1),
            None => url,
        };
        let factory_url = url.clone();
        let mut suite = Suite::new("zookeeper", move || {
            let url = factory_url.clone();
            async move { Ok(Arc::new(ZkBackend::connect(&url).await?) as Arc<dyn LockBackend>) }
        });
        if let Some(link) = link {
            suite = suite
                .with_session_ender(move |lease| end_session(link.clone(), hosts.clone(), lease));
        }
        Ok(suite.with_provisioned(&spec, store, &url))
    })
}
