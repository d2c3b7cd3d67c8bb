//! etcd client errors as [`LockError`]s, keeping the source.

use leasehold_core::LockError;

use crate::NAME;

/// Maps an etcd client error: transport trouble and etcd's transient answers
/// are `Unavailable`, the rest `Backend`; the client's error stays the source.
pub(crate) fn map(error: etcd_client::Error) -> LockError {
    use etcd_client::Error as E;
    match &error {
        E::TransportError(_) | E::IoError(_) | E::EndpointError(_) => {
            LockError::unavailable(NAME, error)
        }
        E::GRpcStatus(status) if transient(status.code()) => LockError::unavailable(NAME, error),
        E::WatchError(_) | E::LeaseKeepAliveError(_) => LockError::unavailable(NAME, error),
        _ => LockError::backend(NAME, error),
    }
}

/// gRPC codes worth retrying: Cancelled (1), Unknown (2), DeadlineExceeded
/// (4), ResourceExhausted (8), Aborted (10), Unavailable (14). etcd answers
/// "no leader" and "leader changed" with Unavailable.
fn transient<C: Into<i32>>(code: C) -> bool {
    matches!(code.into(), 1 | 2 | 4 | 8 | 10 | 14)
}

/// Whether etcd refused a request because the lease it names is gone.
pub(crate) fn lease_not_found(error: &etcd_client::Error) -> bool {
    matches!(error, etcd_client::Error::GRpcStatus(status) if status.message().contains("lease not found"))
}
