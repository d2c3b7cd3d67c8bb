//! SDK errors → [`LockError`].

use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use leasehold_core::LockError;

use crate::NAME;

/// Service error codes worth trying again: throttling and transient faults.
const RETRYABLE_CODES: &[&str] = &[
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "RequestLimitExceeded",
    "InternalServerError",
    "ServiceUnavailable",
    "TransactionConflictException",
    "ReplicatedWriteConflictException",
    "LimitExceededException",
];

/// Whether an SDK error is DynamoDB's `ConditionalCheckFailedException`.
pub(crate) fn is_condition_failed<E: ProvideErrorMetadata>(err: &SdkError<E>) -> bool {
    err.code() == Some("ConditionalCheckFailedException")
}

/// Whether an SDK error is a `ValidationException` (for example an update
/// expression that met an attribute of the wrong type).
pub(crate) fn is_validation<E: ProvideErrorMetadata>(err: &SdkError<E>) -> bool {
    err.code() == Some("ValidationException")
}

/// Maps any other SDK error: timeouts and failures to reach the endpoint are
/// `Unavailable`; throttling, transient service faults and 5xx answers are
/// retryable `Backend` errors; everything else is a final `Backend` error
/// carrying the service's message and, for a missing table, what to do.
pub(crate) fn map_sdk<E>(table: &str, err: SdkError<E>) -> LockError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let detail = DisplayErrorContext(&err).to_string();
    match &err {
        SdkError::TimeoutError(_) => {
            LockError::unavailable(NAME, format!("table {table}: timed out: {detail}"))
        }
        SdkError::DispatchFailure(failure) => {
            if failure.is_user() {
                LockError::backend(
                    NAME,
                    format!("table {table}: request could not be sent: {detail}"),
                )
            } else {
                LockError::unavailable(
                    NAME,
                    format!("table {table}: could not reach the endpoint: {detail}"),
                )
            }
        }
        SdkError::ResponseError(_) => LockError::Backend {
            backend: NAME,
            retryable: true,
            source: format!("table {table}: unreadable response: {detail}").into(),
        },
        SdkError::ServiceError(service) => {
            let code = err.code().unwrap_or("");
            let status = service.raw().status().as_u16();
            if code == "ResourceNotFoundException" {
                return LockError::backend(
                    NAME,
                    format!(
                        "table {table} does not exist (or is not ACTIVE): create it with \
                         DynamoDbBackend::create_table or `?create_table=true`: {detail}"
                    ),
                );
            }
            let retryable = RETRYABLE_CODES.contains(&code) || status >= 500;
            LockError::Backend {
                backend: NAME,
                retryable,
                source: format!("table {table}: {detail}").into(),
            }
        }
        _ => LockError::backend(NAME, format!("table {table}: {detail}")),
    }
}
