//! A service that takes its backend from configuration: one URL picks
//! memory, SQLite, PostgreSQL, Redis or DynamoDB (see `lockstore::open`),
//! and the code below stays the same on each.
//!
//! ```text
//! cargo run -p lockstore --example open_url                                  # memory:
//! cargo run -p lockstore --example open_url --features sqlite -- sqlite:/tmp/locks.db
//! cargo run -p lockstore --example open_url --features postgres -- postgres://app:secret@127.0.0.1/app
//! cargo run -p lockstore --example open_url --features redis -- redis://127.0.0.1:6379?prefix=example:
//! cargo run -p lockstore --example open_url --features dynamodb -- 'dynamodb://Locks?region=eu-west-1'
//! ```
//!
//! A URL of a backend the build lacks is refused with the cargo feature to
//! add; a malformed one with what to write instead (and never its password).

use std::time::Duration;

use lockstore::AcquireOptions;
use lockstore::ledger::{RunFailure, RunOnce, RunOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("LOCKSTORE_URL").ok())
        .unwrap_or_else(|| "memory:".to_owned());
    let store = lockstore::open(&url).await?;
    // Creates tables where the backend has them (SQLite, PostgreSQL, DynamoDB); idempotent.
    store.ensure_schema().await?;
    println!("opened a {} store", store.backend_name());

    let locks = store.lock_client();
    let options = AcquireOptions::new(Duration::from_secs(30)).wait_up_to(Duration::from_secs(10));
    let fence = locks
        .with_lock("reports/daily", options, |lease| async move {
            lease.fence().get()
        })
        .await?;
    println!("held reports/daily with fence {fence}");

    let ledger = store.ledger_client();
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
