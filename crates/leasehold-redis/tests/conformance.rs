//! The conformance suite against Redis without persistence (fencing not
//! durable across a restart).

mod conformance_support;

fn main() -> std::process::ExitCode {
    conformance_support::main("redis", false)
}
