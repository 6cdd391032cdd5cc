//! The one error type of lockstore.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use crate::{Holder, LockKey};

/// A boxed error from a backend's client library, kept as the `source`.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Everything that can go wrong when using a lock.
///
/// Input errors (`InvalidKey`, `InvalidTtl`, `InvalidLeaseId`, `InvalidOwner`)
/// are raised before any request is sent. `LeaseLost` and `Timeout` are the
/// normal ways a lock is *not* had. `Backend` and `Config` come from the
/// backend; [`LockError::is_retryable`] says whether trying again may help.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// The key is empty, too long or contains NUL.
    #[error("invalid lock key {key:?}: {reason}")]
    InvalidKey {
        /// A printable preview of the rejected key.
        key: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// The TTL is zero, too large, or otherwise unusable.
    #[error("invalid TTL {requested:?}: {reason}")]
    InvalidTtl {
        /// The rejected duration.
        requested: Duration,
        /// Why it was rejected.
        reason: String,
    },

    /// A lease id could not be parsed (it must be 32 hexadecimal digits).
    #[error("invalid lease id {input:?}: expected 32 hexadecimal digits")]
    InvalidLeaseId {
        /// A printable preview of the rejected input.
        input: String,
    },

    /// An owner label is empty, too long or contains NUL.
    #[error("invalid owner label {label:?}: {reason}")]
    InvalidOwner {
        /// A printable preview of the rejected label.
        label: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// The lease is no longer held: it expired, was taken over, or was
    /// released. Whatever was being protected must stop.
    #[error("lease on {key} (fence {fence}) is lost: it expired or was taken over")]
    LeaseLost {
        /// The key of the lost lease.
        key: LockKey,
        /// The fencing token of the lost lease.
        fence: crate::FencingToken,
    },

    /// The lock stayed held by someone else for as long as the caller was
    /// willing to wait (zero for a non-waiting attempt).
    ///
    /// An acquire that never saw a holder and gave up after backend errors
    /// fails with the last backend error instead, never with a `Timeout`.
    #[error("lock {key} is held{}; gave up after {waited:?}{}", holder_suffix(.holder), error_suffix(.last_error))]
    Timeout {
        /// The key that could not be acquired.
        key: LockKey,
        /// How long the caller waited.
        waited: Duration,
        /// The last holder any attempt saw, where the backend reported one.
        holder: Option<Holder>,
        /// The error of the last attempt, when it failed after an earlier
        /// one had seen the key held.
        #[source]
        last_error: Option<Box<LockError>>,
    },

    /// The backend failed: connection refused, timeout, throttling, an
    /// unexpected reply. The backend's own error is kept as `source`.
    #[error("{backend} backend error ({}): {message}", if *.retryable { "retryable" } else { "not retryable" })]
    Backend {
        /// Which backend (`"redis"`, `"postgres"`, …).
        backend: &'static str,
        /// Whether the same request may succeed if tried again.
        retryable: bool,
        /// What was being done, in words.
        message: String,
        /// The client library's error.
        #[source]
        source: Option<BoxError>,
    },

    /// An argument other than a key, TTL, lease id or owner is unusable: a
    /// request hash, an attempt limit, a query limit, a status name.
    #[error("invalid {name}: {reason}")]
    InvalidArgument {
        /// What was rejected.
        name: &'static str,
        /// Why, and what to give instead.
        reason: String,
    },

    /// A run's key was begun again for a different request: the same
    /// idempotency key reused for another payload. Nothing was run.
    #[error(
        "run {key} was recorded for request hash {stored:?}, not {given:?}: use a new key for a different request"
    )]
    RequestMismatch {
        /// The run's key.
        key: LockKey,
        /// The hash stored with the record.
        stored: String,
        /// The hash of this call.
        given: String,
    },

    /// A run's result is larger than a record may hold.
    #[error(
        "run result of {size} bytes is over the {limit}-byte limit: store the output elsewhere and record a pointer to it"
    )]
    ResultTooLarge {
        /// The result's size in bytes.
        size: usize,
        /// The largest result accepted.
        limit: usize,
    },

    /// A semaphore's key was asked for with a different limit than the one
    /// its live permits were granted under. Nothing was granted; the key
    /// takes a new limit once none of its permits is live.
    #[error(
        "semaphore {key} has live permits under a limit of {stored}, not {requested}: every client of a key must use one limit"
    )]
    LimitMismatch {
        /// The semaphore's key.
        key: LockKey,
        /// The limit of this request.
        requested: u32,
        /// The limit the key's live permits hold under.
        stored: u32,
    },

    /// The backend is not set up right: a malformed URL, a missing table, a
    /// wrong key schema. Retrying will not help; the message says what to do.
    #[error("{backend} configuration error: {message}")]
    Config {
        /// Which backend.
        backend: &'static str,
        /// What is wrong and how to fix it.
        message: String,
        /// The underlying error, if any.
        #[source]
        source: Option<BoxError>,
    },
}

fn holder_suffix(holder: &Option<Holder>) -> String {
    match holder {
        Some(h) => format!(
            " by {} (fence {}, expires in {:?})",
            h.owner(),
            h.fence(),
            h.expires_in()
        ),
        None => String::new(),
    }
}

fn error_suffix(error: &Option<Box<LockError>>) -> String {
    match error {
        Some(err) => format!("; the last attempt failed: {err}"),
        None => String::new(),
    }
}

impl LockError {
    /// A backend error that may succeed if retried (timeouts, connection
    /// loss, throttling, a server that is loading or read-only).
    pub fn retryable(
        backend: &'static str,
        message: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Self {
        Self::Backend {
            backend,
            retryable: true,
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// A backend error that will fail again if retried unchanged.
    pub fn permanent(
        backend: &'static str,
        message: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Self {
        Self::Backend {
            backend,
            retryable: false,
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// A configuration error with a message that says what to do.
    pub fn config(backend: &'static str, message: impl Into<String>) -> Self {
        Self::Config {
            backend,
            message: message.into(),
            source: None,
        }
    }

    /// Whether retrying the same call may succeed.
    ///
    /// `Timeout` is retryable (the holder may be gone later); input errors,
    /// `LeaseLost` and `Config` are not.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Backend { retryable, .. } => *retryable,
            Self::Timeout { .. } => true,
            _ => false,
        }
    }
}

/// A plain message as an error source, for replies a backend could not parse.
#[derive(Debug)]
pub struct UnexpectedReply(pub String);

impl fmt::Display for UnexpectedReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl StdError for UnexpectedReply {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_error_keeps_source_and_flag() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let err = LockError::retryable("redis", "acquire etl", io);
        assert!(err.is_retryable());
        assert!(err.source().unwrap().to_string().contains("refused"));
        assert!(err.to_string().contains("redis backend error (retryable)"));
        assert!(!LockError::config("redis", "bad url").is_retryable());
    }
}
