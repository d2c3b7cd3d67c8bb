//! The ZooKeeper conformance suite's setup, shared by the plaintext and the
//! TLS targets: a provisioned store (a container of `spec`, or its
//! `LEASEHOLD_TEST_<STORE>_URL`), clients connected by URL through a
//! conformance [`Proxy`], and a session ender.
//!
//! Every client of the suite reaches the server through the proxy, so the
//! session ender can end a holder's session the way a network partition
//! followed by a server-side expiry would, without races: it cuts the proxy
//! (the holder's client loses its connection and its reconnects hang), takes
//! the session over on a direct connection
//! ([`leasehold_zookeeper::session_of`]) and closes it, which expires it on
//! the server at once, and heals the proxy once the lease's node is gone.
//! The holder's client then reconnects and hears that its session expired.
//! (Taking the session over without the cut raced the holder's client, which
//! reconnects at once and won the session back under load.) The proxy
//! forwards bytes, so TLS goes through it end to end.

use std::sync::Arc;
use std::time::Duration;

use leasehold_conformance::fixtures::{self, ContainerSpec, Provisioned};
use leasehold_conformance::proxy::Proxy;
use leasehold_conformance::{Skipped, Suite};
use leasehold_core::LockBackend;
use leasehold_zookeeper::ZkBackend;
use leasehold_zookeeper::zookeeper_client::{Client, Connector};

/// How the session ender's own clients reach the server: plaintext, or TLS
/// with the suite's certificates.
#[derive(Clone, Default)]
pub struct Dialer {
    /// TLS settings for `secure_connect`; plaintext when `None`.
    #[cfg(feature = "tls")]
    pub tls: Option<leasehold_zookeeper::zookeeper_client::TlsOptions>,
}

impl Dialer {
    async fn connect(
        &self,
        connector: Connector,
        hosts: &str,
    ) -> Result<Client, leasehold_zookeeper::zookeeper_client::Error> {
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.tls {
            return connector.with_tls(tls.clone()).secure_connect(hosts).await;
        }
        connector.connect(hosts).await
    }
}

/// Ends the session carrying `lease`: cut the clients' link, close the
/// session from a direct connection to `hosts`, heal the link.
async fn end_session(
    link: Arc<Proxy>,
    hosts: String,
    dialer: Dialer,
    lease: leasehold_core::Lease,
) -> Result<(), String> {
    let session = leasehold_zookeeper::session_of(&lease)
        .ok_or_else(|| "not a lease of the zookeeper backend".to_owned())?;
    let node = leasehold_zookeeper::node_path(&lease)
        .ok_or_else(|| "not a lease of the zookeeper backend".to_owned())?
        .to_owned();
    let observer = dialer
        .connect(Client::connector(), &hosts)
        .await
        .map_err(|e| format!("connect an observer: {e}"))?;
    link.set_cut(true);
    let ended = async {
        // A failed connect means the session expired already.
        if let Ok(thief) = dialer
            .connect(Client::connector().with_session(session.clone()), &hosts)
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

/// The suite `name` against the store of `spec`, reached at the URL
/// `url_of` makes for it (`zk://` or `zks://`, with its query), once
/// `ready(url)` returns; `dialer` reaches the same server for the session
/// ender.
pub async fn zookeeper_suite<R: Future<Output = ()>>(
    name: &str,
    spec: &ContainerSpec,
    url_of: impl FnOnce(&Provisioned) -> String,
    dialer: Dialer,
    ready: impl FnOnce(String) -> R,
) -> Result<Suite, Skipped> {
    let store = fixtures::provision(spec).await?;
    let url = url_of(&store);
    ready(url.clone()).await;
    let hosts = url
        .split_once("://")
        .map_or(url.as_str(), |(_, rest)| rest)
        .split(['/', '?'])
        .next()
        .unwrap_or_default();
    let hosts = hosts.rsplit_once('@').map_or(hosts, |(_, h)| h).to_owned();
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
    let mut suite = Suite::new(name, move || {
        let url = factory_url.clone();
        async move { Ok(Arc::new(ZkBackend::connect(&url).await?) as Arc<dyn LockBackend>) }
    });
    if let Some(link) = link {
        suite = suite.with_session_ender(move |lease| {
            end_session(link.clone(), hosts.clone(), dialer.clone(), lease)
        });
    }
    Ok(suite.with_provisioned(spec, store, &url))
}
