//! SQS-triggered AWS Lambda functions that run each message's work at most
//! once successfully (cargo feature `lambda`).
//!
//! An SQS event source hands a Lambda function a batch of messages, at least
//! once: a message comes back when the function fails, times out, or
//! reports it in `batchItemFailures`, and a standard queue may deliver a
//! message twice. [`SqsHandler`] puts the
//! [`IdempotentConsumer`] between the
//! event and your code:
//!
//! * each message's work is recorded in the ledger under a key — the
//!   message id, or a field of its JSON body ([`SqsHandler::key_from_body`])
//!   for duplicates sent with new ids — so a redelivered message whose work
//!   succeeded is replayed, not run again;
//! * the body's SHA-256 is the request hash: a key seen again with another
//!   body is rejected instead of replaying the wrong result;
//! * the answer is an [`SqsBatchResponse`] naming only the messages that must
//!   come back (enable `ReportBatchItemFailures` on the event source mapping);
//! * each run's lease is renewed no later than the invocation's deadline
//!   ([`RunOptions::renew_until`](crate::ledger::RunOptions::renew_until)):
//!   work still running shortly before the timeout is stopped and its message
//!   reported for redelivery, a run killed by the timeout is taken over soon
//!   after it rather than held by its lease, and messages not started by
//!   [`SqsHandler::deadline_reserve`] before the deadline are left for the
//!   next delivery;
//! * a configuration or permanent store error (a missing table, a denied
//!   permission) fails the invocation: [`SqsHandler::handle`] returns `Err`,
//!   Lambda reports the invocation failed, and the whole batch comes back.
//!
//! What happens to each message is the consumer's table in
//! [`crate::ledger::IdempotentConsumer`]'s module docs; a body the key cannot
//! be taken from is [`Processed::Rejected`] (logged, not redelivered).
//!
//! ```no_run
//! use std::time::Duration;
//! use lockstore::lambda::{LambdaEvent, SqsEvent, SqsHandler, SqsMessage};
//! use lockstore::ledger::{IdempotentConsumer, Ledger, RunFailure};
//! use lockstore::memory::MemoryStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), lambda_runtime::Error> {
//! let ledger = Ledger::new(MemoryStore::new()); // DynamoDbStore in production
//! let consumer = IdempotentConsumer::new(ledger, Duration::from_secs(30))?.max_attempts(5)?;
//! let handler = SqsHandler::new(consumer).key_from_body("/order_id", "order/")?;
//! let handler = &handler;
//! lambda_runtime::run(lambda_runtime::service_fn(move |event: LambdaEvent<SqsEvent>| async move {
//!     let response = handler
//!         .handle(event, |message: SqsMessage, lease| async move {
//!             // Pass lease.fence() to whatever the work writes to.
//!             let body = message.body.unwrap_or_default();
//!             Ok::<_, RunFailure>(format!("charged {body} with fence {}", lease.fence()))
//!         })
//!         .await?; // a store error that is not about one message fails the invocation
//!     Ok::<_, lambda_runtime::Error>(response)
//! }))
//! .await
//! # }
//! ```

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lockstore_api::ledger::{
    BatchReport, IdempotentConsumer, LedgerStore, Message, Processed, RequestHash, RunFailure,
};
use lockstore_api::{LeaseHandle, LockError};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use tracing::warn;

pub use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
pub use lambda_runtime::{Context, LambdaEvent};

/// Where a message's ledger key comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MessageKey {
    /// `msg/{messageId}`: a message redelivered by SQS is recognised; a copy
    /// sent again by the producer (a new message id) is not.
    MessageId,
    /// `{prefix}{value}`, the value being the string or number at `pointer`
    /// (an RFC 6901 JSON pointer) in the JSON body: copies of one order
    /// sent as several messages are recognised.
    BodyField {
        /// The JSON pointer, such as `/order/id`.
        pointer: String,
        /// Put before the value, to keep this function's keys apart from
        /// others in the same table (`"charge/"`).
        prefix: String,
    },
}

/// Handles the batches of an SQS-triggered Lambda function through an
/// [`IdempotentConsumer`]: see the [module docs](self).
///
/// Build it once, outside the handler, and call [`SqsHandler::handle`] from
/// the function given to `lambda_runtime::run`. Cloning is cheap.
#[derive(Debug)]
pub struct SqsHandler<L: ?Sized + LedgerStore = dyn LedgerStore> {
    consumer: IdempotentConsumer<L>,
    key: MessageKey,
    hash_body: bool,
    reserve: Duration,
}

