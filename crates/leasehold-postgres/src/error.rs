//! sqlx errors to `LockError`.

use leasehold_core::LockError;

/// SQLSTATEs that mean the server cannot serve us right now: connection
/// exceptions (class 08), shutdown and crash (57P01–57P03), insufficient
/// resources (class 53).
fn unavailable_code(code: &str) -> bool {
    code.starts_with("08") || code.starts_with("53") || matches!(code, "57P01" | "57P02" | "57P03")
}

/// Whether sqlx's error is a connection closed before the server answered
/// the TLS request: sqlx reads the one-byte answer into a zeroed buffer and,
/// at end of stream, reports the zero as a protocol error. A server that is
/// (re)starting behind a port proxy closes connections that way.
fn closed_before_tls_answer(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Protocol(message)
        if message.starts_with("unexpected response from SSLRequest: 0x00"))
}

/// Maps a store error. Connection trouble is `Unavailable` (retryable);
/// serialization failures, deadlocks and lock timeouts are retryable
/// `Backend` errors; a missing table or function is a `Config` error naming
/// the migration (the schema is older than the release, or was never made);
/// everything else is a final `Backend` error.
pub(crate) fn map(backend: &'static str, error: sqlx::Error) -> LockError {
    match &error {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => LockError::unavailable(backend, error),
        _ if closed_before_tls_answer(&error) => LockError::unavailable(backend, error),
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some(code) if unavailable_code(code) => LockError::unavailable(backend, error),
            // Undefined table or function: the schema is not this release's.
            Some("42P01" | "42883") => LockError::Config(format!(
                "{backend}: the store's schema lacks what this release uses ({db}); \
                 connect with migrate=true once, or apply migration_sql by hand"
            )),
            Some("40001" | "40P01" | "55P03") => LockError::Backend {
                backend,
                retryable: true,
                source: error.into(),
            },
            _ => LockError::backend(backend, error),
        },
        _ => LockError::backend(backend, error),
    }
}

/// Whether an error on a pinned connection means its session is gone (so a
/// session advisory lock it held is gone too): the socket failed, the
/// protocol broke, or the server ended the session (`pg_terminate_backend`
/// gives 57P01, `idle_session_timeout` 57P05).
pub(crate) fn session_ended(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(db) => db.code().as_deref().is_some_and(|code| {
            // 57P05: idle_session_timeout ended it (the holder did not extend
            // within its TTL); 25P03: idle in transaction too long.
            unavailable_code(code) || matches!(code, "57P05" | "25P03")
        }),
        _ => false,
    }
}
