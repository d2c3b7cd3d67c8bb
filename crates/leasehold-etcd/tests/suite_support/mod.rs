//! The etcd conformance suite's setup, shared by the plaintext and the TLS
//! targets: a provisioned store (a container of `spec`, or its
//! `LEASEHOLD_TEST_<STORE>_URL`), clients connected by URL, and a session
//! ender that revokes the etcd lease that carries a lease
//! ([`leasehold_etcd::lease_id`]) from a client of its own, as an
//! operator's `etcdctl lease revoke` would.

use std::sync::Arc;

use leasehold_conformance::fixtures::{self, ContainerSpec};
use leasehold_conformance::{Skipped, Suite};
use leasehold_core::LockBackend;
use leasehold_etcd::EtcdBackend;

/// The suite `name` against the store of `spec`, reached at the URL
/// `url_from_port` makes from a container's port.
pub async fn etcd_suite(
    name: &str,
    spec: &ContainerSpec,
    url_from_port: impl FnOnce(u16) -> String,
) -> Result<Suite, Skipped> {
    let store = fixtures::provision(spec).await?;
    let url = store.url(url_from_port);
    let connect_to = url.clone();
    let ender_url = url.clone();
    let suite = Suite::new(name, move || {
        let url = connect_to.clone();
        async move { Ok(Arc::new(EtcdBackend::connect(&url).await?) as Arc<dyn LockBackend>) }
    })
    .with_session_ender(move |lease| {
        let url = ender_url.clone();
        async move {
            let id = leasehold_etcd::lease_id(&lease)
                .ok_or_else(|| "not a lease of the etcd backend".to_owned())?;
            let other = EtcdBackend::connect(&url)
                .await
                .map_err(|e| format!("connect a second client: {e}"))?;
            other
                .client()
                .lease_client()
                .revoke(id)
                .await
                .map(drop)
                .map_err(|e| format!("revoke etcd lease {id:#x}: {e}"))
        }
    });
    Ok(suite.with_provisioned(spec, store, &url))
}
