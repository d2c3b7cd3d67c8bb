//! The conformance suite over TLS: a MariaDB container that refuses
//! plaintext TCP, with a server certificate for 127.0.0.1 signed by a CA
//! made at test time, reached with `ssl-mode=verify_identity&ssl-ca=<ca>`.
//! Table mode by default (`LEASEHOLD_MYSQL_MODES=table,named` adds named
//! mode, on a container of its own). Or `LEASEHOLD_TEST_MARIADB_TLS_URL` (a
//! URL with its TLS options).

mod conformance_support;
mod tls_support;

use std::process::ExitCode;

use tls_support::{Pki, mariadb_tls_spec};

fn main() -> ExitCode {
    conformance_support::run_modes("table", |mode| async move {
        // Child holders get the parent's URL (and so its files) from the
        // environment; the PKI made here is then unused.
        let pki = Pki::new(&["127.0.0.1"]);
        let query = format!(
            "ssl-mode=verify_identity&ssl-ca={}",
            pki.path("ca.pem").display()
        );
        let suite = conformance_support::setup(
            "mysql-tls",
            mariadb_tls_spec(&pki),
            |port| tls_support::url("127.0.0.1", port, &query),
            mode,
        )
        .await?;
        Ok(suite.keep(pki))
    })
}
