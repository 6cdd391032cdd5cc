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
//! | the work failed now for good (fatal, its last attempt, or a result over 64 KiB) | `GaveUp` | no |
//! | the work failed for good earlier, or ran out of attempts | `Ignored` | no: redelivering cannot help (route it to a dead-letter queue yourself) |
//! | the message's own input is unusable: an invalid key, or a key seen with a different payload hash | `Rejected` | no |
//! | the handler panicked | `Failed` (recorded as a retryable failure) | yes |
//! | the ledger answered with a retryable error or not in time, the run's lease was lost, or the stored result does not decode as the handler's type | `Error` | yes |
//! | the ledger answered with a configuration or permanent error | — | the whole batch fails: [`IdempotentConsumer::process`] returns `Err` |
//!
//! A message is never acknowledged unless its outcome is known: a store or
//! configuration error is not an answer about the message. An error that
//! will not go away by itself (a missing table, a denied permission, a
//! malformed stored record) fails the batch as a whole instead of being
//! reported per message: the caller returns it from the Lambda handler (or
//! equivalent), every message of the batch comes back, and the failure
//! shows as a failed invocation rather than as a trickle of redeliveries.
//! Messages that ran before it are recorded and are replayed, not run
//! again, when the batch comes back. Options are checked once, when the
//! consumer is built.
//!
//! [`Processed`]: Processed

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::FutureExt;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::client::{Ledger, RunFailure, RunOnce, RunOptions};
use super::record::{RequestHash, RunRecord};
use super::store::LedgerStore;
use crate::telemetry;
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
    /// The work failed (or the handler panicked); another attempt will run
    /// when the message comes back.
    Failed(RunFailure),
    /// The work failed now, for good (fatal, or its last attempt).
    GaveUp(RunFailure),
    /// The work failed for good (fatal, or out of attempts); the record.
    Ignored(RunRecord),
    /// The message's own input is unusable: its key is invalid, or the key
    /// was recorded for a different payload hash. Nothing ran.
    Rejected(LockError),
    /// The ledger gave no usable answer for this message: a retryable error
    /// or no answer in time, the run's lease lost mid-run, or a stored
    /// result that does not decode as the handler's type. The message comes
    /// back. (Configuration and permanent errors fail the batch instead.)
    Error(LockError),
}

