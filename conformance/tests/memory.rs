//! The conformance suite against the in-memory backend.

use std::sync::{Arc, OnceLock};

use leasehold_core::{LockBackend, MemoryBackend};

fn main() -> std::process::ExitCode {
    // Every "client" of the memory store shares one process-wide backend.
    static SHARED: OnceLock<Arc<MemoryBackend>> = OnceLock::new();
    leasehold_conformance::run("memory", || async {
        Ok(SHARED
            .get_or_init(|| Arc::new(MemoryBackend::new()))
            .clone() as Arc<dyn LockBackend>)
    })
}
