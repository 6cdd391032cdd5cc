//! The SQLite backend: the embedded default, one database file shared by the
//! processes of one host (they take turns through SQLite's own locking).
//!
//! ```text
//! cargo run -p lockstore --example sqlite --features sqlite -- /tmp/locks.db
//! ```
//!
//! Run it twice: the lock is taken again with a larger fence, and the import
//! is not run again.

use std::time::Duration;

use lockstore::ledger::{Ledger, RunFailure, RunOnce, RunOptions};
use lockstore::sqlite::SqliteStore;
use lockstore::{AcquireOptions, LockClient};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "locks.db".to_owned());
    // Every process on the host opens the same file (and the same table names).
    let store = SqliteStore::builder(path).build().await?;
    // Creates the lock and ledger tables if they are missing; idempotent.
    store.ensure_schema().await?;

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
