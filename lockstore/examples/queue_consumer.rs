//! A queue consumer with at-least-once delivery that charges each order
//! once, however often its message comes back.
//!
//! SQS (and most queues) deliver a message at least once: a Lambda function
//! that fails one message of a batch gets the whole batch again, unless it
//! answers with the failed ids (`batchItemFailures`), and a visibility
//! timeout that runs out mid-work hands the same message to a second
//! consumer. [`IdempotentConsumer`] records every message's work in the
//! ledger: a message whose work succeeded is replayed from the stored result,
//! one that is running elsewhere is reported in progress, and a failure is
//! reported so that only that message comes back. A ledger that cannot be
//! used at all (a missing table, a denied permission) fails the whole batch
//! instead: nothing is acknowledged that was not processed.
//!
//! The backend is the in-process memory store by default. Build with a
//! backend's feature to run the same consumer against a real server:
//!
//! ```text
//! cargo run -p lockstore --example queue_consumer
//! LOCKSTORE_REDIS_URL=redis://127.0.0.1:6379 cargo run -p lockstore --example queue_consumer --features redis
//! LOCKSTORE_POSTGRES_URL=postgres://… cargo run -p lockstore --example queue_consumer --features postgres
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lockstore::LockError;
use lockstore::ledger::{
    BatchReport, IdempotentConsumer, Ledger, LedgerStore, Message, Processed, RunFailure,
};

/// An order to charge, as the queue carries it.
#[derive(Clone, Debug)]
pub struct Order {
    /// The order's id: the work is recorded under it, so a copy of the
    /// message sent again with a new message id is still recognised.
    pub order_id: String,
    /// Amount in cents.
    pub cents: u64,
}

/// The payment provider: counts the charges per order, so that a double
/// charge shows. The first charge of an order listed in `flaky` fails once,
/// like a provider timing out.
#[derive(Default)]
pub struct Payments {
    charges: Mutex<HashMap<String, u32>>,
    flaky: Mutex<Vec<String>>,
}

impl Payments {
    /// Makes the next charge of `order_id` fail once.
    pub fn fail_once(&self, order_id: &str) {
        self.flaky
            .lock()
            .expect("not poisoned")
            .push(order_id.to_owned());
    }

    /// Charges an order; returns the provider's receipt.
    pub fn charge(&self, order: &Order, fence: u64) -> Result<String, String> {
        let mut flaky = self.flaky.lock().expect("not poisoned");
        if let Some(at) = flaky.iter().position(|id| *id == order.order_id) {
            flaky.remove(at);
            return Err(format!("provider timed out charging {}", order.order_id));
        }
        *self
            .charges
            .lock()
            .expect("not poisoned")
            .entry(order.order_id.clone())
            .or_default() += 1;
        Ok(format!(
            "receipt {}: {} cents (fence {fence})",
            order.order_id, order.cents
        ))
    }

    /// How often each order was charged.
    pub fn charges(&self) -> HashMap<String, u32> {
        self.charges.lock().expect("not poisoned").clone()
    }
}

/// The handler a Lambda function (or any consumer loop) calls per batch.
pub struct Handler<L: ?Sized + LedgerStore> {
    consumer: IdempotentConsumer<L>,
    payments: Arc<Payments>,
}

impl<L: ?Sized + LedgerStore> Handler<L> {
    /// A handler recording its work in `ledger`.
    ///
    /// # Errors
    /// Options the ledger cannot run with (checked here, once, at start-up).
    pub fn new(ledger: Ledger<L>, payments: Arc<Payments>) -> Result<Self, LockError> {
        Ok(Self {
            consumer: IdempotentConsumer::new(ledger, Duration::from_secs(30))?.max_attempts(5)?,
            payments,
        })
    }

    /// Processes one delivery of a batch: every message is charged at most
    /// once successfully; the report names the messages to deliver again.
    ///
    /// # Errors
    /// A configuration or permanent ledger error: return it from the Lambda
    /// handler, so that the whole batch is delivered again.
    pub async fn handle(
        &self,
        batch: &[(String, Order)],
    ) -> Result<BatchReport<String>, LockError> {
        let messages: Vec<_> = batch
            .iter()
            .map(|(message_id, order)| {
                Message::new(message_id.clone(), order.clone())
                    .with_key(format!("charge/{}", order.order_id))
            })
            .collect();
        let payments = self.payments.clone();
        self.consumer
            .process(messages, move |order, lease| {
                let payments = payments.clone();
                async move {
                    payments
                        .charge(&order, lease.fence().get())
                        .map_err(RunFailure::retryable)
                }
            })
            .await
    }
}

