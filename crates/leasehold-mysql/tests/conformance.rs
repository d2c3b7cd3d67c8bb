//! The leasehold conformance suite against MariaDB (the stand-in
//! `leasehold-standin/mariadb:10.11`, Debian's `mariadb-server`), in both
//! modes: named first, then table (`LEASEHOLD_MYSQL_MODES=table` or
//! `=named` runs one). Each mode gets its own container (or the server named
//! by `LEASEHOLD_TEST_MARIADB_URL`, MySQL included; a `mode=` in it is
//! overridden per run).

mod conformance_support;

use std::process::ExitCode;

use leasehold_conformance::fixtures;

fn main() -> ExitCode {
    conformance_support::run_modes("named,table", |mode| {
        conformance_support::setup(
            "mysql",
            fixtures::mariadb_spec(),
            |port| {
                format!(
                    "mysql://root:{}@127.0.0.1:{port}/leasehold",
                    fixtures::MARIADB_PASSWORD
                )
            },
            mode,
        )
    })
}
