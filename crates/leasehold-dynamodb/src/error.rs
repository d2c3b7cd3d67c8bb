//! SDK errors → [`LockError`]: `map` keeps the SDK's message as the source;
//! the predicates name the service codes the algorithm branches on.

use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use leasehold_core::LockError;

/// The backend's name in errors, spans and metrics.
pub(crate) const NAME: &str = "dynamodb";

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

/// Whether an SDK error is `ResourceNotFoundException` (the table is missing).
pub(crate) fn is_missing_table<E: ProvideErrorMetadata>(err: &SdkError<E>) -> bool {
    err.code() == Some("ResourceNotFoundException")
}

/// Whether an SDK error is `ResourceInUseException` (the table exists).
pub(crate) fn is_table_in_use<E: ProvideErrorMetadata>(err: &SdkError<E>) -> bool {
    err.code() == Some("ResourceInUseException")
}

/// Whether an SDK error leaves the outcome of a write unknown: it timed out
/// or its answer could not be read, so the store may have applied it.
pub(crate) fn outcome_unknown<E>(err: &SdkError<E>) -> bool {
    matches!(err, SdkError::TimeoutError(_) | SdkError::ResponseError(_))
}

/// Maps any other SDK error: timeouts and failures to reach the endpoint are
/// `Unavailable`; throttling, transient service faults and 5xx answers are
/// retryable `Backend` errors; everything else is a final `Backend` error
/// carrying the service's message and, for a missing table, what to do.
pub(crate) fn map<E>(table: &str, err: SdkError<E>) -> LockError
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
            if is_missing_table(&err) {
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
