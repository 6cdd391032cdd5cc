//! An idempotent consumer for at-least-once queues, built on the ledger.
//!
//! SQS, Kinesis, Pub/Sub and most brokers deliver a message *at least* once:
//! a batch is redelivered whole when one message in it fails, and an
//! asynchronous Lambda invocation may run twice. [`IdempotentConsumer`]
//! runs each message's work at most once successfully, by the message's key
//! (its id, or a key derived from the payload), and reports per message what
//! happened, so the caller can answer a *partial* batch failure — only the
//! messages that must come back — instead of failing the whole batch.
//!
//! | what happened to a message | [`Processed`] | in `batch_item_failures()` |
//! |---|---|---|
//! | ran now and succeeded | `Ran(value)` | no |
//! | a duplicate of a message that succeeded | `Replayed(value)` (the stored value) | no |
//! | a duplicate arriving while the first copy runs | `InProgress` (or it waits, if asked) | yes: it comes back later and is replayed or run |
//! | the work failed, another attempt will run | `Failed` | yes |
//! | the work failed for good, or ran out of attempts | `Ignored` | no: redelivering cannot help (route it to a dead-letter queue yourself) |
//! | the key was seen with a different payload hash | `Rejected` | no |
//! | the ledger could not be reached | `Error` | yes, if the error is retryable |
//!
//! [`Processed`]: Processed

use std::future::Future;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::client::{Ledger, RunFailure, RunOnce, RunOptions};
use super::record::{RequestHash, RunRecord};
use super::store::LedgerStore;
use crate::{LeaseHandle, LockError, LockKey};

/// One message of a batch: its id (what the queue wants back in a partial
/// failure), the ledger key its work is recorded under, and its payload.
#[derive(Clone, Debug)]
pub struct Message<M> {
    id: String,
    key: String,
    request_hash: Option<RequestHash>,
    payload: M,
}

impl<M> Message<M> {
    /// A message whose ledger key is `msg/{id}`: duplicates are recognised
    /// by the queue's message id.
    pub fn new(id: impl Into<String>, payload: M) -> Self {
        let id = id.into();
        Self {
            key: format!("msg/{id}"),
            id,
            request_hash: None,
            payload,
        }
    }

    /// Records the work under `key` instead, for duplicates that arrive with
    /// new message ids (a key derived from the payload: an order id, an
    /// S3 object's path and version).
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = key.into();
        self
    }

    /// A fingerprint of the payload: a key seen again with a different one
    /// is [`Processed::Rejected`] instead of replaying the wrong result.
    pub fn with_request_hash(mut self, hash: RequestHash) -> Self {
        self.request_hash = Some(hash);
        self
    }

    /// The message id.
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// What happened to one message.
#[derive(Debug)]
pub enum Processed<T> {
    /// The work ran now and succeeded.
    Ran(T),
    /// A duplicate of a message whose work already succeeded: the stored value.
    Replayed(T),
    /// A duplicate arrived while the first copy was running elsewhere.
    InProgress(RunRecord),
    /// The work failed; another attempt will run when the message comes back.
    Failed(RunFailure),
    /// The work failed now, for good (fatal, or its last attempt).
    GaveUp(RunFailure),
    /// The work failed for good (fatal, or out of attempts); the record.
    Ignored(RunRecord),
    /// The key was recorded for a different payload hash (or the message
    /// was otherwise unusable): nothing ran.
    Rejected(LockError),
    /// The ledger could not be asked (the backend is down, or the lease was
    /// lost mid-run).
    Error(LockError),
}

impl<T> Processed<T> {
    /// Whether the queue should deliver the message again.
    pub fn should_redeliver(&self) -> bool {
        match self {
            Processed::Ran(_)
            | Processed::Replayed(_)
            | Processed::Ignored(_)
            | Processed::GaveUp(_)
            | Processed::Rejected(_) => false,
            Processed::InProgress(_) | Processed::Failed(_) => true,
            Processed::Error(err) => {
                err.is_retryable() || matches!(err, LockError::LeaseLost { .. })
            }
        }
    }
}

/// The outcome of a batch, message by message, in the order given.
#[derive(Debug)]
pub struct BatchReport<T> {
    /// Each message's id and what happened to it.
    pub items: Vec<(String, Processed<T>)>,
}

impl<T> BatchReport<T> {
    /// The ids of the messages the queue must deliver again.
    pub fn batch_item_failures(&self) -> Vec<&str> {
        self.items
            .iter()
            .filter(|(_, processed)| processed.should_redeliver())
            .map(|(id, _)| id.as_str())
            .collect()
    }

