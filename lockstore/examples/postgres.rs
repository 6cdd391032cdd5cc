//! The PostgreSQL backend: one statement per operation, expiry judged by the
//! server's clock, waiters woken through `LISTEN/NOTIFY`.
//!
//! ```text
//! LOCKSTORE_POSTGRES_URL=postgres://app:secret@127.0.0.1:5432/app \
//!     cargo run -p lockstore --example postgres --features postgres
//! ```
//!
//! The role needs to create a schema and tables once (`ensure_schema`), or
//! run the same DDL as a migration and have only `SELECT`, `INSERT`,
//! `UPDATE`, `DELETE` afterwards.

use std::time::Duration;

use lockstore::ledger::{Ledger, RunFailure, RunOnce, RunOptions};
use lockstore::postgres::PostgresStore;
use lockstore::{AcquireOptions, LockClient};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("LOCKSTORE_POSTGRES_URL")
        .map_err(|_| "set LOCKSTORE_POSTGRES_URL to postgres://user:password@host:port/database")?;
    // Connects a pool; `.schema(..)` and `.table(..)` choose where the rows live.
    let store = PostgresStore::builder(url).build().await?;
    // Creates the schema, tables and fence sequence if they are missing; idempotent.
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
