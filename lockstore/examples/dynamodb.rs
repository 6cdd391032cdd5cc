//! The DynamoDB backend: one conditional write per operation, for services
//! on Lambda, Fargate or EC2. Credentials and region come from the standard
//! AWS chain (environment, profile, SSO, container or instance role).
//!
//! ```text
//! AWS_REGION=eu-west-1 cargo run -p lockstore --example dynamodb --features dynamodb -- Locks
//! # an emulator (moto, dynalite, DynamoDB Local):
//! AWS_ACCESS_KEY_ID=x AWS_SECRET_ACCESS_KEY=x LOCKSTORE_DYNAMODB_ENDPOINT=http://127.0.0.1:5000 \
//!     cargo run -p lockstore --example dynamodb --features dynamodb -- Locks
//! ```
//!
//! `create_table` makes the table (on-demand billing, the ledger's index and
//! the TTL attribute) if it is missing; in production create it with your
//! infrastructure code instead and give the service only item access.

use std::time::Duration;

use lockstore::dynamodb::DynamoDbStore;
use lockstore::ledger::{Ledger, RunFailure, RunOnce, RunOptions};
use lockstore::{AcquireOptions, LockClient};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let table = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "Locks".to_owned());
    let mut builder = DynamoDbStore::builder(table);
    if let Ok(endpoint) = std::env::var("LOCKSTORE_DYNAMODB_ENDPOINT") {
        builder = builder.endpoint_url(endpoint).region("us-east-1");
    }
    // No request is sent yet: the AWS configuration is loaded here.
    let store = builder.build().await?;
    store.create_table().await?;

    // A lock: held while the closure runs, renewed in the background, then
    // released. Hand the fence to what the lock protects, so that it can
    // refuse a writer whose lease ran out.
    let locks = LockClient::new(store.clone());
    let options = AcquireOptions::new(Duration::from_secs(30)).wait_up_to(Duration::from_secs(10));
    let fence = locks
        .with_lock("reports/daily", options, |lease| async move {
            lease.fence().get()
        })
        .await?;
    println!("held reports/daily with fence {fence}");

    // The ledger: the import of one date runs at most once successfully,
    // however often (and on however many hosts) this program runs.
    let ledger = Ledger::new(store);
    let options = RunOptions::new(Duration::from_secs(30)).max_attempts(3);
    let outcome = ledger
        .run_once("import/2026-12-07", options, |run| async move {
            Ok::<_, RunFailure>(format!("imported with fence {}", run.fence()))
        })
        .await?;
    match outcome {
        RunOnce::Ran { value, .. } => println!("ran: {value}"),
        RunOnce::AlreadySucceeded { value, .. } => println!("already done: {value}"),
        other => println!("not run: {other:?}"),
    }
    Ok(())
}
