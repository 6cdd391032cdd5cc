//! The Redis backend: one Lua script per operation, expiry judged by the
//! server's clock, waiters woken through pub/sub. A Redis Cluster is named
//! `redis+cluster://host1:port1,host2:port2`; `rediss://` is TLS.
//!
//! ```text
//! LOCKSTORE_REDIS_URL=redis://127.0.0.1:6379 \
//!     cargo run -p lockstore --example redis --features redis
//! ```
//!
//! Nothing is created: the keys are made as locks are taken. Run Redis
//! with `maxmemory-policy noeviction` and without asynchronous failover
//! (see the crate docs of `lockstore::redis`).

use std::time::Duration;

use lockstore::ledger::{Ledger, RunFailure, RunOnce, RunOptions};
use lockstore::redis::RedisStore;
use lockstore::{AcquireOptions, LockClient};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("LOCKSTORE_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    // Connects and loads the scripts; `.key_prefix(..)` keeps services apart.
    let store = RedisStore::builder(url)
        .key_prefix("example:")
        .connect()
        .await?;

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
