//! An SQS-triggered AWS Lambda function that charges each order once,
//! however often SQS delivers its message.
//!
//! The event source mapping must have `ReportBatchItemFailures` on: the
//! function answers with the messages that must come back, and SQS deletes
//! the rest. The ledger is a DynamoDB table (see the README's "An
//! SQS-triggered Lambda" for the table, its IAM permissions and retention);
//! without `--features dynamodb` the example keeps it in memory, which is
//! only right for trying it out.
//!
//! ```text
//! # Build for Lambda (with cargo-lambda, not needed for the tests):
//! cargo lambda build --release --example lambda_sqs --features lambda,dynamodb
//! # Environment of the function:
//! LOCKSTORE_TABLE=Locks   # the table, created once by create_table or IaC
//! # The table as a CloudFormation resource, from the code create_table runs:
//! cargo run -p lockstore --example lambda_sqs --features lambda,dynamodb -- table-definition Locks
//! ```
//!
//! `lockstore/tests/lambda_sqs.rs` calls the same kind of handler with SQS
//! event JSON against DynamoDB emulators.

use std::time::Duration;

use lockstore::lambda::{LambdaEvent, SqsBatchResponse, SqsEvent, SqsHandler, SqsMessage};
use lockstore::ledger::{IdempotentConsumer, Ledger, LedgerStore, RunFailure};
use lockstore::{LeaseHandle, LockError};

/// An order, as the queue carries it.
#[derive(Debug, serde::Deserialize)]
struct Order {
    order_id: String,
    cents: u64,
}

/// The work for one message: charge the order, return the receipt (stored
/// in the ledger and replayed to duplicates).
async fn charge(message: SqsMessage, lease: LeaseHandle) -> Result<String, RunFailure> {
    let body = message.body.unwrap_or_default();
    // A body that does not parse will never parse: fatal, so it is not
    // retried (route such messages to a dead-letter queue yourself).
    let order: Order = serde_json::from_str(&body).map_err(RunFailure::fatal)?;
    // Check the lease right before the write, and give the payment provider
    // the fence so a run that lost its lease is refused.
    let fence = lease.check()?;
    Ok(format!(
        "charged {} cents for {} (fence {fence})",
        order.cents, order.order_id
    ))
}

/// The ledger: the DynamoDB table named by `LOCKSTORE_TABLE`, or memory.
async fn ledger() -> Result<Ledger, LockError> {
    #[cfg(feature = "dynamodb")]
    {
        let table = std::env::var("LOCKSTORE_TABLE").unwrap_or_else(|_| "Locks".to_owned());
        let store = lockstore::dynamodb::DynamoDbStore::builder(table)
            // Keep finished records past the queue's retention (4 days by
            // default, 14 at most), so a late redelivery is still replayed.
            .ledger_retention(Duration::from_secs(15 * 86_400))
            .build()
            .await?;
        Ok(Ledger::from_arc(
            std::sync::Arc::new(store) as std::sync::Arc<dyn LedgerStore>
        ))
    }
    #[cfg(not(feature = "dynamodb"))]
    {
        let store = lockstore::memory::MemoryStore::new();
        Ok(Ledger::from_arc(
            std::sync::Arc::new(store) as std::sync::Arc<dyn LedgerStore>
        ))
    }
}

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    #[cfg(feature = "dynamodb")]
    if std::env::args().nth(1).as_deref() == Some("table-definition") {
        let table = std::env::args()
            .nth(2)
            .unwrap_or_else(|| "Locks".to_owned());
        // No request is sent: the region only has to be set.
        let store = lockstore::dynamodb::DynamoDbStore::builder(table)
            .region(std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".to_owned()))
            .build()
            .await?;
        let resource = store.table_definition()?.to_cloudformation();
        println!("{}", serde_json::to_string_pretty(&resource)?);
        return Ok(());
    }
    // Built once per execution environment, before the first invocation:
    // a bad option fails the cold start, not every batch.
    let consumer =
        IdempotentConsumer::new(ledger().await?, Duration::from_secs(30))?.max_attempts(5)?;
    let handler = SqsHandler::new(consumer).key_from_body("/order_id", "charge/")?;
    let handler = &handler;
    lambda_runtime::run(lambda_runtime::service_fn(
        move |event: LambdaEvent<SqsEvent>| async move {
            // A store error that is not about one message (a missing table, a
            // denied permission) fails the invocation: the whole batch comes
            // back, and the function's error metrics show it.
            let response: SqsBatchResponse = handler.handle(event, charge).await?;
            Ok::<_, lambda_runtime::Error>(response)
        },
    ))
    .await
}
