//! The conformance suite against Redis with AOF and `appendfsync always`
//! (fencing durable across a restart).

mod conformance_support;

fn main() -> std::process::ExitCode {
    conformance_support::main("redis-aof", true)
}
