//! ZooKeeper client errors as [`LockError`]s, keeping the source.

use leasehold_core::LockError;
use zookeeper_client::Error as ZkError;

use crate::NAME;

/// Maps a ZooKeeper error: connection trouble is `Unavailable` (the client's
/// own connection-level failures come as `Custom` errors, e.g. "no response
/// from connection"), throttling is a retryable backend error, the rest is
/// final.
pub(crate) fn map(error: ZkError) -> LockError {
    match error {
        ZkError::ConnectionLoss | ZkError::Timeout | ZkError::NoHosts | ZkError::SessionMoved => {
            LockError::unavailable(NAME, error)
        }
        ZkError::SessionExpired | ZkError::ClientClosed | ZkError::Custom(_) => {
            LockError::unavailable(NAME, error)
        }
        ZkError::Throttled => LockError::Backend {
            backend: NAME,
            retryable: true,
            source: Box::new(error),
        },
        ZkError::NoAuth => LockError::backend(
            NAME,
            "ZooKeeper refused the change (NoAuth): the lock nodes' ACL admits only the \
             identity that created them; connect with the same digest user and password",
        ),
        ZkError::AuthFailed => {
            LockError::Config("ZooKeeper refused the session's credentials (AuthFailed)".into())
        }
        other => LockError::backend(NAME, other),
    }
}