fn describe(outcome: &Processed<String>) -> String {
    match outcome {
        Processed::Ran(receipt) => format!("charged now: {receipt}"),
        Processed::Replayed(receipt) => format!("duplicate, replayed: {receipt}"),
        Processed::InProgress(record) => format!("running elsewhere ({:?})", record.owner),
        Processed::Failed(failure) => format!("failed, will be redelivered: {failure}"),
        Processed::GaveUp(failure) => format!("failed for good: {failure}"),
        Processed::Ignored(record) => format!("ignored after {} attempts", record.attempts),
        Processed::Rejected(err) => format!("rejected: {err}"),
        Processed::Error(err) => format!("not processed, will be redelivered: {err}"),
    }
}

fn print_report(title: &str, report: &BatchReport<String>) {
    println!("{title}");
    for (id, outcome) in &report.items {
        println!("  {id}: {}", describe(outcome));
    }
    println!("  answer to the queue: {}", report.sqs_response());
}

fn orders() -> Vec<(String, Order)> {
    [
        ("m-1", "A-100", 1250),
        ("m-2", "A-101", 990),
        ("m-3", "A-102", 4000),
    ]
    .into_iter()
    .map(|(message, order, cents)| {
        (
            message.to_owned(),
            Order {
                order_id: order.to_owned(),
                cents,
            },
        )
    })
    .collect()
}

/// Runs the story on any ledger: a batch with one failure, the whole batch
/// delivered again, and a copy of one order under a new message id.
pub async fn demo<L: ?Sized + LedgerStore>(
    ledger: Ledger<L>,
) -> Result<HashMap<String, u32>, Box<dyn std::error::Error>> {
    let payments = Arc::new(Payments::default());
    let handler = Handler::new(ledger, payments.clone())?;
    let batch = orders();
    payments.fail_once("A-102");

    let first = handler.handle(&batch).await?;
    print_report("first delivery", &first);
    if first.batch_item_failures() != ["m-3"] {
        return Err(format!(
            "expected only m-3 to fail: {:?}",
            first.batch_item_failures()
        )
        .into());
    }

    // The queue ignores the partial answer (an older integration, or a
    // handler that threw): the whole batch comes back.
    let second = handler.handle(&batch).await?;
    print_report("whole batch redelivered", &second);

    // The producer sent order A-100 again, with a new message id.
    let copy = vec![("m-9".to_owned(), batch[0].1.clone())];
    print_report("copy under a new message id", &handler.handle(&copy).await?);

    let charges = payments.charges();
    println!("charges per order: {charges:?}");
    if let Some((order, n)) = charges.iter().find(|(_, n)| **n != 1) {
        return Err(format!("order {order} was charged {n} times").into());
    }
    Ok(charges)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A fresh namespace per run, so the demo starts from empty records on a
    // shared server too.
    let run = std::process::id();
    #[cfg(feature = "redis")]
    {
        let url = std::env::var("LOCKSTORE_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
        let store = lockstore::redis::RedisStore::builder(url)
            .key_prefix(format!("queue-consumer-demo-{run}:"))
            .connect()
            .await?;
        println!("ledger on Redis");
        demo(Ledger::new(store)).await?;
        return Ok(());
    }
    #[cfg(all(feature = "postgres", not(feature = "redis")))]
    {
        let url = std::env::var("LOCKSTORE_POSTGRES_URL")
            .map_err(|_| "set LOCKSTORE_POSTGRES_URL=postgres://user@host/db")?;
        let store = lockstore::postgres::PostgresStore::builder(url)
            .table(format!("queue_consumer_demo_{run}"))
            .build()
            .await?;
        store.ensure_schema().await?;
        println!("ledger on PostgreSQL");
        demo(Ledger::new(store)).await?;
        return Ok(());
    }
    #[allow(unreachable_code)]
    {
        let _ = run;
        println!("ledger in memory");
        demo(Ledger::new(lockstore::memory::MemoryStore::new())).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn every_order_is_charged_once_across_redeliveries() {
        let charges = demo(Ledger::new(lockstore::memory::MemoryStore::new()))
            .await
            .expect("the demo's own checks hold");
        assert_eq!(charges.len(), 3, "{charges:?}");
        assert!(charges.values().all(|n| *n == 1), "{charges:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_redelivered_message_is_replayed_not_charged() {
        let payments = Arc::new(Payments::default());
        let handler = Handler::new(
            Ledger::new(lockstore::memory::MemoryStore::new()),
            payments.clone(),
        )
        .unwrap();
        let batch = orders();
        let first = handler.handle(&batch).await.unwrap();
        assert!(first.batch_item_failures().is_empty());
        let again = handler.handle(&batch).await.unwrap();
        for (id, outcome) in &again.items {
            assert!(
                matches!(outcome, Processed::Replayed(_)),
                "{id}: {outcome:?}"
            );
        }
        assert_eq!(payments.charges().values().sum::<u32>(), 3);
    }
}
