//! What the ledger stores per key: a [`RunRecord`] and its parts.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::{FencingToken, Holder, LockError, LockKey};

/// The largest result a run may store, in bytes (64 KiB).
///
/// Results are meant to be small: an id, a row count, a pointer to where the
/// real output went. Every backend can hold this much in one record
/// (DynamoDB's item limit is 400 KB).
pub const MAX_RESULT_BYTES: usize = 64 * 1024;

/// The largest error message kept per failed attempt, in bytes. Longer
/// messages are cut at a character boundary and marked with `…`.
pub const MAX_ERROR_BYTES: usize = 2 * 1024;

/// How many failed attempts a record remembers: the errors of attempts
/// `n − 4 ..= n`. Stored in a ring of slots indexed by `attempt % 5`, so a
/// backend writes one slot per failure and never reads the history first.
pub const ERROR_HISTORY: u32 = 5;

/// The most attempts a key may be given ([`BeginRequest::max_attempts`]).
///
/// [`BeginRequest::max_attempts`]: crate::ledger::BeginRequest::max_attempts
pub const MAX_ATTEMPTS: u32 = 1000;

/// Where a key's work stands.
///
/// ```text
///            enqueue            begin                succeed
///  (none) ─────────▶ pending ─────────▶ running ─────────────▶ succeeded
///     │                 ▲                │  ▲ │ fail (retryable,
///     └──── begin ──────┼───────────────▶┘  │ │  attempts left)
///                       │   retry     ┌─────┘ ▼
///                       ├──────────── failed ◀┘
///                       │   retry       fail (final, or no attempts left)
///                       └──────────── ignored ◀───────── running
///
///  (`retry` also requeues a stuck run: running with an expired lease.)
/// ```
///
/// A `running` record whose lease expired (its worker crashed or was
/// paused) is taken over by the next `begin` within one TTL.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Queued by [`enqueue`](crate::ledger::LedgerStore::enqueue) or put back by
    /// [`retry`](crate::ledger::LedgerStore::retry); not started.
    Pending,
    /// A run holds the key's lease (or held it, if the lease expired).
    Running,
    /// A run finished successfully; its result is stored. Final.
    Succeeded,
    /// The last run failed and may be tried again.
    Failed,
    /// A run failed for good (a final failure, or the attempt limit), and
    /// the key is left alone until an operator retries it. Final.
    Ignored,
}

impl RunStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [RunStatus; 5] = [
        RunStatus::Pending,
        RunStatus::Running,
        RunStatus::Succeeded,
        RunStatus::Failed,
        RunStatus::Ignored,
    ];

    /// The lowercase name, as stored by every backend.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Pending => "pending",
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Ignored => "ignored",
        }
    }

    /// `succeeded` and `ignored`: nothing will happen to the key unless an
    /// operator retries it. Only finished records are purged.
    pub fn is_finished(self) -> bool {
        matches!(self, RunStatus::Succeeded | RunStatus::Ignored)
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunStatus {
    type Err = LockError;

    fn from_str(s: &str) -> Result<Self, LockError> {
        RunStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| LockError::InvalidArgument {
                name: "status",
                reason: format!(
                    "{s:?} is not a run status; use one of pending, running, succeeded, failed, ignored"
                ),
            })
    }
}

/// A hash (or any fingerprint) of the request a key's work was started for.
///
/// A key begun again with a *different* hash is refused with
/// [`LockError::RequestMismatch`]: the same idempotency key reused for
/// another payload is a caller bug that must not replay the wrong result.
/// 1 to 256 bytes of printable text; the ledger never interprets it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RequestHash(String);

impl RequestHash {
    /// The longest hash accepted, in bytes.
    pub const MAX_LEN: usize = 256;

    /// Validates `hash`: 1 to 256 bytes, no control characters.
    ///
    /// # Errors
    /// [`LockError::InvalidArgument`] saying what is wrong.
    pub fn new(hash: impl Into<String>) -> Result<Self, LockError> {
        let hash = hash.into();
        let reason = if hash.is_empty() {
            "is empty"
        } else if hash.len() > Self::MAX_LEN {
            "is longer than 256 bytes"
        } else if hash.chars().any(char::is_control) {
            "contains control characters"
        } else {
            return Ok(Self(hash));
        };
        Err(LockError::InvalidArgument {
            name: "request hash",
            reason: format!("{:?} {reason}", preview(&hash)),
        })
    }

