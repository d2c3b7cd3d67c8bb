//! The conformance suite against the in-memory backend wrapped in layers
//! (timeouts and tracing): layers must keep every guarantee of what they wrap.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use leasehold_core::{Layer, LockBackend, MemoryBackend, TimeoutLayer, TracingLayer};

fn main() -> std::process::ExitCode {
    static SHARED: OnceLock<Arc<dyn LockBackend>> = OnceLock::new();
    leasehold_conformance::run("memory-layered", || async {
        Ok(SHARED
            .get_or_init(|| {
                let backend: Arc<dyn LockBackend> = Arc::new(MemoryBackend::new());
                TracingLayer.layer(TimeoutLayer::new(Duration::from_secs(2)).layer(backend))
            })
            .clone())
    })
}