impl<T> Processed<T> {
    /// Whether the queue should deliver the message again: whenever its
    /// work is not known to be done or given up.
    pub fn should_redeliver(&self) -> bool {
        match self {
            Processed::Ran(_)
            | Processed::Replayed(_)
            | Processed::Ignored(_)
            | Processed::GaveUp(_)
            | Processed::Rejected(_) => false,
            Processed::InProgress(_) | Processed::Failed(_) | Processed::Error(_) => true,
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
/// # use lockstore_api::LockError;
/// # async fn demo(ledger: Ledger) -> Result<(), LockError> {
/// // Options are checked here, once: a bad TTL or attempt limit is an error
/// // at start-up, not a dropped batch.
/// let consumer = IdempotentConsumer::new(ledger, Duration::from_secs(30))?.max_attempts(5)?;
/// let batch = vec![Message::new("m-1", 40u32), Message::new("m-2", 2u32)];
/// let report = consumer
///     .process(batch, |amount, lease| async move {
///         // Write with lease.fence() where the target supports it.
///         Ok::<u32, RunFailure>(amount * 2)
///     })
///     .await?; // a configuration or permanent store error fails the batch
/// let response = report.sqs_response(); // return this from the Lambda handler
/// # let _ = response; Ok(()) }
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
    ///
    /// # Errors
    /// [`LockError::InvalidTtl`] or [`LockError::InvalidArgument`] when
    /// `ttl` is not a valid lease TTL (zero, over 24 hours) or too short for
    /// `ledger`'s guard to renew.
    pub fn new(ledger: Ledger<L>, ttl: Duration) -> Result<Self, LockError> {
        let options = RunOptions::new(ttl);
        ledger.check_options(&options)?;
        Ok(Self {
            ledger,
            options,
            wait_for_duplicates: None,
        })
    }

    /// Give each message at most `attempts` runs (1..=1000) before it is
    /// ignored.
    ///
    /// # Errors
    /// [`LockError::InvalidArgument`] for a limit outside 1..=1000.
    pub fn max_attempts(mut self, attempts: u32) -> Result<Self, LockError> {
        let options = self.options.clone().max_attempts(attempts);
        self.ledger.check_options(&options)?;
        self.options = options;
        Ok(self)
    }

    /// A duplicate that arrives while the first copy runs waits up to
    /// `timeout` for that copy's outcome, instead of being reported
    /// [`Processed::InProgress`] at once.
    pub fn wait_for_duplicates(mut self, timeout: Duration) -> Self {
        self.wait_for_duplicates = Some(timeout);
        self
    }

    /// Never renew a run's lease past `deadline` (see
    /// [`RunOptions::renew_until`]): an SQS-triggered Lambda function passes
    /// its invocation's deadline, on a clone of the consumer per
    /// invocation, so that a run killed by the timeout is taken over soon
    /// after it, and work still running near it is stopped and its message
    /// redelivered ([`Processed::Error`] with [`LockError::LeaseLost`]).
    pub fn renew_until(mut self, deadline: impl Into<tokio::time::Instant>) -> Self {
        self.options = self.options.renew_until(deadline);
        self
    }

    /// Processes `messages` one after another with `handler`, which gets
    /// the payload and the run's [`LeaseHandle`] (fence and loss signal).
    ///
    /// Every message's outcome is in the report, and a message is left out
    /// of [`BatchReport::batch_item_failures`] only when its work is done or
    /// given up for good. A handler that panics fails its own message
    /// (recorded as a retryable failure), not the batch.
    ///
    /// Every request to the ledger is bounded (by the TTL, and by
    /// [`IdempotentConsumer::wait_for_duplicates`] while waiting), so a
    /// store that stops answering makes a message fail, not the batch hang.
    ///
    /// # Errors
    /// A configuration or permanent backend error ([`LockError::Config`], a
    /// non-retryable [`LockError::Backend`]): the batch fails as a whole,
    /// and the remaining messages are not tried. Return the error so the
    /// queue delivers the whole batch again; nothing of it is acknowledged.
    pub async fn process<M, T, F, Fut>(
        &self,
        messages: impl IntoIterator<Item = Message<M>>,
        handler: F,
    ) -> Result<BatchReport<T>, LockError>
    where
        T: Serialize + DeserializeOwned,
        F: Fn(M, LeaseHandle) -> Fut,
        Fut: Future<Output = Result<T, RunFailure>>,
    {
        let mut items = Vec::new();
        for message in messages {
            let id = message.id.clone();
            let processed = self.process_one(message, &handler).await;
            telemetry::consumer_message(
                self.ledger.labels(),
                telemetry::consumer_outcome(&processed),
            );
            items.push((id, processed?));
        }
        Ok(BatchReport { items })
    }

    async fn process_one<M, T, F, Fut>(
        &self,
        message: Message<M>,
        handler: &F,
    ) -> Result<Processed<T>, LockError>
    where
        T: Serialize + DeserializeOwned,
        F: Fn(M, LeaseHandle) -> Fut,
        Fut: Future<Output = Result<T, RunFailure>>,
    {
        let key = match LockKey::new(message.key) {
            Ok(key) => key,
            Err(err) => return Ok(Processed::Rejected(err)),
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
            .run_once(&key, options, |lease| {
                // A panic fails this message's attempt like any retryable
                // failure, recorded before the next message starts; the
                // handler is called inside too, in case it panics before
                // returning its future.
                AssertUnwindSafe(async move { handler(payload, lease).await })
                    .catch_unwind()
                    .map(|caught| caught.unwrap_or_else(|panic| Err(panicked(&*panic))))
            })
            .await;
        Ok(match outcome {
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
            // The message's own input.
            Err(err @ (LockError::RequestMismatch { .. } | LockError::InvalidKey { .. })) => {
                Processed::Rejected(err)
            }
            // A result too large or not JSON: `run_once` recorded the attempt
            // as a fatal failure, so the key is given up.
            Err(
                err @ (LockError::ResultTooLarge { .. }
                | LockError::InvalidArgument { name: "result", .. }),
            ) => Processed::GaveUp(RunFailure::fatal(err)),
            Err(err) if fails_the_batch(&err) => return Err(err),
            Err(err) => Processed::Error(err),
        })
    }
}

/// Errors about the deployment, not one message: every message would meet
/// them, and no redelivery makes them go away.
fn fails_the_batch(err: &LockError) -> bool {
    match err {
        LockError::Config { .. }
        | LockError::InvalidTtl { .. }
        | LockError::InvalidOwner { .. }
        | LockError::InvalidLeaseId { .. } => true,
        LockError::Backend { retryable, .. } => !retryable,
        // The options were checked when the consumer was built; a stored
        // result that does not decode is this message's, and comes back.
        LockError::InvalidArgument { name, .. } => *name != "stored result",
        _ => false,
    }
}

fn panicked(panic: &(dyn Any + Send)) -> RunFailure {
    let what = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic");
    RunFailure::retryable(format!("the handler panicked: {what}"))
}