    /// The hash as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RequestHash {
    type Error = LockError;

    fn try_from(value: String) -> Result<Self, LockError> {
        Self::new(value)
    }
}

impl From<RequestHash> for String {
    fn from(value: RequestHash) -> Self {
        value.0
    }
}

impl fmt::Display for RequestHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The error of one failed attempt, as kept in a record's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunError {
    /// Which attempt failed (1 for the first run).
    pub attempt: u32,
    /// What went wrong, at most [`MAX_ERROR_BYTES`].
    pub message: String,
    /// Whether the worker said a later attempt may succeed.
    pub retryable: bool,
}

impl RunError {
    /// An error for `attempt`, with `message` cut to [`MAX_ERROR_BYTES`].
    pub fn new(attempt: u32, message: impl Into<String>, retryable: bool) -> Self {
        Self {
            attempt,
            message: truncate(message.into(), MAX_ERROR_BYTES),
            retryable,
        }
    }

    /// The slot of the history ring this error goes to: `attempt % 5`.
    pub fn slot(&self) -> u32 {
        self.attempt % ERROR_HISTORY
    }

    /// The error as a store keeps it: the message cut to
    /// [`MAX_ERROR_BYTES`]. The fields are public, so an error built without
    /// [`RunError::new`] can hold a longer message; every store cuts it here,
    /// at its own boundary, rather than trusting the caller.
    pub fn stored(&self) -> Self {
        Self {
            attempt: self.attempt,
            message: truncate(self.message.clone(), MAX_ERROR_BYTES),
            retryable: self.retryable,
        }
    }

    /// The JSON text backends store (one slot per failed attempt), with the
    /// message cut as [`RunError::stored`] does.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.stored()).expect("a RunError always serialises")
    }

    /// Reads a stored slot back.
    ///
    /// # Errors
    /// A backend error naming the backend when the text is not a stored
    /// `RunError` (someone edited the record by hand).
    pub fn from_json(backend: &'static str, text: &str) -> Result<Self, LockError> {
        serde_json::from_str(text).map_err(|err| {
            LockError::permanent(backend, "a stored run error is not valid JSON", err)
        })
    }

    /// Sorts stored slots into a history, oldest attempt first, keeping the
    /// last [`ERROR_HISTORY`]. Attempts only ever count up (a `retry` does
    /// not reset them), so a slot always holds the newest error of its ring
    /// position.
    pub fn history(mut errors: Vec<RunError>) -> Vec<RunError> {
        errors.sort_by_key(|e| e.attempt);
        errors.dedup_by_key(|e| e.attempt);
        let keep = ERROR_HISTORY as usize;
        if errors.len() > keep {
            errors.drain(..errors.len() - keep);
        }
        errors
    }
}

/// A key's run record: status, attempts, the current or last run's lease,
/// result, recent errors and times.
///
/// Times are the backend's clock where it has one (PostgreSQL, Redis,
/// SQLite's host), the writing client's for DynamoDB, and tokio's clock
/// (mapped onto the wall clock at store creation) for the memory store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunRecord {
    /// The key.
    pub key: LockKey,
    /// Where the work stands.
    pub status: RunStatus,
    /// Runs started so far. Never reset: a `retry` grants one more run.
    pub attempts: u32,
    /// The attempt limit the last `begin` asked for.
    pub max_attempts: u32,
    /// The fencing token of the current or last run; `None` before the
    /// first run.
    pub fence: Option<FencingToken>,
    /// The owner label of the current or last run.
    pub owner: Option<String>,
    /// Time left on the running lease when the backend answered: `Some`
    /// only while `status` is `Running` and the lease is live.
    pub lease_expires_in: Option<Duration>,
    /// The stored result of a successful run.
    pub result: Option<Vec<u8>>,
    /// The errors of the last failed attempts, oldest first (at most
    /// [`ERROR_HISTORY`]).
    pub errors: Vec<RunError>,
    /// The request hash given when the record was created or first run.
    pub request_hash: Option<RequestHash>,
    /// When the record was created.
    pub created_at: SystemTime,
    /// When the record last changed (the sort order of queries).
    pub updated_at: SystemTime,
    /// When the last run finished (succeeded, failed or was ignored).
    pub finished_at: Option<SystemTime>,
}

