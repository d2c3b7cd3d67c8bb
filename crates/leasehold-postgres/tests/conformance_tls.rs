//! The conformance suite over TLS: a Postgres container that serves TLS
//! only, with a server certificate for 127.0.0.1 signed by a CA made at test
//! time, reached with `sslmode=verify-full&sslrootcert=<ca>`. Table mode by
//! default (`LEASEHOLD_PG_MODES=table,advisory` adds advisory mode, on a
//! container of its own). Or `LEASEHOLD_TEST_POSTGRES_TLS_URL` (a URL with
//! its TLS options).

mod conformance_support;
mod tls_support;

use std::process::ExitCode;

use tls_support::{Clients, Pki, postgres_tls_spec};

fn main() -> ExitCode {
    conformance_support::run_modes("table", |mode| async move {
        // Child holders get the parent's URL (and so its files) from the
        // environment; the PKI made here is then unused.
        let pki = Pki::new(&["127.0.0.1"]);
        let query = format!(
            "sslmode=verify-full&sslrootcert={}",
            pki.path("ca.pem").display()
        );
        let spec = postgres_tls_spec(&pki, Clients::Password);
        let suite = conformance_support::setup(
            "postgres-tls",
            spec,
            |port| tls_support::url("127.0.0.1", port, &query),
            mode,
        )
        .await?;
        Ok(suite.keep(pki))
    })
}
