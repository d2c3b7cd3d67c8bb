//! I/O errors to `LockError`.

use std::io;
use std::path::Path;

use leasehold_core::LockError;

/// An I/O failure on a lock file, naming what was done to which file.
/// Missing permissions, a missing or read-only directory and a full disk
/// are final `Backend` errors (retrying does not help); an interrupted call
/// or a transient shortage of file descriptors is a retryable one.
pub(crate) fn io_error(
    backend: &'static str,
    what: &str,
    path: &Path,
    error: io::Error,
) -> LockError {
    let retryable = matches!(
        error.kind(),
        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    ) || error.raw_os_error() == Some(rustix::io::Errno::MFILE.raw_os_error())
        || error.raw_os_error() == Some(rustix::io::Errno::NFILE.raw_os_error());
    LockError::Backend {
        backend,
        retryable,
        source: format!("{what} {}: {error}", path.display()).into(),
    }
}

/// The store (the directory) did not serve the call in time.
pub(crate) fn unavailable(backend: &'static str, why: String) -> LockError {
    LockError::unavailable(backend, why)
}

/// A blocking file task that panicked or was cancelled.
pub(crate) fn task_failed(backend: &'static str, error: tokio::task::JoinError) -> LockError {
    LockError::backend(
        backend,
        format!("the file operation's task failed: {error}"),
    )
}
