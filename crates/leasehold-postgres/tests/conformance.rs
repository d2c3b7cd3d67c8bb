//! The leasehold conformance suite against Postgres, in both modes: advisory
//! first, then table (`LEASEHOLD_PG_MODES=table` or `=advisory` runs one).
//! Each mode gets its own `postgres:15` container (or the server named by
//! `LEASEHOLD_TEST_POSTGRES_URL`; a `mode=` in it is overridden per run).

mod conformance_support;

use std::process::ExitCode;

use leasehold_conformance::fixtures;

fn main() -> ExitCode {
    conformance_support::run_modes("advisory,table", |mode| {
        conformance_support::setup(
            "postgres",
            fixtures::postgres_spec(),
            |port| {
                format!(
                    "postgres://postgres:{}@127.0.0.1:{port}/postgres",
                    fixtures::POSTGRES_PASSWORD
                )
            },
            mode,
        )
    })
}
