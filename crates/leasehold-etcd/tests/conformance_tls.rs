//! The conformance suite over mutual TLS: a TLS-only etcd that requires
//! client certificates (`--client-cert-auth`), reached with `etcds://` and
//! the `ca`, `cert` and `key` options (certificates made at test time). Or
//! `LEASEHOLD_TEST_ETCD_TLS_URL` (an `etcds://` URL with its options).
//! Sessions end as in the plaintext suite (a revoke from a second client).

mod suite_support;
mod tls_support;

use tls_support::{Pki, etcd_tls_spec};

fn main() -> std::process::ExitCode {
    leasehold_conformance::run_main(|| async {
        // Child holders get the parent's URL (and so its files) from the
        // environment; the PKI made here is then unused.
        let pki = Pki::new(&["127.0.0.1"]);
        let query = pki.mtls_query();
        let spec = etcd_tls_spec(&pki, true);
        let suite = suite_support::etcd_suite("etcd-tls", &spec, |port| {
            format!("etcds://127.0.0.1:{port}?{query}")
        })
        .await?;
        Ok(suite.keep(pki))
    })
}