impl RunRecord {
    /// A running record whose lease expired: its worker crashed, hung or
    /// was paused. The next `begin` takes it over (attempts left permitting).
    pub fn is_stuck(&self) -> bool {
        self.status == RunStatus::Running && self.lease_expires_in.is_none()
    }

    /// The live holder of a running record, as a lock would report it.
    pub fn holder(&self) -> Option<Holder> {
        match (self.status, self.fence, self.lease_expires_in) {
            (RunStatus::Running, Some(fence), Some(left)) => Some(Holder::new(
                self.owner.clone().unwrap_or_default(),
                fence,
                left,
            )),
            _ => None,
        }
    }

    /// The error of the last failed attempt, if any.
    pub fn last_error(&self) -> Option<&RunError> {
        self.errors.last()
    }

    /// The stored result decoded from JSON (as written by
    /// [`RunGuard::succeed_json`](crate::ledger::RunGuard::succeed_json)).
    ///
    /// # Errors
    /// [`LockError::InvalidArgument`] when there is no result or it does not
    /// decode as `T`.
    pub fn result_json<T: serde::de::DeserializeOwned>(&self) -> Result<T, LockError> {
        let bytes = self
            .result
            .as_deref()
            .ok_or_else(|| LockError::InvalidArgument {
                name: "stored result",
                reason: format!("the record of {} holds no result", self.key),
            })?;
        serde_json::from_slice(bytes).map_err(|err| LockError::InvalidArgument {
            name: "stored result",
            reason: format!(
                "the stored result of {} does not decode as {}: {err}",
                self.key,
                std::any::type_name::<T>()
            ),
        })
    }
}

/// Milliseconds since the Unix epoch as a `SystemTime`, for backends that
/// store times as integers.
pub fn time_from_unix_millis(millis: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(millis)
}

/// A `SystemTime` as milliseconds since the Unix epoch (0 before it).
pub fn unix_millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn truncate(mut text: String, limit: usize) -> String {
    if text.len() <= limit {
        return text;
    }
    let mut cut = limit - '…'.len_utf8();
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
    text.push('…');
    text
}

fn preview(text: &str) -> String {
    text.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_through_text() {
        for status in RunStatus::ALL {
            assert_eq!(status.as_str().parse::<RunStatus>().unwrap(), status);
        }
        let err = "done".parse::<RunStatus>().unwrap_err();
        assert!(err.to_string().contains("pending, running"), "{err}");
    }

    #[test]
    fn request_hashes_are_validated() {
        assert!(RequestHash::new("sha256:abc").is_ok());
        assert!(RequestHash::new("").is_err());
        assert!(RequestHash::new("a".repeat(257)).is_err());
        assert!(RequestHash::new("a\nb").is_err());
    }

    #[test]
    fn long_error_messages_are_cut_at_a_char_boundary() {
        let error = RunError::new(1, "é".repeat(MAX_ERROR_BYTES), true);
        assert!(error.message.len() <= MAX_ERROR_BYTES);
        assert!(error.message.ends_with('…'));
        let back = RunError::from_json("test", &error.to_json()).unwrap();
        assert_eq!(back, error);
    }

    #[test]
    fn stores_cut_a_long_message_set_through_the_public_field() {
        let mut error = RunError::new(3, "", false);
        error.message = "x".repeat(MAX_ERROR_BYTES * 4);
        let stored = RunError::from_json("test", &error.to_json()).unwrap();
        assert!(
            stored.message.len() <= MAX_ERROR_BYTES,
            "{}",
            stored.message.len()
        );
        assert!(stored.message.ends_with('…'));
        assert_eq!(stored, error.stored());
        assert_eq!((stored.attempt, stored.retryable), (3, false));
    }

    #[test]
    fn history_keeps_the_last_five_attempts_in_order() {
        let errors = (1..=7)
            .rev()
            .map(|a| RunError::new(a, format!("e{a}"), true))
            .collect();
        let history = RunError::history(errors);
        let attempts: Vec<u32> = history.iter().map(|e| e.attempt).collect();
        assert_eq!(attempts, vec![3, 4, 5, 6, 7]);
    }
}