impl<L: ?Sized + LedgerStore> Clone for SqsHandler<L> {
    fn clone(&self) -> Self {
        Self {
            consumer: self.consumer.clone(),
            key: self.key.clone(),
            hash_body: self.hash_body,
            reserve: self.reserve,
        }
    }
}

/// How long before the deadline no message is started, by default.
const DEFAULT_RESERVE: Duration = Duration::from_secs(1);

impl<L: ?Sized + LedgerStore> SqsHandler<L> {
    /// Keys from message ids, the body's hash as request hash, and no
    /// message started within a second of the invocation's deadline.
    pub fn new(consumer: IdempotentConsumer<L>) -> Self {
        Self {
            consumer,
            key: MessageKey::MessageId,
            hash_body: true,
            reserve: DEFAULT_RESERVE,
        }
    }

    /// Keys each message by the string or number at `pointer` in its JSON
    /// body (an RFC 6901 JSON pointer, such as `/order_id` or
    /// `/detail/object/key`), after `prefix`.
    ///
    /// # Errors
    /// [`LockError::InvalidArgument`] when `pointer` does not start with `/`.
    pub fn key_from_body(
        mut self,
        pointer: impl Into<String>,
        prefix: impl Into<String>,
    ) -> Result<Self, LockError> {
        let pointer = pointer.into();
        if !pointer.starts_with('/') {
            return Err(LockError::InvalidArgument {
                name: "key pointer",
                reason: format!(
                    "{pointer:?} is not a JSON pointer: write it as \"/field\" or \"/outer/inner\""
                ),
            });
        }
        self.key = MessageKey::BodyField {
            pointer,
            prefix: prefix.into(),
        };
        Ok(self)
    }

    /// Does not record the body's hash: a key seen again with another body
    /// replays the first body's result instead of being rejected. For
    /// bodies that differ between copies of one logical message (a sent-at
    /// timestamp) when the key comes from the body.
    pub fn without_request_hash(mut self) -> Self {
        self.hash_body = false;
        self
    }

    /// Starts no message when less than `reserve` is left before the
    /// invocation's deadline (default 1 s): those messages are reported for
    /// redelivery instead of being cut off by the timeout.
    pub fn deadline_reserve(mut self, reserve: Duration) -> Self {
        self.reserve = reserve;
        self
    }

    /// Where message keys come from.
    pub fn message_key(&self) -> &MessageKey {
        &self.key
    }

    /// Processes the batch and answers with the messages SQS must deliver
    /// again: [`SqsHandler::process`], then [`sqs_response`].
    ///
    /// # Errors
    /// As [`SqsHandler::process`]: return the error from the Lambda
    /// function so the invocation fails and the whole batch comes back.
    pub async fn handle<T, F, Fut>(
        &self,
        event: LambdaEvent<SqsEvent>,
        handler: F,
    ) -> Result<SqsBatchResponse, LockError>
    where
        T: Serialize + DeserializeOwned,
        F: Fn(SqsMessage, LeaseHandle) -> Fut,
        Fut: Future<Output = Result<T, RunFailure>>,
    {
        Ok(sqs_response(&self.process(event, handler).await?))
    }

