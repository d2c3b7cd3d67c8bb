//! The conformance suite over mutual TLS: ZooKeeper 3.8's TLS client port
//! with `ssl.clientAuth=need`, reached with `zks://` and the `ca`, `cert` and
//! `key` options (certificates made at test time). Or
//! `LEASEHOLD_TEST_ZOOKEEPER_TLS_URL` (a `zks://` URL with its options).
//! Sessions end as in the plaintext suite, the ender's own clients dialling
//! with the same certificates.

mod suite_support;
mod tls_support;

use leasehold_zookeeper::zookeeper_client::TlsOptions;
use suite_support::{Dialer, zookeeper_suite};
use tls_support::{Pki, wait_tls_serving, zookeeper_tls_spec};

fn main() -> std::process::ExitCode {
    leasehold_conformance::run_main(|| async {
        // Child holders get the parent's URL (and so its files) from the
        // environment; the PKI made here is then unused.
        let pki = Pki::new(&["127.0.0.1"]);
        let query = pki.mtls_query();
        let spec = zookeeper_tls_spec(&pki, true);
        leasehold_core::tls::install_default_crypto_provider();
        let read = |name: &str| std::fs::read_to_string(pki.path(name)).expect("a PKI file");
        let tls = TlsOptions::new()
            .with_pem_ca(&read("ca.pem"))
            .and_then(|tls| tls.with_pem_identity(&read("client.pem"), &read("client.key")))
            .expect("the test PKI's TLS options");
        let suite = zookeeper_suite(
            "zookeeper-tls",
            &spec,
            |store| {
                store.url(|port| {
                    format!("zks://127.0.0.1:{port}?{query}&session_timeout=3s&timeout=2s")
                })
            },
            Dialer { tls: Some(tls) },
            wait_tls_serving,
        )
        .await?;
        Ok(suite.keep(pki))
    })
}
