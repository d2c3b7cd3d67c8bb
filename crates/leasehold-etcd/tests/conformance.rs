//! The conformance suite against etcd: a `quay.io/coreos/etcd:v3.4` container
//! (the stand-in image) or `LEASEHOLD_TEST_ETCD_URL`. etcd keeps its data
//! directory across the restart case, so fencing is durable.
//!
//! The session ender revokes the etcd lease that carries a lease
//! ([`leasehold_etcd::lease_id`]) from a client of its own, as an operator's
//! `etcdctl lease revoke` would.

mod suite_support;

use leasehold_conformance::fixtures;

fn main() -> std::process::ExitCode {
    leasehold_conformance::run_main(|| async {
        let spec = fixtures::etcd_spec();
        suite_support::etcd_suite("etcd", &spec, |port| format!("etcd://127.0.0.1:{port}")).await
    })
}
