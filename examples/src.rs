//! Runnable programs: see `examples/examples/`.
