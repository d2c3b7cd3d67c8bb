//! sqlx errors to `LockError`.

use leasehold_core::LockError;

/// MySQL/MariaDB error numbers that mean the server cannot serve us right
/// now: too many connections (1040, 1203), server shutdown (1053), lost or
/// refused connections (2002, 2003, 2006, 2013), a killed connection or
/// query (1927 in MariaDB, 1317, 1159/1161 network timeouts).
fn unavailable_number(number: u16) -> bool {
    matches!(
        number,
        1040 | 1053 | 1159 | 1161 | 1203 | 1317 | 1927 | 2002 | 2003 | 2006 | 2013
    )
}

/// The server's error number (not the SQLSTATE) of a database error.
pub(crate) fn number(error: &sqlx::Error) -> Option<u16> {
    match error {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
            .map(|e| e.number()),
        _ => None,
    }
}

/// Maps a store error. Connection trouble is `Unavailable` (retryable);
/// deadlocks (1213) and lock wait timeouts (1205) are retryable `Backend`
/// errors; everything else is a final `Backend` error.
pub(crate) fn map(backend: &'static str, error: sqlx::Error) -> LockError {
    match &error {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => LockError::unavailable(backend, error),
        sqlx::Error::Database(_) => match number(&error) {
            Some(n) if unavailable_number(n) => LockError::unavailable(backend, error),
            Some(1205 | 1213) => LockError::Backend {
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
/// `GET_LOCK` lock it held is gone too): the socket failed, the protocol
/// broke, or the server ended the session (killed, shut down, idle past
/// `wait_timeout`).
pub(crate) fn session_ended(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(_) => number(error).is_some_and(unavailable_number),
        _ => false,
    }
}

/// Whether an error is a duplicate key (1062).
pub(crate) fn duplicate_key(error: &sqlx::Error) -> bool {
    number(error) == Some(1062)
}