    /// The partial-batch answer of an SQS-triggered Lambda function:
    /// `{"batchItemFailures":[{"itemIdentifier":"…"}]}`.
    pub fn sqs_response(&self) -> serde_json::Value {
        let failures: Vec<serde_json::Value> = self
            .batch_item_failures()
            .into_iter()
            .map(|id| serde_json::json!({ "itemIdentifier": id }))
            .collect();
        serde_json::json!({ "batchItemFailures": failures })
    }
}

/// Runs each message of an at-least-once batch at most once successfully.
///
/// ```
/// use std::time::Duration;
/// use lockstore_api::ledger::{IdempotentConsumer, Ledger, Message, RunFailure};
/// # async fn demo(ledger: Ledger) {
/// let consumer = IdempotentConsumer::new(ledger, Duration::from_secs(30));
/// let batch = vec![Message::new("m-1", 40u32), Message::new("m-2", 2u32)];
/// let report = consumer
///     .process(batch, |amount, lease| async move {
///         // Write with lease.fence() where the target supports it.
///         Ok::<u32, RunFailure>(amount * 2)
///     })
///     .await;
/// let response = report.sqs_response(); // return this from the Lambda handler
/// # let _ = response; }
/// ```
#[derive(Debug)]
pub struct IdempotentConsumer<L: ?Sized + LedgerStore = dyn LedgerStore> {
    ledger: Ledger<L>,
    options: RunOptions,
    wait_for_duplicates: Option<Duration>,
}

impl<L: ?Sized + LedgerStore> Clone for IdempotentConsumer<L> {
    fn clone(&self) -> Self {
        Self {
            ledger: self.ledger.clone(),
            options: self.options.clone(),
            wait_for_duplicates: self.wait_for_duplicates,
        }
    }
}

impl<L: ?Sized + LedgerStore> IdempotentConsumer<L> {
    /// A consumer whose runs are leased for `ttl` (renewed while the work
    /// runs), with 3 attempts per message.
    pub fn new(ledger: Ledger<L>, ttl: Duration) -> Self {
        Self {
            ledger,
            options: RunOptions::new(ttl),
            wait_for_duplicates: None,
        }
    }

    /// Give each message at most `attempts` runs (1..=1000) before it is
    /// ignored.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.options = self.options.max_attempts(attempts);
        self
    }

    /// A duplicate that arrives while the first copy runs waits up to
    /// `timeout` for that copy's outcome, instead of being reported
    /// [`Processed::InProgress`] at once.
    pub fn wait_for_duplicates(mut self, timeout: Duration) -> Self {
        self.wait_for_duplicates = Some(timeout);
        self
    }

    /// Processes `messages` one after another with `handler`, which gets
    /// the payload and the run's [`LeaseHandle`] (fence and loss signal).
    /// Never fails as a whole: every message's outcome is in the report.
    pub async fn process<M, T, F, Fut>(
        &self,
        messages: impl IntoIterator<Item = Message<M>>,
        handler: F,
    ) -> BatchReport<T>
    where
        T: Serialize + DeserializeOwned,
        F: Fn(M, LeaseHandle) -> Fut,
        Fut: Future<Output = Result<T, RunFailure>>,
    {
        let mut items = Vec::new();
        for message in messages {
            let id = message.id.clone();
            let processed = self.process_one(message, &handler).await;
            items.push((id, processed));
        }
        BatchReport { items }
    }

    async fn process_one<M, T, F, Fut>(&self, message: Message<M>, handler: &F) -> Processed<T>
    where
        T: Serialize + DeserializeOwned,
        F: Fn(M, LeaseHandle) -> Fut,
        Fut: Future<Output = Result<T, RunFailure>>,
    {
        let key = match LockKey::new(message.key) {
            Ok(key) => key,
            Err(err) => return Processed::Rejected(err),
        };
        let mut options = self.options.clone();
        if let Some(hash) = message.request_hash {
            options = options.request_hash(hash);
        }
        if let Some(timeout) = self.wait_for_duplicates {
            options = options.wait_for_running(timeout);
        }
        let payload = message.payload;
        let outcome = self
            .ledger
            .run_once(&key, options, |lease| handler(payload, lease))
            .await;
        match outcome {
            Ok(RunOnce::Ran { value, .. }) => Processed::Ran(value),
            Ok(RunOnce::AlreadySucceeded { value, .. }) => Processed::Replayed(value),
            Ok(RunOnce::Running { record }) => Processed::InProgress(record),
            Ok(RunOnce::Failed {
                failure, status, ..
            }) => match status {
                super::RunStatus::Failed => Processed::Failed(failure),
                _ => Processed::GaveUp(failure),
            },
            Ok(RunOnce::Ignored { record }) => Processed::Ignored(record),
            Err(
                err @ (LockError::RequestMismatch { .. }
                | LockError::InvalidArgument { .. }
                | LockError::InvalidKey { .. }
                | LockError::InvalidTtl { .. }),
            ) => Processed::Rejected(err),
            Err(err) => Processed::Error(err),
        }
    }
}
