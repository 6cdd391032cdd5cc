//! Mapping SDK errors to [`LockError`], with the right retryable flag.
//!
//! * throttling (`ThrottlingException`, `ProvisionedThroughputExceededException`,
//!   `RequestLimitExceeded`), server errors (`InternalServerError`, any 5xx),
//!   timeouts, and dispatch/IO failures are **retryable**;
//! * `ResourceNotFoundException` is a [`LockError::Config`] naming the table
//!   and how to create it;
//! * bad credentials or missing permissions are [`LockError::Config`] too;
//! * validation errors and everything else are **permanent**.
//!
//! A request whose reply never came (timeout, dropped connection) may still
//! have been applied. The caller gets an error, never "held"; a retry with the
//! same lease id then finds its own grant and keeps its token.

use std::error::Error as StdError;
use std::fmt;

use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use lockstore_api::{LockError, UnexpectedReply};

use crate::BACKEND;

/// What an SDK error means for the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Retryable,
    Permanent,
    MissingTable,
    Credentials,
    KeySchema,
}

/// Codes DynamoDB answers when a retry later may succeed.
const RETRYABLE_CODES: &[&str] = &[
    "ThrottlingException",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "InternalServerError",
    "ServiceUnavailable",
    "TransactionConflictException",
    "LimitExceededException",
    "RequestTimeout",
    "RequestTimeoutException",
    "ExpiredTokenException",
];

/// Codes that mean the credentials or their permissions are wrong.
const CREDENTIAL_CODES: &[&str] = &[
    "AccessDeniedException",
    "UnrecognizedClientException",
    "InvalidSignatureException",
    "MissingAuthenticationTokenException",
    "IncompleteSignatureException",
];

fn classify_service(code: Option<&str>, message: Option<&str>, status: u16) -> Class {
    match code {
        Some("ResourceNotFoundException") => Class::MissingTable,
        Some(c) if RETRYABLE_CODES.contains(&c) => Class::Retryable,
        Some(c) if CREDENTIAL_CODES.contains(&c) => Class::Credentials,
        Some("ValidationException")
            if message.is_some_and(|m| m.contains("key element does not match the schema")) =>
        {
            Class::KeySchema
        }
        _ if status >= 500 || status == 429 => Class::Retryable,
        _ => Class::Permanent,
    }
}

/// Maps an SDK error from operation `what` (e.g. `"acquire jobs/etl"`) on
/// `table` with partition key `partition_key`.
pub(crate) fn map_sdk_error<E>(
    error: SdkError<E, HttpResponse>,
    what: &str,
    table: &str,
    partition_key: &str,
) -> LockError
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
{
    let class = match &error {
        SdkError::ServiceError(service) => classify_service(
            service.err().code(),
            service.err().message(),
            service.raw().status().as_u16(),
        ),
        SdkError::TimeoutError(_) | SdkError::ResponseError(_) => Class::Retryable,
        SdkError::DispatchFailure(failure) => {
            if failure.is_user() {
                Class::Permanent
            } else {
                Class::Retryable
            }
        }
        // Request construction (e.g. no credentials could be resolved) or a
        // future SDK variant: retrying unchanged will not help.
        _ => Class::Permanent,
    };
    let detail = describe(&error);
    match class {
        Class::Retryable => LockError::retryable(BACKEND, format!("{what}: {detail}"), error),
        Class::Permanent => LockError::permanent(BACKEND, format!("{what}: {detail}"), error),
        Class::MissingTable => LockError::Config {
            backend: BACKEND,
            message: missing_table_message(table, partition_key),
            source: Some(Box::new(error)),
        },
        Class::Credentials => LockError::Config {
            backend: BACKEND,
            message: format!(
                "{what}: DynamoDB refused the credentials or their permissions ({detail}); \
                 check the AWS profile/role and grant dynamodb:GetItem and dynamodb:UpdateItem \
                 on table {table:?}"
            ),
            source: Some(Box::new(error)),
        },
        Class::KeySchema => LockError::Config {
            backend: BACKEND,
            message: format!(
                "{what}: table {table:?} does not have a string partition key named \
                 {partition_key:?} ({detail}); set DynamoDbStore::builder(..).partition_key(..) \
                 to the table's key attribute, or run check_table() for details"
            ),
            source: Some(Box::new(error)),
        },
    }
}

/// The words for a table that does not exist.
pub(crate) fn missing_table_message(table: &str, partition_key: &str) -> String {
    format!(
        "DynamoDB table {table:?} does not exist (in this account and region). Create it with \
         DynamoDbStore::create_table(), or: aws dynamodb create-table --table-name {table} \
         --attribute-definitions AttributeName={partition_key},AttributeType=S \
         --key-schema AttributeName={partition_key},KeyType=HASH --billing-mode PAY_PER_REQUEST"
    )
}

/// The SDK's `Display` for a service error is only "service error"; show the
/// code and message DynamoDB sent.
fn describe<E>(error: &SdkError<E, HttpResponse>) -> String
where
    E: ProvideErrorMetadata + StdError + 'static,
{
    match error {
        SdkError::ServiceError(service) => format!(
            "{} (HTTP {}): {}",
            service.err().code().unwrap_or("unknown error code"),
            service.raw().status().as_u16(),
            service.err().message().unwrap_or("no message")
        ),
        other => match other.source() {
            Some(source) => format!("{other}: {source}"),
            None => other.to_string(),
        },
    }
}

/// A reply that parsed but does not make sense (a fence that is not a
/// number): permanent, since the item is what it is.
pub(crate) fn bad_item(what: &str, problem: impl fmt::Display) -> LockError {
    LockError::permanent(
        BACKEND,
        format!("{what}: unexpected item in the lock table"),
        UnexpectedReply(problem.to_string()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_and_server_errors_are_retryable() {
        for code in [
            "ThrottlingException",
            "ProvisionedThroughputExceededException",
            "RequestLimitExceeded",
        ] {
            assert_eq!(
                classify_service(Some(code), None, 400),
                Class::Retryable,
                "{code}"
            );
        }
        assert_eq!(classify_service(None, None, 503), Class::Retryable);
        assert_eq!(
            classify_service(Some("Whatever"), None, 500),
            Class::Retryable
        );
    }

    #[test]
    fn missing_table_and_validation_are_not_retryable() {
        assert_eq!(
            classify_service(Some("ResourceNotFoundException"), None, 400),
            Class::MissingTable
        );
        assert_eq!(
            classify_service(Some("ValidationException"), Some("bad expression"), 400),
            Class::Permanent
        );
        assert_eq!(
            classify_service(
                Some("ValidationException"),
                Some("The provided key element does not match the schema"),
                400
            ),
            Class::KeySchema
        );
        assert_eq!(
            classify_service(Some("AccessDeniedException"), None, 400),
            Class::Credentials
        );
    }

    #[test]
    fn missing_table_message_names_table_and_fix() {
        let m = missing_table_message("Locks", "YourKey");
        assert!(m.contains("\"Locks\"") && m.contains("create_table") && m.contains("YourKey"));
    }
}
