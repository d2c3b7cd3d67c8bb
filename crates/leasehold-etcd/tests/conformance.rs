//! The conformance suite against etcd: a `quay.io/coreos/etcd:v3.4` container
//! (the stand-in image) or `LEASEHOLD_TEST_ETCD_URL`. etcd keeps its data
//! directory across the restart case, so fencing is durable.
//!
//! The session ender revokes the etcd lease that carries a lease
//! ([`leasehold_etcd::lease_id`]) from a client of its own, as an operator's
//! `etcdctl lease revoke` would.

use std::sync::Arc;

use leasehold_conformance::{Suite, fixtures};
use leasehold_core::LockBackend;
use leasehold_etcd::EtcdBackend;

fn main() -> std::process::ExitCode {
    leasehold_conformance::run_main(|| async {
        let spec = fixtures::etcd_spec();
        let store = fixtures::provision(&spec).await?;
        let url = store.url(|port| format!("etcd://127.0.0.1:{port}"));
        let connect_to = url.clone();
        let ender_url = url.clone();
        let suite = Suite::new("etcd", move || {
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
        Ok(suite.with_provisioned(&spec, store, &url))
    })
}
