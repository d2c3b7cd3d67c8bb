//! The conformance suite against Redlock over 3 `redis:7.0` containers (or
//! `LEASEHOLD_TEST_REDLOCK_URL`).

mod support;

fn main() -> std::process::ExitCode {
    support::conformance_main("redlock-3", 3)
}
