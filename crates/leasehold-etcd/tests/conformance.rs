//! The conformance suite against etcd: a `quay.io/coreos/etcd:v3.4` container
//! (the stand-in image) or `LEASEHOLD_TEST_ETCD_URL`. etcd keeps its data
//! directory across the restart case, so fencing is durable.

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
        let suite = Suite::new("etcd", move || {
            let url = connect_to.clone();
            async move { Ok(Arc::new(EtcdBackend::connect(&url).await?) as Arc<dyn LockBackend>) }
        });
        Ok(suite.with_provisioned(&spec, store, &url))
    })
}