    /// Runs `handler` for each message of the batch, in order, at most once
    /// successfully per key, with each run's lease renewed no later than the
    /// invocation's deadline (`context.deadline`; a context without one, as
    /// `Context::default()` in a test, sets no limit). The report has every
    /// message's outcome.
    ///
    /// # Errors
    /// [`LockError::InvalidArgument`] when a record has no `messageId`
    /// (the event is not what SQS sends; nothing is run); a configuration
    /// or permanent store error, as [`IdempotentConsumer::process`]: the
    /// messages after it are not tried.
    pub async fn process<T, F, Fut>(
        &self,
        event: LambdaEvent<SqsEvent>,
        handler: F,
    ) -> Result<BatchReport<T>, LockError>
    where
        T: Serialize + DeserializeOwned,
        F: Fn(SqsMessage, LeaseHandle) -> Fut,
        Fut: Future<Output = Result<T, RunFailure>>,
    {
        let (event, context) = event.into_parts();
        let mut records = Vec::with_capacity(event.records.len());
        for (position, record) in event.records.into_iter().enumerate() {
            let Some(id) = record.message_id.clone().filter(|id| !id.is_empty()) else {
                return Err(LockError::InvalidArgument {
                    name: "SQS event",
                    reason: format!(
                        "record {position} has no messageId, so it could not be reported as a \
                         batch item failure; is the function triggered by an SQS event source?"
                    ),
                });
            };
            records.push((id, record));
        }
        let deadline = invocation_deadline(&context);
        let consumer = match deadline {
            Some(deadline) => self.consumer.clone().renew_until(deadline),
            None => self.consumer.clone(),
        };
        let mut items = Vec::with_capacity(records.len());
        for (id, record) in records {
            if let Some(deadline) = deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                if left < self.reserve {
                    items.push((id, Processed::Error(not_started(left, self.reserve))));
                    continue;
                }
            }
            let message = match self.message(&id, record) {
                Ok(message) => message,
                Err(err) => {
                    items.push((id, Processed::Rejected(err)));
                    continue;
                }
            };
            let mut report = consumer.process([message], &handler).await?;
            items.append(&mut report.items);
        }
        for (id, processed) in &items {
            match processed {
                Processed::Rejected(err) => {
                    warn!(message_id = %id, error = %err, "message rejected; it is not redelivered");
                }
                Processed::Error(err) => {
                    warn!(message_id = %id, error = %err, "message not processed; it comes back");
                }
                _ => {}
            }
        }
        Ok(BatchReport { items })
    }

    fn message(&self, id: &str, record: SqsMessage) -> Result<Message<SqsMessage>, LockError> {
        let body = record.body.as_deref().unwrap_or("");
        let key = match &self.key {
            MessageKey::MessageId => None,
            MessageKey::BodyField { pointer, prefix } => {
                Some(format!("{prefix}{}", body_field(id, body, pointer)?))
            }
        };
        let hash = self.hash_body.then(|| body_hash(body));
        let mut message = Message::new(id, record);
        if let Some(key) = key {
            message = message.with_key(key);
        }
        if let Some(hash) = hash {
            message = message.with_request_hash(hash);
        }
        Ok(message)
    }
}

/// The partial-batch answer for `report`: the ids of the messages whose work
/// is not known to be done or given up.
pub fn sqs_response<T>(report: &BatchReport<T>) -> SqsBatchResponse {
    let mut response = SqsBatchResponse::default();
    response.set_failures(report.batch_item_failures());
    response
}

/// The invocation's deadline on the monotonic clock (tokio's, the one the
/// guards judge leases by): `context.deadline` is wall-clock milliseconds,
/// and the time left is what matters.
fn invocation_deadline(context: &Context) -> Option<Instant> {
    if context.deadline == 0 {
        return None;
    }
    let deadline = UNIX_EPOCH + Duration::from_millis(context.deadline);
    let left = deadline
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    Some(Instant::now() + left)
}

fn not_started(left: Duration, reserve: Duration) -> LockError {
    LockError::Backend {
        backend: "lambda",
        retryable: true,
        message: format!(
            "not started: {left:?} was left before the invocation's deadline, under the \
             {reserve:?} reserve; the message comes back"
        ),
        source: None,
    }
}

fn body_field(id: &str, body: &str, pointer: &str) -> Result<String, LockError> {
    let unusable = |what: &str| LockError::InvalidArgument {
        name: "message key",
        reason: format!("message {id}: {what}"),
    };
    let json: serde_json::Value = serde_json::from_str(body)
        .map_err(|err| unusable(&format!("the body is not JSON ({err})")))?;
    match json.pointer(pointer) {
        Some(serde_json::Value::String(value)) if !value.is_empty() => Ok(value.clone()),
        Some(serde_json::Value::Number(value)) => Ok(value.to_string()),
        Some(_) => Err(unusable(&format!(
            "the body's {pointer} is not a non-empty string or a number"
        ))),
        None => Err(unusable(&format!("the body has no {pointer}"))),
    }
}

fn body_hash(body: &str) -> RequestHash {
    let digest = Sha256::digest(body.as_bytes());
    let hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
    RequestHash::new(format!("sha256:{hex}")).expect("a hex digest is a valid request hash")
}
