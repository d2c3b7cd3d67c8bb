//! How the Redis client's errors become [`LockError`]s.

use leasehold_core::LockError;
use redis::{ErrorKind, RedisError, ServerErrorKind};

/// Wrong credentials, a bad client configuration or a missing ACL
/// permission: errors that will not heal by retrying.
pub(crate) fn refuses_credentials(error: &RedisError) -> bool {
    matches!(
        error.kind(),
        ErrorKind::AuthenticationFailed
            | ErrorKind::InvalidClientConfig
            | ErrorKind::Server(ServerErrorKind::NoPerm)
    )
}

/// Maps a client error, keeping it as the source: bad credentials or a
/// denied command is a final [`LockError::Backend`]; no connection, I/O or a
/// response timeout is [`LockError::Unavailable`]; a transient server state
/// (loading, busy script, failover, cluster resharding) is a retryable
/// [`LockError::Backend`]; anything else a final one. `backend` is the name
/// the error carries (`redis`, or `redlock` for its servers).
pub fn map(backend: &'static str, error: RedisError) -> LockError {
    if refuses_credentials(&error) {
        return LockError::backend(backend, error);
    }
    if error.is_io_error()
        || error.is_timeout()
        || error.is_connection_refusal()
        || error.is_connection_dropped()
        || error.is_unrecoverable_error()
    {
        return LockError::unavailable(backend, error);
    }
    let transient = matches!(
        error.kind(),
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ReadOnly
        )
    ) || error.code() == Some("BUSY");
    LockError::Backend {
        backend,
        retryable: transient,
        source: Box::new(error),
    }
}
